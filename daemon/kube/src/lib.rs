//! shoal-kube: the Kubernetes object model over the shoal store.
//!
//! Shared by the API server, the controllers, the scheduler and the node agent, so that an
//! object looks the same whoever writes it.
#![forbid(unsafe_code)]

mod cache;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod quantity;
pub mod resources;
pub mod selector;
pub mod service_cidr;
pub mod tables;
pub mod validation;
pub mod wire;

pub use objects::{Error, ObjectEvent, Objects, Preconditions, Result, UpdateMode};
pub use resources::Resource;

/// The Kubernetes version reported by `/version`. kubectl supports one minor version of skew
/// either way, so 1.36 keeps kubectl 1.35 to 1.37 free of the skew warning. The gcloud SDK's
/// kubectl dispatcher, which picks `kubectl.1.XX` by this version, runs its own built-in
/// client (1.32) for servers newer than the newest binary it ships (1.33); every version still
/// works, older ones print the skew warning on `kubectl version`.
pub const KUBERNETES_VERSION: &str = "v1.36.0";
