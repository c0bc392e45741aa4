//! shoal's image store: content-addressed blobs, registry pulls, tarball import, safe layer
//! unpacking, overlayfs snapshots and garbage collection.
#![forbid(unsafe_code)]

mod blobs;
mod error;
mod import;
mod model;
mod os;
mod peers;
mod platform;
mod reference;
mod registry;
pub mod stats;
mod store;
mod unpack;

pub use error::{Error, Result};
pub use model::{ImageConfig, ImageInfo};
pub use os::{FakeImageOs, ImageOs, LinuxImageOs, NodeKind, OsCall};
pub use peers::{BlobSource, BlobStream, StoreBlobSource};
pub use platform::Platform;
pub use reference::{normalize, ImageName, ImageRef};
pub use registry::{Auth, Registries, RegistryConfig};
pub use store::{GcReport, ImageStore, Mount};
pub use unpack::UnpackLimits;
