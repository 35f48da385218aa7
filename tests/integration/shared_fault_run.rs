//! The seeded randomized fault run: gateway replicas (one with its state in
//! process, or three sharing one Redis) and one fault-injecting sandbox
//! upstream that also loses answers after applying writes (the connection
//! dropped, or a 502). With Redis: Redis paused (SIGSTOP) a few times, so
//! records' COMPLETEs and event appends are lost or late, and one replica cut
//! off from Redis past its lease while the upstream stays in reach. Some
//! attempts carry a deadline short enough to expire while the write's outcome
//! and event are recorded; the sandbox's customer adds attachments, notified
//! to a replica's webhook port; a watch follows the event log all along,
//! resuming from its cursor when it is interrupted.
//!
//! Every upload carries a message id of its own; a caller whose attempt fails
//! in a way that may be retried sends the same upload again, with the same
//! message id, to another replica. Afterwards: one attachment upstream per
//! message id, bytes identical; every OK answer for one message id names the
//! same attachment; an upload held upstream was answered OK or its caller was
//! told the outcome was not known; exactly one event per applied write (the
//! gateway's and the customer's), none for a write that did not happen; and
//! the watch that resumed saw exactly the log, in order: no cursor skipped an
//! event.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attachment_gateway::proto::watch_attachments_response::Payload;
use attachment_gateway::proto::{
    AttachmentEventType, EventSource, ListAttachmentsRequest, UploadAttachmentRequest,
    WatchAttachmentsRequest,
};
use attachment_gateway::sandbox::{Faults, Sandbox, SandboxConfig, StoredAttachment};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::common::proxy::Proxy;
use crate::common::redis::RedisServer;
use crate::common::*;

/// Attempts per upload (and again after an OK answer the caller "lost").
const MAX_ATTEMPTS: usize = 5;
/// Calls in flight at once, as in the one-gateway run.
const CONCURRENCY: usize = 8;
/// Names of this run's uploads start with this (the sandbox has attachments of
/// its own on the same work orders).
const PREFIX: &str = "sfr";

/// What one attempt got.
#[derive(Debug, Clone)]
enum Answer {
    Ok {
        attachment_id: String,
        sha256: String,
    },
    Err {
        code: Code,
        reason: String,
        retry_safe: String,
        message: String,
        retryable: bool,
        retry_delay: Option<Duration>,
    },
    /// The caller went away mid-stream; no answer.
    Abandoned { at: usize },
}

impl Answer {
    fn from_status(s: &Status) -> Self {
        let retry_safe = error_metadata(s)
            .get("retry_safe")
            .cloned()
            .unwrap_or_default();
        // Retried: what the gateway says is safe to repeat, UNAVAILABLE, and
        // transport errors (no ErrorInfo at all: the gateway did not answer).
        let retryable = match retry_safe.as_str() {
            "true" => true,
            "" => matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ),
            _ => s.code() == Code::Unavailable,
        };
        Answer::Err {
            code: s.code(),
            reason: error_reason(s),
            retry_safe,
            message: s.message().to_string(),
            retryable,
            retry_delay: retry_delay(s),
        }
    }

    fn ok_id(&self) -> Option<(&str, &str)> {
        match self {
            Answer::Ok {
                attachment_id,
                sha256,
            } => Some((attachment_id, sha256)),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Attempt {
    replica: usize,
    answer: Answer,
}

/// How one logical upload goes, drawn from the run's seed.
struct Plan {
    chunk: usize,
    /// The first attempt is abandoned after this many messages.
    cancel_at: Option<usize>,
    /// After abandoning, the caller comes back and sends the upload again.
    come_back: bool,
    /// The caller loses its first OK answer and sends the upload again.
    lose_answer: bool,
    rng_seed: u64,
    /// Replicas to pick from.
    replicas: usize,
}

/// One logical upload: one message id, one file, its attempts in order.
struct Upload {
    work_order_id: i64,
    name: String,
    message_id: String,
    data: Vec<u8>,
    /// Messages in one complete stream (the metadata and the chunks).
    messages: usize,
    attempts: Vec<Attempt>,
    abandoned: bool,
    came_back: bool,
    /// Attempts made because the one before failed retryably.
    retries: usize,
    /// Sent again after an OK answer the caller "lost".
    resent_after_ok: bool,
    /// An abandoned stream stays open: a caller that went away never ends its
    /// stream cleanly (a clean end is a complete upload).
    keep_open: Option<mpsc::Sender<UploadAttachmentRequest>>,
}

impl Upload {
    /// The caller's last answer told it the outcome was not known (it may
    /// have been applied): an unknown outcome, a pending one, or a deadline.
    fn told_unknown(&self) -> bool {
        matches!(
            self.attempts.last().map(|a| &a.answer),
            Some(Answer::Err { reason, .. })
                if matches!(reason.as_str(), "OUTCOME_UNKNOWN" | "OUTCOME_PENDING" | "DEADLINE_EXCEEDED")
        ) || matches!(
            self.attempts.last().map(|a| &a.answer),
            Some(Answer::Err { retry_safe, .. }) if retry_safe == "unknown"
        )
    }

    /// The caller's last answer said the upload may have been applied but the
    /// gateway cannot tell which attachment is its own (`retry_safe=false`),
    /// naming the candidates in its message.
    fn told_ambiguous(&self) -> Option<&str> {
        match self.attempts.last().map(|a| &a.answer) {
            Some(Answer::Err {
                reason,
                retry_safe,
                message,
                ..
            }) if reason == "OUTCOME_UNKNOWN" && retry_safe == "false" => Some(message.as_str()),
            _ => None,
        }
    }

    fn ok_answers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attempts.iter().filter_map(|a| a.answer.ok_id())
    }

    /// The caller was told the upload is stored (by some attempt).
    fn answered_ok(&self) -> bool {
        self.ok_answers().next().is_some()
    }

    fn history(&self) -> String {
        self.attempts
            .iter()
            .map(|a| match &a.answer {
                Answer::Ok { attachment_id, .. } => format!("#{} OK {attachment_id}", a.replica),
                Answer::Err {
                    code,
                    reason,
                    retry_safe,
                    message,
                    ..
                } => format!(
                    "#{} {code:?} {reason} retry_safe={retry_safe} ({message})",
                    a.replica
                ),
                Answer::Abandoned { at } => format!(
                    "#{} abandoned after {} of {} messages",
                    a.replica,
                    at + 1,
                    self.messages
                ),
            })
            .collect::<Vec<_>>()
            .join(" -> ")
    }
}

/// An attachment held upstream, against the file its caller sent.
fn describe(a: &StoredAttachment, data: &[u8]) -> String {
    let what = if a.bytes.as_ref() == data {
        "the whole file".to_string()
    } else if data.starts_with(&a.bytes) {
        format!(
            "a truncated file: the first {} of {} bytes",
            a.bytes.len(),
            data.len()
        )
    } else {
        format!("{} bytes, not the file's", a.bytes.len())
    };
    format!("{}: {what}", a.attachment_id)
}

/// A replica other than `last` (when there is another).
fn pick(rng: &mut fastrand::Rng, last: Option<usize>, replicas: usize) -> usize {
    loop {
        let r = rng.usize(0..replicas);
        if replicas == 1 || Some(r) != last {
            return r;
        }
    }
}

/// One complete attempt: the whole stream, ended cleanly, within `deadline`.
async fn send(mut c: Client, msgs: Vec<UploadAttachmentRequest>, deadline: Duration) -> Answer {
    let mut req = tonic::Request::new(tokio_stream::iter(msgs));
    req.set_timeout(deadline);
    match c.upload_attachment(req).await {
        Ok(r) => {
            let r = r.into_inner();
            Answer::Ok {
                attachment_id: r.attachment_id,
                sha256: r.sha256,
            }
        }
        Err(e) => Answer::from_status(&e),
    }
}

/// An attempt its caller abandons after `at` messages (as in the one-gateway
/// run): the call is cancelled, the stream is never ended.
async fn abandon(
    mut c: Client,
    msgs: Vec<UploadAttachmentRequest>,
    at: usize,
) -> (Answer, mpsc::Sender<UploadAttachmentRequest>) {
    let (tx, rx) = mpsc::channel(4);
    let call = tokio::spawn(async move { c.upload_attachment(ReceiverStream::new(rx)).await });
    for m in msgs.into_iter().take(at + 1) {
        if tx.send(m).await.is_err() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    call.abort();
    let answer = match call.await {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            Answer::Ok {
                attachment_id: r.attachment_id,
                sha256: r.sha256,
            }
        }
        Ok(Err(e)) => Answer::from_status(&e),
        Err(_) => Answer::Abandoned { at },
    };
    (answer, tx)
}

/// A caller's whole upload: attempts on random replicas, each retry on another
/// replica than the attempt before, with the same message id.
async fn run_upload(mut u: Upload, plan: Plan, clients: Arc<Vec<Client>>) -> Upload {
    let mut rng = fastrand::Rng::with_seed(plan.rng_seed);
    let mut m = metadata(u.work_order_id, &u.name);
    m.message_id = u.message_id.clone();
    let msgs = upload_messages(m, &u.data, plan.chunk);
    u.messages = msgs.len();
    let mut last = None;
    if let Some(at) = plan.cancel_at {
        let r = pick(&mut rng, last, plan.replicas);
        last = Some(r);
        let (answer, tx) = abandon(clients[r].clone(), msgs.clone(), at).await;
        u.keep_open = Some(tx);
        u.abandoned = true;
        u.attempts.push(Attempt { replica: r, answer });
        if !plan.come_back {
            return u;
        }
        // A restarted caller sends the upload again, a little later.
        u.came_back = true;
        tokio::time::sleep(Duration::from_millis(rng.u64(10..100))).await;
    }
    let mut tries = 0;
    loop {
        let r = pick(&mut rng, last, plan.replicas);
        last = Some(r);
        // One attempt in ten has a deadline that may expire after the write
        // was sent, while its outcome and event are being recorded.
        let deadline = if rng.u8(0..10) == 0 {
            Duration::from_millis(rng.u64(100..600))
        } else {
            Duration::from_secs(20)
        };
        let answer = send(clients[r].clone(), msgs.clone(), deadline).await;
        tries += 1;
        let (again, delay) = match &answer {
            Answer::Ok { .. } if plan.lose_answer && !u.resent_after_ok => {
                // The answer is lost on the way back; the caller sends again.
                u.resent_after_ok = true;
                tries = 0;
                (true, None)
            }
            Answer::Ok { .. } | Answer::Abandoned { .. } => (false, None),
            Answer::Err {
                retryable,
                retry_delay,
                ..
            } => {
                let again = *retryable && tries < MAX_ATTEMPTS;
                u.retries += usize::from(again);
                (again, *retry_delay)
            }
        };
        u.attempts.push(Attempt { replica: r, answer });
        if !again {
            return u;
        }
        let backoff = Duration::from_millis((25 << tries.min(4)) + rng.u64(0..25));
        let wait = delay.map_or(backoff, |d| d.min(Duration::from_secs(1)).max(backoff));
        tokio::time::sleep(wait).await;
    }
}

enum Done {
    Upload(Upload),
    /// A list: `None` when OK, else why not.
    List(Option<String>),
    /// A change made as the customer (notified to the gateway).
    Customer,
}

/// One event as a watch saw it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: String,
    source: i32,
    kind: i32,
    message_id: String,
}

/// Follows the event log from `after` on replica `first`, resuming from the
/// last event (or the id an ended watch names) on another replica whenever
/// the watch ends, until `stop` fires and it has seen `until()` events.
async fn follow(
    clients: Arc<Vec<Client>>,
    after: String,
    stop: tokio_util::sync::CancellationToken,
    target: Arc<std::sync::atomic::AtomicUsize>,
) -> (Vec<Seen>, usize) {
    let mut seen: Vec<Seen> = Vec::new();
    let mut cursor = after;
    let mut resumes = 0usize;
    let mut replica = 0usize;
    loop {
        let done = |seen: &Vec<Seen>| {
            stop.is_cancelled() && seen.len() >= target.load(std::sync::atomic::Ordering::SeqCst)
        };
        if done(&seen) {
            return (seen, resumes);
        }
        let mut c = clients[replica % clients.len()].clone();
        replica += 1;
        let opened = c
            .watch_attachments(WatchAttachmentsRequest {
                work_order_ids: vec![],
                after_event_id: cursor.clone(),
            })
            .await;
        let Ok(w) = opened else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut w = w.into_inner();
        loop {
            match tokio::time::timeout(Duration::from_millis(500), w.message()).await {
                Err(_) if done(&seen) => return (seen, resumes),
                Err(_) => continue,
                Ok(Ok(Some(m))) => match m.payload {
                    Some(Payload::Event(e)) => {
                        cursor = e.event_id.clone();
                        seen.push(Seen {
                            id: e.event_id,
                            source: e.source,
                            kind: e.r#type,
                            message_id: e.upstream_message_id,
                        });
                    }
                    Some(Payload::Heartbeat(h)) if !h.last_event_id.is_empty() => {
                        cursor = h.last_event_id;
                    }
                    Some(Payload::Heartbeat(_)) => {}
                    None => {}
                },
                Ok(Ok(None)) => break,
                Ok(Err(s)) => {
                    if let Some(r) = error_metadata(&s).get("resume_after_event_id") {
                        cursor = r.clone();
                    }
                    break;
                }
            }
        }
        resumes += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the whole log after `after`, on `c`, until it is quiet.
async fn read_all(mut c: Client, after: &str) -> Vec<Seen> {
    let mut w = c
        .watch_attachments(WatchAttachmentsRequest {
            work_order_ids: vec![],
            after_event_id: after.to_string(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut all = Vec::new();
    while let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_secs(2), w.message()).await {
        if let Some(Payload::Event(e)) = m.payload {
            all.push(Seen {
                id: e.event_id,
                source: e.source,
                kind: e.r#type,
                message_id: e.upstream_message_id,
            });
        }
    }
    all
}

/// The replicas, the upstream, and what the faults act on.
struct Stack {
    sandbox: Sandbox,
    gateways: Vec<Gateway>,
    /// Each replica's metrics (how many writes are still settling).
    metrics: Vec<Arc<attachment_gateway::metrics::Metrics>>,
    clients: Arc<Vec<Client>>,
    redis: Option<Arc<RedisServer>>,
    /// Between replica 0 and Redis (shared state only).
    proxy: Option<Proxy>,
}

async fn stack(replicas: usize, seed: u64) -> Stack {
    let sandbox = Sandbox::start(SandboxConfig {
        faults: Some(Faults {
            seed,
            unavailable: 0.1,
            fail_mid_upload: 0.1,
            max_delay_ms: 5,
            lose_answer: 0.1,
        }),
        notification_retry_minute: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .expect("sandbox");
    let mut s = base_settings();
    s.upstream = sandbox.upstream_settings(&s.upstream);
    s.upstream.circuit_failure_threshold = 50;
    // A write sent whole waits 2 s for its answer; 4 s after, one the upstream
    // does not show did not happen.
    s.upstream.request_timeout = Duration::from_secs(2);
    s.rate_limit.cool_down_after_503s = 1000;
    s.rate_limit.per_caller = attachment_gateway::config::Rate {
        rps: 10_000,
        burst: 10_000,
    };
    s.sandbox.enabled = true;
    let (redis, proxy) = if replicas > 1 {
        let redis = Arc::new(RedisServer::start());
        let proxy = Proxy::start(redis.port).await;
        s.shared_state.redis_url = Some(redis.url());
        s.shared_state.command_timeout = Duration::from_millis(300);
        s.upstream.idempotency_lease = Duration::from_secs(1);
        (Some(redis), Some(proxy))
    } else {
        (None, None)
    };
    let mut gateways = Vec::new();
    let mut metrics = Vec::new();
    let mut hooks = Vec::new();
    for i in 0..replicas {
        let mut si = s.clone();
        if let (0, Some(p)) = (i, &proxy) {
            si.shared_state.redis_url = Some(format!("redis://127.0.0.1:{}", p.port));
        }
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let webhooks = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        hooks.push(format!(
            "http://{}{}",
            webhooks.local_addr().expect("addr"),
            attachment_gateway::webhooks::PATH
        ));
        let m = Arc::new(attachment_gateway::metrics::Metrics::new());
        metrics.push(Arc::clone(&m));
        gateways.push(
            Gateway::start_with(
                si,
                attachment_gateway::server::Listeners {
                    grpc,
                    admin: None,
                    webhooks: Some(webhooks),
                },
                m,
            )
            .await,
        );
    }
    // CorrigoPro notifies one replica (a seeded one).
    sandbox.deliver_to(hooks[usize::try_from(seed).unwrap_or(0) % replicas].clone());
    let clients = Arc::new(gateways.iter().map(Gateway::client).collect());
    Stack {
        sandbox,
        gateways,
        metrics,
        clients,
        redis,
        proxy,
    }
}

/// The run itself, on `replicas` replicas (three share a Redis; one keeps
/// its state in process).
async fn fault_run(replicas: usize, seed: u64, ops: usize) {
    let started = Instant::now();
    // The gateways' own logs, to follow one write through a failing run:
    // RELIABILITY_LOG=attachment_gateway=info (a tracing filter).
    if let Ok(filter) = std::env::var("RELIABILITY_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let st = stack(replicas, seed).await;
    let (sandbox, clients) = (&st.sandbox, Arc::clone(&st.clients));
    let mut rng = fastrand::Rng::with_seed(seed);
    let work_orders = [1001i64, 1002, 1005, 1006];

    // The watch that follows the log all along, from where the log is now.
    let start = {
        let mut c = clients[0].clone();
        let mut w = c
            .watch_attachments(WatchAttachmentsRequest::default())
            .await
            .expect("watch")
            .into_inner();
        match w.message().await {
            Ok(Some(m)) => match m.payload {
                Some(Payload::Heartbeat(h)) => h.last_event_id,
                other => panic!("a watch starts with a heartbeat: {other:?}"),
            },
            other => panic!("{other:?}"),
        }
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let target = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let follower = tokio::spawn(follow(
        Arc::clone(&clients),
        start.clone(),
        stop.clone(),
        Arc::clone(&target),
    ));

    // With Redis: pauses (2 or 3, 300–800 ms, at seeded calls), and replica 0
    // cut off from Redis past its lease (1.5 s) once.
    let shared = st.redis.is_some();
    let mut pause_at: Vec<(usize, u64)> = if shared {
        (0..rng.usize(2..=3))
            .map(|_| {
                (
                    rng.usize(ops / 10..(ops * 9 / 10).max(ops / 10 + 1)),
                    rng.u64(300..=800),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    pause_at.sort_unstable();
    let cut_at = shared.then(|| rng.usize(ops / 10..(ops * 9 / 10).max(ops / 10 + 1)));
    let (pause_tx, mut pause_rx) = mpsc::unbounded_channel::<u64>();
    let pauser = {
        let redis = st.redis.clone();
        tokio::spawn(async move {
            let mut paused = Vec::new();
            while let Some(ms) = pause_rx.recv().await {
                let Some(redis) = &redis else { continue };
                let r = Arc::clone(redis);
                tokio::task::spawn_blocking(move || r.signal("-STOP"))
                    .await
                    .expect("SIGSTOP");
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let r = Arc::clone(redis);
                tokio::task::spawn_blocking(move || r.signal("-CONT"))
                    .await
                    .expect("SIGCONT");
                paused.push(ms);
            }
            paused
        })
    };

    let mut uploads: Vec<Upload> = Vec::new();
    let mut lists = (0usize, 0usize);
    let mut customer_adds = 0usize;
    let mut list_errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut tally = |d: Done| match d {
        Done::Upload(u) => uploads.push(u),
        Done::List(err) => {
            lists.0 += 1;
            match err {
                None => lists.1 += 1,
                Some(why) => *list_errors.entry(why).or_default() += 1,
            }
        }
        Done::Customer => customer_adds += 1,
    };
    let emulator = format!("http://{}", sandbox.addr());
    let http = reqwest::Client::new();
    let mut cut_done = false;
    let mut running = futures_util::stream::FuturesUnordered::new();
    for i in 0..ops {
        for (_, ms) in pause_at.iter().filter(|(at, _)| *at == i) {
            pause_tx.send(*ms).expect("pauser");
        }
        if cut_at == Some(i)
            && let Some(p) = &st.proxy
        {
            p.partition();
            let p_cut = Duration::from_millis(1500);
            tokio::time::sleep(p_cut).await;
            p.heal();
            cut_done = true;
        }
        let wo = work_orders[rng.usize(0..work_orders.len())];
        let kind = rng.u8(0..20);
        let size = rng.usize(1..150_000);
        let chunk = rng.usize(1..70_000);
        let cancel_at = (rng.u8(0..20) == 0).then(|| rng.usize(0..=size.div_ceil(chunk)));
        let plan = Plan {
            chunk,
            cancel_at,
            come_back: rng.bool(),
            lose_answer: rng.u8(0..10) == 0,
            rng_seed: rng.u64(..),
            replicas,
        };
        let data = pattern(size, rng.u8(..));
        let clients = Arc::clone(&clients);
        if kind < 5 {
            let mut c = clients[rng.usize(0..replicas)].clone();
            running.push(tokio::spawn(async move {
                let r = c
                    .list_attachments(ListAttachmentsRequest {
                        work_order_id: wo,
                        ..Default::default()
                    })
                    .await;
                Done::List(
                    r.err()
                        .map(|e| format!("{:?} {}", e.code(), error_reason(&e))),
                )
            }));
        } else if kind < 6 {
            let (http, url) = (
                http.clone(),
                format!(
                    "{emulator}/sandbox/customer/work-orders/{wo}/attachments?name=cust{i}.txt"
                ),
            );
            running.push(tokio::spawn(async move {
                let r = http.post(url).body(format!("customer {i}")).send().await;
                assert!(r.is_ok_and(|r| r.status().is_success()), "customer action");
                Done::Customer
            }));
        } else {
            let u = Upload {
                work_order_id: wo,
                name: format!("{PREFIX}{i}.bin"),
                message_id: format!("{PREFIX}-{seed}-{i}"),
                data,
                messages: 0,
                attempts: Vec::new(),
                abandoned: false,
                came_back: false,
                retries: 0,
                resent_after_ok: false,
                keep_open: None,
            };
            running.push(tokio::spawn(async move {
                Done::Upload(run_upload(u, plan, clients).await)
            }));
        }
        if running.len() >= CONCURRENCY
            && let Some(done) = running.next().await
        {
            tally(done.expect("task"));
        }
    }
    while let Some(done) = running.next().await {
        tally(done.expect("task"));
    }
    drop(pause_tx);
    let pauses = pauser.await.expect("pauser");
    nothing_half_done(sandbox).await;
    // Writes that lost their caller finish in tasks of their own (within
    // request_timeout = 2 s, then their event), and the customer's
    // notifications are delivered: let them settle.
    eventually("every notification delivered", || {
        sandbox.deliveries().iter().all(|d| d.delivered)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Those whose answer was lost settle by themselves 2 x request_timeout
    // after their commit point, asking again while a list fails or Redis is
    // cut off: every replica's must have ended (a bounded wait).
    let settling_since = Instant::now();
    while st.metrics.iter().any(|m| m.writes_settling.get() > 0) {
        assert!(
            settling_since.elapsed() < Duration::from_secs(120),
            "writes still settling after 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    uploads.sort_by_key(|u| u.name.clone());

    // The log, read whole from the start; the follower must have seen it all.
    let all = read_all(clients[0].clone(), &start).await;
    target.store(all.len(), std::sync::atomic::Ordering::SeqCst);
    stop.cancel();
    let (followed, resumes) = tokio::time::timeout(Duration::from_secs(60), follower)
        .await
        .expect("the follower catches up")
        .expect("follower");
    let skipped = all.len() != followed.len() || all.iter().zip(&followed).any(|(a, b)| a != b);
    if skipped {
        let first_diff = all.iter().zip(&followed).position(|(a, b)| a != b);
        println!(
            "the follower saw {} events, the log holds {}; first difference at {first_diff:?}",
            followed.len(),
            all.len()
        );
    }
    let mut own_events: HashMap<&str, usize> = HashMap::new();
    let mut customer_events: HashMap<&str, usize> = HashMap::new();
    for e in &all {
        if e.kind != AttachmentEventType::Added as i32 {
            continue;
        }
        if e.source == EventSource::Gateway as i32 {
            *own_events.entry(e.message_id.as_str()).or_default() += 1;
        } else {
            *customer_events.entry(e.message_id.as_str()).or_default() += 1;
        }
    }

    // A caller told the outcome was not known (retry with the same id) that
    // ran out of tries, whose upload is held with no event: it comes back
    // once now, as a caller would. The gateway must then say it cannot tell,
    // naming that attachment (so it rightly published no event); an OK
    // answer means it could tell, and the missing event stays a fault. (What
    // the upstream holds is read after this: a come-back that stored the
    // file again would show as a duplicate.)
    let mut held_now: HashMap<String, usize> = HashMap::new();
    for wo in work_orders {
        for a in sandbox.attachments(wo) {
            *held_now.entry(a.name.clone()).or_default() += 1;
        }
    }
    let mut came_back_after = 0usize;
    for u in uploads.iter_mut() {
        let held_once = held_now.get(&u.name) == Some(&1);
        let no_event = !own_events.contains_key(u.message_id.as_str());
        if held_once && no_event && u.told_unknown() && u.told_ambiguous().is_none() {
            let mut m = metadata(u.work_order_id, &u.name);
            m.message_id = u.message_id.clone();
            let msgs = upload_messages(m, &u.data, 64 * 1024);
            let answer = send(clients[0].clone(), msgs, Duration::from_secs(30)).await;
            came_back_after += 1;
            u.attempts.push(Attempt { replica: 0, answer });
            println!("{} came back after the run: {}", u.name, u.history());
        }
    }

    // What the upstream holds of this run, by name (one name per upload).
    let mut stored: HashMap<String, Vec<StoredAttachment>> = HashMap::new();
    let mut by_message_id: HashMap<String, usize> = HashMap::new();
    for wo in work_orders {
        for a in sandbox.attachments(wo) {
            if a.name.starts_with(PREFIX) {
                *by_message_id.entry(a.message_id.clone()).or_default() += 1;
                stored.entry(a.name.clone()).or_default().push(a);
            }
        }
    }
    let upstream_holds: usize = stored.values().map(Vec::len).sum();

    let (mut mismatches, mut missing, mut extra, mut duplicates, mut inconsistent) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    let (mut resend_refused, mut told_unknown, mut event_faults) = (0usize, 0usize, 0usize);
    let mut ambiguous = 0usize;
    for u in &uploads {
        let held = stored.remove(&u.name).unwrap_or_default();
        let events = own_events.get(u.message_id.as_str()).copied().unwrap_or(0);
        // An upload the gateway could not tell apart from an older identical
        // file (it said so, naming the attachment as a candidate) publishes no
        // event: the gateway does not know the write was its own.
        let unclaimed = events == 0
            && held.len() == 1
            && u.told_ambiguous()
                .is_some_and(|m| m.contains(held[0].attachment_id.as_str()));
        if unclaimed {
            ambiguous += 1;
        } else if events != held.len().min(1) || (held.is_empty() && events > 0) {
            event_faults += 1;
            println!(
                "{} ({}): {events} events for {} attachments upstream: {}",
                u.name,
                u.message_id,
                held.len(),
                u.history()
            );
        }
        let ids: HashSet<&str> = u.ok_answers().map(|(id, _)| id).collect();
        if ids.len() > 1 {
            inconsistent += 1;
            println!(
                "{} ({}): OK answers name {} attachments: {}",
                u.name,
                u.message_id,
                ids.len(),
                u.history()
            );
        }
        if held.len() > 1 {
            duplicates += held.len() - 1;
            println!(
                "{} ({}) is held {} times upstream ({:?}); its caller saw: {}",
                u.name,
                u.message_id,
                held.len(),
                held.iter()
                    .map(|a| describe(a, &u.data))
                    .collect::<Vec<_>>(),
                u.history()
            );
        }
        if u.answered_ok() {
            if u.attempts.last().and_then(|a| a.answer.ok_id()).is_none() {
                resend_refused += 1;
                println!(
                    "{}: a resend after an OK answer ended without one: {}",
                    u.name,
                    u.history()
                );
            }
            if held.is_empty() {
                missing += 1;
                println!("{} answered OK, not upstream: {}", u.name, u.history());
            }
            for a in &held {
                let fits = u.ok_answers().any(|(id, sha)| {
                    a.attachment_id == id
                        && a.work_order_id == u.work_order_id
                        && a.bytes.as_ref() == u.data.as_slice()
                        && sha256_hex(&a.bytes) == sha
                });
                if !fits {
                    mismatches += 1;
                    println!(
                        "{}: upstream holds {} on {}, which no OK answer matches: {}",
                        u.name,
                        describe(a, &u.data),
                        a.work_order_id,
                        u.history()
                    );
                }
            }
        } else if !held.is_empty() {
            if u.told_unknown() {
                // Held, and its caller was told the outcome was not known
                // (and to retry with the same id): never a silent loss.
                told_unknown += 1;
            } else {
                extra += held.len();
                println!(
                    "extra upstream: {} ({}) held as {:?}, but its caller was never told it may be: {}",
                    u.name,
                    u.message_id,
                    held.iter()
                        .map(|a| describe(a, &u.data))
                        .collect::<Vec<_>>(),
                    u.history()
                );
            }
        }
    }
    for (name, held) in &stored {
        extra += held.len();
        println!("extra upstream: {name}, of no upload of this run");
    }
    let dup_ids = by_message_id.values().filter(|n| **n > 1).count();
    // The customer's notifications: one event each.
    let deliveries = sandbox.deliveries();
    for d in deliveries.iter().filter(|d| d.action == "AttachmentAdded") {
        let n = customer_events
            .get(d.message_id.as_str())
            .copied()
            .unwrap_or(0);
        if n != 1 {
            event_faults += 1;
            println!("notification {}: {n} events", d.message_id);
        }
    }

    let answered_ok = uploads.iter().filter(|u| u.answered_ok()).count();
    let abandoned = uploads.iter().filter(|u| u.abandoned).count();
    let lost = uploads.iter().filter(|u| u.resent_after_ok).count();
    let retries: usize = uploads.iter().map(|u| u.retries).sum();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for u in &uploads {
        for a in &u.attempts {
            if let Answer::Err {
                code,
                reason,
                retry_safe,
                ..
            } = &a.answer
            {
                *reasons
                    .entry(format!("{code:?} {reason} retry_safe={retry_safe}"))
                    .or_default() += 1;
            }
        }
    }
    let stats = sandbox.stats();
    println!(
        "fault run, {replicas} replica(s){} (seed {seed}): {ops} calls ({} uploads, {abandoned} abandoned; {} lists, {} OK; \
         {customer_adds} customer additions), {} faults injected, {} answers lost upstream after the write, {retries} retries, \
         {} Redis pauses, cut off past a lease: {cut_done}, {lost} OK answers lost by callers; {answered_ok} uploads OK, \
         {told_unknown} held but told unknown ({ambiguous} of them told the gateway cannot tell, so no event); upstream holds {upstream_holds}; {} events ({} resumes of the follower); \
         mismatches {mismatches}, missing {missing}, extra {extra}, duplicates {duplicates} ({dup_ids} message ids twice), \
         inconsistent {inconsistent}, event faults {event_faults}, cursor skipped: {skipped}; {:.1} s",
        if shared {
            " sharing one Redis"
        } else {
            ", state in process"
        },
        uploads.len(),
        lists.0,
        lists.1,
        stats.faults_injected,
        stats.answers_lost,
        pauses.len(),
        all.len(),
        resumes,
        started.elapsed().as_secs_f64()
    );
    println!("  errors seen by attempts: {reasons:?}");
    println!("  callers that came back after the run: {came_back_after}");
    println!("  failed lists: {list_errors:?}");

    assert!(stats.faults_injected > 10, "faults were injected");
    assert!(stats.answers_lost > 3, "answers were lost after writes");
    if shared {
        assert!(pauses.len() >= 2, "Redis was paused");
        assert!(cut_done, "a replica was cut off from Redis");
    }
    assert!(retries > 0, "callers retried");
    assert!(answered_ok > 10, "uploads succeeded");
    assert_eq!(mismatches, 0, "OK answers match what the upstream holds");
    assert_eq!(missing, 0, "every upload answered OK is upstream");
    assert_eq!(extra, 0, "nothing upstream its caller was not told of");
    assert_eq!(duplicates, 0, "no upload held twice upstream");
    assert_eq!(dup_ids, 0, "no message id held twice upstream");
    assert_eq!(
        inconsistent, 0,
        "every OK for one message id names one attachment"
    );
    assert_eq!(
        resend_refused, 0,
        "an upload sent again after an OK answer gets that answer"
    );
    assert_eq!(
        event_faults, 0,
        "exactly one event per applied write, none for another"
    );
    assert!(!skipped, "the resuming watch saw exactly the log");
    let mut st = st;
    let open: Vec<_> = uploads
        .iter_mut()
        .filter_map(|u| u.keep_open.take())
        .collect();
    drop(std::mem::take(&mut st.gateways));
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_run_against_three_replicas_and_one_redis_keeps_upstream_exact() {
    let seed: u64 = env_or("RELIABILITY_SEED", 20261201);
    let ops: usize = env_or("RELIABILITY_OPS", 300);
    fault_run(3, seed, ops).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_run_against_one_replica_keeps_upstream_and_events_exact() {
    let seed: u64 = env_or("RELIABILITY_SEED", 20261205);
    let ops: usize = env_or("RELIABILITY_OPS", 300);
    fault_run(1, seed, ops).await;
}
