//! Property tests of placement: balance, minimal movement, determinism, idempotence, the
//! join and leave cases of invariant 3, and cordons.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn node(i: usize) -> NodeId {
    NodeId::new(format!("dtable-server-{i:03}")).unwrap()
}

/// Nodes 0..n, each of weight 1.
fn equal_nodes(n: usize) -> Vec<Eligible> {
    (0..n)
        .map(|i| Eligible {
            node: node(i),
            weight: 1,
        })
        .collect()
}

fn counts(table: &[Option<NodeId>]) -> BTreeMap<NodeId, usize> {
    let mut c = BTreeMap::new();
    for owner in table.iter().flatten() {
        *c.entry(owner.clone()).or_default() += 1;
    }
    c
}

/// The fewest moves any balanced result needs, computed from the definition rather than from
/// the algorithm: every bucket of a non-eligible owner (or none) must move, and every node
/// must shed what it holds above its target, where the spare ceil slots are best spent on
/// nodes holding more than their floor.
fn lower_bound(current: &[Option<NodeId>], nodes: &[Eligible]) -> usize {
    lower_bound_cordoned(current, nodes, &[])
}

/// [`lower_bound`] when `cordoned` nodes keep their buckets: the open nodes share the rest.
fn lower_bound_cordoned(
    current: &[Option<NodeId>],
    nodes: &[Eligible],
    cordoned: &[NodeId],
) -> usize {
    let total: u64 = nodes.iter().map(|n| u64::from(n.weight)).sum();
    let held = counts(current);
    let eligible: BTreeMap<&NodeId, u32> = nodes.iter().map(|n| (&n.node, n.weight)).collect();
    let pinned = current
        .iter()
        .filter(|o| o.as_ref().is_some_and(|o| cordoned.contains(o)))
        .count();
    let orphans = current
        .iter()
        .filter(|o| {
            o.as_ref()
                .is_none_or(|o| !eligible.contains_key(o) && !cordoned.contains(o))
        })
        .count();
    let buckets = (256 - pinned) as u64;
    let mut excess = 0;
    let mut can_absorb = 0;
    let mut floors = 0;
    for (node, &w) in &eligible {
        let share = buckets * u64::from(w);
        let floor = (share / total) as usize;
        floors += floor;
        let have = held.get(*node).copied().unwrap_or(0);
        excess += have.saturating_sub(floor);
        if !share.is_multiple_of(total) && have > floor {
            can_absorb += 1;
        }
    }
    orphans + excess - can_absorb.min(buckets as usize - floors)
}

fn check_balanced(table: &[Option<NodeId>], nodes: &[Eligible]) {
    check_balanced_over(table, nodes, &[]);
}

/// Every bucket is placed; each of `nodes` holds floor or ceil of its weighted share of the
/// buckets the `cordoned` nodes do not hold; nobody else holds any.
fn check_balanced_over(table: &[Option<NodeId>], nodes: &[Eligible], cordoned: &[NodeId]) {
    let total: u64 = nodes.iter().map(|n| u64::from(n.weight)).sum();
    let c = counts(table);
    assert_eq!(c.values().sum::<usize>(), 256, "every bucket placed");
    let pinned: usize = cordoned.iter().filter_map(|n| c.get(n)).sum();
    let buckets = (256 - pinned) as u64;
    for n in nodes {
        let share = buckets * u64::from(n.weight);
        let floor = (share / total) as usize;
        let ceil = floor + usize::from(!share.is_multiple_of(total));
        let have = c.get(&n.node).copied().unwrap_or(0);
        assert!(
            floor <= have && have <= ceil,
            "{} holds {have}, want {floor}..={ceil}",
            n.node
        );
    }
    for owner in c.keys() {
        assert!(
            nodes.iter().any(|n| &n.node == owner) || cordoned.contains(owner),
            "{owner} is not eligible"
        );
    }
}

/// 1..=64 nodes with weights 1..=4, and a prior table that mixes these nodes, unknown nodes
/// and unassigned buckets.
fn scenario() -> impl Strategy<Value = (Vec<Eligible>, Table)> {
    scenario_weighted(1..=4)
}

/// Like [`scenario`], with every weight 1.
fn scenario_equal() -> impl Strategy<Value = (Vec<Eligible>, Table)> {
    scenario_weighted(1..=1)
}

fn scenario_weighted(
    weights: std::ops::RangeInclusive<u32>,
) -> impl Strategy<Value = (Vec<Eligible>, Table)> {
    (1usize..=64, prop::collection::vec(weights, 64)).prop_flat_map(|(n, weights)| {
        let nodes: Vec<Eligible> = (0..n)
            .map(|i| Eligible {
                node: node(i),
                weight: weights[i],
            })
            .collect();
        // 0..n are eligible, n..n+8 are unknown, and n+8 stands for unassigned.
        let slot = prop::collection::vec(0..n + 9, 256);
        (Just(nodes), slot).prop_map(move |(nodes, slots)| {
            let table = slots
                .into_iter()
                .map(|s| (s < n + 8).then(|| node(s)))
                .collect();
            (nodes, table)
        })
    })
}

/// Like [`scenario`], with about a quarter of the nodes cordoned (at least one left open) and
/// a few buckets given to cordoned nodes that are not among the eligible ones at all.
fn scenario_cordoned() -> impl Strategy<Value = (Candidates, Table)> {
    (
        scenario(),
        prop::collection::vec(prop::bool::weighted(0.25), 64),
        prop::collection::vec((any::<u8>(), 0usize..2), 0..40),
    )
        .prop_filter_map(
            "at least one open node",
            |((nodes, mut table), mask, extra)| {
                let mut open = Vec::new();
                let mut cordoned = Vec::new();
                for (i, n) in nodes.into_iter().enumerate() {
                    if mask[i] {
                        cordoned.push(n.node);
                    } else {
                        open.push(n);
                    }
                }
                if open.is_empty() {
                    return None;
                }
                // Cordoned nodes outside the generated set (ids 500, 501) hold a few buckets.
                for (bucket, which) in extra {
                    let n = node(500 + which);
                    table[usize::from(bucket)] = Some(n.clone());
                    if !cordoned.contains(&n) {
                        cordoned.push(n);
                    }
                }
                Some((Candidates { open, cordoned }, table))
            },
        )
}

/// The leader's loop in miniature. Each step places around the moves in flight, writes
/// orphans (buckets of no eligible node) at once, starts planned moves until `cap` are in
/// flight, and lands one of them, chosen by the next of `picks`. `nodes_at(step)` gives the
/// eligible nodes of each step; from `settled_from` on they no longer change, and the run
/// ends once nothing is in flight or planned. Returns the final table and how often each
/// bucket changed owner.
fn lead(
    mut table: Table,
    nodes_at: impl Fn(usize) -> Vec<Eligible>,
    settled_from: usize,
    cap: usize,
    picks: &[usize],
) -> (Table, Vec<usize>) {
    let mut in_flight: BTreeMap<Bucket, Option<NodeId>> = BTreeMap::new();
    let mut moved = vec![0; 256];
    for step in 0..10_000 {
        let nodes = nodes_at(step);
        let plan = place_around(&table, &in_flight, &nodes, &Policy::default());
        let (handoffs, direct): (Vec<_>, Vec<_>) = plan.moves.into_iter().partition(|m| {
            m.from
                .as_ref()
                .is_some_and(|f| nodes.iter().any(|n| &n.node == f))
        });
        for m in &direct {
            table[m.bucket.index()] = m.to.clone();
            moved[m.bucket.index()] += 1;
        }
        let room = cap.saturating_sub(in_flight.len());
        for m in handoffs.iter().take(room) {
            in_flight.insert(m.bucket, m.to.clone());
        }
        if in_flight.is_empty() {
            if step >= settled_from && handoffs.is_empty() {
                return (table, moved);
            }
            continue;
        }
        let pick = picks[step % picks.len()] % in_flight.len();
        let bucket = *in_flight.keys().nth(pick).expect("in range");
        table[bucket.index()] = in_flight.remove(&bucket).expect("in flight");
        moved[bucket.index()] += 1;
    }
    panic!("the leader never settled");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn moves_in_flight_are_planned_around_so_no_bucket_moves_twice(
        (nodes, current) in scenario(),
        cap in 1usize..32,
        picks in prop::collection::vec(any::<usize>(), 1..64),
    ) {
        let fewest = lower_bound(&current, &nodes);
        let (table, moved) = lead(current, |_| nodes.clone(), 0, cap, &picks);
        check_balanced(&table, &nodes);
        prop_assert!(moved.iter().all(|&m| m <= 1), "a bucket moved twice: {moved:?}");
        prop_assert_eq!(moved.iter().sum::<usize>(), fewest);
    }

    #[test]
    fn cordoned_nodes_keep_theirs_receive_nothing_and_the_rest_balance((nodes, current) in scenario_cordoned()) {
        let policy = Policy::default();
        let p = place(&current, &nodes, &policy);
        for (i, owner) in current.iter().enumerate() {
            if let Some(o) = owner.as_ref().filter(|o| nodes.cordoned.contains(o)) {
                prop_assert_eq!(p.table[i].as_ref(), Some(o), "a cordoned node lost bucket {}", i);
            }
        }
        for m in &p.moves {
            prop_assert!(
                m.to.as_ref().is_none_or(|t| !nodes.cordoned.contains(t)),
                "bucket {} moved onto cordoned {:?}", m.bucket, m.to
            );
            prop_assert_eq!(&current[m.bucket.index()], &m.from);
            prop_assert_eq!(&p.table[m.bucket.index()], &m.to);
        }
        check_balanced_over(&p.table, &nodes.open, &nodes.cordoned);
        prop_assert_eq!(
            p.moves.len(),
            lower_bound_cordoned(&current, &nodes.open, &nodes.cordoned)
        );

        // Deterministic: the order of either list does not matter, nor does listing a cordoned
        // node among the open ones as well.
        let mut shuffled = nodes.clone();
        shuffled.open.reverse();
        shuffled.cordoned.reverse();
        prop_assert_eq!(&place(&current, &shuffled, &policy), &p);
        let mut both = nodes.clone();
        both.open.extend(nodes.cordoned.iter().map(|n| Eligible { node: n.clone(), weight: 3 }));
        prop_assert_eq!(&place(&current, &both, &policy), &p);
        prop_assert!(place(&p.table, &nodes, &policy).moves.is_empty());
    }

    // With equal weights the others already hold floor or ceil of their share of what the
    // cordoned node does not hold, so a cordon moves nothing at all.
    #[test]
    fn cordoning_a_node_of_a_balanced_cluster_moves_nothing((nodes, current) in scenario_equal(), pick in any::<prop::sample::Index>()) {
        prop_assume!(nodes.len() >= 2);
        let policy = Policy::default();
        let before = place(&current, &nodes, &policy).table;
        let cordoned = pick.get(&nodes).node.clone();
        let open: Vec<Eligible> = nodes.iter().filter(|n| n.node != cordoned).cloned().collect();
        let after = place(&before, &Candidates { open, cordoned: vec![cordoned] }, &policy);
        prop_assert!(after.moves.is_empty(), "moves: {:?}", after.moves);
    }

    #[test]
    fn balanced_minimal_deterministic_idempotent((nodes, current) in scenario()) {
        let policy = Policy::default();
        let p = place(&current, &nodes, &policy);
        check_balanced(&p.table, &nodes);
        prop_assert_eq!(p.moves.len(), lower_bound(&current, &nodes));
        for m in &p.moves {
            prop_assert_eq!(&current[m.bucket.index()], &m.from);
            prop_assert_eq!(&p.table[m.bucket.index()], &m.to);
        }

        let mut reversed = nodes.clone();
        reversed.reverse();
        prop_assert_eq!(&place(&current, &reversed, &policy), &p);
        prop_assert!(place(&p.table, &nodes, &policy).moves.is_empty());
    }

    // With unequal weights a strictly balanced result can need a bucket or two to move
    // between the remaining nodes as well; the lower-bound property above covers that case.
    // With equal weights the contract's simple form holds, and is proven here.
    #[test]
    fn a_leave_moves_only_the_leavers_buckets((nodes, current) in scenario_equal(), pick in any::<prop::sample::Index>()) {
        prop_assume!(nodes.len() >= 2);
        let policy = Policy::default();
        let before = place(&current, &nodes, &policy).table;
        let leaver = pick.get(&nodes).node.clone();
        let rest: Vec<Eligible> = nodes.iter().filter(|n| n.node != leaver).cloned().collect();
        let after = place(&before, &rest, &policy);
        check_balanced(&after.table, &rest);
        for m in &after.moves {
            prop_assert_eq!(m.from.as_ref(), Some(&leaver), "bucket {} moved", m.bucket);
        }
    }

    #[test]
    fn a_join_moves_only_to_the_joiner((nodes, current) in scenario_equal()) {
        let policy = Policy::default();
        let before = place(&current, &nodes, &policy).table;
        let joiner = node(999);
        let mut all = nodes.clone();
        all.push(Eligible { node: joiner.clone(), weight: 1 });
        let after = place(&before, &all, &policy);
        check_balanced(&after.table, &all);
        for m in &after.moves {
            prop_assert_eq!(m.to.as_ref(), Some(&joiner), "bucket {} moved", m.bucket);
        }
    }

    #[test]
    fn a_move_cap_bounds_rebalance_moves((nodes, current) in scenario(), cap in 0usize..8) {
        let policy = Policy { max_rebalance_moves: Some(cap) };
        let p = place(&current, &nodes, &policy);
        let between_live = p.moves.iter().filter(|m| {
            m.from.as_ref().is_some_and(|f| nodes.iter().any(|n| &n.node == f))
        });
        prop_assert!(between_live.count() <= cap);
        prop_assert_eq!(p.table.iter().filter(|o| o.is_some()).count(), 256);
    }
}

#[test]
fn three_equal_nodes_split_85_85_86() {
    let nodes = equal_nodes(3);
    let p = place(&vec![None; 256], &nodes, &Policy::default());
    let mut c: Vec<usize> = counts(&p.table).into_values().collect();
    c.sort();
    assert_eq!(c, vec![85, 85, 86]);
    assert_eq!(p.moves.len(), 256);
}

#[test]
fn a_fourth_node_takes_64_from_the_others_only() {
    let three = equal_nodes(3);
    let before = place(&vec![None; 256], &three, &Policy::default()).table;
    let mut four = three.clone();
    four.push(Eligible {
        node: node(3),
        weight: 1,
    });
    let after = place(&before, &four, &Policy::default());
    assert_eq!(after.moves.len(), 64);
    assert!(after.moves.iter().all(|m| m.to == Some(node(3))));
    assert!(counts(&after.table).values().all(|&c| c == 64));
}

#[test]
fn no_eligible_node_unassigns_everything() {
    let current: Table = (0..256)
        .map(|i| (i % 2 == 0).then(|| node(i % 5)))
        .collect();
    let p = place(&current, &[], &Policy::default());
    assert!(p.table.iter().all(Option::is_none));
    assert_eq!(p.moves.len(), 128);
}

#[test]
fn weights_shape_the_shares() {
    let nodes = vec![
        Eligible {
            node: node(0),
            weight: 1,
        },
        Eligible {
            node: node(1),
            weight: 3,
        },
    ];
    let p = place(&vec![None; 256], &nodes, &Policy::default());
    let c = counts(&p.table);
    assert_eq!(c[&node(0)], 64);
    assert_eq!(c[&node(1)], 192);
}

#[test]
fn a_cordoned_node_gets_none_of_a_leavers_buckets() {
    let three = equal_nodes(3);
    let before = place(&vec![None; 256], &three, &Policy::default()).table;
    // Node 2 is cordoned; node 1 leaves. Node 0 takes all of node 1's buckets.
    let nodes = Candidates {
        open: vec![three[0].clone()],
        cordoned: vec![node(2)],
    };
    let after = place(&before, &nodes, &Policy::default());
    let c = counts(&after.table);
    assert_eq!(c[&node(2)], counts(&before)[&node(2)]);
    assert_eq!(c[&node(0)], 256 - c[&node(2)]);
    assert!(after.moves.iter().all(|m| m.from == Some(node(1))));
}

#[test]
fn with_every_node_cordoned_only_the_cordoned_keep_buckets() {
    // Nodes 0 and 2 are cordoned; nodes 1 and 3 are gone.
    let current: Table = (0..256)
        .map(|i| (i % 3 != 0).then(|| node(i % 4)))
        .collect();
    let nodes = Candidates {
        open: vec![],
        cordoned: vec![node(0), node(2)],
    };
    let p = place(&current, &nodes, &Policy::default());
    for (i, owner) in current.iter().enumerate() {
        let kept = owner.clone().filter(|o| *o == node(0) || *o == node(2));
        assert_eq!(p.table[i], kept, "bucket {i}");
    }
    assert!(p.moves.iter().all(|m| m.to.is_none()));
    assert!(!p.moves.is_empty());
}

/// A scale-out from one node to three, the second joining first and the third some moves
/// later, with up to eight handoffs in flight: the first node gives up exactly what it holds
/// above its share, and no bucket moves twice.
#[test]
fn a_scale_out_in_two_joins_moves_each_bucket_once() {
    let all = equal_nodes(3);
    let nodes_at = |step: usize| all[..if step < 12 { 2 } else { 3 }].to_vec();
    let (table, moved) = lead(vec![Some(node(0)); 256], nodes_at, 12, 8, &[0, 5, 3, 1]);
    check_balanced(&table, &all);
    assert!(
        moved.iter().all(|&m| m <= 1),
        "a bucket moved twice: {moved:?}"
    );
    assert_eq!(moved.iter().sum::<usize>(), 256 - 86);
}
