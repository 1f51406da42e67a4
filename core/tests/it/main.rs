//! Integration tests of the etcd layer against a real etcd started by the test harness.

mod lease;
mod watch;
