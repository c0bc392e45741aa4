//! shoal-netlink against a real kernel. Every test creates its own pair of network namespaces
//! joined by a veth (`a` 10.99.0.1/24 on `va`, `b` 10.99.0.2/24 on `vb`), runs [`LinuxNet`] and
//! the announcers inside `a`, and checks with `ip` and a raw socket in `b` what a user would see:
//! the addresses, links and routes `ip` lists, the ARP / NA frames on the wire and the peer's
//! neighbour entry. Needs root; the namespaces go away when the test ends, failed or not.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shoal_netlink::{announce, Address, LinuxNet, Net, Route};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip ARGS`; stdout on success, None on failure.
fn ip(args: &[&str]) -> Option<String> {
    let out = Command::new("ip").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

fn must_ip(args: &[&str]) -> String {
    ip(args).unwrap_or_else(|| panic!("`ip {}` failed", args.join(" ")))
}

/// Two namespaces joined by a veth pair; deleted on drop.
struct Pair {
    a: String,
    b: String,
}

impl Pair {
    fn new() -> Pair {
        assert!(nix::unistd::geteuid().is_root(), "kernel tests need root (they create network namespaces)");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = format!("shoal-nl-{}-{n}", std::process::id());
        let pair = Pair { a: format!("{base}-a"), b: format!("{base}-b") };
        for ns in [&pair.a, &pair.b] {
            must_ip(&["netns", "add", ns]);
            must_ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        must_ip(&["-n", &pair.a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &pair.b]);
        for (ns, link, addr) in [(&pair.a, "va", "10.99.0.1/24"), (&pair.b, "vb", "10.99.0.2/24")] {
            must_ip(&["-n", ns, "addr", "add", addr, "dev", link]);
            must_ip(&["-n", ns, "link", "set", link, "up"]);
        }
        pair
    }

    fn path(ns: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(ns)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Pair::path(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open namespace");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter namespace");
        f()
    })
    .join()
    .expect("thread in namespace")
}

/// Runs `f(LinuxNet)` on a runtime inside namespace `ns`.
fn with_net<T, F, Fut>(ns: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(LinuxNet) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    in_ns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let net = LinuxNet::new().expect("rtnetlink connection");
            f(net).await
        })
    })
}

fn mac_of(ns: &str, link: &str) -> [u8; 6] {
    let out = must_ip(&["-n", ns, "-o", "link", "show", link]);
    let words: Vec<&str> = out.split_whitespace().collect();
    let text = words.iter().position(|w| *w == "link/ether").and_then(|i| words.get(i + 1)).expect("a MAC");
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16).expect("hex");
    }
    mac
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The flags of a link as `ip -o link` prints them (`<BROADCAST,MULTICAST,UP,LOWER_UP>`).
fn flags(ns: &str, link: &str) -> Vec<String> {
    let out = must_ip(&["-n", ns, "-o", "link", "show", link]);
    let inner = out.split('<').nth(1).and_then(|s| s.split('>').next()).unwrap_or("");
    inner.split(',').map(str::to_string).collect()
}

/// A raw socket on `link` of namespace `ns` that records every frame for `window`; frames are
/// returned once the window closes. Sends on `ready` once it listens.
fn capture(
    ns: &str,
    link: &'static str,
    window: Duration,
) -> (std::thread::JoinHandle<Vec<Vec<u8>>>, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    let path = Pair::path(ns);
    let handle = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open namespace");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter namespace");
        let eth_p_all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) with constant arguments; the result is checked before being owned.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(eth_p_all)) };
        assert!(raw >= 0, "packet socket: {}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = CString::new(link).expect("link name");
        // SAFETY: `name` is NUL-terminated and outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0, "no link {link}");
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = eth_p_all;
        sll.sll_ifindex = index as i32;
        // SAFETY: the address points to a live sockaddr_ll of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert!(r == 0, "bind packet socket: {}", std::io::Error::last_os_error());
        let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
        // SAFETY: the option value points to a live timeval of the size passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        let _ = tx.send(());
        let mut frames = Vec::new();
        let end = Instant::now() + window;
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            // SAFETY: the buffer is live and its length is passed.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                frames.push(buf[..n as usize].to_vec());
            }
        }
        frames
    });
    (handle, rx)
}

#[test]
fn addresses_are_what_ip_shows() {
    let pair = Pair::new();
    let v4: IpAddr = "10.99.0.10".parse().unwrap();
    let v6: IpAddr = "fd00:99::10".parse().unwrap();
    let listed = with_net(&pair.a, move |net| async move {
        net.add_address("va", Address { addr: v4, prefix: 32 }).await.expect("add v4");
        net.add_address("va", Address { addr: v4, prefix: 32 }).await.expect("adding it again is fine");
        net.add_address("va", Address { addr: v6, prefix: 128 }).await.expect("add v6");
        net.list_addresses("va").await.expect("list")
    });
    assert!(listed.contains(&Address { addr: v4, prefix: 32 }), "{listed:?}");
    assert!(listed.contains(&Address { addr: "10.99.0.1".parse().unwrap(), prefix: 24 }), "{listed:?}");
    assert!(listed.contains(&Address { addr: v6, prefix: 128 }), "{listed:?}");
    let shown = must_ip(&["-n", &pair.a, "-o", "addr", "show", "dev", "va"]);
    assert!(shown.contains("inet 10.99.0.10/32"), "{shown}");
    let v6_line = shown.lines().find(|l| l.contains("fd00:99::10/128")).unwrap_or_else(|| panic!("{shown}"));
    assert!(!v6_line.contains("tentative") && !v6_line.contains("dadfailed"), "a moved IPv6 VIP skips DAD: {v6_line}");

    let after = with_net(&pair.a, move |net| async move {
        net.del_address("va", v4).await.expect("del v4");
        net.del_address("va", v6).await.expect("del v6");
        net.del_address("va", v4).await.expect("deleting an absent address is fine");
        net.list_addresses("va").await.expect("list")
    });
    assert!(!after.iter().any(|a| a.addr == v4 || a.addr == v6), "{after:?}");
    let shown = must_ip(&["-n", &pair.a, "-o", "addr", "show", "dev", "va"]);
    assert!(!shown.contains("10.99.0.10") && !shown.contains("fd00:99::10"), "{shown}");
    assert!(shown.contains("10.99.0.1/24"), "the link's own address stays: {shown}");
}

#[test]
fn bridges_and_veths_are_what_ip_shows() {
    let pair = Pair::new();
    let b_path = Pair::path(&pair.b);
    let (first, second, links) = with_net(&pair.a, move |net| async move {
        let first = net.ensure_bridge("brt").await.expect("bridge");
        let second = net.ensure_bridge("brt").await.expect("bridge again");
        net.create_veth("vh0", "vp0", &b_path, Some("brt")).await.expect("veth");
        let links = net.list_links().await.expect("links");
        (first, second, links)
    });
    assert_eq!(first, second, "ensure_bridge keeps the existing bridge");
    for l in ["lo", "va", "brt", "vh0"] {
        assert!(links.iter().any(|n| n == l), "{l} missing from {links:?}");
    }
    assert!(!links.iter().any(|n| n == "vp0"), "the peer went to the other namespace: {links:?}");
    assert!(flags(&pair.a, "brt").iter().any(|f| f == "UP"), "bridge is up");
    let vh0 = must_ip(&["-n", &pair.a, "-o", "link", "show", "vh0"]);
    assert!(vh0.contains("master brt"), "{vh0}");
    assert!(flags(&pair.a, "vh0").iter().any(|f| f == "UP"), "host end is up");
    assert!(ip(&["-n", &pair.b, "-o", "link", "show", "vp0"]).is_some(), "peer lives in the other namespace");

    with_net(&pair.a, |net| async move { net.set_link_up("vh0", false).await.expect("down") });
    assert!(!flags(&pair.a, "vh0").iter().any(|f| f == "UP"), "{:?}", flags(&pair.a, "vh0"));
    let missing = with_net(&pair.a, |net| async move {
        net.delete_link("vh0").await.expect("delete");
        net.delete_link("vh0").await.expect("deleting an absent link is fine");
        net.link_index("vh0").await.expect("index")
    });
    assert_eq!(missing, None);
    assert!(ip(&["-n", &pair.b, "-o", "link", "show", "vp0"]).is_none(), "deleting one end deletes the pair");
}

#[test]
fn routes_and_neighbours_are_what_ip_shows() {
    let pair = Pair::new();
    let dst: IpAddr = "10.98.0.0".parse().unwrap();
    let via = Route { dst, prefix: 24, via: Some("10.99.0.2".parse().unwrap()), dev: Some("va".into()) };
    let r = via.clone();
    with_net(&pair.a, move |net| async move { net.replace_route(&r).await.expect("route via") });
    let shown = must_ip(&["-n", &pair.a, "route", "show", "10.98.0.0/24"]);
    assert!(shown.contains("via 10.99.0.2 dev va"), "{shown}");

    let direct = Route { via: None, ..via.clone() };
    let r = direct.clone();
    with_net(&pair.a, move |net| async move { net.replace_route(&r).await.expect("route replaced") });
    let shown = must_ip(&["-n", &pair.a, "route", "show", "10.98.0.0/24"]);
    assert_eq!(shown.lines().count(), 1, "replaced, not added: {shown}");
    assert!(shown.contains("dev va") && !shown.contains("via"), "{shown}");

    let r = direct.clone();
    with_net(&pair.a, move |net| async move {
        net.del_route(&r).await.expect("delete");
        net.del_route(&r).await.expect("deleting an absent route is fine");
    });
    assert_eq!(must_ip(&["-n", &pair.a, "route", "show", "10.98.0.0/24"]).trim(), "");

    // One that `ip` added (protocol boot, link scope) goes as `ip route del` would take it,
    // named by its destination alone.
    must_ip(&["-n", &pair.a, "route", "add", "10.98.1.0/24", "dev", "va"]);
    with_net(&pair.a, move |net| async move {
        let r = Route { dst: "10.98.1.0".parse().unwrap(), prefix: 24, via: None, dev: None };
        net.del_route(&r).await.expect("delete")
    });
    assert_eq!(must_ip(&["-n", &pair.a, "route", "show", "10.98.1.0/24"]).trim(), "");

    let mac = [0x02, 0, 0, 0, 0, 0x07];
    with_net(&pair.a, move |net| async move {
        net.replace_neighbour("va", "10.99.0.7".parse().unwrap(), mac).await.expect("neighbour")
    });
    let shown = must_ip(&["-n", &pair.a, "neigh", "show", "10.99.0.7", "dev", "va"]);
    assert!(shown.contains("lladdr 02:00:00:00:00:07") && shown.contains("PERMANENT"), "{shown}");
}

#[test]
fn the_gateway_to_an_address_is_what_ip_route_get_says() {
    let pair = Pair::new();
    must_ip(&["-n", &pair.a, "route", "add", "10.97.0.0/16", "via", "10.99.0.2"]);
    let (near, far) = with_net(&pair.a, |net| async move {
        let near = net.gateway_to("10.99.0.2".parse().unwrap()).await.expect("on-link");
        let far = net.gateway_to("10.97.3.4".parse().unwrap()).await.expect("routed");
        (near, far)
    });
    assert_eq!(near, None);
    assert_eq!(far, Some("10.99.0.2".parse().unwrap()));
    let missing = with_net(&pair.a, |net| async move { net.gateway_to("192.0.2.1".parse().unwrap()).await });
    assert!(missing.is_err(), "no route at all is an error: {missing:?}");
}

#[test]
fn a_vxlan_device_floods_to_its_peers_and_routes_onlink() {
    let pair = Pair::new();
    let peers: [IpAddr; 2] = ["10.99.0.2".parse().unwrap(), "10.99.0.3".parse().unwrap()];
    let route = Route {
        dst: "10.42.7.0".parse().unwrap(),
        prefix: 24,
        via: Some("10.42.7.0".parse().unwrap()),
        dev: Some("vx".into()),
    };
    let r = route.clone();
    let listed = with_net(&pair.a, move |net| async move {
        let local = Ipv4Addr::new(10, 99, 0, 1);
        let index = net.ensure_vxlan("vx", 4242, 4789, local, 1450).await.expect("vxlan");
        assert_eq!(net.ensure_vxlan("vx", 4242, 4789, local, 1450).await.expect("again"), index);
        for p in peers {
            net.append_flood_entry("vx", p).await.expect("flood entry");
        }
        net.append_flood_entry("vx", peers[0]).await.expect("an entry already there is fine");
        net.replace_route_onlink(&r).await.expect("onlink route");
        let routes = net.ipv4_routes().await.expect("route dump");
        assert!(
            routes.iter().any(|x| x.dst == r.dst && x.prefix == 24 && x.via == r.via),
            "the dump shows the VXLAN route: {routes:?}"
        );
        net.flood_entries("vx").await.expect("list")
    });
    assert_eq!(listed, peers.to_vec());
    let link = must_ip(&["-d", "-n", &pair.a, "link", "show", "vx"]);
    for want in ["mtu 1450", "vxlan id 4242", "local 10.99.0.1", "dstport 4789"] {
        assert!(link.contains(want), "{want} not in {link}");
    }
    assert!(flags(&pair.a, "vx").iter().any(|f| f == "UP"), "{link}");
    let fdb = Command::new("bridge").args(["-n", &pair.a, "fdb", "show", "dev", "vx"]).output().expect("bridge");
    let fdb = String::from_utf8_lossy(&fdb.stdout).to_string();
    for p in peers {
        assert!(fdb.contains(&format!("00:00:00:00:00:00 dst {p}")), "{fdb}");
    }
    let shown = must_ip(&["-n", &pair.a, "route", "show", "10.42.7.0/24"]);
    assert!(shown.contains("via 10.42.7.0 dev vx") && shown.contains(" onlink"), "{shown}");

    with_net(&pair.a, move |net| async move {
        net.del_flood_entry("vx", peers[0]).await.expect("del");
        net.del_flood_entry("vx", peers[0]).await.expect("deleting an absent entry is fine");
        net.del_flood_entry("nosuchdev", peers[0]).await.expect("a missing device is fine");
        assert_eq!(net.flood_entries("vx").await.expect("list"), vec![peers[1]]);
    });
}

#[test]
fn gratuitous_arp_moves_the_peers_neighbour_entry() {
    let pair = Pair::new();
    let vip = Ipv4Addr::new(10, 99, 0, 240);
    // The peer still resolves the VIP to the node that held it before.
    must_ip(&[
        "-n",
        &pair.b,
        "neigh",
        "replace",
        "10.99.0.240",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "vb",
        "nud",
        "stale",
    ]);
    with_net(&pair.a, move |net| async move {
        net.add_address("va", Address { addr: IpAddr::V4(vip), prefix: 32 }).await.expect("add vip")
    });
    let (cap, ready) = capture(&pair.b, "vb", Duration::from_millis(1500));
    ready.recv().expect("capture ready");
    in_ns(&pair.a, move || announce::announce("va", IpAddr::V4(vip)).expect("announce"));
    let frames = cap.join().expect("capture");
    let mac = mac_of(&pair.a, "va");
    let arps: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| {
            f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[28..32] == vip.octets() && f[38..42] == vip.octets()
        })
        .collect();
    assert!(!arps.is_empty(), "no gratuitous ARP for {vip} on the wire ({} frames seen)", frames.len());
    for f in &arps {
        assert_eq!(&f[0..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &mac, "from the announcing link's MAC");
        assert_eq!(&f[22..28], &mac, "sender hardware address is the announcing link's MAC");
    }
    let ops: Vec<u8> = arps.iter().map(|f| f[21]).collect();
    assert!(ops.contains(&1) && ops.contains(&2), "a request and a reply: {ops:?}");
    let shown = must_ip(&["-n", &pair.b, "neigh", "show", "10.99.0.240", "dev", "vb"]);
    assert!(
        shown.contains(&format!("lladdr {}", mac_text(mac))),
        "the peer's entry moved to {}: {shown}",
        mac_text(mac)
    );
}

#[test]
fn unsolicited_neighbour_advert_moves_the_peers_neighbour_entry() {
    let pair = Pair::new();
    let vip: Ipv6Addr = "fd00:99::240".parse().unwrap();
    must_ip(&["-n", &pair.b, "addr", "add", "fd00:99::2/64", "dev", "vb", "nodad"]);
    must_ip(&[
        "-n",
        &pair.b,
        "-6",
        "neigh",
        "replace",
        "fd00:99::240",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "vb",
        "nud",
        "stale",
    ]);
    with_net(&pair.a, move |net| async move {
        net.add_address("va", Address { addr: IpAddr::V6(vip), prefix: 128 }).await.expect("add vip")
    });
    let (cap, ready) = capture(&pair.b, "vb", Duration::from_millis(1500));
    ready.recv().expect("capture ready");
    in_ns(&pair.a, move || announce::announce("va", IpAddr::V6(vip)).expect("announce"));
    let frames = cap.join().expect("capture");
    let mac = mac_of(&pair.a, "va");
    // Ethernet, IPv6 (next header 58 at 20, hop limit at 21, source at 22..38, destination at 38..54), ICMPv6 at 54.
    let nas: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| {
            f.len() >= 86 && f[12..14] == [0x86, 0xdd] && f[20] == 58 && f[54] == 136 && f[62..78] == vip.octets()
        })
        .collect();
    assert!(!nas.is_empty(), "no neighbour advertisement for {vip} on the wire ({} frames seen)", frames.len());
    for f in &nas {
        assert_eq!(f[21], 255, "hop limit 255");
        assert_eq!(&f[38..54], &"ff02::1".parse::<Ipv6Addr>().unwrap().octets(), "to all nodes");
        assert_eq!(f[58] & 0x20, 0x20, "Override set");
        assert_eq!(f[58] & 0x40, 0, "Solicited clear");
        assert_eq!(&f[6..12], &mac);
    }
    let shown = must_ip(&["-n", &pair.b, "-6", "neigh", "show", "fd00:99::240", "dev", "vb"]);
    assert!(
        shown.contains(&format!("lladdr {}", mac_text(mac))),
        "the peer's entry moved to {}: {shown}",
        mac_text(mac)
    );
}

#[test]
fn probe_finds_the_host_still_answering_for_an_ip() {
    let pair = Pair::new();
    let vip = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 240));
    must_ip(&["-n", &pair.b, "addr", "add", "10.99.0.240/32", "dev", "vb"]);
    let wait = Duration::from_millis(300);
    let found = in_ns(&pair.a, move || announce::probe("va", vip, wait).expect("probe"));
    assert_eq!(found, Some(mac_of(&pair.b, "vb")), "the holder answers the probe");
    let cache = must_ip(&["-n", &pair.b, "neigh", "show", "dev", "vb"]);
    assert!(!cache.contains("10.99.0.1 "), "a probe from 0.0.0.0 leaves no cache entry: {cache}");
    must_ip(&["-n", &pair.b, "addr", "del", "10.99.0.240/32", "dev", "vb"]);
    let found = in_ns(&pair.a, move || announce::probe("va", vip, wait).expect("probe"));
    assert_eq!(found, None, "nobody answers once the holder let go");
}

/// What `nft list table ip T` prints inside `ns`.
fn nft_list(ns: &str, table: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns, "nft", "list", "table", "ip", table]).output().unwrap();
    assert!(out.status.success(), "nft list: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn table_update_keeps_dynamic_set_elements_and_drops_stale_chains() {
    use shoal_netlink::nft::{Hook, LinuxNft, Nft, Table};
    let pair = Pair::new();
    let nft = LinuxNft::in_netns(Pair::path(&pair.a));
    let aff = "type ipv4_addr; flags dynamic,timeout; timeout 600s;";
    let build = |services: &[&str]| {
        let mut t = Table::new("ip", "shoal-nl-test");
        for s in services {
            t.set("set", &format!("aff-{s}"), aff);
        }
        let arms: Vec<String> =
            services.iter().enumerate().map(|(i, s)| format!("10.43.0.{} . tcp . 80 : goto svc-{s}", i + 1)).collect();
        let pre = if arms.is_empty() {
            Vec::new()
        } else {
            vec![format!("ip daddr . meta l4proto . th dport vmap {{ {} }}", arms.join(", "))]
        };
        t.base_chain("prerouting", Hook { kind: "nat", hook: "prerouting", priority: "-100" }, &pre);
        for s in services {
            t.chain(
                &format!("svc-{s}"),
                &[format!("ip saddr @aff-{s} accept"), format!("update @aff-{s} {{ ip saddr }}")],
            );
        }
        t
    };
    let first = build(&["a", "b"]);
    nft.apply(&first.replace_text()).unwrap();
    let add = Command::new("ip")
        .args(["netns", "exec", &pair.a, "nft", "add", "element", "ip", "shoal-nl-test", "aff-a", "{ 10.99.0.7 }"])
        .status()
        .unwrap();
    assert!(add.success());

    // b goes, c comes, a stays: a's affinity entry survives, b's chain and set are gone.
    let second = build(&["a", "c"]);
    nft.apply(&second.update_text(&first)).unwrap();
    let listed = nft_list(&pair.a, "shoal-nl-test");
    assert!(listed.contains("10.99.0.7"), "affinity entry lost:\n{listed}");
    assert!(listed.contains("chain svc-c") && listed.contains("set aff-c"), "{listed}");
    assert!(!listed.contains("svc-b") && !listed.contains("aff-b"), "stale items left:\n{listed}");
    assert_eq!(listed.matches("update @aff-a").count(), 1, "rules doubled:\n{listed}");

    // A changed set definition starts empty; every service removed leaves only the base chain.
    let mut third = Table::new("ip", "shoal-nl-test");
    third.set("set", "aff-a", "type ipv4_addr; flags dynamic,timeout; timeout 60s;");
    third.base_chain(
        "prerouting",
        Hook { kind: "nat", hook: "prerouting", priority: "-100" },
        &["ip saddr @aff-a accept"],
    );
    nft.apply(&third.update_text(&second)).unwrap();
    let listed = nft_list(&pair.a, "shoal-nl-test");
    assert!(!listed.contains("10.99.0.7") && listed.contains("timeout 1m"), "{listed}");
    assert!(!listed.contains("svc-"), "{listed}");

    // Only the set's timeout changes: the unchanged chain that uses it is rewritten with it.
    let mut fourth = Table::new("ip", "shoal-nl-test");
    fourth.set("set", "aff-a", "type ipv4_addr; flags dynamic,timeout; timeout 30s;");
    fourth.base_chain(
        "prerouting",
        Hook { kind: "nat", hook: "prerouting", priority: "-100" },
        &["ip saddr @aff-a accept"],
    );
    nft.apply(&fourth.update_text(&third)).unwrap();
    let listed = nft_list(&pair.a, "shoal-nl-test");
    assert!(listed.contains("timeout 30s") && listed.contains("ip saddr @aff-a accept"), "{listed}");
    // And no change at all is an empty transaction.
    assert_eq!(fourth.update_text(&fourth), "");
}

#[test]
fn a_pod_namespace_is_attached_to_the_bridge_and_configured_from_outside() {
    use shoal_netlink::Route;
    let pair = Pair::new();
    let b_path = Pair::path(&pair.b);
    with_net(&pair.a, move |net| async move {
        net.ensure_bridge("brp").await.expect("bridge");
        net.add_address("brp", Address { addr: "10.98.0.1".parse().unwrap(), prefix: 24 }).await.expect("gateway");
        // eth0 is taken in neither namespace here, but the far end is created under a scratch
        // name and renamed on the move anyway.
        net.attach_veth("vethpodtest", "eth0", &b_path, "brp", 1450).await.expect("attach");
        let pod = LinuxNet::in_netns(&b_path).expect("connection inside the pod namespace");
        pod.add_address("eth0", Address { addr: "10.98.0.2".parse().unwrap(), prefix: 24 }).await.expect("address");
        pod.set_link_up("eth0", true).await.expect("up");
        let default =
            Route { dst: "0.0.0.0".parse().unwrap(), prefix: 0, via: Some("10.98.0.1".parse().unwrap()), dev: None };
        pod.replace_route(&default).await.expect("default route");
    });
    let host = must_ip(&["-n", &pair.a, "-d", "-o", "link", "show", "vethpodtest"]);
    assert!(host.contains("master brp") && host.contains("hairpin on"), "{host}");
    assert!(flags(&pair.a, "vethpodtest").iter().any(|f| f == "UP"));
    assert!(host.contains("mtu 1450"), "{host}");
    let inside = must_ip(&["-n", &pair.b, "-o", "link", "show", "eth0"]);
    assert!(inside.contains("mtu 1450"), "{inside}");
    let addrs = must_ip(&["-n", &pair.b, "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains("10.98.0.2/24"), "{addrs}");
    let routes = must_ip(&["-n", &pair.b, "route", "show", "default"]);
    assert!(routes.contains("via 10.98.0.1 dev eth0"), "{routes}");
    let ping = Command::new("ip")
        .args(["netns", "exec", &pair.b, "busybox", "ping", "-c", "1", "-W", "2", "10.98.0.1"])
        .output()
        .expect("ping");
    assert!(ping.status.success(), "the pod reaches its gateway: {}", String::from_utf8_lossy(&ping.stdout));
}
