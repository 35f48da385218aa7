//! Attachment events: CorrigoPro's notifications in through the webhook listener,
//! the gateway's own writes, and `WatchAttachments` out, over real sockets. The
//! notifier is the sandbox's (its own signing, apart from the gateway's checks).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use attachment_gateway::client::{GatewayClient, Watched};
use attachment_gateway::proto::watch_attachments_response::Payload;
use attachment_gateway::proto::{
    AttachmentEventType, DeleteAttachmentRequest, EventSource, WatchAttachmentsRequest,
};
use attachment_gateway::sandbox::SandboxConfig;
use attachment_gateway::sandbox::notifier::AUDIENCE;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::Code;

use crate::common::notify::{added, bearer, forged_token, http, metric, post, token};
use crate::common::watch::{next_event, next_message, no_event_for, watch};
use crate::common::*;

#[tokio::test]
async fn a_customers_attachment_reaches_a_subscriber_with_its_fields() {
    let h = with_webhooks(|_| {}).await;
    let mut c = h.gateway.client();
    let (mut w, _) = watch(&mut c, vec![], "").await;
    let r = post(
        &h.webhook_url,
        bearer(&token(AUDIENCE, SystemTime::now())),
        &added(1001, "7c9e6679-7425-40de-944b-e07fc1f90ae7", "113cfe40-1"),
    )
    .await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let e = next_event(&mut w).await;
    assert_eq!(e.r#type, AttachmentEventType::Added as i32);
    assert_eq!(e.source, EventSource::Corrigopro as i32);
    assert_eq!(e.work_order_id, 1001);
    assert_eq!(e.upstream_message_id, "113cfe40-1");
    let a = e.attachment.clone().expect("attachment");
    assert_eq!(a.attachment_id, "7c9e6679-7425-40de-944b-e07fc1f90ae7");
    assert_eq!((a.name.as_str(), a.size_bytes), ("test.doc", 234256));
    assert_eq!(a.mime_type, "application/msword");
    assert!(a.upstream.is_some_and(|u| u.fields.contains_key("Subtype")));
    let sender = e.sender.clone().expect("sender");
    assert_eq!(
        (sender.name.as_str(), sender.r#type.as_str()),
        ("Jon Snow", "CorrigoPro")
    );
    assert_eq!(e.occurred_at.as_ref().map(|t| t.seconds), Some(1507105716));
    assert!(e.received_at.is_some());
    assert!(e.caller.is_empty());
    assert!(!e.event_id.is_empty());
}

#[tokio::test]
async fn a_notification_delivered_three_times_is_one_event() {
    let h = with_webhooks(|_| {}).await;
    let mut c = h.gateway.client();
    let (mut w, _) = watch(&mut c, vec![], "").await;
    let body = added(1001, "a-1", "dup-message");
    for _ in 0..3 {
        let r = post(
            &h.webhook_url,
            bearer(&token(AUDIENCE, SystemTime::now())),
            &body,
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let first = next_event(&mut w).await;
    assert_eq!(first.upstream_message_id, "dup-message");
    // The next event is the next notification, not a second copy.
    let r = post(
        &h.webhook_url,
        bearer(&token(AUDIENCE, SystemTime::now())),
        &added(1001, "a-2", "other-message"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        next_event(&mut w).await.upstream_message_id,
        "other-message"
    );
    assert_eq!(
        metric(&h, "webhook_requests_total{outcome=\"duplicate\"}"),
        2
    );
    assert_eq!(
        metric(&h, "webhook_requests_total{outcome=\"recorded\"}"),
        2
    );
}

#[tokio::test]
async fn refused_credentials_are_401_counted_by_reason_and_record_nothing() {
    let h = with_webhooks(|_| {}).await;
    let mut c = h.gateway.client();
    let (mut w, _) = watch(&mut c, vec![], "").await;
    let now = SystemTime::now();
    let good = token(AUDIENCE, now);
    let (data, sig) = good.split_once("<---->").expect("shape");
    let mut forged = sig.to_string();
    forged.replace_range(..1, if forged.starts_with('A') { "B" } else { "A" });
    let cases = [
        (None, "refused_missing"),
        (Some("Basic dXNlcjpwYXNz".to_string()), "refused_missing"),
        (
            bearer(&format!("{data}<---->{forged}")),
            "refused_bad_signature",
        ),
        (
            bearer(&token(AUDIENCE, now - Duration::from_secs(3 * 3600))),
            "refused_expired",
        ),
        (bearer(&token("SomeoneElse", now)), "refused_wrong_audience"),
        (bearer("not-a-token"), "refused_malformed"),
        (bearer(&forged_token()), "refused_bad_signature"),
    ];
    for (i, (auth, reason)) in cases.iter().enumerate() {
        let r = post(
            &h.webhook_url,
            auth.clone(),
            &added(1001, "x", &format!("m{i}")),
        )
        .await;
        assert_eq!(r.status(), 401, "{reason}");
        assert_eq!(
            r.headers().get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let text = r.text().await.expect("body");
        assert!(text.contains(reason), "{text}");
        assert!(!text.contains(data), "the token is never echoed");
    }
    assert_eq!(
        metric(&h, "webhook_requests_total{outcome=\"refused_missing\"}"),
        2
    );
    assert_eq!(
        metric(&h, "webhook_requests_total{outcome=\"refused_expired\"}"),
        1
    );
    no_event_for(&mut w, Duration::from_millis(300)).await;
    let r = post(&h.webhook_url, bearer(&good), &added(1001, "x", "valid")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(next_event(&mut w).await.upstream_message_id, "valid");
}

#[tokio::test]
async fn an_oversized_body_is_413_declared_or_not() {
    let h = with_webhooks(|s| s.webhooks.max_body_bytes = 4096).await;
    let auth = format!("Bearer {}", token(AUDIENCE, SystemTime::now()));
    let mut body = added(1001, "big", "big-1");
    body["Padding"] = json!("x".repeat(8000));
    let r = post(&h.webhook_url, Some(auth.clone()), &body).await;
    assert_eq!(r.status(), 413);
    // Chunked: no length declared, cut while reading.
    let chunks = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 2000]))),
    );
    let r = http()
        .post(&h.webhook_url)
        .header("authorization", auth)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413);
    assert_eq!(
        metric(&h, "webhook_requests_total{outcome=\"too_large\"}"),
        2
    );
}

/// A receiver of forwarded notifications: records each request's raw bytes and
/// answers `status`.
async fn receiver(status: u16) -> (String, tokio::sync::mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/notifications", l.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        let _ = tx.send(buf.clone()).await;
                        let answer = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                        let _ = sock.write_all(answer.as_bytes()).await;
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn other_notifications_are_forwarded_byte_for_byte_with_the_outcome_as_answer() {
    let (url, mut got) = receiver(204).await;
    let h = with_webhooks(|s| s.webhooks.forward_url = Some(url)).await;
    let mut c = h.gateway.client();
    let (mut w, _) = watch(&mut c, vec![], "").await;
    // Field order and spacing as CorrigoPro wrote them: not re-serialized.
    let raw = "{\"Header\": {\"WorkOrderId\": 1001, \"Action\": \"Accepted\", \"MessageId\": \"acc-1\"},  \"Note\":\"é\"}";
    let t = token(AUDIENCE, SystemTime::now());
    let r = http()
        .post(&h.webhook_url)
        .header("authorization", format!("Bearer {t}"))
        .header("content-type", "application/json; charset=utf-8")
        .header("event-type", "Accepted")
        .body(raw)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let req = tokio::time::timeout(Duration::from_secs(5), got.recv())
        .await
        .expect("forwarded in time")
        .expect("a request");
    assert!(
        req.ends_with(raw.as_bytes()),
        "{}",
        String::from_utf8_lossy(&req)
    );
    let head = String::from_utf8_lossy(&req).to_ascii_lowercase();
    assert!(head.starts_with("post /notifications "), "{head}");
    assert!(head.contains("event-type: accepted"), "{head}");
    assert!(
        head.contains("content-type: application/json; charset=utf-8"),
        "{head}"
    );
    no_event_for(&mut w, Duration::from_millis(200)).await;

    // A receiver that refuses: CorrigoPro is told so (and will deliver again).
    let (refusing, _got) = receiver(500).await;
    let h2 = with_webhooks(|s| s.webhooks.forward_url = Some(refusing)).await;
    let r = post(
        &h2.webhook_url,
        bearer(&t),
        &json!({"Header": {"WorkOrderId": 1, "Action": "Reopened"}}),
    )
    .await;
    assert_eq!(r.status(), 500);
    // One that is down: 502.
    let down = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        format!("http://{}/", l.local_addr().expect("addr"))
    };
    let h3 = with_webhooks(|s| s.webhooks.forward_url = Some(down)).await;
    let r = post(
        &h3.webhook_url,
        bearer(&t),
        &json!({"Header": {"WorkOrderId": 1, "Action": "Reopened"}}),
    )
    .await;
    assert_eq!(r.status(), 502);
    // No target: acknowledged and counted.
    let h4 = with_webhooks(|_| {}).await;
    let r = post(
        &h4.webhook_url,
        bearer(&t),
        &json!({"Header": {"WorkOrderId": 1, "Action": "Reopened"}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        metric(&h4, "webhook_requests_total{outcome=\"ignored\"}"),
        1
    );
}

#[tokio::test]
async fn a_work_order_received_is_recorded_and_forwarded() {
    let (url, mut got) = receiver(200).await;
    let h = with_webhooks(|s| s.webhooks.forward_url = Some(url)).await;
    let mut c = h.gateway.client();
    let (mut w, _) = watch(&mut c, vec![], "").await;
    let body = json!({
        "Header": {"WorkOrderId": 77, "Action": "NewWorkOrder", "MessageId": "wo-77"},
        "Attachments": [{"AttachmentId": "p1", "Name": "1.png"}, {"AttachmentId": "p2", "Name": "2.png"}]
    });
    let r = post(
        &h.webhook_url,
        bearer(&token(AUDIENCE, SystemTime::now())),
        &body,
    )
    .await;
    assert_eq!(r.status(), 200);
    let ids = [next_event(&mut w).await, next_event(&mut w).await]
        .map(|e| e.attachment.map(|a| a.attachment_id).unwrap_or_default());
    assert_eq!(ids, ["p1".to_string(), "p2".to_string()]);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), got.recv())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_resumed_watch_gets_exactly_what_it_missed() {
    let h = with_webhooks(|_| {}).await;
    let mut c = h.gateway.client();
    let (mut w, _) = watch(&mut c, vec![], "").await;
    let send = |i: usize| {
        let url = h.webhook_url.clone();
        async move {
            let r = post(
                &url,
                bearer(&token(AUDIENCE, SystemTime::now())),
                &added(1001, &format!("a{i}"), &format!("m{i}")),
            )
            .await;
            assert_eq!(r.status(), 200);
        }
    };
    for i in 0..2 {
        send(i).await;
    }
    next_event(&mut w).await;
    let second = next_event(&mut w).await;
    drop(w);
    for i in 2..5 {
        send(i).await;
    }
    let (mut w, _) = watch(&mut c, vec![], &second.event_id).await;
    for i in 2..5 {
        assert_eq!(
            next_event(&mut w).await.upstream_message_id,
            format!("m{i}")
        );
    }
    no_event_for(&mut w, Duration::from_millis(200)).await;
    send(5).await;
    assert_eq!(next_event(&mut w).await.upstream_message_id, "m5");
}

#[tokio::test]
async fn a_cursor_past_retention_is_out_of_range_and_a_foreign_one_invalid() {
    let h = with_webhooks(|s| s.events.max_events = 3).await;
    let mut c = h.gateway.client();
    let (_w, start) = watch(&mut c, vec![], "").await;
    for i in 0..5 {
        let r = post(
            &h.webhook_url,
            bearer(&token(AUDIENCE, SystemTime::now())),
            &added(1001, "a", &format!("r{i}")),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let err = c
        .watch_attachments(WatchAttachmentsRequest {
            work_order_ids: vec![],
            after_event_id: start,
        })
        .await
        .expect_err("too old");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert_eq!(error_reason(&err), "CURSOR_EXPIRED");
    assert!(
        err.message().contains("ListAttachments"),
        "{}",
        err.message()
    );
    let err = c
        .watch_attachments(WatchAttachmentsRequest {
            work_order_ids: vec![0],
            after_event_id: "not a cursor".into(),
        })
        .await
        .expect_err("bad");
    assert_invalid(&err, "after_event_id", "INVALID_FORMAT");
    assert_invalid(&err, "work_order_ids", "OUT_OF_RANGE");
    // A cursor of this log past its head (never given out), up to u64::MAX.
    let (_w2, now) = watch(&mut c, vec![], "").await;
    let epoch = now.rsplit_once('-').expect("epoch-seq").0.to_string();
    for seq in [99u64, u64::MAX] {
        let err = c
            .watch_attachments(WatchAttachmentsRequest {
                work_order_ids: vec![],
                after_event_id: format!("{epoch}-{seq}"),
            })
            .await
            .expect_err("from the future");
        assert_invalid(&err, "after_event_id", "OUT_OF_RANGE");
    }
}

#[tokio::test]
async fn a_filtered_watch_sees_its_work_orders_and_a_cursor_past_the_rest() {
    let h = with_webhooks(|s| s.events.heartbeat_interval = Duration::from_secs(1)).await;
    let mut c = h.gateway.client();
    let (mut w, _) = watch(&mut c, vec![1002], "").await;
    for (wo, m) in [(1001, "x1"), (1002, "y1"), (1001, "x2")] {
        let r = post(
            &h.webhook_url,
            bearer(&token(AUDIENCE, SystemTime::now())),
            &added(wo, "a", m),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let e = next_event(&mut w).await;
    assert_eq!(
        (e.work_order_id, e.upstream_message_id.as_str()),
        (1002, "y1")
    );
    // The heartbeat's cursor is past the events the filter left out.
    let beat = loop {
        if let Some(Payload::Heartbeat(b)) = next_message(&mut w).await.payload {
            break b;
        }
    };
    assert_ne!(beat.last_event_id, e.event_id);
    let (mut all, _) = watch(&mut c, vec![], &beat.last_event_id).await;
    no_event_for(&mut all, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_stalled_subscriber_is_ended_with_its_cursor_and_costs_a_bounded_buffer() {
    let h = with_webhooks(|s| {
        s.events.subscriber_buffer = 4;
        s.events.subscriber_stall_timeout = Duration::from_millis(300);
    })
    .await;
    let mut c = h.gateway.client();
    let (mut w, start) = watch(&mut c, vec![], "").await;
    // Events far larger in all than the buffer and the HTTP/2 windows (each
    // under the 16 KiB past which `upstream` is left out).
    post_large(&h, "s", 250).await;
    // Not reading: the gateway ends the watch once its buffer stays full.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        metric(&h, "event_subscribers "),
        1,
        "counted until the caller's stream ends"
    );
    // What was buffered arrives, then ABORTED naming the resume point.
    let mut received = Vec::new();
    let status = loop {
        match w.message().await {
            Ok(Some(m)) => {
                if let Some(Payload::Event(e)) = m.payload {
                    received.push(e);
                }
            }
            Ok(None) => panic!("a watch never ends without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(error_reason(&status), "SUBSCRIBER_STALLED");
    assert!(
        received.len() < 250,
        "bounded: {} of 250 were in flight",
        received.len()
    );
    let resume = error_metadata(&status)
        .get("resume_after_event_id")
        .cloned()
        .expect("resume point");
    let last = received.last().map_or(start, |e| e.event_id.clone());
    assert_eq!(resume, last, "the resume point is the last event delivered");
    drop(w);
    eventually_async("the ended watch's slot is free", || async {
        metric(&h, "event_subscribers ") == 0
    })
    .await;
    let (mut again, _) = watch(&mut c, vec![], &resume).await;
    let next = next_event(&mut again).await;
    assert_eq!(next.upstream_message_id, format!("s{}", received.len()));
}

/// Posts `n` notifications of ~15 KB (each under the 16 KiB past which
/// `upstream` is left out), message ids `<prefix>0…`, one token for all.
async fn post_large(h: &Hooked, prefix: &str, n: usize) {
    let auth = bearer(&token(AUDIENCE, SystemTime::now()));
    let big = "x".repeat(15_000);
    for i in 0..n {
        let mut body = added(1001, "a", &format!("{prefix}{i}"));
        body["Padding"] = json!(big);
        let r = post(&h.webhook_url, auth.clone(), &body).await;
        assert_eq!(r.status(), 200);
    }
}

async fn eventually_async<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..250 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn the_gateways_own_upload_update_and_delete_are_events() {
    let h = with_webhooks(|_| {}).await;
    let mut c = h.gateway.client();
    let (mut w, _) = watch(&mut c, vec![1001], "").await;
    let up = c
        .upload_attachment(futures_util::stream::iter(upload_messages(
            metadata(1001, "mine.txt"),
            b"my file",
            3,
        )))
        .await
        .expect("upload")
        .into_inner();
    let e = next_event(&mut w).await;
    assert_eq!(e.r#type, AttachmentEventType::Added as i32);
    assert_eq!(e.source, EventSource::Gateway as i32);
    assert!(!e.caller.is_empty());
    assert!(e.sender.is_none());
    let a = e.attachment.expect("attachment");
    assert_eq!(a.attachment_id, up.attachment_id);
    assert_eq!((a.name.as_str(), a.size_bytes), ("mine.txt", 7));
    c.delete_attachment(DeleteAttachmentRequest {
        work_order_id: 1001,
        attachment_id: up.attachment_id.clone(),
        message_id: "del-1".into(),
    })
    .await
    .expect("delete");
    let e = next_event(&mut w).await;
    assert_eq!(e.r#type, AttachmentEventType::Removed as i32);
    assert_eq!(e.upstream_message_id, "del-1");
    // Replaying the same delete (same message id) records nothing new.
    c.delete_attachment(DeleteAttachmentRequest {
        work_order_id: 1001,
        attachment_id: up.attachment_id,
        message_id: "del-1".into(),
    })
    .await
    .expect("replayed delete");
    no_event_for(&mut w, Duration::from_millis(200)).await;
}

async fn customer(
    h: &Hooked,
    method: reqwest::Method,
    path: &str,
    body: &str,
) -> reqwest::Response {
    http()
        .request(method, format!("http://{}{path}", h.sandbox.addr()))
        .header("content-type", "text/plain")
        .body(body.to_string())
        .send()
        .await
        .expect("customer action")
}

#[tokio::test]
async fn the_sandboxs_customer_actions_reach_a_watch() {
    let h = with_webhooks(|_| {}).await;
    let mut c = h.gateway.client();
    let (mut w, _) = watch(&mut c, vec![], "").await;
    let r = customer(
        &h,
        reqwest::Method::POST,
        "/sandbox/customer/work-orders/1001/attachments?name=leak.jpg",
        "jpeg bytes",
    )
    .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("json")["attachment_id"]
        .as_str()
        .expect("id")
        .to_string();
    let e = next_event(&mut w).await;
    assert_eq!(e.r#type, AttachmentEventType::Added as i32);
    let a = e.attachment.expect("attachment");
    assert_eq!(
        (a.attachment_id.as_str(), a.name.as_str()),
        (id.as_str(), "leak.jpg")
    );
    // The customer's file is the upstream's: listing it through the gateway works.
    assert!(
        h.sandbox
            .attachments(1001)
            .iter()
            .any(|s| s.attachment_id == id)
    );
    let r = customer(
        &h,
        reqwest::Method::DELETE,
        &format!("/sandbox/customer/work-orders/1001/attachments/{id}"),
        "",
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        next_event(&mut w).await.r#type,
        AttachmentEventType::Removed as i32
    );
    let r = http()
        .post(format!("http://{}/sandbox/customer/work-orders", h.sandbox.addr()))
        .json(&json!({"attachments": [{"name": "a.txt", "content": "a"}, {"name": "b.txt", "content": "b"}]}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let wo = r.json::<Value>().await.expect("json")["work_order_id"]
        .as_i64()
        .expect("id");
    for name in ["a.txt", "b.txt"] {
        let e = next_event(&mut w).await;
        assert_eq!(e.work_order_id, wo);
        assert_eq!(e.attachment.map(|a| a.name).unwrap_or_default(), name);
    }
    let r = customer(
        &h,
        reqwest::Method::POST,
        &format!("/sandbox/customer/work-orders/{wo}/actions/Accepted"),
        "",
    )
    .await;
    assert_eq!(r.status(), 202);
    no_event_for(&mut w, Duration::from_millis(300)).await;
    eventually("every notification delivered", || {
        let d = h.sandbox.deliveries();
        d.len() == 4 && d.iter().all(|d| d.delivered)
    })
    .await;
}

#[tokio::test]
async fn the_sandbox_delivers_again_on_its_schedule_until_acknowledged() {
    // A "minute" of 20 ms: tries after 0, 100, 300 ms…
    let cfg = SandboxConfig {
        notification_retry_minute: Duration::from_millis(20),
        ..Default::default()
    };
    let h = with_webhooks_and(cfg, |_| {}).await;
    let mut c = h.gateway.client();
    let (mut w, _) = watch(&mut c, vec![], "").await;
    // The receiver is away at first.
    let away = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        format!(
            "http://{}{}",
            l.local_addr().expect("addr"),
            attachment_gateway::webhooks::PATH
        )
    };
    h.sandbox.deliver_to(away);
    let r = customer(
        &h,
        reqwest::Method::POST,
        "/sandbox/customer/work-orders/1002/attachments?name=late.txt",
        "late",
    )
    .await;
    assert_eq!(r.status(), 201);
    eventually("a failed try", || {
        h.sandbox.deliveries().first().is_some_and(|d| d.tries >= 1)
    })
    .await;
    assert!(!h.sandbox.deliveries()[0].delivered);
    h.sandbox.deliver_to(h.webhook_url.clone());
    let e = next_event(&mut w).await;
    assert_eq!(e.work_order_id, 1002);
    // The event can reach the watch before the sandbox notes its 2xx.
    eventually("the delivery acknowledged", || {
        h.sandbox.deliveries()[0].delivered
    })
    .await;
    let d = h.sandbox.deliveries()[0].clone();
    assert!(d.delivered && d.tries >= 2, "{d:?}");
}

#[tokio::test]
async fn the_client_resumes_a_watch_by_itself_and_loses_nothing() {
    let h = with_webhooks(|s| {
        s.events.subscriber_buffer = 1;
        s.events.subscriber_stall_timeout = Duration::from_millis(100);
    })
    .await;
    let client = GatewayClient::builder(format!("http://{}", h.gateway.addr))
        .connect()
        .await
        .expect("client");
    let mut events = Box::pin(client.watch(vec![], None));
    // The first heartbeat: the watch is open.
    assert!(matches!(
        events.next().await,
        Some(Ok(Watched::Heartbeat(_)))
    ));
    post_large(&h, "c", 150).await;
    // A slow reader: stalls, is ended by the gateway, and resumes by itself.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut got = Vec::new();
    let mut resumed = 0;
    while got.len() < 150 {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
            Ok(Some(Ok(Watched::Event(e)))) => got.push(e.upstream_message_id),
            Ok(Some(Ok(Watched::Resuming { reason, .. }))) => {
                assert_eq!(reason.code, Code::Aborted, "{reason:?}");
                resumed += 1;
            }
            Ok(Some(Ok(Watched::Heartbeat(_)))) => {}
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert!(
        resumed >= 1,
        "the gateway ended the stalled watch at least once"
    );
    let want: Vec<String> = (0..150).map(|i| format!("c{i}")).collect();
    assert_eq!(got, want, "every event once, in order");
}

#[tokio::test]
async fn watches_are_bounded_per_caller() {
    let h = with_webhooks(|s| {
        s.events.max_subscribers = 3;
        s.events.max_subscribers_per_caller = 2;
    })
    .await;
    let mut c = h.gateway.client();
    let _a = watch(&mut c, vec![], "").await;
    let _b = watch(&mut c, vec![], "").await;
    let err = c
        .watch_attachments(WatchAttachmentsRequest::default())
        .await
        .expect_err("a third");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    drop(_a);
    eventually_async("the slot is free again", || {
        let mut c = c.clone();
        async move {
            c.watch_attachments(WatchAttachmentsRequest::default())
                .await
                .is_ok()
        }
    })
    .await;
}

#[tokio::test]
async fn an_attachment_notification_missing_its_work_order_is_refused_not_dropped() {
    let h = with_webhooks(|_| {}).await;
    let r = post(
        &h.webhook_url,
        bearer(&token(AUDIENCE, SystemTime::now())),
        &json!({"AttachmentId": "a", "Header": {"Action": "AttachmentRemoved", "MessageId": "x"}}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = http()
        .post(&h.webhook_url)
        .header(
            "authorization",
            format!("Bearer {}", token(AUDIENCE, SystemTime::now())),
        )
        .body("not json")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    let r = http().get(&h.webhook_url).send().await.expect("get");
    assert_eq!(r.status(), 405);
    let other = h.webhook_url.replace("/webhooks/corrigopro", "/other");
    assert_eq!(http().post(other).send().await.expect("post").status(), 404);
    let _ = Arc::clone(&h.metrics);
}

#[tokio::test]
async fn failed_checks_from_one_address_are_throttled_before_any_check() {
    let h = with_webhooks(|s| {
        s.webhooks.failed_checks = attachment_gateway::config::Rate { rps: 2, burst: 20 };
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..30 {
        let r = post(
            &h.webhook_url,
            bearer(&forged_token()),
            &added(1001, "x", &format!("t{i}")),
        )
        .await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let wait: u64 = r.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("seconds");
            assert!((1..=60).contains(&wait), "{wait}");
        }
    }
    // A burst of 20 failures is checked; past it the address waits (a token
    // or two refill meanwhile, at 2/s).
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(
        statuses[20..].iter().filter(|s| **s == 429).count() >= 7,
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(metric(&h, "webhook_requests_total{outcome=\"throttled\"}") >= 7);
}

/// Reads one HTTP/1.1 response head (up to its blank line) off `tcp`.
async fn response_head(tcp: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte))
            .await
            .expect("an answer in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "connection closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// CorrigoPro's deliveries carry `Expect: 100-continue` and `Connection:
/// Keep-Alive`: a verified sender is told to go on before it sends its body,
/// a refused one gets its 401 without sending it, and one connection carries
/// the next delivery.
#[tokio::test]
async fn a_delivery_that_expects_100_continue_is_told_to_go_on() {
    let h = with_webhooks(|_| {}).await;
    let addr = h.webhook_addr();
    let mut tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = |auth: &str, len: usize| {
        format!(
            "POST /webhooks/corrigopro HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json; charset=utf-8\r\n\
             Authorization: {auth}\r\nEvent-Type: AttachmentAdded\r\nExpect: 100-continue\r\n\
             Connection: Keep-Alive\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    let good = format!("Bearer {}", token(AUDIENCE, SystemTime::now()));
    for (i, id) in ["expect-1", "expect-2"].into_iter().enumerate() {
        let body = added(1001, &format!("att-{id}"), id).to_string();
        tcp.write_all(head(&good, body.len()).as_bytes())
            .await
            .expect("head");
        let first = response_head(&mut tcp).await;
        assert!(first.starts_with("HTTP/1.1 100"), "delivery {i}: {first}");
        tcp.write_all(body.as_bytes()).await.expect("body");
        let answer = response_head(&mut tcp).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "delivery {i}: {answer}");
        // Drain the (small, length-stated) answer body before the next request.
        let len: usize = answer
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut rest = vec![0u8; len];
        tcp.read_exact(&mut rest).await.expect("answer body");
    }
    // Refused: the 401 comes without the body being asked for.
    let mut tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    tcp.write_all(head("Bearer nope", 10).as_bytes())
        .await
        .expect("head");
    let refused = response_head(&mut tcp).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
}

#[tokio::test]
async fn the_webhook_port_speaks_http1_only() {
    let h = with_webhooks(|_| {}).await;
    let addr = h.webhook_addr();
    // HTTP/2 with prior knowledge (h2c): one connection would carry many
    // streams past the connection cap. It is not served.
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let served = async {
        let (client, conn) = h2::client::handshake(tcp).await.ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.ok()?;
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/webhooks/corrigopro"))
            .body(())
            .ok()?;
        let (resp, _) = client.send_request(req, true).ok()?;
        resp.await.ok()
    };
    let got = tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("answered or refused in time");
    assert!(got.is_none(), "an HTTP/2 request was served: {got:?}");
    // HTTP/1.1 is served as before.
    let r = post(&h.webhook_url, None, &added(1001, "a", "h1")).await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn open_watches_end_as_the_listener_closes_not_after_the_grace_period() {
    let mut h = with_webhooks(|s| {
        s.server.drain_delay = Duration::ZERO;
        s.server.shutdown_grace = Duration::from_secs(20);
    })
    .await;
    let mut c = h.gateway.client();
    let (mut w, _) = watch(&mut c, vec![], "").await;
    let t = std::time::Instant::now();
    h.gateway.shutdown();
    let st = loop {
        match tokio::time::timeout(Duration::from_secs(5), w.message())
            .await
            .expect("the watch ends within seconds")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a watch never ends cleanly"),
            Err(s) => break s,
        }
    };
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    assert_eq!(error_reason(&st), "GATEWAY_SHUTTING_DOWN");
    let join = h.gateway.join.take().expect("join");
    tokio::time::timeout(Duration::from_secs(5), join)
        .await
        .expect("the server stops without waiting for the grace period")
        .expect("task")
        .expect("clean stop");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_flood_of_bad_requests_does_not_lock_out_a_sender_that_verified() {
    let h = with_webhooks(|s| {
        s.webhooks.failed_checks = attachment_gateway::config::Rate { rps: 1, burst: 5 };
    })
    .await;
    let good = token(AUDIENCE, SystemTime::now());
    assert_eq!(
        post(&h.webhook_url, bearer(&good), &added(1001, "g1", "good-1"))
            .await
            .status(),
        200
    );
    // Bad requests from the same address (behind an ingress, every sender's)
    // empty the failure budget.
    let mut throttled = false;
    for i in 0..20 {
        let r = post(
            &h.webhook_url,
            bearer(&forged_token()),
            &added(1001, "x", &format!("bad-{i}")),
        )
        .await;
        throttled |= r.status() == 429;
    }
    assert!(throttled, "the flood is throttled");
    // The sender whose credential verified lately is still heard, and checked.
    assert_eq!(
        post(&h.webhook_url, bearer(&good), &added(1001, "g2", "good-2"))
            .await
            .status(),
        200
    );
    // A credential never seen waits with the rest until the flood stops.
    for i in 0..10 {
        post(
            &h.webhook_url,
            bearer(&forged_token()),
            &added(1001, "x", &format!("bad-again-{i}")),
        )
        .await;
    }
    let new = token(AUDIENCE, SystemTime::now() - Duration::from_secs(120));
    assert_ne!(new, good);
    assert_eq!(
        post(&h.webhook_url, bearer(&new), &added(1001, "g3", "good-3"))
            .await
            .status(),
        429
    );
}

/// A watch whose feed waits on a full buffer when the gateway shuts down ends
/// UNAVAILABLE `GATEWAY_SHUTTING_DOWN` after what was buffered, as an idle one
/// does; never as a clean end, which would read as complete.
#[tokio::test]
async fn a_watch_blocked_on_a_full_buffer_at_shutdown_ends_shutting_down() {
    let mut h = with_webhooks(|s| {
        s.events.subscriber_buffer = 2;
        s.events.subscriber_stall_timeout = Duration::from_secs(60);
        s.server.drain_delay = Duration::ZERO;
        s.server.shutdown_grace = Duration::from_secs(20);
    })
    .await;
    let mut c = h.gateway.client();
    let (mut w, _) = watch(&mut c, vec![], "").await;
    // More than the buffer and the HTTP/2 windows hold: the feed waits.
    post_large(&h, "full", 300).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.gateway.shutdown();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("the watch ends within seconds")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a watch never ends cleanly"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_reason(&status), "GATEWAY_SHUTTING_DOWN");
}
