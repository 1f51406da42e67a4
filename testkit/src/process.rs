//! Child processes for tests: locate the workspace binaries, run them with their output in a
//! log file, signal them, and make sure none outlives its test (every [`Proc`] is SIGKILLed and
//! reaped on drop).

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::scratch::scratch_dir;

/// Environment variable naming the directory that holds the workspace binaries; overrides the
/// default of the directory beside the running test executable.
pub const BIN_DIR_ENV: &str = "DTABLE_BIN_DIR";

/// `RUST_LOG` given to a child when the caller does not pass one.
pub const DEFAULT_RUST_LOG: &str = "info";

/// How many log lines a dropped [`Proc`] prints when its test is panicking.
const LOG_TAIL_LINES: usize = 40;

/// How often [`Proc::wait_exit`] checks whether the child has exited.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// Path of the workspace binary `name` (`dtable-agent`, `dtable-controlplane`,
/// `dtable-server-sim`, `dtable-proxy`, ...).
///
/// Looks in `$DTABLE_BIN_DIR` if set, else in the directory of the running executable, or its
/// parent when that is a `deps/` directory (integration tests run from `target/debug/deps/`,
/// binaries sit in `target/debug/`).
///
/// # Panics
/// "binary NAME not found at PATH: build it first with `cargo build --bins`" when the file is
/// missing.
pub fn bin_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => default_bin_dir(),
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        panic!(
            "binary {name} not found at {}: build it first with `cargo build --bins`",
            path.display()
        );
    }
    path
}

/// The directory beside the running executable, skipping a trailing `deps/`.
fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable has a path");
    let dir = exe.parent().expect("an executable lives in a directory");
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A running child process whose stdout and stderr go to a log file.
///
/// Dropping it sends SIGKILL and reaps the child, so no process or zombie outlives its test. If
/// the test is panicking at that moment, the tail of the log is printed to help explain why.
#[derive(Debug)]
pub struct Proc {
    /// Short name used in messages (the binary name).
    name: String,
    /// The child itself; reaped at most once, recorded in `status`.
    child: Child,
    /// Exit status once the child has been reaped; after that its pid may belong to another
    /// process, so no signal is sent any more.
    status: Option<ExitStatus>,
    /// Where stdout and stderr are appended.
    log_path: PathBuf,
    /// Whether drop during a panic prints the log tail.
    dump_log_on_panic: bool,
    /// Scratch dir holding the log, when the `Proc` owns one; dropped after the child.
    _dir: Option<TempDir>,
}

impl Proc {
    /// Spawns the workspace binary `name` (see [`bin_path`]) with `args` and extra
    /// environment `envs`, its stdout and stderr appended to a log file in a fresh scratch dir.
    /// `RUST_LOG` is `info` unless `envs` sets it.
    ///
    /// # Panics
    /// If the binary is missing or cannot be started.
    pub fn spawn(name: &str, args: &[String], envs: &[(String, String)]) -> Proc {
        Proc::spawn_program(&bin_path(name), args, envs)
    }

    /// Like [`Proc::spawn`] but for any executable, given by path.
    ///
    /// # Panics
    /// If the program cannot be started.
    pub fn spawn_program(program: &Path, args: &[String], envs: &[(String, String)]) -> Proc {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| program.display().to_string());
        let dir = scratch_dir(&format!("{name}-"));
        let log_path = dir.path().join(format!("{name}.log"));
        let mut cmd = Command::new(program);
        cmd.args(args);
        if !envs.iter().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", DEFAULT_RUST_LOG);
        }
        cmd.envs(envs.iter().map(|(k, v)| (k, v)));
        let mut proc = Proc::from_command(&name, cmd, log_path);
        proc._dir = Some(dir);
        proc.dump_log_on_panic = true;
        proc
    }

    /// Starts `cmd` with stdin from /dev/null and stdout and stderr appended to `log_path`.
    /// The returned `Proc` owns no directory and does not dump its log on panic.
    pub(crate) fn from_command(name: &str, mut cmd: Command, log_path: PathBuf) -> Proc {
        let log = open_log(&log_path);
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot duplicate log file {}: {e}", log_path.display()));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        Proc {
            name: name.to_owned(),
            child,
            status: None,
            log_path,
            dump_log_on_panic: false,
            _dir: None,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file the child's stdout and stderr are appended to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far (lossily decoded; empty if it cannot be read).
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// Sends `signal` to the child, unless it has already been reaped (its pid could then
    /// belong to someone else). Errors (the child is a zombie, say) are ignored.
    pub fn signal(&self, signal: Signal) {
        if self.status.is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Kills the child with SIGKILL and reaps it; does nothing if it already exited.
    pub fn kill9(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        self.signal(Signal::SIGKILL);
        match self.child.wait() {
            Ok(status) => self.status = Some(status),
            Err(e) => panic!("cannot wait for {} (pid {}): {e}", self.name, self.pid()),
        }
    }

    /// Asks the child to shut down gracefully (SIGTERM).
    pub fn sigterm(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Freezes the child (SIGSTOP), as a stand-in for a hung or paused process.
    pub fn sigstop(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Resumes a child frozen by [`Proc::sigstop`] (SIGCONT).
    pub fn sigcont(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// The exit status if the child has exited (reaping it), else `None`; never blocks.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            match self.child.try_wait() {
                Ok(status) => self.status = status,
                Err(e) => panic!("cannot check {} (pid {}): {e}", self.name, self.pid()),
            }
        }
        self.status
    }

    /// Waits up to `timeout` for the child to exit, without blocking the runtime. Returns its
    /// exit status, or `None` if it is still running at the deadline.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
        if self.status.is_none() {
            let _ = self.child.wait();
        }
        if self.dump_log_on_panic && std::thread::panicking() {
            eprintln!(
                "---- last {LOG_TAIL_LINES} lines of {} (pid {}) log {} (set {}=1 to keep it) \
                 ----\n{}",
                self.name,
                self.child.id(),
                self.log_path.display(),
                crate::scratch::KEEP_ENV,
                self.log_tail(LOG_TAIL_LINES)
            );
        }
    }
}

/// Runs the workspace binary `name` to completion and returns its exit status and its stdout
/// and stderr (interleaved as written). For commands expected to exit by themselves, such as a
/// CLI call or a start-up that must fail on bad config.
///
/// # Panics
/// If the binary cannot be started, or has not exited within `timeout` (it is then killed).
pub async fn run_to_exit(
    name: &str,
    args: &[String],
    envs: &[(String, String)],
    timeout: Duration,
) -> (ExitStatus, String) {
    let mut proc = Proc::spawn(name, args, envs);
    match proc.wait_exit(timeout).await {
        Some(status) => {
            let output = proc.log();
            (status, output)
        }
        None => {
            proc.kill9();
            panic!(
                "{name} {args:?} did not exit within {timeout:?}; its output:\n{}",
                proc.log()
            );
        }
    }
}

/// Opens (creating) `path` for appending.
fn open_log(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log file {}: {e}", path.display()))
}

/// The file at `path` as text, or empty if it cannot be read.
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[tokio::test]
    async fn spawn_program_logs_and_exits() {
        let mut proc = Proc::spawn_program(
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                "echo out; echo err >&2; echo $RUST_LOG; exit 3".into(),
            ],
            &[],
        );
        let status = proc
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("exits");
        assert_eq!(status.code(), Some(3));
        let log = proc.log();
        assert!(log.contains("out\n") && log.contains("err\n"), "{log}");
        assert!(log.contains("info\n"), "RUST_LOG defaults to info: {log}");
    }

    #[tokio::test]
    async fn kill9_and_signals() {
        let mut proc = Proc::spawn_program(Path::new("/bin/sleep"), &["30".into()], &[]);
        assert!(proc.wait_exit(Duration::from_millis(100)).await.is_none());
        proc.sigstop();
        proc.sigcont();
        proc.kill9();
        let status = proc.try_wait().expect("reaped");
        assert!(!status.success());
        // Signals after reaping are no-ops, not signals to a recycled pid.
        proc.sigterm();
        proc.kill9();
    }
}
