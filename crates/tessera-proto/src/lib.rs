//! Rust types and gRPC stubs generated from `proto/`.

/// The worker control plane (`proto/worker.proto`).
pub mod worker {
    tonic::include_proto!("tessera.worker.v1");
}

/// The public KServe v2 / Triton API (`proto/inference.proto`).
pub mod inference {
    tonic::include_proto!("inference");
}

/// Tessera's introspection service (`proto/debug.proto`).
pub mod debug {
    tonic::include_proto!("tessera.debug.v1");
}

/// Encoded descriptors of the public services, for gRPC server reflection.
pub const PUBLIC_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("public_descriptor");
