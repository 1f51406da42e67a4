//! The compact bucket map: 256 buckets as a 16x16 grid of one character each (row = first
//! hex digit, column = second), with a legend mapping each character to its node.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use dtable_core::{BUCKET_COUNT, Bucket};
use dtable_proto::v1 as pb;

use super::Style;
use super::table::table;

/// Characters given to nodes, in order. `.`, `*` and `#` are kept for the map itself.
const SYMBOLS: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// An unassigned bucket.
pub const UNASSIGNED: char = '.';

/// A bucket with a planned move in flight.
pub const MOVING: char = '*';

/// A bucket of a node beyond the last symbol (more than 62 nodes).
pub const OTHER: char = '#';

/// ANSI colours cycled over the node symbols.
const PALETTE: [&str; 12] = [
    "32", "34", "35", "36", "33", "31", "92", "94", "95", "96", "93", "91",
];

/// Which character stands for which node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Legend {
    /// node id → (symbol, index into the palette).
    symbols: BTreeMap<String, (char, usize)>,
    /// Owners in the assignment that are not registered nodes.
    unregistered: BTreeSet<String>,
}

impl Legend {
    /// Gives each node a symbol: registered servers in node-id order, then owners named by
    /// the assignment but not registered (a node that left and whose buckets are not yet
    /// reassigned). Slaves own no buckets and get none.
    pub fn new(nodes: &[pb::Node], assignment: &pb::Assignment) -> Legend {
        let registered: BTreeSet<String> = nodes
            .iter()
            .filter(|n| !super::text::is_slave(n))
            .map(|n| n.node_id.clone())
            .collect();
        let unregistered: BTreeSet<String> = assignment
            .buckets
            .iter()
            .filter(|b| !b.node_id.is_empty() && !registered.contains(&b.node_id))
            .map(|b| b.node_id.clone())
            .collect();
        let mut symbols = BTreeMap::new();
        let mut alphabet = SYMBOLS.chars();
        for (i, id) in registered.iter().chain(&unregistered).enumerate() {
            let symbol = alphabet.next().unwrap_or(OTHER);
            symbols.insert(id.clone(), (symbol, i % PALETTE.len()));
        }
        Legend {
            symbols,
            unregistered,
        }
    }

    /// The symbol of `node_id`, `.` for the empty id.
    pub fn symbol(&self, node_id: &str) -> char {
        if node_id.is_empty() {
            return UNASSIGNED;
        }
        self.symbols.get(node_id).map_or(OTHER, |(c, _)| *c)
    }

    /// Every node and its symbol, in legend order.
    pub fn entries(&self) -> Vec<(char, &str)> {
        let mut entries: Vec<(char, &str)> = self
            .symbols
            .iter()
            .map(|(id, (c, _))| (*c, id.as_str()))
            .collect();
        entries.sort_by_key(|(c, _)| SYMBOLS.find(*c).unwrap_or(usize::MAX));
        entries
    }

    /// `symbol` coloured as its node (or as unassigned/moving) when colour is on.
    fn paint(&self, symbol: char, style: Style) -> String {
        let code = match symbol {
            UNASSIGNED => "2",
            MOVING => "1;33;7",
            OTHER => "1",
            c => self
                .symbols
                .values()
                .find(|(s, _)| *s == c)
                .map_or("0", |(_, i)| PALETTE[*i]),
        };
        style.paint(code, &symbol.to_string())
    }
}

/// Owners by bucket index, from an assignment (malformed bucket names are skipped).
fn owners(assignment: &pb::Assignment) -> Vec<&str> {
    let mut owners = vec![""; BUCKET_COUNT];
    for b in &assignment.buckets {
        if let Ok(bucket) = Bucket::from_str(&b.bucket) {
            owners[bucket.index()] = &b.node_id;
        }
    }
    owners
}

/// Indexes of the buckets with a move in flight.
fn moving(moves: &[pb::Move]) -> BTreeSet<usize> {
    moves
        .iter()
        .filter_map(|m| Bucket::from_str(&m.bucket).ok())
        .map(Bucket::index)
        .collect()
}

/// The 16x16 grid with a header row of column digits and the row digit before each row.
pub fn bucket_map(
    assignment: &pb::Assignment,
    moves: &[pb::Move],
    legend: &Legend,
    style: Style,
) -> String {
    let owners = owners(assignment);
    let moving = moving(moves);
    let mut out = String::from("   0123456789abcdef\n");
    for row in 0..16 {
        out.push_str(&format!("{row:x}  "));
        for col in 0..16 {
            let i = row * 16 + col;
            let symbol = if moving.contains(&i) {
                MOVING
            } else {
                legend.symbol(owners[i])
            };
            out.push_str(&legend.paint(symbol, style));
        }
        out.push('\n');
    }
    out
}

/// The legend: one line per node (symbol, id, buckets held, cordon or drain), then the
/// unassigned and moving counts.
pub fn legend_lines(
    assignment: &pb::Assignment,
    nodes: &[pb::Node],
    moves: &[pb::Move],
    legend: &Legend,
    style: Style,
) -> String {
    let owners = owners(assignment);
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    for owner in &owners {
        *held.entry(owner).or_default() += 1;
    }
    let by_id: BTreeMap<&str, &pb::Node> = nodes.iter().map(|n| (n.node_id.as_str(), n)).collect();
    let mut rows = Vec::new();
    for (symbol, id) in legend.entries() {
        let note = match by_id.get(id) {
            Some(n) => super::text::cordon_note(n).to_owned(),
            None if legend.unregistered.contains(id) => "not registered".to_owned(),
            None => String::new(),
        };
        rows.push(vec![
            symbol.to_string(),
            id.to_owned(),
            buckets(held.get(id).copied().unwrap_or(0)),
            note,
        ]);
    }
    rows.push(vec![
        UNASSIGNED.to_string(),
        "unassigned".to_owned(),
        buckets(held.get("").copied().unwrap_or(0)),
        String::new(),
    ]);
    rows.push(vec![
        MOVING.to_string(),
        "moving".to_owned(),
        buckets(moving(moves).len()),
        String::new(),
    ]);
    let plain = table(&["", "", "", ""], &rows);
    // Skip the (empty) header line, and colour only the symbol column, after alignment, so
    // widths are counted without escapes.
    plain
        .lines()
        .skip(1)
        .map(|line| match line.chars().next() {
            Some(symbol) => format!(
                "{}{}\n",
                legend.paint(symbol, style),
                &line[symbol.len_utf8()..]
            ),
            None => "\n".to_owned(),
        })
        .collect()
}

/// "1 bucket", "86 buckets".
fn buckets(n: usize) -> String {
    if n == 1 {
        "1 bucket".to_owned()
    } else {
        format!("{n} buckets")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures;

    #[test]
    fn the_map_has_16_rows_of_16_buckets() {
        let (assignment, nodes, moves) = fixtures::cluster();
        let legend = Legend::new(&nodes, &assignment);
        let map = bucket_map(&assignment, &moves, &legend, Style::PLAIN);
        let lines: Vec<&str> = map.lines().collect();
        assert_eq!(lines.len(), 17, "{map}");
        assert_eq!(lines[0], "   0123456789abcdef");
        for (row, line) in lines[1..].iter().enumerate() {
            let (label, cells) = line.split_at(3);
            assert_eq!(label.trim(), format!("{row:x}"));
            assert_eq!(cells.chars().count(), 16, "{line:?}");
        }
    }

    #[test]
    fn each_cell_shows_its_owner_or_marks() {
        let (assignment, nodes, moves) = fixtures::cluster();
        let legend = Legend::new(&nodes, &assignment);
        let map = bucket_map(&assignment, &moves, &legend, Style::PLAIN);
        let cells: Vec<char> = map
            .lines()
            .skip(1)
            .flat_map(|l| l[3..].chars().collect::<Vec<_>>())
            .collect();
        assert_eq!(cells.len(), 256);
        let moving: BTreeSet<usize> = moving(&moves);
        for b in &assignment.buckets {
            let i = Bucket::from_str(&b.bucket).unwrap().index();
            let want = if moving.contains(&i) {
                MOVING
            } else if b.node_id.is_empty() {
                UNASSIGNED
            } else {
                legend.symbol(&b.node_id)
            };
            assert_eq!(cells[i], want, "bucket {}", b.bucket);
        }
        assert!(cells.contains(&UNASSIGNED) && cells.contains(&MOVING));
    }

    #[test]
    fn the_legend_covers_every_node_with_distinct_symbols() {
        let (assignment, mut nodes, moves) = fixtures::cluster();
        // An owner that is no longer registered still gets a symbol.
        let gone = nodes.pop().unwrap();
        let legend = Legend::new(&nodes, &assignment);
        let text = legend_lines(&assignment, &nodes, &moves, &legend, Style::PLAIN);
        let mut seen = BTreeSet::new();
        for id in nodes.iter().map(|n| &n.node_id).chain([&gone.node_id]) {
            let symbol = legend.symbol(id);
            assert!(seen.insert(symbol), "symbol {symbol} given twice");
            let line = text
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(id.as_str()))
                .unwrap_or_else(|| panic!("{id} missing from legend:\n{text}"));
            assert!(line.starts_with(symbol), "{line}");
        }
        assert!(text.contains("not registered"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with(". ") && l.contains("unassigned"))
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("* ") && l.contains("moving"))
        );
    }

    #[test]
    fn slaves_get_no_symbol_and_stay_out_of_the_legend() {
        let (assignment, mut nodes, moves) = fixtures::cluster();
        let servers = Legend::new(&nodes, &assignment);
        nodes.extend(fixtures::slaves());
        let legend = Legend::new(&nodes, &assignment);
        assert_eq!(legend, servers, "slaves change no symbol");
        assert_eq!(legend.symbol("dtable-server-slave-1"), OTHER);
        let text = legend_lines(&assignment, &nodes, &moves, &legend, Style::PLAIN);
        assert!(!text.contains("slave"), "{text}");
    }

    #[test]
    fn more_nodes_than_symbols_share_the_overflow_mark() {
        let nodes: Vec<pb::Node> = (0..70)
            .map(|i| pb::Node {
                node_id: format!("dtable-server-{i:03}"),
                ..Default::default()
            })
            .collect();
        let legend = Legend::new(&nodes, &pb::Assignment::default());
        assert_eq!(legend.symbol("dtable-server-000"), 'a');
        assert_eq!(legend.symbol("dtable-server-061"), 'Z');
        assert_eq!(legend.symbol("dtable-server-069"), OTHER);
    }

    #[test]
    fn colour_is_added_only_when_asked() {
        let (assignment, nodes, moves) = fixtures::cluster();
        let legend = Legend::new(&nodes, &assignment);
        let plain = bucket_map(&assignment, &moves, &legend, Style::PLAIN);
        assert!(!plain.contains('\u{1b}'));
        let coloured = bucket_map(&assignment, &moves, &legend, Style { color: true });
        assert!(coloured.contains("\u{1b}["));
        assert_eq!(crate::render::strip_ansi(&coloured), plain);
        let plain = legend_lines(&assignment, &nodes, &moves, &legend, Style::PLAIN);
        let coloured = legend_lines(&assignment, &nodes, &moves, &legend, Style { color: true });
        assert!(coloured.contains("\u{1b}[") && !plain.contains('\u{1b}'));
        assert_eq!(crate::render::strip_ansi(&coloured), plain);
    }
}
