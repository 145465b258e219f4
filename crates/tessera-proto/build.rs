// Generates Rust from proto/*.proto with a vendored protoc, so building needs
// no system protobuf compiler. The public API (inference + debug) gets its
// own descriptor set for gRPC server reflection; the worker control plane is
// private and is not advertised.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    for f in ["worker.proto", "inference.proto", "debug.proto"] {
        println!("cargo:rerun-if-changed={}", dir.join(f).display());
    }
    tonic_prost_build::configure()
        .compile_protos(&[dir.join("worker.proto")], std::slice::from_ref(&dir))?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("public_descriptor.bin"))
        .compile_protos(
            &[dir.join("inference.proto"), dir.join("debug.proto")],
            std::slice::from_ref(&dir),
        )?;
    Ok(())
}
