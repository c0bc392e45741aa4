//! shoal-kube: the Kubernetes object model over the shoal store.
//!
//! Shared by the API server, the controllers, the scheduler and the node agent, so that an
//! object looks the same whoever writes it.
#![forbid(unsafe_code)]

pub mod objects;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod quantity;
pub mod resources;
pub mod selector;
pub mod tables;
pub mod validation;

pub use objects::{Error, ObjectEvent, Objects, Preconditions, Result, UpdateMode};
pub use resources::Resource;
