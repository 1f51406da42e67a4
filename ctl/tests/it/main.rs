//! `dtablectl` as an operator runs it: the built binary against a fake control plane served
//! in-process (every command, `--json`, exit codes, token, failover, TLS, watch), and against a
//! real control plane on a real etcd for the read calls it serves today.

mod commands;
mod demo;
mod failures;
mod fake;
mod real;
mod tls;
mod watch;

use std::process::Stdio;
use std::time::Duration;

/// Generous bound for one CLI run on a loaded box.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Generous bound for anything that should happen within a second or two.
pub const SETTLE: Duration = Duration::from_secs(20);

/// The environment twins of the global flags, removed so the caller's shell cannot leak in.
const ENV_TWINS: [&str; 5] = [
    "DTABLE_CONTROLPLANE",
    "DTABLE_CA",
    "DTABLE_CERT",
    "DTABLE_KEY",
    "DTABLE_ADMIN_TOKEN_FILE",
];

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    /// Exit status; `None` if killed by a signal.
    pub code: Option<i32>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl Run {
    /// stdout parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", self.stdout))
    }

    /// Asserts exit status 0 and an empty stderr.
    pub fn assert_ok(&self) -> &Run {
        assert_eq!(self.code, Some(0), "{self:#?}");
        assert!(self.stderr.is_empty(), "{self:#?}");
        self
    }
}

/// A `dtablectl` command line ready to run.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dtablectl"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in ENV_TWINS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// Runs `dtablectl args` with `env` added, to completion.
pub async fn run_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = tokio::time::timeout(RUN_TIMEOUT, command(args, env).output())
        .await
        .unwrap_or_else(|_| panic!("dtablectl {args:?} did not finish within {RUN_TIMEOUT:?}"))
        .expect("run dtablectl");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// Runs `dtablectl args` to completion.
pub async fn run(args: &[&str]) -> Run {
    run_env(args, &[]).await
}
