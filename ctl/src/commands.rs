//! One function per command: validate the input, call the control plane, print the answer
//! as text or JSON.

use std::io::Write;

use dtable_core::{Bucket, NodeId};
use dtable_proto::v1 as pb;
use serde_json::Value;

use crate::args::{Cli, Command};
use crate::client::Session;
use crate::error::CtlError;
use crate::render::{StatusData, Style, json, text};

/// Runs the command and returns the exit status, having printed the output on stdout or one
/// line on stderr saying what failed.
pub async fn run(cli: Cli) -> u8 {
    let what = cli.command.describe();
    let mut stdout = std::io::stdout().lock();
    match execute(&cli, &mut stdout).await {
        Ok(()) => 0,
        // A reader that went away (`dtablectl watch | head`) is not a failure.
        Err(CtlError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            if e.exit_code() == crate::EXIT_USAGE {
                eprintln!("dtablectl: {what}: {e}");
            } else {
                eprintln!("dtablectl: {what} failed: {e}");
            }
            e.exit_code()
        }
    }
}

/// What a command prints: a JSON document or text.
enum Output {
    /// With `--json`.
    Json(Value),
    /// For people.
    Text(String),
}

/// Validates, calls, prints.
async fn execute(cli: &Cli, out: &mut impl Write) -> Result<(), CtlError> {
    // Bad input is refused before anything connects.
    match &cli.command {
        Command::Lookup { uuid } => {
            Bucket::of_base(uuid)?;
        }
        Command::Drain { node } | Command::Cordon { node } | Command::Uncordon { node } => {
            NodeId::new(node.as_str())?;
        }
        _ => {}
    }
    let mut session = Session::new(&cli.global)?;
    let as_json = cli.global.json;
    let style = Style::for_stdout();
    let output = match &cli.command {
        Command::Status => {
            let data = fetch_status(&mut session).await?;
            if as_json {
                Output::Json(json::status(&data))
            } else {
                Output::Text(text::status(&data, style))
            }
        }
        Command::Nodes => {
            let resp = session
                .call(|mut c| async move { c.list_nodes(pb::ListNodesRequest {}).await })
                .await?;
            pick(as_json, || json::nodes(&resp), || text::nodes(&resp))
        }
        Command::Lookup { uuid } => {
            let normalized = dtable_core::bucket::normalize_base_uuid(uuid)?;
            let req = pb::LookupRequest {
                dtable_uuid: normalized.clone(),
            };
            let resp = session
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.lookup(req).await }
                })
                .await?;
            pick(
                as_json,
                || json::lookup(&normalized, &resp),
                || text::lookup(&normalized, &resp),
            )
        }
        Command::Rebalance { dry_run } => {
            let req = pb::RebalanceRequest { dry_run: *dry_run };
            let resp = session
                .call(|mut c| async move { c.rebalance(req).await })
                .await?;
            pick(
                as_json,
                || json::rebalance(*dry_run, &resp),
                || text::rebalance(*dry_run, &resp),
            )
        }
        Command::Drain { node } | Command::Cordon { node } | Command::Uncordon { node } => {
            let verb = match &cli.command {
                Command::Drain { .. } => "drain",
                Command::Cordon { .. } => "cordon",
                _ => "uncordon",
            };
            let req = pb::NodeRequest {
                node_id: node.clone(),
            };
            let resp = session
                .call(|mut c| {
                    let req = req.clone();
                    async move {
                        match verb {
                            "drain" => c.drain(req).await,
                            "cordon" => c.cordon(req).await,
                            _ => c.uncordon(req).await,
                        }
                    }
                })
                .await?;
            pick(
                as_json,
                || json::intent(verb, &resp),
                || text::intent(verb, node, &resp),
            )
        }
        Command::Moves => {
            let resp = session
                .call(|mut c| async move { c.list_moves(pb::ListMovesRequest {}).await })
                .await?;
            pick(as_json, || json::moves(&resp), || text::moves(&resp))
        }
        Command::Watch => {
            let shutdown = crate::watch::shutdown_on_signals().map_err(CtlError::Output)?;
            return crate::watch::run(&mut session, as_json, out, shutdown).await;
        }
    };
    match output {
        Output::Json(doc) => {
            serde_json::to_writer_pretty(&mut *out, &doc).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Output::Text(text) => out.write_all(text.as_bytes())?,
    }
    out.flush()?;
    Ok(())
}

/// The JSON or the text rendering, whichever was asked for.
fn pick(as_json: bool, json: impl FnOnce() -> Value, text: impl FnOnce() -> String) -> Output {
    if as_json {
        Output::Json(json())
    } else {
        Output::Text(text())
    }
}

/// Everything `status` shows. A control plane that does not serve `ListMoves` yet still
/// gets a status, with the moves marked unknown.
async fn fetch_status(session: &mut Session) -> Result<StatusData, CtlError> {
    let leader = session
        .call(|mut c| async move { c.get_leader(pb::GetLeaderRequest {}).await })
        .await?;
    let assignment = session
        .call(|mut c| async move { c.get_assignment(pb::GetAssignmentRequest {}).await })
        .await?;
    let nodes = session
        .call(|mut c| async move { c.list_nodes(pb::ListNodesRequest {}).await })
        .await?;
    let moves = match session
        .call(|mut c| async move { c.list_moves(pb::ListMovesRequest {}).await })
        .await
    {
        Ok(moves) => Some(moves),
        Err(CtlError::Rpc { status, .. }) if status.code() == tonic::Code::Unimplemented => None,
        Err(e) => return Err(e),
    };
    Ok(StatusData {
        url: session.url().to_owned(),
        leader,
        assignment,
        nodes,
        moves,
    })
}
