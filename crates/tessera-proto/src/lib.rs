//! Rust types and gRPC stubs generated from `proto/`.

/// The worker control plane (`proto/worker.proto`).
pub mod worker {
    tonic::include_proto!("tessera.worker.v1");
}
