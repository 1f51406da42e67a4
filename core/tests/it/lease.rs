//! The lease keeper: keeps a lease alive, and reports it lost at its local deadline, before
//! etcd expires it, when its link to etcd is cut.

use std::time::Duration;

use dtable_core::etcd::{EtcdOptions, LeaseKeeper, LeaseState, connect, lease_lost};
use dtable_testkit::{Etcd, Relay};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn keeps_alive_then_reports_loss_before_etcd_expiry() {
    let etcd = Etcd::start().await;
    let mut direct = etcd.client().await;
    let relay = Relay::start(etcd.endpoints()[0].parse().unwrap()).await;
    let client = connect(&EtcdOptions {
        endpoints: vec![relay.addr().to_string()],
        ..Default::default()
    })
    .await
    .unwrap();

    let (keeper, mut rx) = LeaseKeeper::grant(&client, 4).await.unwrap();
    let id = keeper.id();
    let timing = keeper.timing();
    assert_eq!(timing.margin, Duration::from_secs(1));
    assert_eq!(timing.interval, Duration::from_millis(750));
    let with_lease = etcd_client::PutOptions::new().with_lease(id);
    direct.put("leased", "x", Some(with_lease)).await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(keeper.run(stop.clone()));

    // Alive well past the TTL: keep-alives work.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        matches!(*rx.borrow(), LeaseState::Alive { .. }),
        "{:?}",
        *rx.borrow()
    );
    assert!(direct.lease_time_to_live(id, None).await.unwrap().ttl() > 0);

    // Cut the link: the keeper must report the loss by its deadline, which lies a margin
    // before etcd's own expiry, so the lease is still alive in etcd at that moment.
    let deadline = match *rx.borrow() {
        LeaseState::Alive { deadline } => deadline,
        ref s => panic!("{s:?}"),
    };
    relay.cut();
    let cut_at = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(10), lease_lost(&mut rx))
        .await
        .unwrap();
    let lost_at = Instant::now();
    assert!(lost_at >= deadline, "reported lost before the deadline");
    assert!(
        lost_at - cut_at <= timing.safe_for() + Duration::from_millis(500),
        "{reason}"
    );
    let still = direct.get("leased", None).await.unwrap();
    assert_eq!(
        still.count(),
        1,
        "etcd expired the lease before the keeper gave it up"
    );
    assert!(matches!(task.await.unwrap(), LeaseState::Lost { .. }));
}
