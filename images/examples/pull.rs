//! Pulls one image into a data dir and reports how long it took.
//!
//! `cargo run --release -p shoal-images --example pull -- DATA_DIR REFERENCE [REGISTRIES_TOML]`

use std::path::PathBuf;
use std::time::Instant;

use shoal_images::{Auth, ImageStore, Platform, Registries};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let (Some(data_dir), Some(reference)) = (args.next(), args.next()) else {
        eprintln!("usage: pull DATA_DIR REFERENCE [REGISTRIES_TOML]");
        std::process::exit(2);
    };
    let registries = match args.next() {
        Some(p) => Registries::load(&PathBuf::from(p))?,
        None => Registries::default(),
    };
    let start = Instant::now();
    let store = ImageStore::open(&PathBuf::from(data_dir), Platform::host())?;
    let info = store.pull(&reference, &registries, Auth::Anonymous).await?;
    println!("{} {} {}ms", info.names.join(","), info.digest, start.elapsed().as_millis());
    Ok(())
}
