//! Integration tests of the test harness itself: real etcd members, real child processes, the
//! sim (alone, following etcd, following a fake agent) with its storage, and the checker, in
//! one test binary.

mod etcd;
mod process;
mod sim;
mod sim_agent;
mod sim_rows;
mod sim_self_register;
mod sim_slave;
mod sim_socketio;
mod sim_stream;

/// `&["a", "b"]` as the owned argument list [`dtable_testkit::Proc::spawn`] takes.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}
