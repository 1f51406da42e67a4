//! Leader election: a standby takes over from a killed leader and repairs what changed
//! meanwhile; a deposed leader's write and a write from a stale view are rejected.

use std::time::Duration;

use dtable_controlplane::writer::{AssignmentWriter, Leadership, WriteOutcome};
use dtable_core::placement::Move;
use dtable_core::view::AssignEntry;
use dtable_core::{Bucket, ClusterView, KeyLayout, NodeId};
use dtable_testkit::cluster::{
    Farm, balanced_over, read_assignment, spawn_controlplane, spawn_server,
};
use dtable_testkit::{Etcd, http, wait_until};

use crate::{SETTLE, STARTUP};

async fn leader_name(cp: &dtable_testkit::cluster::ControlPlane) -> Option<(String, bool)> {
    let resp = http::get(cp.http, "/api/v1/leader").await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&resp.body).ok()?;
    Some((
        v["leader"].as_str()?.to_owned(),
        v["this_instance_leads"].as_bool()?,
    ))
}

#[tokio::test]
async fn a_standby_takes_over_and_repairs_changes_made_meanwhile() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let mut cps = [
        spawn_controlplane(&etcd, "cp1", 3, &[]),
        spawn_controlplane(&etcd, "cp2", 3, &[]),
    ];
    let nodes = ["dtable-server-a", "dtable-server-b"];
    let _agents: Vec<_> = nodes
        .iter()
        .map(|n| spawn_server(&etcd, &farm, n, 10, &[]))
        .collect();
    wait_until("balanced over two", STARTUP, || {
        balanced_over(&client, &nodes)
    })
    .await;

    let started = tokio::time::Instant::now();
    let (li, lname) = 'found: loop {
        for (i, cp) in cps.iter().enumerate() {
            if let Some((name, true)) = leader_name(cp).await {
                break 'found (i, name);
            }
        }
        assert!(started.elapsed() < SETTLE, "no leader elected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let si = 1 - li;
    assert_eq!(lname, cps[li].name);
    assert_eq!(leader_name(&cps[si]).await.unwrap(), (lname.clone(), false));

    // Kill the leader, then change the cluster while nobody leads: a node joins and a bucket
    // is edited by hand to a node that does not exist.
    cps[li].proc.kill9();
    let mut kv = client.clone();
    kv.put("assign-00", "dtable-server-ghost", None)
        .await
        .unwrap();
    let _c = spawn_server(&etcd, &farm, "dtable-server-c", 10, &[]);
    let three = ["dtable-server-a", "dtable-server-b", "dtable-server-c"];
    wait_until("the standby re-balances over three", SETTLE, || {
        balanced_over(&client, &three)
    })
    .await;
    let (name, leads) = leader_name(&cps[si]).await.unwrap();
    assert!(leads && name == cps[si].name, "{name} {leads}");
    assert_ne!(read_assignment(&client).await["00"], "dtable-server-ghost");
}

fn view_of(revision: i64, bucket: Bucket, owner: &str, mod_revision: i64) -> ClusterView {
    let mut view = ClusterView {
        revision,
        ..ClusterView::default()
    };
    view.assignment[bucket.index()] = Some(AssignEntry {
        owner: NodeId::new(owner).ok(),
        raw: owner.to_owned(),
        mod_revision,
    });
    view
}

#[tokio::test]
async fn deposed_or_stale_writes_are_rejected() {
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    let keys = KeyLayout::default();
    let b = Bucket(0x42);
    let put = c.put("assign-42", "dtable-server-a", None).await.unwrap();
    let seen = put.header().unwrap().revision();

    // Old leader: elected, then its lease goes and a new leader is elected.
    let old_lease = c.lease_grant(30, None).await.unwrap().id();
    let won = c.campaign(keys.election(), "old", old_lease).await.unwrap();
    let l = won.leader().unwrap();
    let old = Leadership {
        key: l.key().to_vec(),
        create_revision: l.rev(),
        lease: old_lease,
    };
    c.lease_revoke(old_lease).await.unwrap();
    let new_lease = c.lease_grant(30, None).await.unwrap().id();
    let won = c.campaign(keys.election(), "new", new_lease).await.unwrap();
    let l = won.leader().unwrap();
    let new = Leadership {
        key: l.key().to_vec(),
        create_revision: l.rev(),
        lease: new_lease,
    };

    let view = view_of(seen, b, "dtable-server-a", seen);
    let to_b = [Move {
        bucket: b,
        from: NodeId::new("dtable-server-a").ok(),
        to: NodeId::new("dtable-server-b").ok(),
    }];
    let deposed = AssignmentWriter::new(c.clone(), keys.clone(), old);
    assert!(matches!(
        deposed.apply(&view, &to_b).await.unwrap(),
        WriteOutcome::Rejected { applied: 0, .. }
    ));
    assert!(!deposed.still_leader().await.unwrap());
    assert_eq!(read_assignment(&c).await["42"], "dtable-server-a");

    // The real leader with a stale view: someone changed the key since it looked.
    c.put("assign-42", "dtable-server-c", None).await.unwrap();
    let leader = AssignmentWriter::new(c.clone(), keys.clone(), new);
    assert!(matches!(
        leader.apply(&view, &to_b).await.unwrap(),
        WriteOutcome::Rejected { .. }
    ));
    assert_eq!(read_assignment(&c).await["42"], "dtable-server-c");

    // With a fresh view the same leader's write goes through.
    let now = c.get("assign-42", None).await.unwrap();
    let rev = now.kvs()[0].mod_revision();
    let fresh = view_of(rev, b, "dtable-server-c", rev);
    assert!(matches!(
        leader.apply(&fresh, &to_b).await.unwrap(),
        WriteOutcome::Applied { .. }
    ));
    assert_eq!(read_assignment(&c).await["42"], "dtable-server-b");

    // A write of all 256 buckets is split into transactions etcd accepts (≤ 128 operations).
    let mut view = ClusterView {
        revision: rev,
        ..ClusterView::default()
    };
    view.assignment[b.index()] = Some(AssignEntry {
        owner: NodeId::new("dtable-server-b").ok(),
        raw: "dtable-server-b".into(),
        mod_revision: c.get("assign-42", None).await.unwrap().kvs()[0].mod_revision(),
    });
    let all: Vec<Move> = Bucket::all()
        .map(|b| Move {
            bucket: b,
            from: None,
            to: NodeId::new("dtable-server-z").ok(),
        })
        .collect();
    assert!(matches!(
        leader.apply(&view, &all).await.unwrap(),
        WriteOutcome::Applied { .. }
    ));
    assert!(
        read_assignment(&c)
            .await
            .values()
            .all(|v| v == "dtable-server-z")
    );
    tokio::time::sleep(Duration::ZERO).await;
}
