//! `watch`: follows `WatchAssignment`, printing the opening snapshot as a summary line and
//! then one timestamped line (or JSON object) per change. A broken stream is reopened after a
//! short, growing pause, on whichever control plane answers; Ctrl-C or SIGTERM ends it with
//! exit status 0.

use std::io::Write;
use std::time::{Duration, SystemTime};

use dtable_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::client::Session;
use crate::error::{CtlError, code_name};
use crate::render::{json, text};

/// First pause before reopening a broken stream.
pub const RECONNECT_MIN: Duration = Duration::from_millis(500);

/// Longest pause between attempts to reopen.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A token cancelled on the first SIGTERM or SIGINT. The handlers are installed before this
/// returns, so a signal that arrives right after start-up is not lost.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        cancel.cancel();
    });
    Ok(token)
}

/// Streams events to `out` until `shutdown`. Fails only if the first attempt to open the
/// stream fails, if a control plane refuses it later (for instance a token is now required),
/// or if the output cannot be written.
pub async fn run(
    session: &mut Session,
    as_json: bool,
    out: &mut impl Write,
    shutdown: CancellationToken,
) -> Result<(), CtlError> {
    let mut backoff = RECONNECT_MIN;
    let mut opened_once = false;
    loop {
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            opened = session.call(|mut c| async move {
                c.watch_assignment(pb::WatchAssignmentRequest {}).await
            }) => opened,
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e @ CtlError::Unreachable { .. }) if opened_once => {
                note(&format!(
                    "cannot reopen the stream: {e}; retrying in {}",
                    humantime::format_duration(backoff)
                ));
                if !pause(backoff, &shutdown).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
            Err(e) => return Err(e),
        };
        opened_once = true;
        let url = session.url().to_owned();
        let why = loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                message = stream.message() => message,
            };
            match message {
                Ok(Some(event)) => {
                    if matches!(event.event, Some(pb::cluster_event::Event::Snapshot(_))) {
                        backoff = RECONNECT_MIN;
                    }
                    print_event(out, as_json, &event)?;
                }
                Ok(None) => break "the control plane ended the stream".to_owned(),
                Err(status) => {
                    break format!(
                        "the stream broke: {}: {}",
                        code_name(status.code()),
                        status.message()
                    );
                }
            }
        };
        note(&format!(
            "{url}: {why}; reconnecting in {}",
            humantime::format_duration(backoff)
        ));
        if !pause(backoff, &shutdown).await {
            return Ok(());
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// Writes one event as a line, flushed at once so a pipe sees it.
fn print_event(
    out: &mut impl Write,
    as_json: bool,
    event: &pb::ClusterEvent,
) -> Result<(), CtlError> {
    let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    if as_json {
        serde_json::to_writer(&mut *out, &json::event(&time, event))
            .map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", text::event(&time, event))?;
    }
    out.flush()?;
    Ok(())
}

/// A note on stderr, apart from the event lines on stdout.
fn note(text: &str) {
    eprintln!("dtablectl: watch: {text}");
}

/// Sleeps `d`; false if `shutdown` came first.
async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}
