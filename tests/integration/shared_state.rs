//! Write records shared through Redis: several gateways (replicas) against one
//! sandbox upstream and one `redis-server` this test starts itself on a free
//! loopback port (Debian's `redis-server`, installed by the README's test
//! command; set `REDIS_SERVER` to use another binary). The same behaviour suite
//! runs against the in-process store and the Redis one.

use std::sync::Arc;
use std::time::Duration;

use attachment_gateway::proto::{
    DeleteAttachmentRequest, UploadAttachmentRequest, UploadAttachmentResponse,
};
use attachment_gateway::sandbox::{Sandbox, SandboxConfig};
use attachment_gateway::store::redis::{Redis, RedisWrites};
use attachment_gateway::store::writes::{
    Begin, Fingerprint, MemoryWrites, Outcome, WriteKey, WriteStore,
};
use tonic::Code;

use crate::common::*;

use crate::common::redis::{RedisServer, free_port};

async fn redis_store(url: &str, prefix: &str) -> Arc<dyn WriteStore> {
    let r = Redis::connect(url, None, prefix, Duration::from_millis(500))
        .await
        .expect("redis");
    RedisWrites::start(r).await.expect("writes")
}

fn key(id: &str) -> WriteKey {
    WriteKey {
        caller: Arc::from("api_key:test"),
        call: "delete",
        work_order_id: 1001,
        message_id: id.to_string(),
    }
}

/// What every write store must do.
async fn behaves(store: Arc<dyn WriteStore>) {
    let lease = Duration::from_secs(5);
    let fp = Fingerprint::of(&[b"a"]);
    let other = Fingerprint::of(&[b"b"]);
    let Begin::Go(token) = store.begin(&key("m1"), fp, lease).await.expect("begin") else {
        panic!("a new key is free")
    };
    assert_eq!(
        store.begin(&key("m1"), fp, lease).await.expect("begin"),
        Begin::Running { fingerprint: fp }
    );
    assert_eq!(
        store.begin(&key("m1"), other, lease).await.expect("begin"),
        Begin::Running { fingerprint: fp },
        "another request under the key sees the running one's fingerprint"
    );
    let outcome = Outcome::MessageId("upstream-1".into());
    store
        .complete(&key("m1"), token, fp, &outcome, Duration::from_secs(60))
        .await
        .expect("complete");
    assert_eq!(
        store.begin(&key("m1"), fp, lease).await.expect("begin"),
        Begin::Done {
            fingerprint: fp,
            outcome
        }
    );
    // A failed write is forgotten: a retry runs it again.
    let Begin::Go(t2) = store.begin(&key("m2"), fp, lease).await.expect("begin") else {
        panic!("free")
    };
    store.abandon(&key("m2"), t2).await.expect("abandon");
    assert!(matches!(
        store.begin(&key("m2"), fp, lease).await.expect("begin"),
        Begin::Go(_)
    ));
}

#[tokio::test]
async fn both_write_stores_behave_alike() {
    behaves(Arc::new(MemoryWrites::new(Duration::from_secs(60)))).await;
    let redis = RedisServer::start();
    behaves(redis_store(&redis.url(), "t1:").await).await;
}

#[tokio::test]
async fn a_lease_not_renewed_expires_and_its_old_holder_cannot_take_it_back() {
    let redis = RedisServer::start();
    let store = redis_store(&redis.url(), "t2:").await;
    let fp = Fingerprint::of(&[b"x"]);
    let lease = Duration::from_millis(300);
    // A replica begins and dies: nobody renews its lease.
    let Begin::Go(dead) = store.begin(&key("k"), fp, lease).await.expect("begin") else {
        panic!("free")
    };
    assert!(matches!(
        store.begin(&key("k"), fp, lease).await.expect("begin"),
        Begin::Running { .. }
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let Begin::Go(live) = store
        .begin(&key("k"), fp, Duration::from_secs(5))
        .await
        .expect("begin")
    else {
        panic!("an expired lease frees the key")
    };
    assert!(
        !store
            .renew(&key("k"), dead, fp, lease)
            .await
            .expect("renew")
    );
    assert!(
        store
            .renew(&key("k"), live, fp, lease)
            .await
            .expect("renew")
    );
    // The dead holder's late outcome does not overwrite the live one's lease.
    store
        .complete(
            &key("k"),
            dead,
            fp,
            &Outcome::MessageId("late".into()),
            Duration::from_secs(60),
        )
        .await
        .expect("complete");
    assert!(matches!(
        store.begin(&key("k"), fp, lease).await.expect("begin"),
        Begin::Running { .. }
    ));
}

/// Two gateways (replicas) against one sandbox and one Redis.
async fn replicas(redis_url: &str) -> (Sandbox, Gateway, Gateway) {
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let mut s = base_settings();
    s.upstream = sandbox.upstream_settings(&s.upstream);
    s.shared_state.redis_url = Some(redis_url.to_string());
    s.shared_state.command_timeout = Duration::from_millis(300);
    let a = Gateway::start(s.clone()).await;
    let b = Gateway::start(s).await;
    // Both have finished starting (connected to Redis) before the test goes on:
    // a test that stops Redis next must not catch one still starting.
    for g in [&a, &b] {
        g.client()
            .list_attachments(attachment_gateway::proto::ListAttachmentsRequest {
                work_order_id: 1001,
                ..Default::default()
            })
            .await
            .expect("serving");
    }
    (sandbox, a, b)
}

fn upload(message_id: &str, data: &[u8]) -> Vec<UploadAttachmentRequest> {
    let mut m = metadata(1001, "shared.txt");
    m.message_id = message_id.to_string();
    upload_messages(m, data, 4)
}

/// A caller that retries an upload until it is answered OK, within `within`,
/// every `pause`; `refused` sees each refusal on the way (to check it). The
/// answer, and how many refusals came before it.
async fn retry_upload(
    g: &Gateway,
    messages: impl Fn() -> Vec<UploadAttachmentRequest>,
    within: Duration,
    pause: Duration,
    mut refused: impl FnMut(&tonic::Status),
) -> (UploadAttachmentResponse, usize) {
    let t = std::time::Instant::now();
    let mut n = 0;
    loop {
        match g
            .client()
            .upload_attachment(futures_util::stream::iter(messages()))
            .await
        {
            Ok(r) => return (r.into_inner(), n),
            Err(e) => {
                refused(&e);
                n += 1;
                assert!(
                    t.elapsed() < within,
                    "still refused after {:?} ({n} refusals): {e:?}",
                    t.elapsed()
                );
            }
        }
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test]
async fn a_write_retried_on_another_replica_gets_the_first_answer() {
    let redis = RedisServer::start();
    let (sandbox, a, b) = replicas(&redis.url()).await;
    let before = sandbox.attachments(1001).len();
    let data = b"stored once".to_vec();
    let first = a
        .client()
        .upload_attachment(futures_util::stream::iter(upload("retry-1", &data)))
        .await
        .expect("upload on A")
        .into_inner();
    // The caller lost the answer, reconnected to the other replica and retried.
    let again = b
        .client()
        .upload_attachment(futures_util::stream::iter(upload("retry-1", &data)))
        .await
        .expect("retry on B")
        .into_inner();
    assert_eq!(again.attachment_id, first.attachment_id);
    assert_eq!(
        sandbox.attachments(1001).len(),
        before + 1,
        "one attachment upstream"
    );
    // The same id for another file, on B: refused, not a second upload.
    let err = b
        .client()
        .upload_attachment(futures_util::stream::iter(upload(
            "retry-1",
            b"another file",
        )))
        .await
        .expect_err("reused id");
    assert_eq!(error_reason(&err), "MESSAGE_ID_REUSED");
    // A delete on A, retried on B: the first answer, not "attachment not found".
    let del = DeleteAttachmentRequest {
        work_order_id: 1001,
        attachment_id: first.attachment_id.clone(),
        message_id: "del-retry".into(),
    };
    let d1 = a
        .client()
        .delete_attachment(del.clone())
        .await
        .expect("delete")
        .into_inner();
    let d2 = b
        .client()
        .delete_attachment(del)
        .await
        .expect("retried delete")
        .into_inner();
    assert_eq!(d1.message_id, d2.message_id);
    assert_eq!(sandbox.attachments(1001).len(), before);
}

#[tokio::test]
async fn redis_down_refuses_writes_by_message_id_retry_safe_and_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let (sandbox, a, _b) = replicas(&redis.url()).await;
    // Serving, with Redis up (a gateway does not start without its shared state).
    a.client()
        .upload_attachment(futures_util::stream::iter(upload("up-1", b"z")))
        .await
        .expect("redis up");
    let before = sandbox.attachments(1001).len();

    // Paused (SIGSTOP): each call is bounded by the command timeout.
    redis.signal("-STOP");
    let t = std::time::Instant::now();
    let err = a
        .client()
        .upload_attachment(futures_util::stream::iter(upload("down-1", b"x")))
        .await
        .expect_err("no record");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(error_reason(&err), "WRITE_RECORD_UNAVAILABLE");
    assert_eq!(
        error_metadata(&err).get("retry_safe").map(String::as_str),
        Some("true")
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "bounded: {:?}",
        t.elapsed()
    );
    redis.signal("-CONT");
    // The refused write's lease command ran late, once Redis woke: the gateway
    // drops it, so a retry of the same write runs soon, not after the lease.
    retry_upload(
        &a,
        || upload("down-1", b"x"),
        Duration::from_secs(5),
        Duration::from_millis(100),
        |_| {},
    )
    .await;
    let before = before + 1;

    // Killed: the same refusal; a write without a message id needs no record.
    redis.kill();
    let err = a
        .client()
        .upload_attachment(futures_util::stream::iter(upload("down-2", b"x")))
        .await
        .expect_err("no record");
    assert_eq!(error_reason(&err), "WRITE_RECORD_UNAVAILABLE");
    a.client()
        .upload_attachment(futures_util::stream::iter(upload("", b"no id")))
        .await
        .expect("no message id: no record needed");
    assert_eq!(
        sandbox.attachments(1001).len(),
        before + 1,
        "nothing of the refused ones"
    );
    // Reads go on: the upstream budget falls back to this replica's own.
    a.client()
        .list_attachments(attachment_gateway::proto::ListAttachmentsRequest {
            work_order_id: 1001,
            ..Default::default()
        })
        .await
        .expect("a read while Redis is down");

    // Restarted (empty) on the same port: the gateway reconnects by itself.
    let _redis = RedisServer::start_on(port);
    // (Refused, retry-safe, through the grace period in which replicas put
    // their records back.)
    let mut ok = false;
    for _ in 0..120 {
        if a.client()
            .upload_attachment(futures_util::stream::iter(upload("up-again", b"y")))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ok,
        "writes by message id work again without a gateway restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_budget_holds_for_three_replicas_together() {
    use attachment_gateway::proto::ListAttachmentsRequest;
    let redis = RedisServer::start();
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let mut s = base_settings();
    s.upstream = sandbox.upstream_settings(&s.upstream);
    s.shared_state.redis_url = Some(redis.url());
    // The deployment's budget: 20 requests/s, bursts of 5, whatever the replicas.
    s.rate_limit.upstream = attachment_gateway::config::Rate { rps: 20, burst: 5 };
    s.rate_limit.upstream_max_wait = std::time::Duration::from_millis(500);
    let gws = [
        Gateway::start(s.clone()).await,
        Gateway::start(s.clone()).await,
        Gateway::start(s).await,
    ];
    // Many callers on every replica, far over the budget.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for g in &gws {
        for _ in 0..8 {
            let mut c = g.client();
            let stop = std::sync::Arc::clone(&stop);
            load.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = c
                        .list_attachments(ListAttachmentsRequest {
                            work_order_id: 1001,
                            ..Default::default()
                        })
                        .await;
                }
            }));
        }
    }
    // Past the first burst, count what reaches the upstream over 4 s.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let from = sandbox.stats().api_requests;
    let t0 = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let n = sandbox.stats().api_requests - from;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    println!("upstream rate with 3 replicas sharing a budget of 20/s: {rate:.1}/s ({n} requests)");
    assert!(
        (18.0..=22.0).contains(&rate),
        "the upstream saw {rate:.1} requests/s from 3 replicas; the budget is 20 (±10 %)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_rate_holds_across_replicas() {
    use attachment_gateway::proto::ListAttachmentsRequest;
    let redis = RedisServer::start();
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let mut s = base_settings();
    s.upstream = sandbox.upstream_settings(&s.upstream);
    s.shared_state.redis_url = Some(redis.url());
    s.rate_limit.per_caller = attachment_gateway::config::Rate { rps: 10, burst: 10 };
    let gws = [
        Gateway::start(s.clone()).await,
        Gateway::start(s.clone()).await,
        Gateway::start(s).await,
    ];
    // One caller, its calls spread over the three replicas, far over its rate.
    let t0 = std::time::Instant::now();
    let (mut ok, mut refused) = (0u32, 0u32);
    let mut i = 0usize;
    while t0.elapsed() < Duration::from_secs(3) {
        let r = gws[i % 3]
            .client()
            .list_attachments(ListAttachmentsRequest {
                work_order_id: 1001,
                ..Default::default()
            })
            .await;
        i += 1;
        match r {
            Ok(_) => ok += 1,
            Err(e) if e.code() == Code::ResourceExhausted => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    let want = 10.0 + 10.0 * t0.elapsed().as_secs_f64();
    println!(
        "one caller over 3 replicas at 10/s (burst 10): {ok} served, {refused} refused, {want:.0} allowed"
    );
    assert!(refused > 0);
    assert!(
        (f64::from(ok) - want).abs() <= want * 0.15,
        "{ok} served; the caller's budget across replicas allows {want:.0}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_gets_back_what_replicas_remember() {
    let port = free_port();
    let mut redis = RedisServer::start_on(port);
    let (sandbox, a, b) = replicas(&redis.url()).await;
    let before = sandbox.attachments(1001).len();
    let data = b"remembered by A".to_vec();
    let first = a
        .client()
        .upload_attachment(futures_util::stream::iter(upload("lost-1", &data)))
        .await
        .expect("upload on A")
        .into_inner();
    // Redis restarts empty (no persistence): every write record is gone.
    redis.kill();
    let _redis = RedisServer::start_on(port);
    // The caller lost A's answer and retries on B, which never saw the write:
    // refused (retry-safe) until A has put its record back, then the first answer.
    let (again, _) = retry_upload(
        &b,
        || upload("lost-1", &data),
        Duration::from_secs(15),
        Duration::from_millis(100),
        |e| {
            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
            assert_eq!(error_reason(e), "WRITE_RECORD_UNAVAILABLE", "{e:?}");
            assert_eq!(
                error_metadata(e).get("retry_safe").map(String::as_str),
                Some("true")
            );
        },
    )
    .await;
    assert_eq!(again.attachment_id, first.attachment_id, "the first answer");
    assert_eq!(
        sandbox.attachments(1001).len(),
        before + 1,
        "one attachment upstream, not two"
    );
    // Once the grace period is over, new writes run as usual on either replica.
    tokio::time::sleep(attachment_gateway::store::redis::EPOCH_GRACE).await;
    for (g, id) in [(&a, "after-1"), (&b, "after-2")] {
        g.client()
            .upload_attachment(futures_util::stream::iter(upload(id, b"new")))
            .await
            .expect("a new write after the grace period");
    }
    assert_eq!(sandbox.attachments(1001).len(), before + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_shares_write_records() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    let dir = tempfile::tempdir().expect("dir");
    let (ca_file, cert_file, key_file) = (
        dir.path().join("ca.pem"),
        dir.path().join("redis.pem"),
        dir.path().join("redis.key"),
    );
    std::fs::write(&ca_file, ca.pem()).expect("w");
    std::fs::write(&cert_file, format!("{}{}", server.pem(), ca.pem())).expect("w");
    std::fs::write(&key_file, server_key.serialize_pem()).expect("w");
    let port = free_port();
    let _redis = RedisServer::start_tls(port, &cert_file, &key_file);
    let url = format!("rediss://127.0.0.1:{port}/0");

    // Without the CA, the server's certificate is not trusted: no connection.
    let err = Redis::connect(&url, None, "t:", Duration::from_millis(500))
        .await
        .err()
        .expect("an untrusted certificate");
    assert!(err.0.to_lowercase().contains("certificate"), "{err}");

    // With it, two replicas share their write records over TLS.
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let mut s = base_settings();
    s.upstream = sandbox.upstream_settings(&s.upstream);
    s.shared_state.redis_url = Some(url);
    s.shared_state.ca_file = Some(ca_file);
    let a = Gateway::start(s.clone()).await;
    let b = Gateway::start(s).await;
    let before = sandbox.attachments(1001).len();
    let first = a
        .client()
        .upload_attachment(futures_util::stream::iter(upload("tls-1", b"over tls")))
        .await
        .expect("upload on A")
        .into_inner();
    let again = b
        .client()
        .upload_attachment(futures_util::stream::iter(upload("tls-1", b"over tls")))
        .await
        .expect("retry on B")
        .into_inner();
    assert_eq!(again.attachment_id, first.attachment_id);
    assert_eq!(sandbox.attachments(1001).len(), before + 1);
}

/// An upload in chunks of 64 KiB.
fn big(message_id: &str, data: &[u8]) -> Vec<UploadAttachmentRequest> {
    let mut m = metadata(1001, "killed.bin");
    m.message_id = message_id.to_string();
    upload_messages(m, data, 64 * 1024)
}

/// A gateway process (the binary) against `sandbox` and the Redis at
/// `redis_url`, listening on `addr`; killed (SIGKILL) when dropped.
struct GatewayProcess(std::process::Child);

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gateway_process(
    sandbox: &Sandbox,
    redis_url: &str,
    addr: std::net::SocketAddr,
    lease: &str,
) -> GatewayProcess {
    let e = |k: &str| format!("ATTACHMENT_GATEWAY_{k}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_attachment-gateway"))
        .args(["--listen", &addr.to_string()])
        .env_remove("RUST_LOG")
        .env(e("LOG__LEVEL"), "error")
        .env(e("AUTH__ALLOW_UNAUTHENTICATED"), "true")
        .env(e("TELEMETRY__ADMIN_LISTEN"), "127.0.0.1:0")
        .env(e("UPSTREAM__BASE_URL"), sandbox.base_url())
        .env(e("UPSTREAM__TOKEN_URL"), sandbox.token_url())
        .env(
            e("UPSTREAM__CLIENT_ID"),
            attachment_gateway::sandbox::CLIENT_ID,
        )
        .env(
            e("UPSTREAM__CLIENT_SECRET"),
            attachment_gateway::sandbox::CLIENT_SECRET,
        )
        .env(e("UPSTREAM__IDEMPOTENCY_LEASE"), lease)
        .env(e("SHARED_STATE__REDIS_URL"), redis_url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the gateway binary");
    GatewayProcess(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_upload_lets_a_retry_run_once_its_lease_expired() {
    let redis = RedisServer::start();
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut a = gateway_process(&sandbox, &redis.url(), addr, "2s");
    let mut ca = connect(addr).await;
    let mut s = base_settings();
    s.upstream = sandbox.upstream_settings(&s.upstream);
    s.upstream.idempotency_lease = Duration::from_secs(2);
    s.shared_state.redis_url = Some(redis.url());
    let b = Gateway::start(s).await;
    let data = pattern(256 * 1024, 9);
    let before = sandbox.stats();

    // On A: the metadata and half the file, then A dies (SIGKILL) mid-upload.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let call = tokio::spawn(async move {
        ca.upload_attachment(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let mut msgs = big("killed-1", &data).into_iter();
    let (first, rest): (Vec<_>, Vec<_>) = (msgs.by_ref().take(3).collect(), msgs.collect());
    for m in first {
        tx.send(m).await.expect("send");
    }
    eventually("A's upload reached the upstream", || {
        sandbox.stats().uploads_started > before.uploads_started
    })
    .await;
    let _ = a.0.kill();
    let _ = a.0.wait();
    drop(rest);
    let _ = call.await;
    let killed_at = std::time::Instant::now();

    // The caller retries on B: the dead replica's lease holds the id until it
    // expires (nobody renews it), then the retry runs, once.
    let (answer, in_progress) = retry_upload(
        &b,
        || big("killed-1", &data),
        Duration::from_secs(10),
        Duration::from_millis(200),
        |e| {
            assert_eq!(error_reason(e), "WRITE_IN_PROGRESS", "{e:?}");
            assert_eq!(
                error_metadata(e).get("retry_safe").map(String::as_str),
                Some("true")
            );
        },
    )
    .await;
    assert!(
        in_progress > 0,
        "refused while the dead replica's lease lived"
    );
    assert!(
        killed_at.elapsed() >= Duration::from_millis(1500),
        "not before the lease expired: {:?}",
        killed_at.elapsed()
    );
    let stored: Vec<_> = sandbox
        .attachments(1001)
        .into_iter()
        .filter(|a| a.name == "killed.bin")
        .collect();
    assert_eq!(stored.len(), 1, "one attachment: the retry's, not A's half");
    assert_eq!(stored[0].attachment_id, answer.attachment_id);
    assert_eq!(stored[0].bytes.len(), data.len(), "the whole file");
    // And a retry after that is the first answer.
    let again = b
        .client()
        .upload_attachment(futures_util::stream::iter(big("killed-1", &data)))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(again.attachment_id, answer.attachment_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_is_bounded_by_the_callers_deadline_too() {
    let redis = RedisServer::start();
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let mut s = base_settings();
    s.upstream = sandbox.upstream_settings(&s.upstream);
    s.shared_state.redis_url = Some(redis.url());
    // A command timeout far longer than the caller will wait.
    s.shared_state.command_timeout = Duration::from_secs(3);
    let g = Gateway::start(s).await;
    g.client()
        .upload_attachment(futures_util::stream::iter(upload("warm", b"w")))
        .await
        .expect("redis up");
    let before = sandbox.stats().api_requests;
    redis.signal("-STOP");
    let mut del = tonic::Request::new(DeleteAttachmentRequest {
        work_order_id: 1001,
        attachment_id: "00000000-0000-0000-0000-000000000001".into(),
        message_id: "slow-del".into(),
    });
    del.set_timeout(Duration::from_millis(400));
    let t = std::time::Instant::now();
    let err = g
        .client()
        .delete_attachment(del)
        .await
        .expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    let mut up = tonic::Request::new(futures_util::stream::iter(upload("slow-up", b"u")));
    up.set_timeout(Duration::from_millis(400));
    let t = std::time::Instant::now();
    let err = g
        .client()
        .upload_attachment(up)
        .await
        .expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    redis.signal("-CONT");
    assert_eq!(
        sandbox.stats().api_requests,
        before,
        "nothing went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_cut_off_by_the_deadline_leaves_no_lease_behind() {
    use futures_util::StreamExt;
    let redis = RedisServer::start();
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let mut s = base_settings();
    s.upstream = sandbox.upstream_settings(&s.upstream);
    s.shared_state.redis_url = Some(redis.url());
    s.shared_state.command_timeout = Duration::from_secs(3);
    let g = Gateway::start(s).await;
    g.client()
        .upload_attachment(futures_util::stream::iter(upload("warm", b"w")))
        .await
        .expect("redis up");
    // The metadata comes late, after the shared rate check passed: its record's
    // command goes to a Redis that is paused, and the deadline cuts the call.
    let late = futures_util::stream::iter(upload("cut-1", b"abcd").into_iter().enumerate()).then(
        |(i, m)| async move {
            if i == 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            m
        },
    );
    let mut req = tonic::Request::new(late);
    req.set_timeout(Duration::from_millis(1000));
    let mut c = g.client();
    let call = tokio::spawn(async move { c.upload_attachment(req).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.signal("-STOP");
    let err = call.await.expect("join").expect_err("cut by the deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    redis.signal("-CONT");
    // The lease its command took once Redis woke is released: a retry runs soon.
    retry_upload(
        &g,
        || upload("cut-1", b"abcd"),
        Duration::from_secs(6),
        Duration::from_millis(200),
        |_| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_stored_upstream_is_recorded_even_when_its_deadline_passes() {
    use futures_util::StreamExt;
    let redis = RedisServer::start();
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let mut s = base_settings();
    s.upstream = sandbox.upstream_settings(&s.upstream);
    s.shared_state.redis_url = Some(redis.url());
    s.shared_state.command_timeout = Duration::from_secs(3);
    let a = Gateway::start(s.clone()).await;
    let b = Gateway::start(s).await;
    a.client()
        .upload_attachment(futures_util::stream::iter(upload("warm", b"w")))
        .await
        .expect("warm");
    let before = sandbox.attachments(1001).len();
    // The last chunk comes late; Redis pauses meanwhile, so what follows the
    // upstream's answer (the record, the event) waits past the deadline.
    let late = futures_util::stream::iter(upload("stored-1", b"abcdefgh").into_iter().enumerate())
        .then(|(i, m)| async move {
            if i == 2 {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            m
        });
    let mut req = tonic::Request::new(late);
    req.set_timeout(Duration::from_millis(1500));
    let mut c = a.client();
    let call = tokio::spawn(async move { c.upload_attachment(req).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.signal("-STOP");
    let first = call.await.expect("join");
    redis.signal("-CONT");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Whatever the first call was told, a retry elsewhere never stores it twice.
    let (again, _) = retry_upload(
        &b,
        || upload("stored-1", b"abcdefgh"),
        Duration::from_secs(6),
        Duration::from_millis(200),
        |_| {},
    )
    .await;
    if let Ok(r) = first {
        assert_eq!(r.into_inner().attachment_id, again.attachment_id);
    }
    assert_eq!(
        sandbox.attachments(1001).len(),
        before + 1,
        "one attachment upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_lost_while_the_epoch_survived_is_noticed_and_put_back() {
    let redis = RedisServer::start();
    let a = RedisWrites::start(
        Redis::connect(&redis.url(), None, "t:", Duration::from_millis(500))
            .await
            .expect("redis"),
    )
    .await
    .expect("writes");
    let k = key("m-canary");
    let fp = Fingerprint([3; 32]);
    let Begin::Go(t) = a
        .begin(&k, fp, Duration::from_secs(30))
        .await
        .expect("begin")
    else {
        panic!("a new key")
    };
    a.complete(
        &k,
        t,
        fp,
        &Outcome::MessageId("first".into()),
        Duration::from_secs(600),
    )
    .await
    .expect("complete");
    // A failover to a Redis replica that lacked the newest write: the record is
    // gone, the epoch is not.
    let keys = redis.cli(&["--scan", "--pattern", "t:w:*"]);
    assert_eq!(keys.lines().count(), 1, "{keys}");
    assert_eq!(redis.cli(&["DEL", keys.trim()]), "1");
    a.check_epoch().await;
    let b = redis_store(&redis.url(), "t:").await;
    let t0 = std::time::Instant::now();
    loop {
        match b.begin(&k, fp, Duration::from_secs(30)).await {
            Ok(Begin::Done { outcome, .. }) => {
                assert_eq!(outcome, Outcome::MessageId("first".into()));
                break;
            }
            Ok(other) => panic!("the write would run again: {other:?}"),
            Err(_) => assert!(t0.elapsed() < Duration::from_secs(5), "never put back"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
