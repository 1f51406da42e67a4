//! A real etcd for integration tests: one member or a static cluster on free loopback ports,
//! with data on tmpfs and no fsync, killed and removed when the [`Etcd`] handle is dropped.
//! Optionally secured like a production etcd ([`Security`]): TLS on the client URLs, client
//! certificates required, password auth enabled.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tempfile::TempDir;

use crate::process::{Proc, read_log, tail};
use crate::scratch::scratch_dir;
use crate::wait::free_ports;

/// Environment variable naming the etcd binary to run, overriding the PATH lookup.
pub const ETCD_BIN_ENV: &str = "ETCD_BIN";

/// How long a member may take to answer after it was started.
pub const HEALTHY_TIMEOUT: Duration = Duration::from_secs(20);

/// How many times a start is tried with fresh ports before giving up.
const START_ATTEMPTS: usize = 3;

/// How many log lines a start-up failure shows.
const LOG_TAIL_LINES: usize = 30;

/// Raft heartbeat in milliseconds: short, so elections after a kill take well under a second.
const HEARTBEAT_MS: &str = "50";

/// Raft election timeout in milliseconds (10 heartbeats, as etcd recommends).
const ELECTION_TIMEOUT_MS: &str = "500";

/// How a test etcd is secured. The default, plain and open, is what [`Etcd::start`] runs.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// TLS on the members' client URLs (peers still talk plain http on loopback).
    pub tls: Option<EtcdTlsFiles>,
    /// With a password, once the members answer the harness adds user `root` with it, grants
    /// it the `root` role and enables auth; from then on its own clients log in as `root`.
    pub root_password: Option<String>,
}

/// PEM files for an etcd with TLS.
#[derive(Clone, Debug)]
pub struct EtcdTlsFiles {
    /// CA that signed the server certificate (and the client certificates): etcd's
    /// `--trusted-ca-file`, and what the harness's own clients trust.
    pub ca: PathBuf,
    /// Server certificate, valid for 127.0.0.1 (etcd's `--cert-file`). etcd's gateway also
    /// uses it as a client certificate, so with client certificates required it needs the
    /// clientAuth usage too.
    pub cert: PathBuf,
    /// Its key (`--key-file`).
    pub key: PathBuf,
    /// Client certificate and key the harness's own clients present. When set, etcd runs with
    /// `--client-cert-auth` and refuses clients without a certificate signed by `ca`.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// How the harness's own clients reach the members.
#[derive(Clone, Debug, Default)]
struct Access {
    /// TLS options when the client URLs are https.
    tls: Option<TlsOptions>,
    /// `root` and its password once auth is enabled.
    user: Option<(String, String)>,
}

impl Access {
    /// Connect options with a connect timeout of `connect_timeout`.
    fn options(&self, connect_timeout: Duration) -> ConnectOptions {
        let mut options = ConnectOptions::new().with_connect_timeout(connect_timeout);
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        if let Some((user, password)) = &self.user {
            options = options.with_user(user.clone(), password.clone());
        }
        options
    }
}

/// A running etcd: one member or a cluster. Dropping it SIGKILLs every member process, reaps
/// it, and then removes the data and log directory.
#[derive(Debug)]
pub struct Etcd {
    /// The members, member `i` named `m{i}`. Declared before `dir` so that the processes are
    /// killed before their directory is removed.
    members: Vec<Member>,
    /// The etcd executable, kept for restarts.
    bin: PathBuf,
    /// The static `--initial-cluster` value shared by every member.
    initial_cluster: String,
    /// TLS and auth, as asked for at start.
    security: Security,
    /// How the harness's own clients connect (TLS, and the root login once auth is on).
    access: Access,
    /// Holds each member's data dir and log.
    dir: TempDir,
}

/// One etcd member and where it lives.
#[derive(Debug)]
struct Member {
    /// `m{i}`.
    name: String,
    /// Port of the client URL.
    client_port: u16,
    /// Port of the peer (raft) URL.
    peer_port: u16,
    /// `--data-dir`, reused by a restart.
    data_dir: PathBuf,
    /// stdout and stderr of every run of this member, appended.
    log_path: PathBuf,
    /// The running process; `None` after [`Etcd::kill_member`].
    proc: Option<Proc>,
}

impl Member {
    /// The client endpoint, without scheme (https when the etcd has TLS).
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The last lines of this member's log.
    fn log_tail(&self) -> String {
        tail(&read_log(&self.log_path), LOG_TAIL_LINES)
    }
}

/// Why one start attempt failed.
enum StartFailure {
    /// A member exited during start-up, most likely because a port was taken meanwhile.
    Exited(String),
    /// The members did not answer within [`HEALTHY_TIMEOUT`].
    TimedOut(String),
}

impl Etcd {
    /// Starts a single-member etcd and waits until it answers.
    ///
    /// # Panics
    /// If etcd is not installed, or does not come up (the message carries its log tail).
    pub async fn start() -> Etcd {
        Etcd::start_cluster(1).await
    }

    /// Starts a cluster of `members` members (static `--initial-cluster`) and waits until every
    /// member answers a linearizable read. Retries with new ports if a member dies at start-up.
    ///
    /// # Panics
    /// If `members` is 0, etcd is not installed, or the cluster does not come up.
    pub async fn start_cluster(members: usize) -> Etcd {
        Etcd::start_cluster_secured(members, Security::default()).await
    }

    /// Starts a single-member etcd secured as `security` says and waits until it answers.
    ///
    /// # Panics
    /// As [`Etcd::start`], and if a TLS file cannot be read or auth cannot be enabled.
    pub async fn start_secured(security: Security) -> Etcd {
        Etcd::start_cluster_secured(1, security).await
    }

    /// [`Etcd::start_cluster`] secured as `security` says: TLS on the client URLs, and auth
    /// enabled (user `root`) once every member answers.
    ///
    /// # Panics
    /// As [`Etcd::start_cluster`], and if a TLS file cannot be read or auth cannot be enabled.
    pub async fn start_cluster_secured(members: usize, security: Security) -> Etcd {
        assert!(members > 0, "an etcd cluster needs at least one member");
        let bin = etcd_bin();
        let access = Access {
            tls: security.tls.as_ref().map(tls_options),
            user: None,
        };
        let mut last_failure = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut etcd = Etcd::plan(bin.clone(), members, security.clone(), access.clone());
            etcd.spawn_all();
            let all: Vec<usize> = (0..members).collect();
            match etcd.wait_healthy(&all).await {
                Ok(()) => {
                    if let Some(password) = &security.root_password {
                        etcd.enable_auth(password).await;
                    }
                    return etcd;
                }
                Err(StartFailure::TimedOut(msg)) => panic!("{msg}"),
                Err(StartFailure::Exited(msg)) => {
                    eprintln!("etcd start attempt {attempt}/{START_ATTEMPTS} failed: {msg}");
                    last_failure = msg;
                }
            }
        }
        panic!("etcd did not start after {START_ATTEMPTS} attempts; last failure: {last_failure}");
    }

    /// Adds user `root` with `password`, grants it the `root` role, enables auth, and has the
    /// harness's own clients log in as `root` from now on.
    async fn enable_auth(&mut self, password: &str) {
        let mut client = self.client().await;
        client
            .user_add("root", password, None)
            .await
            .unwrap_or_else(|e| panic!("cannot add etcd user root: {e}"));
        client
            .user_grant_role("root", "root")
            .await
            .unwrap_or_else(|e| panic!("cannot grant etcd user root the root role: {e}"));
        client
            .auth_enable()
            .await
            .unwrap_or_else(|e| panic!("cannot enable etcd auth: {e}"));
        self.access.user = Some(("root".to_owned(), password.to_owned()));
    }

    /// Picks ports and directories for `count` members, starting none.
    fn plan(bin: PathBuf, count: usize, security: Security, access: Access) -> Etcd {
        let dir = scratch_dir("dtable-etcd-");
        let ports = free_ports(count * 2);
        let members: Vec<Member> = (0..count)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log_path: dir.path().join(format!("m{i}.log")),
                proc: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        Etcd {
            members,
            bin,
            initial_cluster,
            security,
            access,
            dir,
        }
    }

    /// Starts every member.
    fn spawn_all(&mut self) {
        for i in 0..self.members.len() {
            self.spawn_member(i);
        }
    }

    /// Starts member `index` with its fixed ports and data dir.
    fn spawn_member(&mut self, index: usize) {
        let token = self
            .dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dtable-testkit".to_owned());
        let member = &self.members[index];
        let client_scheme = if self.security.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let client_url = format!("{client_scheme}://127.0.0.1:{}", member.client_port);
        let peer_url = format!("http://127.0.0.1:{}", member.peer_port);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &token])
            .args(["--heartbeat-interval", HEARTBEAT_MS])
            .args(["--election-timeout", ELECTION_TIMEOUT_MS])
            .arg("--unsafe-no-fsync")
            .args(["--logger", "zap"])
            .args(["--log-outputs", "stderr"])
            // etcd reads ETCD_* variables as flags; ours is not one.
            .env_remove(ETCD_BIN_ENV);
        if let Some(tls) = &self.security.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key);
            if tls.client.is_some() {
                cmd.arg("--trusted-ca-file")
                    .arg(&tls.ca)
                    .arg("--client-cert-auth");
            }
        }
        let proc = Proc::from_command(&member.name, cmd, member.log_path.clone());
        self.members[index].proc = Some(proc);
    }

    /// Waits until every member in `indices` answers a linearizable read through its own
    /// endpoint, failing early if one of them exits.
    async fn wait_healthy(&mut self, indices: &[usize]) -> Result<(), StartFailure> {
        let deadline = tokio::time::Instant::now() + HEALTHY_TIMEOUT;
        let mut pending: Vec<usize> = indices.to_vec();
        while !pending.is_empty() {
            for &i in &pending {
                let member = &mut self.members[i];
                let proc = member
                    .proc
                    .as_mut()
                    .expect("a member being waited for runs");
                if let Some(status) = proc.try_wait() {
                    return Err(StartFailure::Exited(format!(
                        "etcd member {} exited with {status} during start-up; log tail:\n{}",
                        member.name,
                        member.log_tail()
                    )));
                }
            }
            let mut still = Vec::new();
            for &i in &pending {
                if !answers(&self.members[i].endpoint(), &self.access).await {
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let tails: Vec<String> = pending
                    .iter()
                    .map(|&i| {
                        let m = &self.members[i];
                        format!(
                            "--- {} ({}) log tail ---\n{}",
                            m.name,
                            m.endpoint(),
                            m.log_tail()
                        )
                    })
                    .collect();
                return Err(StartFailure::TimedOut(format!(
                    "etcd not healthy after {HEALTHY_TIMEOUT:?}\n{}",
                    tails.join("\n")
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The client endpoints, `127.0.0.1:PORT` without scheme (https when the etcd has TLS),
    /// one per member (killed members included), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// [`Etcd::endpoints`] joined by `,`, as the binaries' `--etcd-endpoints`-style flags take.
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    /// The client endpoint of member `index`.
    pub fn member_endpoint(&self, index: usize) -> String {
        self.members[index].endpoint()
    }

    /// Number of members, running or not.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always `false`: an `Etcd` has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The directory holding every member's data dir and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pid of member `index`, or `None` while it is killed.
    pub fn member_pid(&self, index: usize) -> Option<u32> {
        self.members[index].proc.as_ref().map(Proc::pid)
    }

    /// Everything member `index` has logged, over all its runs.
    pub fn member_log(&self, index: usize) -> String {
        read_log(&self.members[index].log_path)
    }

    /// A client connected to all endpoints (over TLS, and logged in as `root`, when the etcd
    /// is secured so).
    ///
    /// # Panics
    /// If the client cannot be built.
    pub async fn client(&self) -> Client {
        connect(&self.endpoints(), &self.access).await
    }

    /// A client connected to member `index` only, to see what that member serves.
    ///
    /// # Panics
    /// If the client cannot be built.
    pub async fn member_client(&self, index: usize) -> Client {
        connect(&[self.member_endpoint(index)], &self.access).await
    }

    /// Kills member `index` with SIGKILL and reaps it; its data dir and ports are kept for
    /// [`Etcd::restart_member`]. Does nothing if it is already dead.
    pub fn kill_member(&mut self, index: usize) {
        if let Some(mut proc) = self.members[index].proc.take() {
            proc.kill9();
        }
    }

    /// Starts member `index` again with the same data dir and ports (killing it first if it
    /// still runs) and waits until it answers a linearizable read, which needs a quorum.
    ///
    /// # Panics
    /// If the member exits or does not answer within [`HEALTHY_TIMEOUT`].
    pub async fn restart_member(&mut self, index: usize) {
        self.kill_member(index);
        self.spawn_member(index);
        match self.wait_healthy(&[index]).await {
            Ok(()) => {}
            Err(StartFailure::Exited(msg) | StartFailure::TimedOut(msg)) => {
                panic!("restarting etcd member {index} failed: {msg}")
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Kill and reap every member before `dir` is removed (fields drop after this).
        for member in &mut self.members {
            if let Some(mut proc) = member.proc.take() {
                proc.kill9();
            }
        }
    }
}

/// Connects a client to `endpoints` with a short connect timeout.
async fn connect(endpoints: &[String], access: &Access) -> Client {
    let options = access.options(Duration::from_secs(2));
    Client::connect(endpoints, Some(options))
        .await
        .unwrap_or_else(|e| panic!("cannot connect an etcd client to {endpoints:?}: {e}"))
}

/// The harness clients' TLS options: trust `ca`, present the client certificate if any.
///
/// # Panics
/// If a file cannot be read.
fn tls_options(tls: &EtcdTlsFiles) -> TlsOptions {
    let read = |path: &Path| {
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    };
    let options = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)));
    match &tls.client {
        Some((cert, key)) => options.identity(Identity::from_pem(read(cert), read(key))),
        None => options,
    }
}

/// Whether the member at `endpoint` answers a linearizable read within a second.
async fn answers(endpoint: &str, access: &Access) -> bool {
    let probe = async {
        let options = access.options(Duration::from_millis(500));
        let mut client = Client::connect([endpoint], Some(options)).await.ok()?;
        client.get("dtable-testkit/health", None).await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Some(_))
    )
}

/// The etcd executable: `$ETCD_BIN`, else `etcd` on `PATH`, else `/usr/bin/etcd`.
///
/// # Panics
/// If none exists, with instructions to install it.
pub fn etcd_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os(ETCD_BIN_ENV).filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return bin;
        }
        panic!(
            "etcd not found: install it with `apt-get install -y etcd-server` (or set ETCD_BIN; \
             {ETCD_BIN_ENV}={} is not a file)",
            bin.display()
        );
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file());
    let fallback = PathBuf::from("/usr/bin/etcd");
    match on_path {
        Some(bin) => bin,
        None if fallback.is_file() => fallback,
        None => panic!(
            "etcd not found: install it with `apt-get install -y etcd-server` (or set ETCD_BIN)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_member_that_cannot_bind_is_reported_as_exited() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut etcd = Etcd::plan(etcd_bin(), 1, Security::default(), Access::default());
        etcd.members[0].client_port = taken.local_addr().unwrap().port();
        etcd.spawn_all();
        match etcd.wait_healthy(&[0]).await {
            Err(StartFailure::Exited(msg)) => assert!(msg.contains("m0"), "{msg}"),
            Err(StartFailure::TimedOut(msg)) => panic!("expected an exit, timed out: {msg}"),
            Ok(()) => panic!("etcd started on a taken port"),
        }
    }
}
