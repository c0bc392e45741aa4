//! shoal: the daemon every node runs.
//!
//! `cluster` wires a node together (`shoal up`); each area of DESIGN.md has one module:
//! `api` (Kubernetes REST), `controllers`, `scheduler`, `node` (pod lifecycle), `proxy`
//! (Service data plane), `dns` (cluster DNS) and `lb` (the LoadBalancer announcer).
#![forbid(unsafe_code)]

pub(crate) mod admission;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod control;
pub mod controllers;
pub mod dns;
pub mod ingress;
pub mod lb;
pub mod members;
pub mod metrics;
pub mod netpol;
pub mod node;
pub mod proxy;
pub mod reconcile;
pub mod scheduler;
pub mod streams;
mod wiring;
