//! A pod's /etc/resolv.conf and /etc/hosts as the kubelet writes them: `dnsPolicy`
//! (ClusterFirst, Default, None, ClusterFirstWithHostNet), `dnsConfig` (nameservers, searches,
//! options merged over the policy's) and `hostAliases`, `hostname`/`subdomain`.
use serde_json::Value;

/// The cluster's DNS domain.
const CLUSTER_DOMAIN: &str = "cluster.local";
/// The resolver reads at most this many nameservers.
const MAX_NAMESERVERS: usize = 3;
/// The most search domains the kubelet passes on.
const MAX_SEARCHES: usize = 32;

/// The parts of a resolv.conf.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Resolv {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `name` or `name:value`.
    pub options: Vec<String>,
}

impl Resolv {
    /// Parses a resolv.conf (the node's own, for `dnsPolicy: Default`).
    pub(crate) fn parse(text: &str) -> Resolv {
        let mut r = Resolv::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => r.nameservers.extend(words.next().map(String::from)),
                Some("search" | "domain") => r.searches = words.map(String::from).collect(),
                Some("options") => r.options.extend(words.map(String::from)),
                _ => {}
            }
        }
        r
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for n in &self.nameservers {
            out.push_str(&format!("nameserver {n}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

fn push_unique(list: &mut Vec<String>, v: &str) {
    if !v.is_empty() && !list.iter().any(|x| x == v) {
        list.push(v.to_string());
    }
}

/// Options merged by name; a later one replaces an earlier one of the same name.
fn merge_option(list: &mut Vec<String>, opt: String) {
    let name = opt.split(':').next().unwrap_or_default().to_string();
    list.retain(|o| o.split(':').next() != Some(name.as_str()));
    list.push(opt);
}

/// The resolv.conf of `pod` in namespace `ns`; `cluster_dns` is the cluster DNS Service IP and
/// `host` the node's own resolv.conf.
pub(crate) fn resolv_conf(pod: &Value, ns: &str, cluster_dns: &str, host: &Resolv) -> String {
    let spec = &pod["spec"];
    let host_network = spec["hostNetwork"].as_bool() == Some(true);
    let policy = spec["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        // A hostNetwork pod with ClusterFirst resolves as the node does (kubelet's rule).
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut r = if policy == "None" {
        Resolv::default()
    } else if cluster {
        let mut searches =
            vec![format!("{ns}.svc.{CLUSTER_DOMAIN}"), format!("svc.{CLUSTER_DOMAIN}"), CLUSTER_DOMAIN.to_string()];
        for s in &host.searches {
            push_unique(&mut searches, s);
        }
        Resolv { nameservers: vec![cluster_dns.to_string()], searches, options: vec!["ndots:5".into()] }
    } else {
        host.clone()
    };
    let cfg = &spec["dnsConfig"];
    for n in cfg["nameservers"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
        push_unique(&mut r.nameservers, n.trim());
    }
    for s in cfg["searches"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
        push_unique(&mut r.searches, s.trim());
    }
    for o in cfg["options"].as_array().into_iter().flatten() {
        let Some(name) =
            o["name"].as_str().map(str::trim).filter(|n| !n.is_empty() && !n.contains(char::is_whitespace))
        else {
            continue;
        };
        let opt = match o["value"].as_str().map(str::trim).filter(|v| !v.is_empty()) {
            Some(v) if !v.contains(char::is_whitespace) => format!("{name}:{v}"),
            Some(_) => continue,
            None => name.to_string(),
        };
        merge_option(&mut r.options, opt);
    }
    // Only what a line can carry: no spaces or newlines smuggled into a value.
    let clean = |v: &mut Vec<String>| v.retain(|x| !x.is_empty() && !x.contains(char::is_whitespace));
    clean(&mut r.nameservers);
    clean(&mut r.searches);
    r.nameservers.truncate(MAX_NAMESERVERS);
    r.searches.truncate(MAX_SEARCHES);
    r.render()
}

/// The /etc/hosts of `pod` with address `ip`: localhost, the pod's own name (its
/// `hostname`, and the FQDN under `subdomain`) and `hostAliases`.
pub(crate) fn hosts(pod: &Value, ns: &str, ip: &str) -> String {
    let name = pod["metadata"]["name"].as_str().unwrap_or("pod");
    let hostname = pod["spec"]["hostname"].as_str().filter(|h| !h.is_empty()).unwrap_or(name);
    let mut out = String::from("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
    match pod["spec"]["subdomain"].as_str().filter(|s| !s.is_empty()) {
        Some(sub) => out.push_str(&format!("{ip}\t{hostname}.{sub}.{ns}.svc.{CLUSTER_DOMAIN}\t{hostname}\n")),
        None => out.push_str(&format!("{ip}\t{hostname}\n")),
    }
    let aliases = pod["spec"]["hostAliases"].as_array().cloned().unwrap_or_default();
    if !aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in &aliases {
            let Some(alias_ip) = a["ip"].as_str().filter(|i| i.parse::<std::net::IpAddr>().is_ok()) else { continue };
            let names: Vec<&str> = a["hostnames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h.as_str())
                .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace) && !h.contains('#'))
                .collect();
            if !names.is_empty() {
                out.push_str(&format!("{alias_ip}\t{}\n", names.join("\t")));
            }
        }
    }
    out
}

/// The node's resolv.conf: systemd-resolved's upstream list when /etc/resolv.conf points at its
/// local stub (which a pod's network namespace cannot reach), as the kubelet is told to.
pub(crate) fn host_resolv() -> Resolv {
    let etc = Resolv::parse(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    if etc.nameservers.iter().any(|n| n.starts_with("127.")) {
        if let Ok(text) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
            return Resolv::parse(&text);
        }
    }
    etc
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host() -> Resolv {
        Resolv::parse(
            "# generated\nnameserver 192.168.1.1\nnameserver 1.1.1.1\nsearch lan example.org\noptions edns0\n",
        )
    }

    #[test]
    fn cluster_first_is_the_default() {
        let pod = json!({"spec": {}});
        assert_eq!(
            resolv_conf(&pod, "web", "10.43.0.10", &host()),
            "search web.svc.cluster.local svc.cluster.local cluster.local lan example.org\nnameserver 10.43.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn default_and_host_network() {
        let want = "search lan example.org\nnameserver 192.168.1.1\nnameserver 1.1.1.1\noptions edns0\n";
        assert_eq!(resolv_conf(&json!({"spec": {"dnsPolicy": "Default"}}), "a", "10.43.0.10", &host()), want);
        // ClusterFirst on the host network resolves as the node; ClusterFirstWithHostNet does not.
        assert_eq!(resolv_conf(&json!({"spec": {"hostNetwork": true}}), "a", "10.43.0.10", &host()), want);
        let with = json!({"spec": {"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}});
        assert!(resolv_conf(&with, "a", "10.43.0.10", &host()).contains("nameserver 10.43.0.10\n"));
    }

    #[test]
    fn none_and_dns_config() {
        let pod = json!({"spec": {"dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.2.3.4", "1.2.3.4"], "searches": ["ns1.svc.cluster-domain.example", "my.dns.search.suffix"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}});
        assert_eq!(
            resolv_conf(&pod, "a", "10.43.0.10", &host()),
            "search ns1.svc.cluster-domain.example my.dns.search.suffix\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
        );
        // dnsConfig merges over ClusterFirst: options by name, at most three nameservers.
        let pod = json!({"spec": {"dnsConfig": {"nameservers": ["8.8.8.8", "9.9.9.9", "7.7.7.7"],
            "options": [{"name": "ndots", "value": "1"}, {"name": "bad option"}, {"name": "x", "value": "a\nnameserver 6.6.6.6"}]}}});
        let r = resolv_conf(&pod, "a", "10.43.0.10", &host());
        assert!(r.contains("nameserver 10.43.0.10\nnameserver 8.8.8.8\nnameserver 9.9.9.9\noptions ndots:1\n"), "{r}");
        assert!(!r.contains("7.7.7.7") && !r.contains("6.6.6.6") && !r.contains("bad"), "{r}");
        // Values with spaces cannot add lines.
        let pod = json!({"spec": {"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1\nsearch evil"], "searches": ["a b"]}}});
        assert_eq!(resolv_conf(&pod, "a", "10.43.0.10", &host()), "");
    }

    #[test]
    fn hosts_with_aliases_and_subdomain() {
        let pod = json!({"metadata": {"name": "web-0"}, "spec": {"hostname": "web-0", "subdomain": "web",
            "hostAliases": [{"ip": "127.0.0.1", "hostnames": ["foo.local", "bar.local"]},
                            {"ip": "10.1.2.3", "hostnames": ["foo.remote"]},
                            {"ip": "not-an-ip\n1.1.1.1", "hostnames": ["evil"]},
                            {"ip": "10.1.2.4", "hostnames": ["a b", "ok"]}]}});
        let h = hosts(&pod, "demo", "10.42.1.5");
        assert!(h.contains("10.42.1.5\tweb-0.web.demo.svc.cluster.local\tweb-0\n"), "{h}");
        assert!(h.ends_with("# Entries added by HostAliases.\n127.0.0.1\tfoo.local\tbar.local\n10.1.2.3\tfoo.remote\n10.1.2.4\tok\n"), "{h}");
        assert!(!h.contains("evil"), "{h}");
        let plain = hosts(&json!({"metadata": {"name": "p"}, "spec": {}}), "d", "10.42.0.9");
        assert!(
            plain.ends_with("10.42.0.9\tp\n")
                && plain.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"),
            "{plain}"
        );
    }
}
