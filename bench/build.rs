//! Generates the etcd v3 gRPC client the bench's etcd peer uses from the
//! trimmed API in `proto/etcd/`, with the pure-Rust protobuf compiler (protox)
//! the registry's own API is built with: no `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/etcd/rpc.proto", "proto/etcd/kv.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(false).compile_fds(fds)?;
    Ok(())
}
