//! Rendering: pure functions from the control plane's answers (proto messages) to the text a
//! person reads or the JSON a script reads. Nothing here does I/O, so all of it is unit-tested.

pub mod json;
pub mod map;
pub mod table;
pub mod text;

use dtable_proto::v1 as pb;

/// Whether to colour output (only on a terminal, and never with `NO_COLOR` set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Emit ANSI colour codes.
    pub color: bool,
}

impl Style {
    /// No colour.
    pub const PLAIN: Style = Style { color: false };

    /// Colour when stdout is a terminal and `NO_COLOR` is unset or empty (no-color.org).
    pub fn for_stdout() -> Style {
        use std::io::IsTerminal;
        Style::decide(
            std::io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        )
    }

    /// Colour on a terminal unless `NO_COLOR` holds a non-empty value.
    pub fn decide(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> Style {
        let no_color = no_color.is_some_and(|v| !v.is_empty());
        Style {
            color: terminal && !no_color,
        }
    }

    /// `text` wrapped in the SGR `code` when colour is on, else `text` as it is.
    pub fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\u{1b}[{code}m{text}\u{1b}[0m")
        } else {
            text.to_owned()
        }
    }
}

/// Everything `status` shows, as the control plane answered it.
#[derive(Debug, Clone, Default)]
pub struct StatusData {
    /// The control plane that answered.
    pub url: String,
    /// Which instance leads.
    pub leader: pb::LeaderInfo,
    /// The bucket map.
    pub assignment: pb::Assignment,
    /// The registered nodes.
    pub nodes: pb::ListNodesResponse,
    /// Moves in flight; `None` when the control plane does not serve `ListMoves` (an older
    /// version).
    pub moves: Option<pb::ListMovesResponse>,
}

impl StatusData {
    /// The moves in flight, empty when unknown.
    pub fn moves(&self) -> &[pb::Move] {
        self.moves.as_ref().map_or(&[], |m| &m.moves)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(Style::decide(true, None).color);
        assert!(Style::decide(true, Some(OsStr::new(""))).color);
        assert!(!Style::decide(true, Some(OsStr::new("1"))).color);
        assert!(!Style::decide(false, None).color);
        assert_eq!(Style::PLAIN.paint("31", "x"), "x");
        assert_eq!(
            Style { color: true }.paint("31", "x"),
            "\u{1b}[31mx\u{1b}[0m"
        );
    }
}

/// `text` without ANSI escape sequences.
#[cfg(test)]
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A small but realistic cluster for the renderers' tests.
#[cfg(test)]
pub mod fixtures {
    use dtable_proto::v1 as pb;

    /// Three nodes (b cordoned, c draining), 255 buckets spread round-robin, bucket `ff`
    /// unassigned, one move of bucket `2a` in flight.
    pub fn cluster() -> (pb::Assignment, Vec<pb::Node>, Vec<pb::Move>) {
        let ids = ["dtable-server-a", "dtable-server-b", "dtable-server-c"];
        let buckets = (0..256u32)
            .map(|i| pb::BucketOwner {
                bucket: format!("{i:02x}"),
                node_id: if i == 255 {
                    String::new()
                } else {
                    ids[i as usize % 3].to_owned()
                },
                epoch: if i == 255 { 0 } else { 100 + i64::from(i) },
            })
            .collect();
        let assignment = pb::Assignment {
            revision: 512,
            buckets,
        };
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, id)| pb::Node {
                node_id: (*id).to_owned(),
                node_url: format!("https://cloud.example/{id}/"),
                local_node_url: format!("http://10.0.0.{}:5000/", i + 1),
                state: if i == 2 { "draining" } else { "active" }.to_owned(),
                weight: 1,
                version: "5.3.0".to_owned(),
                bucket_count: 85,
                lease_id: 7000 + i as i64,
                cordoned: i >= 1,
                draining: i == 2,
                lease_ttl_seconds: if i == 1 { -1 } else { 80 },
                started_at: "2026-11-25T10:00:00Z".to_owned(),
                role: "server".to_owned(),
                healthy: true,
            })
            .collect();
        let moves = vec![pb::Move {
            bucket: "2a".to_owned(),
            from: ids[0x2a % 3].to_owned(),
            to: ids[1].to_owned(),
            started_at: "2026-11-25T10:05:00Z".to_owned(),
            move_id: 498,
            acked: true,
        }];
        (assignment, nodes, moves)
    }

    /// Two slaves, the second reported unhealthy.
    pub fn slaves() -> Vec<pb::Node> {
        (1..=2)
            .map(|i| pb::Node {
                node_id: format!("dtable-server-slave-{i}"),
                node_url: format!("https://cloud.example/slave-{i}/"),
                local_node_url: format!("http://10.0.1.{i}:4000/"),
                state: "active".to_owned(),
                weight: 1,
                version: "5.3.0".to_owned(),
                bucket_count: 0,
                lease_id: 8000 + i,
                cordoned: false,
                draining: false,
                lease_ttl_seconds: 8,
                started_at: "2026-11-25T10:00:00Z".to_owned(),
                role: "slave".to_owned(),
                healthy: i == 1,
            })
            .collect()
    }
}
