//! The webhook port under a flood, from one source address (as behind an
//! ingress, where every sender has the ingress's address): 300 connections that
//! hold the port (half trickle a request head that never ends, half send a
//! body-less POST every 9 s and sit idle between), and more than 1000 bad
//! requests a second (no credential, garbage, and well-formed tokens signed by
//! another key), while CorrigoPro's notifications arrive once a second with the
//! token it has in use (CorrigoPro reuses a token until it nears expiry). Every
//! notification must be acknowledged within 2 s, for 30 s.
//!
//! The forged tokens are of two kinds: 64 replayed over and over (each costs
//! one signature check, then is refused from memory), and a unique one every
//! 2.5 ms (each costs a check: 400 a second, under the 1000 a second of
//! `webhooks.failed_checks`). When CorrigoPro moves to a new token mid-flood,
//! that token has not verified yet; with the budget not spent by replays, its
//! first delivery gets through (at most 3 tries, as CorrigoPro retries each
//! second; a refusal may only be 429, never 401). A flood of unique forged
//! tokens *above* the budget would hold a new token back (429) until it
//! subsides: docs/security.md says so.
//!
//! A test binary of its own: it keeps both cores busy for half a minute, which
//! would slow the timing of tests running beside it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use attachment_gateway::sandbox::notifier::{AUDIENCE, Signer};
use attachment_gateway::sandbox::{NOTIFIER_KEY_PEM, SandboxConfig};
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OTHER_KEY_PEM: &str = include_str!("fixtures/webhooks/other-key.pem");
const HOLDERS: usize = 300;
const FLOOD_TASKS: usize = 12;
const RUN_FOR: Duration = Duration::from_secs(30);

fn request(auth: Option<&str>, body: &str) -> Vec<u8> {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: Bearer {a}\r\n"));
    format!(
        "POST /webhooks/corrigopro HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json; charset=utf-8\r\nEvent-Type: AttachmentAdded\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An "attachment added" notification as CorrigoPro sends it.
fn notification(attachment_id: &str, message_id: &str) -> String {
    json!({
        "AttachmentId": attachment_id, "Name": "test.doc", "MimeType": "application/msword",
        "Size": 234256, "Header": {"WorkOrderId": 1001, "Action": "AttachmentAdded",
        "ActionDate": "2017-10-04T08:28:36.9484279Z", "ApiVersion": "1.0",
        "MessageId": message_id}
    })
    .to_string()
}

/// A token of `signer`'s for the gateway, issued now, valid 20 minutes.
fn token_of(signer: &Signer, gzip: bool) -> String {
    signer
        .token(AUDIENCE, SystemTime::now(), Duration::from_secs(1200), gzip)
        .expect("token")
}

/// Sends one request on a new connection; the status, if an answer came.
async fn once(addr: &str, req: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(req).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    loop {
        let n = s.read(&mut buf[got..]).await.ok()?;
        if n == 0 {
            break;
        }
        got += n;
        if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") || got == buf.len() {
            break;
        }
    }
    let head = std::str::from_utf8(&buf[..got]).ok()?;
    head.split(' ').nth(1)?.parse().ok()
}

/// A connection that sends a request head, a line every 9 s, and never ends it.
async fn trickler(addr: String, stop: Arc<AtomicBool>, closed: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut alive = s
            .write_all(b"POST /webhooks/corrigopro HTTP/1.1\r\nHost: gw\r\n")
            .await
            .is_ok();
        while alive && !stop.load(Ordering::Relaxed) {
            let mut b = [0u8; 64];
            match tokio::time::timeout(Duration::from_secs(9), s.read(&mut b)).await {
                Ok(_) => alive = false,
                Err(_) => alive = s.write_all(b"X-Still-Here: 1\r\n").await.is_ok(),
            }
        }
        closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection that sits idle for 9 s, then sends a body-less POST without a
/// credential (refused, and closed), again and again.
async fn idler(addr: String, stop: Arc<AtomicBool>, offset: Duration) {
    tokio::time::sleep(offset).await;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::time::sleep(Duration::from_secs(9)).await;
        let _ = s
            .write_all(
                b"POST /webhooks/corrigopro HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n",
            )
            .await;
        let mut b = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrigopros_notifications_get_through_a_flood_from_the_same_address() {
    let h = with_webhooks_and(SandboxConfig::default(), |_| {}).await;
    let addr = h.webhook_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicU64::new(0));
    for i in 0..HOLDERS {
        if i % 2 == 0 {
            tokio::spawn(trickler(
                addr.clone(),
                Arc::clone(&stop),
                Arc::clone(&closed),
            ));
        } else {
            let offset = Duration::from_millis((i as u64 * 37) % 9000);
            tokio::spawn(idler(addr.clone(), Arc::clone(&stop), offset));
        }
    }
    // CorrigoPro's token in use: it delivered before the flood began.
    let signer = Signer::from_pem(NOTIFIER_KEY_PEM).expect("key");
    let mut token = token_of(&signer, false);
    let warm = notification("a-warm", "flood-warm");
    assert_eq!(
        once(&addr, &request(Some(&token), &warm)).await,
        Some(200),
        "delivered before the flood"
    );
    // Forged tokens are made before the flood (signing is the slow part).
    let other = Signer::from_pem(OTHER_KEY_PEM).expect("key");
    let forged: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..64)
            .map(|i| {
                let t = other
                    .token(
                        AUDIENCE,
                        SystemTime::now() - Duration::from_secs(i),
                        Duration::from_secs(1200),
                        i % 2 == 0,
                    )
                    .expect("token");
                request(Some(&t), r#"{"Header": {}}"#)
            })
            .collect(),
    );
    let bad_sent = Arc::new(AtomicU64::new(0));
    // Unique forged tokens: the same forged token with its signature's middle
    // rewritten from a counter (well-formed, a check each), every 2.5 ms.
    let unique_sent = Arc::new(AtomicU64::new(0));
    {
        let (addr, stop, unique_sent) = (addr.clone(), Arc::clone(&stop), Arc::clone(&unique_sent));
        let base = token_of(&other, false);
        tokio::spawn(async move {
            const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let (data, sig) = base.split_once("<---->").expect("shape");
            let mut tick = tokio::time::interval(Duration::from_micros(2500));
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let mut sig = sig.as_bytes().to_vec();
                let mid = sig.len() / 2;
                for (i, b) in sig[mid..mid + 4].iter_mut().enumerate() {
                    *b = B64[((n >> (6 * i)) & 63) as usize];
                }
                n += 1;
                let t = format!("{data}<---->{}", String::from_utf8_lossy(&sig));
                let (addr, unique_sent) = (addr.clone(), Arc::clone(&unique_sent));
                tokio::spawn(async move {
                    once(&addr, &request(Some(&t), r#"{"Header": {}}"#)).await;
                    unique_sent.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
    }
    let flood_started = Instant::now();
    for task in 0..FLOOD_TASKS {
        let (addr, stop, forged, bad_sent) = (
            addr.clone(),
            Arc::clone(&stop),
            Arc::clone(&forged),
            Arc::clone(&bad_sent),
        );
        tokio::spawn(async move {
            let garbage = [request(None, "{}"), request(Some("nonsense"), "{}")];
            let mut i = task;
            while !stop.load(Ordering::Relaxed) {
                let req = match i % 4 {
                    0 => &garbage[0],
                    1 => &garbage[1],
                    _ => &forged[i % forged.len()],
                };
                once(&addr, req).await;
                bad_sent.fetch_add(1, Ordering::Relaxed);
                i += FLOOD_TASKS;
            }
        });
    }
    // CorrigoPro: one notification a second, with its token in use.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut worst = Duration::ZERO;
    let mut answers = Vec::new();
    let mut new_token_answers = Vec::new();
    let deliveries = RUN_FOR.as_secs();
    for n in 0..deliveries {
        let tick = Instant::now();
        let body = notification(&format!("a-{n}"), &format!("flood-{n}"));
        if n == deliveries / 3 {
            // A new token, delivered as CorrigoPro retries: every second.
            token = token_of(&signer, true);
            for _ in 0..3 {
                let status = tokio::time::timeout(
                    Duration::from_secs(2),
                    once(&addr, &request(Some(&token), &body)),
                )
                .await
                .ok()
                .flatten();
                new_token_answers.push(status);
                if status == Some(200) {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            continue;
        }
        let status = tokio::time::timeout(
            Duration::from_secs(2),
            once(&addr, &request(Some(&token), &body)),
        )
        .await;
        let took = tick.elapsed();
        worst = worst.max(took);
        answers.push((n, status.ok().flatten(), took));
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(took)).await;
    }
    let flood_secs = flood_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let rate = bad_sent.load(Ordering::Relaxed) as f64 / flood_secs;
    let unique_rate = unique_sent.load(Ordering::Relaxed) as f64 / flood_secs;
    println!(
        "bad requests: {rate:.0}/s over {flood_secs:.0} s (of which unique forged tokens {unique_rate:.0}/s); holders' connections closed by the gateway: {}; slowest delivery: {worst:?}; a new token's tries: {new_token_answers:?}",
        closed.load(Ordering::Relaxed)
    );
    assert!(
        unique_rate > 200.0,
        "unique forged tokens kept coming: {unique_rate:.0}/s"
    );
    assert_eq!(
        new_token_answers.last(),
        Some(&Some(200)),
        "a new token gets through as CorrigoPro retries: {new_token_answers:?}"
    );
    assert!(
        new_token_answers
            .iter()
            .all(|s| matches!(s, Some(200 | 429))),
        "a new token is held back (429), never refused: {new_token_answers:?}"
    );
    let failed: Vec<_> = answers
        .iter()
        .filter(|(_, s, took)| *s != Some(200) || *took > Duration::from_secs(2))
        .collect();
    assert!(
        failed.is_empty(),
        "deliveries not acknowledged in 2 s: {failed:?}"
    );
    assert!(
        rate > 1000.0,
        "the flood must exceed 1000 bad requests/s to mean anything: {rate:.0}/s"
    );
    // The port was full: connections were shed to admit new ones.
    let shed = h
        .metrics
        .render()
        .lines()
        .find(|l| l.starts_with("attachment_gateway_connections_shed_total{listener=\"webhooks\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(shed > 0.0, "the cap was reached and connections were shed");
}
