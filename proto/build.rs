//! Generates the Rust code for the .proto files with Debian's `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/dtable/cluster/v1/controlplane.proto",
            "proto/dtable/cluster/v1/agent.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
