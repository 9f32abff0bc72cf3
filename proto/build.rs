//! Generates the registry API from `proto/` with a pure-Rust protobuf compiler
//! (protox), so a fresh machine builds with cargo alone: no `protoc` needed.
//!
//! The messages are generated the same way whatever the features; the tonic
//! clients and servers only with the `grpc` feature, so that crates using the
//! messages alone (the store, the replication layer) never compile tonic.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = ["proto/registry/v1/registry.proto", "proto/registry/sync/v1/sync.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    // Cargo sets this for build scripts of a package built with `grpc` on.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let fds = protox::compile(files, ["proto"])?;
    std::fs::write(out_dir.join("registry_descriptor.bin"), fds.encode_to_vec())?;

    // Pass 1: messages, and with `grpc` clients and servers as usual. The
    // switches only add or leave out the service modules; the messages are
    // the same either way.
    tonic_prost_build::configure().build_client(grpc).build_server(grpc).compile_fds(fds.clone())?;
    if !grpc {
        return Ok(());
    }

    // Pass 2: the Registry server again, with `SubscribeResponse` replaced by
    // `SubscribeFrame`, a pre-encoded message. This is what lets the node encode
    // each event once and hand the same bytes to every subscriber. Likewise
    // `GetServiceResponse` by `GetServiceFrame`: written from the instances'
    // stored bytes, never decoded and re-encoded.
    let frames_dir = out_dir.join("frames");
    std::fs::create_dir_all(&frames_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&frames_dir)
        .extern_path(".registry.v1.SubscribeResponse", "crate::SubscribeFrame")
        .extern_path(".registry.v1.GetServiceResponse", "crate::GetServiceFrame")
        .extern_path(".registry.v1", "crate::v1")
        .extern_path(".registry.sync.v1", "crate::sync")
        .compile_fds(fds)?;
    Ok(())
}
