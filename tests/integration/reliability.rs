//! Faults and retries: reads retried, writes not; the circuit breaker; writes
//! remembered by message id; the upstream dropping an upload; a token expiring
//! mid-upload; shutdown with ten uploads in flight; and a seeded randomized run
//! against a fault-injecting upstream whose stored attachments must match exactly
//! the uploads that returned OK.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use attachment_gateway::proto::{DeleteAttachmentRequest, ListAttachmentsRequest};
use attachment_gateway::sandbox::{Faults, SandboxConfig};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn token(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "t", "expires_in": 1199})),
        )
        .mount(server)
        .await;
}

#[tokio::test]
async fn reads_retry_transient_failures_and_writes_do_not() {
    let server = MockServer::start().await;
    token(&server).await;
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .with_priority(1)
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .with_priority(2)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/Direct/api/attachments"))
        .respond_with(ResponseTemplate::new(502))
        .expect(1)
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let mut c = gw.client();
    c.list_attachments(ListAttachmentsRequest {
        work_order_id: 1,
        ..Default::default()
    })
    .await
    .expect("503, 503, then 200: the gateway retried");
    let err = c
        .upload_attachment(tokio_stream::iter(upload_messages(
            metadata(1, "a.bin"),
            b"abc",
            3,
        )))
        .await
        .expect_err("502 on an upload");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        error_metadata(&err).get("retry_safe").map(String::as_str),
        Some("unknown"),
        "the body went upstream: the gateway cannot know"
    );
    server.verify().await;
}

#[tokio::test]
async fn the_circuit_opens_fails_fast_and_probes_its_way_back() {
    let server = MockServer::start().await;
    token(&server).await;
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments"))
        .respond_with(ResponseTemplate::new(500))
        .expect(3)
        .mount(&server)
        .await;
    let mut s = settings_for(&server.uri());
    s.upstream.circuit_failure_threshold = 3;
    s.upstream.circuit_open_for = Duration::from_millis(500);
    let gw = Gateway::start(s).await;
    let mut c = gw.client();
    for _ in 0..3 {
        let err = c
            .list_attachments(ListAttachmentsRequest {
                work_order_id: 1,
                ..Default::default()
            })
            .await
            .expect_err("500");
        assert_eq!(err.code(), Code::Internal);
    }
    // Open: fails fast, nothing reaches the upstream.
    let err = c
        .list_attachments(ListAttachmentsRequest {
            work_order_id: 1,
            ..Default::default()
        })
        .await
        .expect_err("open");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(error_reason(&err), "UPSTREAM_CIRCUIT_OPEN");
    assert_eq!(
        error_metadata(&err).get("retry_safe").map(String::as_str),
        Some("true")
    );
    assert!(retry_delay(&err).is_some_and(|d| d <= Duration::from_millis(500)));
    server.verify().await;
    // The upstream recovers; after the open period one probe goes through and closes it.
    server.reset().await;
    token(&server).await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    tokio::time::sleep(Duration::from_millis(550)).await;
    c.list_attachments(ListAttachmentsRequest {
        work_order_id: 1,
        ..Default::default()
    })
    .await
    .expect("probe");
    c.list_attachments(ListAttachmentsRequest {
        work_order_id: 1,
        ..Default::default()
    })
    .await
    .expect("closed");
}

/// Half-open, one probe at a time: a call that started before the circuit opened
/// and is cancelled while the probe runs must not let a second probe through.
#[tokio::test]
async fn a_cancelled_early_call_lets_no_second_probe_through() {
    use wiremock::matchers::query_param;
    let server = MockServer::start().await;
    token(&server).await;
    let list = |wo: &str| {
        Mock::given(method("GET"))
            .and(path("/Direct/api/attachments"))
            .and(query_param("workOrderId", wo))
    };
    let slow = ResponseTemplate::new(200)
        .set_body_json(json!([]))
        .set_delay(Duration::from_secs(5));
    list("1").respond_with(slow.clone()).mount(&server).await;
    list("2")
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    list("3").respond_with(slow).mount(&server).await;
    list("4")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    let mut s = settings_for(&server.uri());
    s.upstream.circuit_failure_threshold = 1;
    s.upstream.circuit_open_for = Duration::from_millis(300);
    let gw = Gateway::start(s).await;
    let call = |wo: i64, timeout: Duration| {
        let mut c = gw.client();
        async move {
            let mut req = tonic::Request::new(ListAttachmentsRequest {
                work_order_id: wo,
                ..Default::default()
            });
            req.set_timeout(timeout);
            c.list_attachments(req).await
        }
    };
    // An ordinary call under way, cut by its deadline once the probe runs.
    let early = tokio::spawn(call(1, Duration::from_millis(1200)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        call(2, Duration::from_secs(5))
            .await
            .expect_err("500")
            .code(),
        Code::Internal
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let probe = tokio::spawn(call(3, Duration::from_secs(10)));
    let early = early.await.expect("task").expect_err("cut by its deadline");
    assert_eq!(early.code(), Code::DeadlineExceeded);
    // The probe still runs: this call must fail fast, not become a second probe.
    let err = call(4, Duration::from_secs(5))
        .await
        .expect_err("one probe at a time");
    assert_eq!(error_reason(&err), "UPSTREAM_CIRCUIT_OPEN", "{err:?}");
    let upstream_calls = server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.query() == Some("workOrderId=4"))
        .count();
    assert_eq!(
        upstream_calls, 0,
        "nothing went upstream for the refused call"
    );
    probe.abort();
}

#[tokio::test]
async fn a_retried_write_with_the_same_message_id_happens_once() {
    let h = with_sandbox().await;
    let mut c = h.gateway.client();
    let data = pattern(10_000, 3);
    let mut m = metadata(1002, "once.bin");
    m.message_id = "caller-retry-1".into();
    let first = c
        .upload_attachment(tokio_stream::iter(upload_messages(m.clone(), &data, 1000)))
        .await
        .expect("first")
        .into_inner();
    // The caller lost the answer and sends the same upload again.
    let second = c
        .upload_attachment(tokio_stream::iter(upload_messages(m, &data, 1000)))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first.attachment_id, second.attachment_id);
    assert_eq!(h.sandbox.attachments(1002).len(), 1, "attached once");
    assert_eq!(
        h.sandbox.stats().uploads_started,
        1,
        "the retry never reached the upstream"
    );

    let del = || DeleteAttachmentRequest {
        work_order_id: 1002,
        attachment_id: first.attachment_id.clone(),
        message_id: "caller-delete-1".into(),
    };
    let d1 = c
        .delete_attachment(del())
        .await
        .expect("delete")
        .into_inner();
    let d2 = c
        .delete_attachment(del())
        .await
        .expect("retried delete answers the same")
        .into_inner();
    assert_eq!(d1.message_id, d2.message_id);
    // Without the same message id it is a new request: NOT_FOUND now.
    let mut other = del();
    other.message_id = String::new();
    assert_eq!(
        c.delete_attachment(other).await.expect_err("gone").code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn the_upstream_closing_the_connection_mid_upload_is_unavailable() {
    // A raw TCP upstream that reads part of the request and hangs up.
    let tokens = MockServer::start().await;
    token(&tokens).await;
    let closer = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = closer.local_addr().expect("addr");
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut sock, _)) = closer.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = sock.read(&mut buf).await;
                drop(sock);
            });
        }
    });
    let mut s = settings_for(&tokens.uri());
    s.upstream.base_url = format!("http://{addr}/Direct");
    let gw = Gateway::start(s).await;
    let err = gw
        .client()
        .upload_attachment(tokio_stream::iter(upload_messages(
            metadata(1, "big.bin"),
            &pattern(2_000_000, 1),
            64 * 1024,
        )))
        .await
        .expect_err("connection closed");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(error_reason(&err), "UPSTREAM_CONNECTION_FAILED");
}

#[tokio::test]
async fn a_slow_token_endpoint_is_bounded_by_the_callers_deadline() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "t", "expires_in": 1199}))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let mut req = tonic::Request::new(ListAttachmentsRequest {
        work_order_id: 1,
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let err = gw
        .client()
        .list_attachments(req)
        .await
        .expect_err("token too slow");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A token endpoint that accepts the background refresh and never answers must
/// not stall every call once the token expires: the request is bounded by
/// `upstream.token_timeout`, and the next call fetches anew.
#[tokio::test]
async fn a_token_endpoint_that_never_answers_stalls_nothing_for_long() {
    let server = MockServer::start().await;
    let token = |t: &str| {
        ResponseTemplate::new(200).set_body_json(json!({"access_token": t, "expires_in": 11}))
    };
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(token("t1"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(token("t2").set_delay(Duration::from_secs(3600)))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(token("t3"))
        .with_priority(3)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    let mut s = settings_for(&server.uri());
    s.upstream.token_timeout = Duration::from_secs(1);
    let gw = Gateway::start(s).await;
    let list = || {
        let mut c = gw.client();
        async move {
            let mut req = tonic::Request::new(ListAttachmentsRequest {
                work_order_id: 1,
                ..Default::default()
            });
            req.set_timeout(Duration::from_secs(4));
            c.list_attachments(req).await
        }
    };
    let t0 = std::time::Instant::now();
    list().await.expect("first token");
    // An 11 s token is refreshed in the background from 5.5 s and expires at 6 s
    // (5 s before its end). The refresh hangs.
    tokio::time::sleep(Duration::from_millis(5700).saturating_sub(t0.elapsed())).await;
    list()
        .await
        .expect("still the first token; the refresh goes on in the background");
    tokio::time::sleep(Duration::from_millis(6300).saturating_sub(t0.elapsed())).await;
    let started = std::time::Instant::now();
    list()
        .await
        .expect("the hung refresh ends at its timeout and a new token is fetched");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_token_expiring_during_a_long_upload_does_not_cut_it() {
    let cfg = SandboxConfig {
        token_ttl: Duration::from_secs(2),
        ..Default::default()
    };
    let h = with_sandbox_and(cfg, |_| {}).await;
    let (tx, rx) = mpsc::channel(4);
    let mut c = h.gateway.client();
    let call = tokio::spawn(async move { c.upload_attachment(ReceiverStream::new(rx)).await });
    tx.send(meta_msg(metadata(1001, "slow.bin")))
        .await
        .expect("send");
    for i in 0..6u8 {
        tx.send(chunk_msg(pattern(10_000, i))).await.expect("send");
        tokio::time::sleep(Duration::from_millis(500)).await; // 3 s in all, past the token's 2 s
    }
    drop(tx);
    call.await
        .expect("task")
        .expect("the upload outlived its token");
    // And the next call gets a fresh token.
    h.gateway
        .client()
        .list_attachments(ListAttachmentsRequest {
            work_order_id: 1001,
            ..Default::default()
        })
        .await
        .expect("list with a refreshed token");
    assert!(h.sandbox.stats().token_requests >= 2);
}

#[tokio::test]
async fn sigterm_with_ten_uploads_in_flight_lets_them_finish() {
    let mut h = with_sandbox_and(Default::default(), |s| {
        s.server.shutdown_grace = Duration::from_secs(10);
    })
    .await;
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for i in 0..10 {
        let (tx, rx) = mpsc::channel(4);
        let mut c = h.gateway.client();
        calls.push(tokio::spawn(async move {
            c.upload_attachment(ReceiverStream::new(rx)).await
        }));
        tx.send(meta_msg(metadata(1005, &format!("f{i}.bin"))))
            .await
            .expect("send");
        tx.send(chunk_msg(pattern(5000, i as u8)))
            .await
            .expect("send");
        senders.push(tx);
    }
    eventually("ten uploads under way", || {
        h.sandbox.stats().uploads_started == 10
    })
    .await;
    h.gateway.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (i, tx) in senders.into_iter().enumerate() {
        tx.send(chunk_msg(pattern(5000, i as u8 + 100)))
            .await
            .expect("send");
        drop(tx);
    }
    for call in calls {
        call.await
            .expect("task")
            .expect("finished within the grace period");
    }
    assert_eq!(h.sandbox.attachments(1005).len(), 10);
    assert_eq!(h.sandbox.stats().uploads_aborted, 0);
}

/// One finished operation of the randomized run: work order, bytes, upload
/// outcome, list success, whether the caller abandoned it, and the abandoned
/// stream's sender (kept open).
type OpResult = (
    i64,
    Vec<u8>,
    Option<Outcome>,
    Option<bool>,
    bool,
    Option<mpsc::Sender<attachment_gateway::proto::UploadAttachmentRequest>>,
);

/// Upload outcome as the caller saw it.
#[derive(Debug)]
enum Outcome {
    Stored {
        attachment_id: String,
        sha256: String,
    },
    Failed(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_run_against_a_faulty_upstream_keeps_upstream_and_answers_in_step() {
    let seed: u64 = env_or("RELIABILITY_SEED", 20261128);
    let ops: usize = env_or("RELIABILITY_OPS", 300);
    let cfg = SandboxConfig {
        faults: Some(Faults {
            seed,
            unavailable: 0.15,
            fail_mid_upload: 0.15,
            max_delay_ms: 5,
            lose_answer: 0.0,
        }),
        ..Default::default()
    };
    let h = with_sandbox_and(cfg, |s| {
        s.upstream.circuit_failure_threshold = 50;
        s.rate_limit.cool_down_after_503s = 1000;
    })
    .await;
    let mut rng = fastrand::Rng::with_seed(seed);
    let work_orders = [1001i64, 1002, 1005, 1006];
    let baseline: usize = work_orders
        .iter()
        .map(|w| h.sandbox.attachments(*w).len())
        .sum();
    let mut outcomes: Vec<(i64, Vec<u8>, Outcome)> = Vec::new();
    let mut cancelled = 0usize;
    let mut lists = (0usize, 0usize);
    let mut keep_open = Vec::new();
    let mut stream_ops = futures_util::stream::FuturesUnordered::new();
    let mut tally = |(wo, data, outcome, list_ok, was_cancelled, open): OpResult| {
        keep_open.extend(open);
        cancelled += usize::from(was_cancelled);
        if let Some(ok) = list_ok {
            lists.0 += 1;
            lists.1 += usize::from(ok);
        }
        if let Some(o) = outcome {
            outcomes.push((wo, data, o));
        }
    };
    use futures_util::StreamExt;
    for i in 0..ops {
        let wo = work_orders[rng.usize(0..work_orders.len())];
        let kind = rng.u8(0..10);
        let size = rng.usize(1..150_000);
        let chunk = rng.usize(1..70_000);
        let cancel_at = (rng.u8(0..20) == 0).then(|| rng.usize(0..=size.div_ceil(chunk)));
        let data = pattern(size, rng.u8(..));
        let mut c = h.gateway.client();
        stream_ops.push(tokio::spawn(async move {
            if kind < 3 {
                let r = c
                    .list_attachments(ListAttachmentsRequest {
                        work_order_id: wo,
                        ..Default::default()
                    })
                    .await;
                return (wo, data, None, Some(r.is_ok()), false, None);
            }
            let msgs = upload_messages(metadata(wo, &format!("r{i}.bin")), &data, chunk);
            if let Some(at) = cancel_at {
                // The caller goes away after `at` messages.
                let (tx, rx) = mpsc::channel(4);
                let call =
                    tokio::spawn(async move { c.upload_attachment(ReceiverStream::new(rx)).await });
                for m in msgs.into_iter().take(at + 1) {
                    if tx.send(m).await.is_err() {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                call.abort();
                let r = call.await;
                let outcome = match r {
                    Ok(Ok(resp)) => {
                        let r = resp.into_inner();
                        Outcome::Stored {
                            attachment_id: r.attachment_id,
                            sha256: r.sha256,
                        }
                    }
                    Ok(Err(e)) => Outcome::Failed(format!(
                        "r{i}.bin cancelled at {at}: {:?} {}",
                        e.code(),
                        e.message()
                    )),
                    Err(_) => Outcome::Failed(format!("r{i}.bin cancelled at {at}: task aborted")),
                };
                // The sender stays alive: a caller that went away never ends its
                // stream cleanly (a clean end is a complete upload).
                return (wo, data, Some(outcome), None, true, Some(tx));
            }
            let outcome = match c.upload_attachment(tokio_stream::iter(msgs)).await {
                Ok(r) => {
                    let r = r.into_inner();
                    Outcome::Stored {
                        attachment_id: r.attachment_id,
                        sha256: r.sha256,
                    }
                }
                Err(e) => Outcome::Failed(format!("r{i}.bin: {:?} {}", e.code(), e.message())),
            };
            (wo, data, Some(outcome), None, false, None)
        }));
        if stream_ops.len() >= 8
            && let Some(done) = stream_ops.next().await
        {
            tally(done.expect("task"));
        }
    }
    while let Some(done) = stream_ops.next().await {
        tally(done.expect("task"));
    }
    nothing_half_done(&h.sandbox).await;

    // The upstream holds exactly the uploads that returned OK, bytes identical.
    let mut stored: HashMap<String, (i64, Vec<u8>)> = HashMap::new();
    for wo in work_orders {
        for a in h.sandbox.attachments(wo) {
            if a.name.starts_with('r') && a.name.ends_with(".bin") {
                stored.insert(a.attachment_id.clone(), (wo, a.bytes.to_vec()));
            }
        }
    }
    let ok: Vec<_> = outcomes
        .iter()
        .filter_map(|(wo, data, o)| match o {
            Outcome::Stored {
                attachment_id,
                sha256,
            } => Some((wo, data, attachment_id, sha256)),
            Outcome::Failed(_) => None,
        })
        .collect();
    let mut mismatches = 0;
    for (wo, data, id, sha) in &ok {
        match stored.get(*id) {
            Some((swo, bytes)) if swo == *wo && bytes == *data && sha256_hex(bytes) == **sha => {}
            _ => mismatches += 1,
        }
    }
    let extra = stored.len().saturating_sub(ok.len());
    let ok_ids: std::collections::HashSet<&String> = ok.iter().map(|(_, _, id, _)| *id).collect();
    for (id, (wo, bytes)) in &stored {
        if !ok_ids.contains(id) {
            let name = h
                .sandbox
                .attachments(*wo)
                .into_iter()
                .find(|a| &a.attachment_id == id)
                .map(|a| a.name);
            println!(
                "extra attachment upstream: {id} {name:?} ({} bytes)",
                bytes.len()
            );
            if let Some(n) = &name {
                for (_, _, o) in &outcomes {
                    if let Outcome::Failed(why) = o
                        && why.starts_with(&format!("{n}:")) | why.starts_with(&format!("{n} "))
                    {
                        println!("  its caller saw: {why}");
                    }
                }
            }
        }
    }
    let st = h.sandbox.stats();
    println!(
        "randomized run (seed {seed}): {ops} calls ({} uploads, {} of them cancelled by the caller; {} lists), \
         {} faults injected; {} uploads OK, {} failed; upstream holds {} ({} before); mismatches: {mismatches}, extra: {extra}",
        outcomes.len(),
        cancelled,
        lists.0,
        st.faults_injected,
        ok.len(),
        outcomes.len() - ok.len(),
        stored.len(),
        baseline
    );
    assert!(st.faults_injected > 10, "faults were injected");
    assert!(
        ok.len() > 10 && ok.len() < outcomes.len(),
        "some uploads failed and some succeeded"
    );
    assert_eq!(mismatches, 0);
    assert_eq!(
        stored.len(),
        ok.len(),
        "no attachment beyond the OK uploads"
    );
}
