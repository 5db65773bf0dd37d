//! Compiles `proto/ferroflow/v1/ferroflow.proto` with protox (a protobuf compiler in
//! Rust, so that no system `protoc` is needed) into the message and service code, and
//! keeps the encoded descriptors for server reflection.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("ferroflow/v1/ferroflow.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ferroflow_descriptor.bin"), descriptors.encode_to_vec())?;
    // Requests that do not decode are the caller's mistake: INVALID_ARGUMENT (src/codec.rs).
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::Strict")
        .compile_fds(descriptors)?;
    Ok(())
}
