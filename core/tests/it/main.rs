//! Integration tests of the etcd layer against a real etcd started by the test harness, and of
//! the listener security (TLS, mutual TLS, the admin token) against real sockets.

mod admin_token;
mod etcd_security;
mod lease;
mod listener_tls;
mod security_config;
mod watch;
