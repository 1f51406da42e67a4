//! Generated protocol buffers: the control-plane API and the agent's local push API.

/// Version 1 of the dtable-cluster protocols.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("dtable.cluster.v1");
}
