//! shoal: the daemon every node runs.
//!
//! Wiring lives in [`node_main`]-style modules below; each area of DESIGN.md has one module:
//! `api` (Kubernetes REST), `controllers`, `scheduler`, `node` (pod lifecycle), `proxy`
//! (Service data plane), `dns` (cluster DNS) and `lb` (the LoadBalancer announcer).
#![forbid(unsafe_code)]

pub mod api;
pub mod controllers;
pub mod dns;
pub mod lb;
pub mod node;
pub mod proxy;
pub mod scheduler;
