//! A [`Net`] double that records calls and keeps addresses, so tests can read them back.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::{Address, Error, Net, Result, Route};

/// One recorded call of [`FakeNet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetCall {
    EnsureBridge(String),
    CreateVeth { host: String, peer: String, netns: PathBuf, bridge: Option<String> },
    DeleteLink(String),
    SetLinkUp(String, bool),
    AddAddress(String, Address),
    DelAddress(String, IpAddr),
    ReplaceRoute(Route),
    DelRoute(Route),
    ReplaceNeighbour(String, IpAddr, [u8; 6]),
}

#[derive(Default)]
struct State {
    calls: Vec<NetCall>,
    links: BTreeMap<String, Vec<Address>>,
}

/// Records every call; links exist once created (or named in [`FakeNet::with_links`]).
#[derive(Default)]
pub struct FakeNet {
    state: Mutex<State>,
}

impl FakeNet {
    pub fn new() -> FakeNet {
        FakeNet::default()
    }

    /// A fake whose namespace already has these links.
    pub fn with_links(links: &[&str]) -> FakeNet {
        let f = FakeNet::default();
        for l in links {
            f.lock().links.insert((*l).to_string(), Vec::new());
        }
        f
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<NetCall> {
        self.lock().calls.clone()
    }

    fn record(&self, c: NetCall) {
        self.lock().calls.push(c);
    }

    fn need(&self, link: &str) -> Result<()> {
        if self.lock().links.contains_key(link) {
            Ok(())
        } else {
            Err(Error::LinkNotFound(link.into()))
        }
    }
}

impl Net for FakeNet {
    async fn ensure_bridge(&self, name: &str) -> Result<u32> {
        self.record(NetCall::EnsureBridge(name.into()));
        let mut st = self.lock();
        st.links.entry(name.into()).or_default();
        Ok(st.links.keys().position(|k| k == name).map_or(1, |p| p as u32 + 1))
    }

    async fn create_veth(&self, host: &str, peer: &str, netns: &Path, bridge: Option<&str>) -> Result<()> {
        if let Some(b) = bridge {
            self.need(b)?;
        }
        self.record(NetCall::CreateVeth {
            host: host.into(),
            peer: peer.into(),
            netns: netns.into(),
            bridge: bridge.map(str::to_string),
        });
        self.lock().links.insert(host.into(), Vec::new());
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<()> {
        self.record(NetCall::DeleteLink(name.into()));
        self.lock().links.remove(name);
        Ok(())
    }

    async fn set_link_up(&self, name: &str, up: bool) -> Result<()> {
        self.need(name)?;
        self.record(NetCall::SetLinkUp(name.into(), up));
        Ok(())
    }

    async fn add_address(&self, link: &str, addr: Address) -> Result<()> {
        self.need(link)?;
        self.record(NetCall::AddAddress(link.into(), addr));
        let mut st = self.lock();
        let addrs = st.links.entry(link.into()).or_default();
        if !addrs.iter().any(|a| a.addr == addr.addr) {
            addrs.push(addr);
            addrs.sort();
        }
        Ok(())
    }

    async fn del_address(&self, link: &str, addr: IpAddr) -> Result<()> {
        self.record(NetCall::DelAddress(link.into(), addr));
        if let Some(addrs) = self.lock().links.get_mut(link) {
            addrs.retain(|a| a.addr != addr);
        }
        Ok(())
    }

    async fn list_links(&self) -> Result<Vec<String>> {
        Ok(self.lock().links.keys().cloned().collect())
    }

    async fn list_addresses(&self, link: &str) -> Result<Vec<Address>> {
        self.need(link)?;
        Ok(self.lock().links.get(link).cloned().unwrap_or_default())
    }

    async fn replace_route(&self, route: &Route) -> Result<()> {
        if let Some(d) = &route.dev {
            self.need(d)?;
        }
        self.record(NetCall::ReplaceRoute(route.clone()));
        Ok(())
    }

    async fn del_route(&self, route: &Route) -> Result<()> {
        self.record(NetCall::DelRoute(route.clone()));
        Ok(())
    }

    async fn replace_neighbour(&self, link: &str, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        self.need(link)?;
        self.record(NetCall::ReplaceNeighbour(link.into(), ip, mac));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().map(|rt| rt.block_on(f)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn addresses_are_kept_and_listed_once() {
        let net = FakeNet::with_links(&["eth0"]);
        let vip = Address { addr: "192.168.1.240".parse().unwrap(), prefix: 32 };
        let v6 = Address { addr: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10)), prefix: 128 };
        block(async {
            net.add_address("eth0", vip).await.unwrap();
            net.add_address("eth0", vip).await.unwrap();
            net.add_address("eth0", v6).await.unwrap();
            assert_eq!(net.list_addresses("eth0").await.unwrap(), vec![vip, v6]);
            net.del_address("eth0", vip.addr).await.unwrap();
            assert_eq!(net.list_addresses("eth0").await.unwrap(), vec![v6]);
        });
        assert_eq!(net.calls().len(), 4);
    }

    #[test]
    fn missing_links_are_errors() {
        let net = FakeNet::new();
        let r = block(net.set_link_up("nope", true));
        assert!(matches!(r, Err(Error::LinkNotFound(l)) if l == "nope"));
        block(async {
            net.ensure_bridge("shoal0").await.unwrap();
            net.create_veth("veth1", "eth0", Path::new("/run/netns/p"), Some("shoal0")).await.unwrap();
            net.set_link_up("veth1", true).await.unwrap();
        });
        assert_eq!(net.calls()[0], NetCall::EnsureBridge("shoal0".into()));
    }
}
