//! The domain of dtable-cluster: buckets, node records, the etcd key layout, lease timing and
//! the placement algorithm, all free of I/O; and, behind the `etcd` feature, the etcd layer
//! (connection, lease keeper, cluster watch) that every binary shares.

pub mod bucket;
pub mod config;
pub mod keys;
pub mod node;
pub mod placement;
pub mod timing;
pub mod view;

pub use bucket::{BUCKET_COUNT, Bucket, BucketError};
pub use keys::{KeyKind, KeyLayout};
pub use node::{NodeError, NodeId, NodeRecord, NodeState};
pub use timing::LeaseTiming;
pub use view::{ClusterView, KvMeta};

#[cfg(feature = "etcd")]
pub mod auth;
#[cfg(feature = "etcd")]
pub mod cli;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "etcd")]
pub mod tls;
