//! Exactly once, for real: an upstream that applies a write and then loses its
//! answer (the connection dropped, or a 502), a retry with the same message
//! id, and what the upstream holds afterwards: one attachment per message id,
//! the retry answering OK with it or naming the candidates; a retried delete
//! of an attachment the first attempt removed ends OK. The upstream here is an
//! independent mock (`common::lossy`), and the sandbox with its per-write
//! fault.

use std::time::Duration;

use attachment_gateway::proto::{DeleteAttachmentRequest, UploadAttachmentResponse};
use tonic::{Code, Status};

use crate::common::lossy::{Lose, LossyUpstream};
use crate::common::*;

const WO: i64 = 77;

fn upload_msgs(
    name: &str,
    data: &[u8],
    message_id: &str,
) -> Vec<attachment_gateway::proto::UploadAttachmentRequest> {
    let mut m = metadata(WO, name);
    m.message_id = message_id.into();
    m.mime_type = "image/jpeg".into();
    upload_messages(m, data, 16 * 1024)
}

async fn upload(
    c: &mut Client,
    name: &str,
    data: &[u8],
    message_id: &str,
) -> Result<UploadAttachmentResponse, Status> {
    c.upload_attachment(tokio_stream::iter(upload_msgs(name, data, message_id)))
        .await
        .map(tonic::Response::into_inner)
}

async fn gateway_for(mock: &LossyUpstream) -> Gateway {
    let mut s = settings_for(&mock.url);
    // Answers after the commit point wait 1 s; a write the upstream does not
    // show 2 s after its commit point did not happen.
    s.upstream.request_timeout = Duration::from_secs(1);
    Gateway::start(s).await
}

/// Waits (up to 10 s) for the event of an upload whose answer was lost and
/// that nobody retried, checks it names the one attachment held upstream, and
/// that a late retry gets that outcome with nothing sent again. When the
/// event came.
async fn settled_by_itself(
    mock: &LossyUpstream,
    c: &mut Client,
    w: &mut tonic::Streaming<attachment_gateway::proto::WatchAttachmentsResponse>,
    (name, data, message_id): (&str, &[u8], &str),
) -> std::time::Instant {
    use attachment_gateway::proto::watch_attachments_response::Payload;
    let event = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("the event in time")
            .expect("watch")
            .expect("watch");
        if let Some(Payload::Event(e)) = m.payload {
            break e;
        }
    };
    let at = std::time::Instant::now();
    assert_eq!(event.upstream_message_id, message_id);
    let held = mock.held(WO);
    assert_eq!(held.len(), 1);
    assert_eq!(
        event.attachment.expect("attachment").attachment_id,
        held[0].attachment_id
    );
    let again = upload(c, name, data, message_id).await.expect("replay");
    assert!(again.reconciled);
    assert_eq!(again.attachment_id, held[0].attachment_id);
    assert_eq!(mock.with(|s| s.uploads_received), 1, "nothing sent again");
    at
}

#[tokio::test]
async fn an_upload_applied_then_its_answer_lost_is_one_attachment_in_both_shapes() {
    let mock = LossyUpstream::start().await;
    // An older file of the same name, size and type is already there.
    let data = pattern(100_000, 3);
    let older = mock.put(WO, "photo.jpg", "image/jpeg", &data);
    let gw = gateway_for(&mock).await;
    let mut c = gw.client();
    for (i, how) in [Lose::DropAfterApply, Lose::BadGatewayAfterApply]
        .into_iter()
        .enumerate()
    {
        let mid = format!("lost-answer-{i}");
        mock.lose(&[how]);
        let first = upload(&mut c, "photo.jpg", &data, &mid)
            .await
            .unwrap_or_else(|e| panic!("{how:?}: reconciled at once: {e:?}"));
        assert!(
            first.reconciled,
            "{how:?}: the answer says it was found, not received"
        );
        assert_ne!(first.attachment_id, older, "never the older identical file");
        assert_eq!(first.sha256, sha256_hex(&data));
        // The caller retries anyway: the same answer, nothing uploaded again.
        let again = upload(&mut c, "photo.jpg", &data, &mid)
            .await
            .expect("retry");
        assert_eq!(again.attachment_id, first.attachment_id);
        let held: Vec<_> = mock
            .held(WO)
            .into_iter()
            .filter(|h| h.message_id == mid)
            .collect();
        assert_eq!(held.len(), 1, "{how:?}: one attachment for the message id");
        assert_eq!(held[0].attachment_id, first.attachment_id);
        assert_eq!(held[0].bytes.as_ref(), data.as_slice());
    }
    assert_eq!(
        mock.with(|s| s.uploads_received),
        2,
        "each upload sent once"
    );
}

/// A delete still on its way when its caller stopped waiting: a retry is
/// told to wait, and is never sent upstream a second time alongside it.
#[tokio::test]
async fn a_retry_while_the_first_delete_is_on_its_way_waits_for_it() {
    let mock = LossyUpstream::start().await;
    let gw = gateway_for(&mock).await;
    let mut c = gw.client();
    let id = mock.put(WO, "slow.txt", "text/plain", b"x");
    mock.with(|s| s.delete_delay = Duration::from_millis(700));
    let req = || {
        let mut r = tonic::Request::new(DeleteAttachmentRequest {
            work_order_id: WO,
            attachment_id: id.clone(),
            message_id: "del-slow".into(),
        });
        r.set_timeout(Duration::from_millis(200));
        r
    };
    let first = c
        .delete_attachment(req())
        .await
        .expect_err("caller gave up");
    assert_eq!(error_reason(&first), "OUTCOME_PENDING", "{first:?}");
    let retry = c
        .delete_attachment(req())
        .await
        .expect_err("still on its way");
    assert_eq!(retry.code(), Code::Aborted, "{retry:?}");
    assert_eq!(error_reason(&retry), "WRITE_IN_PROGRESS");
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.delete_attachment(req())
        .await
        .expect("the first attempt's answer");
    assert!(mock.held(WO).is_empty());
    assert_eq!(mock.with(|s| s.deletes_received), 1, "sent once");
}

#[tokio::test]
async fn a_retried_delete_whose_first_attempt_came_true_ends_ok() {
    let mock = LossyUpstream::start().await;
    let gw = gateway_for(&mock).await;
    let mut c = gw.client();
    for how in [Lose::DropAfterApply, Lose::BadGatewayAfterApply] {
        let id = mock.put(WO, "old.txt", "text/plain", b"x");
        mock.lose(&[how]);
        let req = || DeleteAttachmentRequest {
            work_order_id: WO,
            attachment_id: id.clone(),
            message_id: format!("del-{id}"),
        };
        c.delete_attachment(req())
            .await
            .unwrap_or_else(|e| panic!("{how:?}: the attachment is gone: OK ({e:?})"));
        // Retried with the same message id: OK, not NOT_FOUND.
        c.delete_attachment(req()).await.expect("retried delete");
        assert!(mock.held(WO).is_empty());
    }
}

#[tokio::test]
async fn when_the_gateway_cannot_tell_it_names_the_candidates_and_uploads_nothing() {
    let mock = LossyUpstream::start().await;
    let gw = gateway_for(&mock).await;
    let mut c = gw.client();
    let data = pattern(50_000, 9);
    // Applied, and an identical file appears beside it; the answer is lost.
    mock.lose(&[Lose::DuplicateThenDrop]);
    let first = upload(&mut c, "twin.jpg", &data, "twin-1")
        .await
        .expect_err("cannot tell");
    let retry = upload(&mut c, "twin.jpg", &data, "twin-1")
        .await
        .expect_err("still cannot tell");
    let held: Vec<String> = mock.held(WO).into_iter().map(|h| h.attachment_id).collect();
    // The first attempt is told what its retry is told: the gateway cannot
    // tell, and which attachments to look at.
    for answer in [&first, &retry] {
        assert_eq!(answer.code(), Code::FailedPrecondition, "{answer:?}");
        assert_eq!(error_reason(answer), "OUTCOME_UNKNOWN");
        let meta = error_metadata(answer);
        assert_eq!(meta["retry_safe"], "false");
        let named: Vec<&str> = meta["candidate_attachment_ids"].split(',').collect();
        assert_eq!(named.len(), 2);
        assert!(
            named.iter().all(|n| held.iter().any(|h| h == n)),
            "{named:?} {held:?}"
        );
    }
    assert_eq!(
        mock.with(|s| s.uploads_received),
        1,
        "nothing uploaded again"
    );
}

#[tokio::test]
async fn a_lost_upload_that_stored_nothing_runs_again_once_it_has_settled() {
    let mock = LossyUpstream::start().await;
    let gw = gateway_for(&mock).await;
    let mut c = gw.client();
    let data = pattern(20_000, 1);
    mock.lose(&[Lose::BadGatewayBeforeApply]);
    let first = upload(&mut c, "late.jpg", &data, "late-1")
        .await
        .expect_err("not known yet");
    assert_eq!(error_reason(&first), "OUTCOME_UNKNOWN");
    // Too soon: the first attempt may still be on its way.
    let soon = upload(&mut c, "late.jpg", &data, "late-1")
        .await
        .expect_err("wait");
    assert_eq!(soon.code(), Code::Aborted, "{soon:?}");
    assert_eq!(error_reason(&soon), "WRITE_IN_PROGRESS");
    let wait = retry_delay(&soon).expect("RetryInfo");
    assert!(wait <= Duration::from_secs(2), "{wait:?}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let ok = upload(&mut c, "late.jpg", &data, "late-1")
        .await
        .expect("settled: run again");
    assert!(!ok.reconciled);
    assert_eq!(mock.held(WO).len(), 1);
    assert_eq!(mock.with(|s| s.uploads_received), 2);
    // And once more: the recorded answer.
    let again = upload(&mut c, "late.jpg", &data, "late-1")
        .await
        .expect("replay");
    assert_eq!(again.attachment_id, ok.attachment_id);
}

/// The answer lost, the upstream not even listable at that moment, and the
/// caller never retries: once the write has settled, the gateway asks again
/// by itself, records the outcome and appends the event.
#[tokio::test]
async fn a_lost_outcome_settles_by_itself_with_its_event_when_nobody_retries() {
    let mock = LossyUpstream::start().await;
    let gw = gateway_for(&mock).await;
    let mut c = gw.client();
    let (mut w, _) = crate::common::watch::watch(&mut c, vec![], "").await;
    let data = pattern(30_000, 6);
    mock.lose(&[Lose::DropAfterApply]);
    // Lists fail for a second after the upload is applied: the gateway cannot
    // tell at once.
    mock.with(|s| s.fail_lists_after_upload = Duration::from_millis(1000));
    let first = upload(&mut c, "quiet.jpg", &data, "quiet-1")
        .await
        .expect_err("not known yet");
    assert_eq!(error_reason(&first), "OUTCOME_UNKNOWN", "{first:?}");
    // Nobody retries. Past the settle time (2 s), the event arrives.
    settled_by_itself(&mock, &mut c, &mut w, ("quiet.jpg", &data, "quiet-1")).await;
}

/// As above, but the upstream cannot be listed past the first check either
/// (and nobody retries): the gateway keeps asking, with backoff, until it can
/// tell, then records the outcome and appends the event; its
/// `writes_settling` gauge counts the write meanwhile.
#[tokio::test]
async fn a_lost_outcome_settles_by_itself_though_the_first_checks_fail() {
    let mock = LossyUpstream::start().await;
    let mut s = settings_for(&mock.url);
    s.upstream.request_timeout = Duration::from_secs(1);
    let metrics = std::sync::Arc::new(attachment_gateway::metrics::Metrics::new());
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let gw = Gateway::start_with(
        s,
        attachment_gateway::server::Listeners {
            grpc,
            admin: None,
            webhooks: None,
        },
        std::sync::Arc::clone(&metrics),
    )
    .await;
    let mut c = gw.client();
    let (mut w, _) = crate::common::watch::watch(&mut c, vec![], "").await;
    let data = pattern(20_000, 8);
    mock.lose(&[Lose::BadGatewayAfterApply]);
    // Lists fail for 3.5 s after the upload is applied: the answer's own
    // check and the settle check (2 s after the commit point) both fail.
    mock.with(|s| s.fail_lists_after_upload = Duration::from_millis(3500));
    let sent = std::time::Instant::now();
    let first = upload(&mut c, "stubborn.jpg", &data, "stubborn-1")
        .await
        .expect_err("not known yet");
    assert_eq!(error_reason(&first), "OUTCOME_UNKNOWN", "{first:?}");
    assert_eq!(metrics.writes_settling.get(), 1, "the write is settling");
    let settled_at =
        settled_by_itself(&mock, &mut c, &mut w, ("stubborn.jpg", &data, "stubborn-1")).await;
    assert!(
        settled_at.duration_since(sent) >= Duration::from_millis(3500),
        "settled only once the list answered: {:?}",
        settled_at.duration_since(sent)
    );
    eventually("the write no longer settling", || {
        metrics.writes_settling.get() == 0
    })
    .await;
}

/// A retry that runs an upload again (its earlier attempt provably stored
/// nothing) knows what the work order held before it from the list that
/// showed that: when its own list from before fails and its answer is then
/// lost, the one new attachment is still told to be its own.
#[tokio::test]
async fn a_run_again_whose_own_list_fails_still_tells_its_attachment() {
    let mock = LossyUpstream::start().await;
    let gw = gateway_for(&mock).await;
    let mut c = gw.client();
    let data = pattern(40_000, 12);
    // The first attempt is refused by a proxy (nothing applied); the second
    // is applied and its answer dropped.
    mock.lose(&[Lose::BadGatewayBeforeApply, Lose::DropAfterApply]);
    // The lists, in order: the first attempt's from before (ok); its check
    // once the answer was lost (refused); the gateway's own settle check 2 s
    // later (refused: it asks again 1 s later); the retry's reconcile (ok,
    // nothing there); the retry's own list from before (refused); its check
    // after its answer was lost (ok). A 400 is not retried, so one list each.
    let refused = Some(axum::http::StatusCode::BAD_REQUEST);
    mock.with(|s| s.list_script = [None, refused, refused, None, refused, None].into());
    let first = upload(&mut c, "again.jpg", &data, "again-1")
        .await
        .expect_err("not known yet");
    assert_eq!(error_reason(&first), "OUTCOME_UNKNOWN", "{first:?}");
    assert_eq!(error_metadata(&first)["retry_safe"], "true");
    // Past the settle time (2 x request_timeout), after the settle check.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let retry = upload(&mut c, "again.jpg", &data, "again-1")
        .await
        .expect("the one new attachment is the run again's");
    assert!(retry.reconciled);
    let held = mock.held(WO);
    assert_eq!(held.len(), 1);
    assert_eq!(retry.attachment_id, held[0].attachment_id);
    assert_eq!(held[0].bytes.as_ref(), data.as_slice());
    assert_eq!(
        mock.with(|s| s.list_script.len()),
        0,
        "every list as scripted"
    );
}

#[tokio::test]
async fn a_wrong_checksum_stores_nothing_upstream() {
    let mock = LossyUpstream::start().await;
    let gw = gateway_for(&mock).await;
    let mut c = gw.client();
    let data = pattern(300_000, 4);
    let mut m = metadata(WO, "sum.bin");
    m.expected_sha256 = sha256_hex(&pattern(300_000, 5));
    let e = c
        .upload_attachment(tokio_stream::iter(upload_messages(m, &data, 64 * 1024)))
        .await
        .expect_err("mismatch");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(error_reason(&e), "CHECKSUM_MISMATCH");
    let meta = error_metadata(&e);
    assert_eq!(meta["actual_sha256"], sha256_hex(&data));
    assert_eq!(meta["expected_sha256"], sha256_hex(&pattern(300_000, 5)));
    assert_eq!(violations(&e)[0].0, "metadata.expected_sha256");
    eventually("the upstream saw the body break off", || {
        mock.with(|s| s.uploads_broken) == 1
    })
    .await;
    assert!(mock.held(WO).is_empty(), "nothing stored");
    assert_eq!(mock.with(|s| s.uploads_received), 0);
    // Not hex, or upper case: refused before anything is sent.
    for bad in ["abc", &sha256_hex(&data).to_uppercase()] {
        let mut m = metadata(WO, "sum.bin");
        m.expected_sha256 = bad.to_string();
        let e = c
            .upload_attachment(tokio_stream::iter(upload_messages(m, &data, 64 * 1024)))
            .await
            .expect_err("bad");
        assert_invalid(&e, "metadata.expected_sha256", "INVALID_SHA256");
    }
    // The right one: stored.
    let mut m = metadata(WO, "sum.bin");
    m.expected_sha256 = sha256_hex(&data);
    c.upload_attachment(tokio_stream::iter(upload_messages(m, &data, 64 * 1024)))
        .await
        .expect("matching checksum");
    assert_eq!(mock.held(WO).len(), 1);
}

#[tokio::test]
async fn the_sandbox_loses_an_answer_on_request_and_the_retry_gets_the_one_attachment() {
    let h = with_sandbox().await;
    let mut c = h.gateway.client();
    let emulator = h.sandbox.base_url().trim_end_matches("/Direct").to_string();
    let http = crate::common::notify::http();
    for how in ["drop", "502"] {
        let mid = format!("sbx-lost-{how}");
        let r = http
            .post(format!("{emulator}/sandbox/faults/lose-answer"))
            .json(&serde_json::json!({"message_id": mid, "how": how}))
            .send()
            .await
            .expect("fault");
        assert_eq!(r.status(), 204);
        let data = pattern(40_000, 2);
        let mut m = metadata(1002, &format!("lost-{how}.bin"));
        m.message_id = mid.clone();
        let first = c
            .upload_attachment(tokio_stream::iter(upload_messages(m.clone(), &data, 8192)))
            .await
            .expect("reconciled")
            .into_inner();
        assert!(first.reconciled, "{how}");
        let again = c
            .upload_attachment(tokio_stream::iter(upload_messages(m, &data, 8192)))
            .await
            .expect("retry")
            .into_inner();
        assert_eq!(again.attachment_id, first.attachment_id);
        let held: Vec<_> = h
            .sandbox
            .attachments(1002)
            .into_iter()
            .filter(|a| a.message_id == mid)
            .collect();
        assert_eq!(held.len(), 1, "{how}");
    }
    assert_eq!(h.sandbox.stats().answers_lost, 2);
}

// ---------------------------------------------------------------- with Redis

mod shared {
    use std::sync::Arc;
    use std::time::Duration;

    use attachment_gateway::sandbox::{Sandbox, SandboxConfig};
    use attachment_gateway::store::redis::{Redis, RedisQuota, RedisWrites, Take};
    use attachment_gateway::store::writes::{
        Attempt, Begin, Fingerprint, Outcome, Pending, WriteKey, WriteStore,
    };
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::Code;

    use crate::common::proxy::Proxy;
    use crate::common::redis::RedisServer;
    use crate::common::*;

    /// A replica cut off from Redis past its lease, the upstream still in
    /// reach: another replica takes the message id and uploads; the first one
    /// stops before its body ends. One attachment.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_cut_off_past_its_lease_stops_before_its_commit_point() {
        let redis = RedisServer::start();
        let proxy = Proxy::start(redis.port).await;
        let sandbox = Sandbox::start(SandboxConfig::default())
            .await
            .expect("sandbox");
        let mut s = base_settings();
        s.upstream = sandbox.upstream_settings(&s.upstream);
        s.upstream.idempotency_lease = Duration::from_secs(1);
        s.shared_state.command_timeout = Duration::from_millis(300);
        let mut sa = s.clone();
        sa.shared_state.redis_url = Some(format!("redis://127.0.0.1:{}", proxy.port));
        s.shared_state.redis_url = Some(redis.url());
        let a = Gateway::start(sa).await;
        let b = Gateway::start(s).await;
        let data = pattern(200_000, 7);
        let mut m = metadata(1002, "fenced.bin");
        m.message_id = "fenced-1".into();
        let msgs = upload_messages(m, &data, 20_000);
        // A starts, and is cut off from Redis mid-stream.
        let (tx, rx) = mpsc::channel(4);
        let mut ca = a.client();
        let call = tokio::spawn(async move { ca.upload_attachment(ReceiverStream::new(rx)).await });
        let mut msgs_a = msgs.clone().into_iter();
        for m in msgs_a.by_ref().take(3) {
            tx.send(m).await.expect("send");
        }
        eventually("A's upload reached the upstream", || {
            sandbox.stats().uploads_started == 1
        })
        .await;
        proxy.partition();
        tokio::time::sleep(Duration::from_millis(1600)).await;
        // B gets the message id (A's lease expired) and uploads.
        let ok = b
            .client()
            .upload_attachment(tokio_stream::iter(msgs))
            .await
            .expect("B uploads")
            .into_inner();
        proxy.heal();
        // A's caller sends the rest: A must not end its body.
        for m in msgs_a {
            if tx.send(m).await.is_err() {
                break;
            }
        }
        drop(tx);
        let st = call.await.expect("task").expect_err("A stops");
        assert!(
            matches!(
                error_reason(&st).as_str(),
                "WRITE_LEASE_LOST" | "WRITE_RECORD_UNAVAILABLE"
            ),
            "{st:?}"
        );
        assert_eq!(st.code(), Code::Unavailable);
        assert_eq!(error_metadata(&st)["retry_safe"], "true");
        let held: Vec<_> = sandbox
            .attachments(1002)
            .into_iter()
            .filter(|x| x.message_id == "fenced-1")
            .collect();
        assert_eq!(held.len(), 1, "one attachment");
        assert_eq!(held[0].attachment_id, ok.attachment_id);
        assert_eq!(sandbox.stats().uploads_stored, 1);
    }

    fn key(id: &str) -> WriteKey {
        WriteKey {
            caller: Arc::from("api_key:t"),
            call: "delete",
            work_order_id: 1,
            message_id: id.into(),
        }
    }

    /// An outcome whose COMPLETE never reached Redis is no loss of Redis's
    /// data: the epoch stays (no watch is told its cursor expired), and the
    /// record is still there, committed, for a retry to reconcile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_complete_is_no_false_alarm_and_leaves_the_record_committed() {
        let redis = RedisServer::start();
        let proxy = Proxy::start(redis.port).await;
        let r = Redis::connect(
            &format!("redis://127.0.0.1:{}", proxy.port),
            None,
            "t:",
            Duration::from_millis(300),
        )
        .await
        .expect("redis");
        let store = RedisWrites::start(r).await.expect("writes");
        let fp = Fingerprint::of(&[b"d"]);
        let lease = Duration::from_millis(300);
        let Begin::Go(t) = store.begin(&key("m"), fp, lease).await.expect("begin") else {
            panic!("free")
        };
        let pending = Pending {
            committed_at_ms: 1,
            given_up: false,
            message_id: "m".into(),
            attempt: Attempt::Delete {
                attachment_id: "a".into(),
            },
        };
        assert!(
            store
                .commit(&key("m"), t, fp, &pending, Duration::from_secs(60))
                .await
                .expect("commit")
        );
        let epoch = redis.cli(&["GET", "t:epoch"]);
        proxy.partition();
        let lost = store
            .complete(
                &key("m"),
                t,
                fp,
                &Outcome::MessageId("m".into()),
                Duration::from_secs(60),
            )
            .await;
        assert!(lost.is_err(), "COMPLETE did not get through");
        // Past a lease's length, the partition heals and the canary is checked.
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.heal();
        tokio::time::sleep(Duration::from_millis(300)).await;
        store.check_epoch().await;
        assert_eq!(redis.cli(&["GET", "t:epoch"]), epoch, "no new epoch");
        // The COMPLETE the partition held may have landed after all; either
        // way the record answers, never as a free key.
        match store.begin(&key("m"), fp, lease).await.expect("begin") {
            Begin::Committed { .. } | Begin::Done { .. } => {}
            other => panic!("the record was lost: {other:?}"),
        }
    }

    /// A later, shorter cool-down (a 503 streak's second) does not cut an
    /// earlier, longer one (a `Retry-After: 120`).
    #[tokio::test]
    async fn a_shared_cool_down_is_only_ever_extended() {
        let redis = RedisServer::start();
        let r = Redis::connect(&redis.url(), None, "q:", Duration::from_millis(500))
            .await
            .expect("redis");
        let q = RedisQuota::new(r, "upstream", 20, 20);
        q.cool(Duration::from_secs(120)).await.expect("cool");
        q.cool(Duration::from_secs(1)).await.expect("cool");
        match q.take().await.expect("take") {
            Take::Cooling(left) => assert!(left > Duration::from_secs(100), "{left:?}"),
            other => panic!("{other:?}"),
        }
        // A longer one extends it.
        q.cool(Duration::from_secs(200)).await.expect("cool");
        match q.take().await.expect("take") {
            Take::Cooling(left) => assert!(left > Duration::from_secs(150), "{left:?}"),
            other => panic!("{other:?}"),
        }
    }

    /// A crowd of watches resuming from the oldest cursor pulls the event
    /// log's history from Redis; writes with a message id meanwhile must not
    /// wait behind it for their records (WRITE_RECORD_UNAVAILABLE).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resuming_watches_do_not_starve_the_write_records() {
        use attachment_gateway::config::{EventSettings, WebhookSettings};
        use attachment_gateway::proto::WatchAttachmentsRequest;
        use attachment_gateway::store::event_log::{Appended, EventLog, NewEvent, Retention};
        use attachment_gateway::store::redis::RedisEventLog;

        let redis = RedisServer::start();
        // The log holds 200 events of 6 KB, written before the gateway starts
        // (none is in its memory: every resuming watch reads Redis).
        let r = Redis::connect(
            &redis.url(),
            None,
            "attachment-gateway:",
            Duration::from_secs(2),
        )
        .await
        .expect("redis");
        let log = RedisEventLog::start(
            r,
            Retention::new(&EventSettings::default(), &WebhookSettings::default()),
        )
        .await
        .expect("log");
        let mut first = None;
        for i in 0..200 {
            let body = attachment_gateway::proto::AttachmentEvent {
                work_order_id: 1001,
                caller: "x".repeat(6000),
                upstream_message_id: format!("hist-{i}"),
                ..Default::default()
            };
            let appended = log
                .append(
                    vec![NewEvent {
                        work_order_id: 1001,
                        body: prost::Message::encode_to_vec(&body).into(),
                    }],
                    None,
                )
                .await
                .expect("append");
            if let (None, Appended::New(ids)) = (&first, appended) {
                first = ids.into_iter().next();
            }
        }
        drop(log);
        // The log made the epoch as after a loss of data (a grace period in
        // which write records are refused): this Redis is new, not restored.
        redis.cli(&["DEL", "attachment-gateway:restoring"]);
        let first = first.expect("an event id");
        let sandbox = Sandbox::start(SandboxConfig::default())
            .await
            .expect("sandbox");
        let mut s = base_settings();
        s.upstream = sandbox.upstream_settings(&s.upstream);
        s.shared_state.redis_url = Some(redis.url());
        s.events.max_subscribers = 1000;
        s.events.max_subscribers_per_caller = 1000;
        s.rate_limit.per_caller = attachment_gateway::config::Rate {
            rps: 10_000,
            burst: 10_000,
        };

        let gw = Gateway::start(s).await;
        // 200 watches resume from the first event, over a few connections.
        let mut watches = Vec::new();
        let quiet = std::env::var("NO_WATCHES").is_ok();
        for i in 0..(if quiet { 0 } else { 200 }) {
            let _ = i;
            let mut c = gw.client();
            let first = first.clone();
            watches.push(tokio::spawn(async move {
                let mut w = c
                    .watch_attachments(WatchAttachmentsRequest {
                        work_order_ids: vec![],
                        after_event_id: first,
                    })
                    .await
                    .expect("watch")
                    .into_inner();
                let mut n = 0;
                while n < 199 {
                    match w.message().await {
                        Ok(Some(m)) => {
                            if matches!(m.payload, Some(attachment_gateway::proto::watch_attachments_response::Payload::Event(_))) {
                                n += 1;
                            }
                        }
                        _ => break,
                    }
                }
                n
            }));
        }
        // Meanwhile, writes with message ids: each must find its record.
        let mut c = gw.client();
        let mut refused = Vec::new();
        for i in 0..20 {
            let mut m = metadata(1002, &format!("busy-{i}.bin"));
            m.message_id = format!("busy-{i}");
            if let Err(e) = c
                .upload_attachment(tokio_stream::iter(upload_messages(
                    m,
                    &pattern(2000, 1),
                    1000,
                )))
                .await
            {
                refused.push(format!("{:?} {}", e.code(), error_reason(&e)));
            }
        }
        assert!(
            refused.is_empty(),
            "writes refused while watches resumed: {refused:?}"
        );
        let mut read = 0;
        for w in watches {
            read += w.await.expect("watch task");
        }
        assert_eq!(
            read,
            200 * 199,
            "every watch read every event after its cursor"
        );
    }
}
