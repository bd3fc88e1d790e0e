//! Generates the gRPC code for `proto/warden/v1` with `protox`, so building
//! needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not when it was compiled: one target
    // directory may serve several checkouts (a CI cache), and the compiled
    // script is shared between them.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = [
        "agent.proto",
        "admin.proto",
        "identity.proto",
        "sidecar.proto",
        "mesh.proto",
        "a2a.proto",
        "approval.proto",
        "audit.proto",
    ]
    .map(|f| root.join("warden/v1").join(f));
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::Codec")
        .compile_fds(fds)?;
    Ok(())
}
