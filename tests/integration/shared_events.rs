//! The event log shared through Redis: several gateways (replicas) with their
//! webhook listeners, one sandbox upstream, one `redis-server` of the test's own.
//! A notification acknowledged by one replica reaches watches on every replica,
//! in one order; a watch moves between replicas by its cursor; Redis paused,
//! killed and restarted (with and without its data) behaves as documented.

use std::time::{Duration, SystemTime};

use attachment_gateway::proto::watch_attachments_response::Payload;
use attachment_gateway::proto::{AttachmentEvent, WatchAttachmentsRequest};
use attachment_gateway::sandbox::notifier::AUDIENCE;
use attachment_gateway::sandbox::{Sandbox, SandboxConfig};
use attachment_gateway::server;
use attachment_gateway::store::event_log::{
    Appended, Cursor, EventLog, NewEvent, ReadError, Retention,
};
use attachment_gateway::store::redis::{Redis, RedisEventLog};
use tokio::net::TcpListener;
use tonic::Code;

use crate::common::notify::{added, bearer, post, token};
use crate::common::redis::{RedisServer, free_port};
use crate::common::watch::{Watch, next_event, watch};
use crate::common::*;

/// A replica: its gateway and its webhook URL.
struct Replica {
    gateway: Gateway,
    webhook_url: String,
    metrics: std::sync::Arc<attachment_gateway::metrics::Metrics>,
}

async fn replica(sandbox: &Sandbox, redis_url: &str) -> Replica {
    let mut s = base_settings();
    s.upstream = sandbox.upstream_settings(&s.upstream);
    // The emulator's notifier certificate is trusted (sandbox mode's default).
    s.sandbox.enabled = true;
    s.shared_state.redis_url = Some(redis_url.to_string());
    s.shared_state.command_timeout = Duration::from_millis(300);
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hooks = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let webhook_url = format!(
        "http://{}{}",
        hooks.local_addr().expect("addr"),
        attachment_gateway::webhooks::PATH
    );
    let metrics = std::sync::Arc::new(attachment_gateway::metrics::Metrics::new());
    let gateway = Gateway::start_with(
        s,
        server::Listeners {
            grpc,
            admin: None,
            webhooks: Some(hooks),
        },
        std::sync::Arc::clone(&metrics),
    )
    .await;
    Replica {
        gateway,
        webhook_url,
        metrics,
    }
}

async fn replicas(redis_url: &str, n: usize) -> (Sandbox, Vec<Replica>) {
    attachment_gateway::upstream::install_crypto_provider();
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(replica(&sandbox, redis_url).await);
    }
    // Each has opened the log (and so can answer) before the test begins.
    for r in &out {
        let mut c = r.gateway.client();
        eventually_watch(&mut c).await;
    }
    (sandbox, out)
}

/// Waits until a watch opens on `c` (the gateway finished starting).
async fn eventually_watch(c: &mut Client) {
    let t = std::time::Instant::now();
    loop {
        match c
            .watch_attachments(WatchAttachmentsRequest::default())
            .await
        {
            Ok(_) => return,
            Err(e) => assert!(
                t.elapsed() < Duration::from_secs(10),
                "the replica never served a watch: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Posts the notification `m<i>` (work order 1001 or 1002) to a replica; the
/// HTTP status it answered.
async fn notify(r: &Replica, i: usize) -> u16 {
    let wo = 1001 + (i % 2) as i64;
    let body = added(wo, &format!("att-{i}"), &format!("m{i}"));
    post(
        &r.webhook_url,
        bearer(&token(AUDIENCE, SystemTime::now())),
        &body,
    )
    .await
    .status()
    .as_u16()
}

/// The next `n` events of a watch.
async fn events(w: &mut Watch, n: usize) -> Vec<AttachmentEvent> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_event(w).await);
    }
    out
}

fn message_ids(e: &[AttachmentEvent]) -> Vec<String> {
    e.iter().map(|e| e.upstream_message_id.clone()).collect()
}

fn want(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// The status a watch ends with, within `within`.
async fn ends_with(w: &mut Watch, within: Duration) -> tonic::Status {
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, w.message()).await {
            Err(_) => panic!("the watch did not end in {within:?}"),
            Ok(Err(s)) => return s,
            Ok(Ok(None)) => panic!("a watch never ends cleanly"),
            Ok(Ok(Some(m))) => {
                if let Some(Payload::Event(e)) = m.payload {
                    panic!("no event expected, got {e:?}");
                }
            }
        }
    }
}

/// Posts `m<i>` to `r` until it is acknowledged (as CorrigoPro redelivers).
async fn notify_until_acknowledged(r: &Replica, i: usize) {
    let t = std::time::Instant::now();
    loop {
        if notify(r, i).await == 200 {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "m{i} was never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_on_one_replica_reaches_watches_on_all_in_one_order() {
    let redis = RedisServer::start();
    let (_sandbox, rs) = replicas(&redis.url(), 3).await;
    let (mut ca, mut cb, mut cc) = (
        rs[0].gateway.client(),
        rs[1].gateway.client(),
        rs[2].gateway.client(),
    );
    let (mut wa, _) = watch(&mut ca, vec![], "").await;
    let (mut wb, _) = watch(&mut cb, vec![], "").await;
    let (mut wc, _) = watch(&mut cc, vec![], "").await;
    // A filtered watch on C: only work order 1002.
    let (mut wc2, _) = watch(&mut cc, vec![1002], "").await;
    for i in 0..60 {
        assert_eq!(notify(&rs[0], i).await, 200, "m{i} acknowledged by A");
    }
    // A redelivery to another replica is the same notification: no event.
    assert_eq!(notify(&rs[1], 7).await, 200);
    let (a, b, c) = (
        events(&mut wa, 60).await,
        events(&mut wb, 60).await,
        events(&mut wc, 60).await,
    );
    assert_eq!(message_ids(&a), want(0..60), "A: each once, in order");
    assert_eq!(message_ids(&b), want(0..60), "B: each once, in order");
    assert_eq!(message_ids(&c), want(0..60), "C: each once, in order");
    let ids = |e: &[AttachmentEvent]| e.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b), "one id per event on every replica");
    assert_eq!(ids(&a), ids(&c));
    let only = events(&mut wc2, 30).await;
    assert!(only.iter().all(|e| e.work_order_id == 1002));
    assert_eq!(
        message_ids(&only),
        (0..60)
            .filter(|i| i % 2 == 1)
            .map(|i| format!("m{i}"))
            .collect::<Vec<_>>()
    );
    // The gateway's own write on C is an event on A too.
    let mut m = metadata(1001, "from-c.txt");
    m.message_id = "write-on-c".into();
    cc.upload_attachment(futures_util::stream::iter(upload_messages(m, b"c", 1)))
        .await
        .expect("upload on C");
    let e = next_event(&mut wa).await;
    assert_eq!(e.caller, next_event(&mut wb).await.caller);
    assert_eq!(e.upstream_message_id, "write-on-c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_moving_to_another_replica_resumes_from_its_cursor() {
    let redis = RedisServer::start();
    let (_sandbox, rs) = replicas(&redis.url(), 3).await;
    let mut cb = rs[1].gateway.client();
    let (mut wb, _) = watch(&mut cb, vec![], "").await;
    for i in 0..30 {
        assert_eq!(notify(&rs[0], i).await, 200);
    }
    let first = events(&mut wb, 10).await;
    assert_eq!(message_ids(&first), want(0..10));
    let cursor = first[9].event_id.clone();
    // B's connection is gone (a rollout); more arrive meanwhile, on C.
    drop(wb);
    drop(cb);
    for i in 30..50 {
        assert_eq!(notify(&rs[2], i).await, 200);
    }
    let mut cc = rs[2].gateway.client();
    let (mut wc, _) = watch(&mut cc, vec![], &cursor).await;
    let rest = events(&mut wc, 40).await;
    assert_eq!(
        message_ids(&rest),
        want(10..50),
        "nothing lost, nothing twice"
    );
    // And back to A from the middle: A reads what its own ring never held.
    let mut ca = rs[0].gateway.client();
    let (mut wa, _) = watch(&mut ca, vec![], &rest[19].event_id).await;
    assert_eq!(message_ids(&events(&mut wa, 20).await), want(30..50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_refuses_webhooks_interrupts_watches_and_loses_nothing() {
    let redis = RedisServer::start();
    let (_sandbox, rs) = replicas(&redis.url(), 2).await;
    let (mut ca, mut cb) = (rs[0].gateway.client(), rs[1].gateway.client());
    let (mut wb, _) = watch(&mut cb, vec![], "").await;
    for i in 0..5 {
        assert_eq!(notify(&rs[0], i).await, 200);
    }
    let seen = events(&mut wb, 5).await;
    redis.signal("-STOP");
    // The webhook answers 503 (CorrigoPro redelivers), within the command timeout.
    let t = std::time::Instant::now();
    assert_eq!(
        notify(&rs[0], 5).await,
        503,
        "no acknowledgement without the log"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The watch on B ends with its cursor, within the tail's read timeout.
    let st = ends_with(&mut wb, Duration::from_secs(5)).await;
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    assert_eq!(error_reason(&st), "EVENT_LOG_UNAVAILABLE");
    let resume = error_metadata(&st)
        .get("resume_after_event_id")
        .cloned()
        .expect("a resume cursor");
    assert_eq!(resume, seen[4].event_id, "resume after the last event seen");
    // A new watch is refused at once, retry-safe.
    let err = ca
        .watch_attachments(WatchAttachmentsRequest::default())
        .await
        .expect_err("no watch without the log");
    assert_eq!(err.code(), Code::Unavailable);
    // Counted, by use.
    for r in &rs {
        let text = r.metrics.render();
        let failures = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("attachment_gateway_shared_state_failures_total{use=\"event_log\"} ")
            })
            .and_then(|v| v.parse::<f64>().ok());
        assert!(
            failures.is_some_and(|n| n > 0.0),
            "the failures are counted: {text}"
        );
    }
    redis.signal("-CONT");
    // CorrigoPro redelivers m5; more arrive; the watch resumes on A.
    notify_until_acknowledged(&rs[0], 5).await;
    for i in 6..8 {
        assert_eq!(notify(&rs[1], i).await, 200);
    }
    let (mut wa, _) = watch(&mut ca, vec![], &resume).await;
    assert_eq!(message_ids(&events(&mut wa, 3).await), want(5..8));
    // And the replica whose watch was cut serves watches again by itself.
    let (mut wb, _) = watch(&mut cb, vec![], &resume).await;
    assert_eq!(message_ids(&events(&mut wb, 3).await), want(5..8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_with_its_data_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let mut redis = RedisServer::start_persistent(port, dir.path());
    let (_sandbox, rs) = replicas(&redis.url(), 2).await;
    let mut cb = rs[1].gateway.client();
    let (mut wb, start) = watch(&mut cb, vec![], "").await;
    for i in 0..5 {
        assert_eq!(notify(&rs[0], i).await, 200);
    }
    let seen = events(&mut wb, 5).await;
    redis.kill();
    assert_eq!(notify(&rs[0], 5).await, 503);
    let st = ends_with(&mut wb, Duration::from_secs(5)).await;
    assert_eq!(error_reason(&st), "EVENT_LOG_UNAVAILABLE", "{st:?}");
    let _redis = RedisServer::start_persistent(port, dir.path());
    // Both replicas reconnect by themselves.
    notify_until_acknowledged(&rs[0], 5).await;
    // The dedupe keys survived too: a redelivery of m2 records nothing.
    assert_eq!(notify(&rs[1], 2).await, 200);
    assert_eq!(notify(&rs[1], 6).await, 200);
    let (mut wb, _) = watch(&mut cb, vec![], &seen[4].event_id).await;
    assert_eq!(message_ids(&events(&mut wb, 2).await), want(5..7));
    // From before the first: everything acknowledged, once.
    let mut ca = rs[0].gateway.client();
    let (mut wa, _) = watch(&mut ca, vec![], &start).await;
    assert_eq!(message_ids(&events(&mut wa, 7).await), want(0..7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_without_its_data_expires_old_cursors_and_serves_on() {
    let port = free_port();
    let mut redis = RedisServer::start_on(port);
    let (_sandbox, rs) = replicas(&redis.url(), 2).await;
    let mut cb = rs[1].gateway.client();
    let (mut wb, _) = watch(&mut cb, vec![], "").await;
    for i in 0..3 {
        assert_eq!(notify(&rs[0], i).await, 200);
    }
    let seen = events(&mut wb, 3).await;
    redis.kill();
    let _redis = RedisServer::start_on(port);
    notify_until_acknowledged(&rs[0], 3).await;
    // What was lost cannot be replayed: a cursor of before is expired (the
    // caller resyncs with ListAttachments), on either replica; never a silent gap.
    for c in [&mut cb, &mut rs[0].gateway.client()] {
        let err = c
            .watch_attachments(WatchAttachmentsRequest {
                work_order_ids: vec![],
                after_event_id: seen[2].event_id.clone(),
            })
            .await
            .expect_err("an expired cursor");
        assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
        assert_eq!(error_reason(&err), "CURSOR_EXPIRED");
    }
    // From now, events flow again on every replica.
    let (mut wa, _) = watch(&mut rs[0].gateway.client(), vec![], "").await;
    let (mut wb2, _) = watch(&mut cb, vec![], "").await;
    assert_eq!(notify(&rs[1], 4).await, 200);
    assert_eq!(message_ids(&events(&mut wa, 1).await), want(4..5));
    assert_eq!(message_ids(&events(&mut wb2, 1).await), want(4..5));
}

/// One replica's log, opened directly.
async fn log(url: &str, max_events: usize) -> RedisEventLog {
    let r = Redis::connect(url, None, "attachment-gateway:", Duration::from_millis(300))
        .await
        .expect("redis");
    RedisEventLog::start(
        r,
        Retention {
            max_events,
            max_bytes: usize::MAX,
            max_age: Duration::from_secs(3600),
            dedupe_ttl: Duration::from_secs(60),
            max_dedupe_keys: 1000,
        },
    )
    .await
    .expect("log")
}

fn ev(n: i64) -> NewEvent {
    NewEvent {
        work_order_id: n,
        body: bytes::Bytes::from(format!("event {n}")),
    }
}

/// Reads until `f` holds of the answer (the tail takes a moment).
async fn read_until(
    l: &RedisEventLog,
    after: &Cursor,
    what: &str,
    f: impl Fn(&Result<Vec<i64>, ReadError>) -> bool,
) {
    let t = std::time::Instant::now();
    loop {
        let got = l
            .read(after, 100)
            .await
            .map(|v| v.iter().map(|e| e.work_order_id).collect::<Vec<_>>());
        if f(&got) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{what}: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_retention_dropped_before_a_replica_read_them_are_never_skipped_silently() {
    let redis = RedisServer::start();
    let a = log(&redis.url(), 2).await;
    let from = a.head().await.expect("head");
    // One append larger than retention: 1..3 are dropped before A's tail reads.
    let Appended::New(ids) = a
        .append((1..=5).map(ev).collect(), None)
        .await
        .expect("append")
    else {
        panic!("new")
    };
    read_until(&a, &from, "A refuses the cursor", |r| {
        matches!(r, Err(ReadError::OutOfRange))
    })
    .await;
    let b = log(&redis.url(), 2).await;
    assert!(matches!(
        b.read(&from, 100).await,
        Err(ReadError::OutOfRange)
    ));
    // From what is still held, both read the same.
    let third = a.cursor(&ids[2]).expect("cursor");
    for l in [&a, &b] {
        read_until(l, &third, "4 and 5", |r| matches!(r, Ok(v) if v == &[4, 5])).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_went_back_starts_a_new_epoch_even_when_appends_came_first() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let mut redis = RedisServer::start_snapshotting(port, dir.path());
    let a = log(&redis.url(), 1000).await;
    let Appended::New(first) = a
        .append((1..=3).map(ev).collect(), None)
        .await
        .expect("append")
    else {
        panic!("new")
    };
    assert_eq!(redis.cli(&["SAVE"]), "OK");
    a.append((4..=6).map(ev).collect(), None)
        .await
        .expect("append");
    let third = a.cursor(&first[2]).expect("cursor");
    read_until(
        &a,
        &third,
        "A read 4..6",
        |r| matches!(r, Ok(v) if v == &[4, 5, 6]),
    )
    .await;
    // Redis goes back to its snapshot (4..6 lost), and another replica appends
    // before A's tail has looked.
    redis.kill();
    let _redis = RedisServer::start_snapshotting(port, dir.path());
    let b = log(&format!("redis://127.0.0.1:{port}/0"), 1000).await;
    b.append(vec![ev(7)], None).await.expect("append");
    // Nobody is served 7 after 3 as if 4..6 never were: the cursor expires.
    for l in [&a, &b] {
        read_until(l, &third, "the cursor of 3 expires", |r| {
            matches!(r, Err(ReadError::OutOfRange))
        })
        .await;
    }
    // And the log goes on under the new epoch.
    let now = b.head().await.expect("head");
    assert_ne!(now.epoch, third.epoch);
    b.append(vec![ev(8)], None).await.expect("append");
    for l in [&a, &b] {
        read_until(
            l,
            &now,
            "8 after the new head",
            |r| matches!(r, Ok(v) if v == &[8]),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_is_not_the_logs_own_is_passed_over() {
    let redis = RedisServer::start();
    let a = log(&redis.url(), 1000).await;
    let from = a.head().await.expect("head");
    a.append(vec![ev(1)], None).await.expect("append");
    // Something else writes into the stream.
    assert!(
        !redis
            .cli(&["XADD", "attachment-gateway:ev:s", "*", "junk", "1"])
            .is_empty()
    );
    a.append(vec![ev(2)], None).await.expect("append");
    read_until(
        &a,
        &from,
        "1 and 2, the rest passed over",
        |r| matches!(r, Ok(v) if v == &[1, 2]),
    )
    .await;
    let b = log(&redis.url(), 1000).await;
    read_until(
        &b,
        &from,
        "the same from Redis",
        |r| matches!(r, Ok(v) if v == &[1, 2]),
    )
    .await;
}
