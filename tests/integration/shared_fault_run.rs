//! The seeded randomized run of `reliability::randomized_run_…`, against three
//! gateway replicas sharing one Redis (the write records by message id) and one
//! fault-injecting sandbox upstream, with Redis itself paused (SIGSTOP) a few
//! times during the run. Every upload carries a message id of its own; a caller
//! whose attempt fails in a way that may be retried sends the same upload again,
//! with the same message id, to another replica. Afterwards the upstream must
//! hold exactly the uploads that were answered OK, once each, bytes identical,
//! and every OK answer for one message id must name the same attachment.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attachment_gateway::proto::{ListAttachmentsRequest, UploadAttachmentRequest};
use attachment_gateway::sandbox::{Faults, Sandbox, SandboxConfig, StoredAttachment};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::common::redis::RedisServer;
use crate::common::*;

const REPLICAS: usize = 3;
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

/// A replica other than `last`.
fn pick(rng: &mut fastrand::Rng, last: Option<usize>) -> usize {
    loop {
        let r = rng.usize(0..REPLICAS);
        if Some(r) != last {
            return r;
        }
    }
}

/// One complete attempt: the whole stream, ended cleanly.
async fn send(mut c: Client, msgs: Vec<UploadAttachmentRequest>) -> Answer {
    let mut req = tonic::Request::new(tokio_stream::iter(msgs));
    req.set_timeout(Duration::from_secs(20));
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
        let r = pick(&mut rng, last);
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
        let r = pick(&mut rng, last);
        last = Some(r);
        let answer = send(clients[r].clone(), msgs.clone()).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_run_against_three_replicas_and_one_redis_keeps_upstream_exact() {
    let seed: u64 = env_or("RELIABILITY_SEED", 20261201);
    let ops: usize = env_or("RELIABILITY_OPS", 300);
    let started = Instant::now();
    let redis = Arc::new(RedisServer::start());
    let sandbox = Sandbox::start(SandboxConfig {
        faults: Some(Faults {
            seed,
            unavailable: 0.15,
            fail_mid_upload: 0.15,
            max_delay_ms: 5,
            lose_answer: 0.0,
        }),
        ..Default::default()
    })
    .await
    .expect("sandbox");
    let mut s = base_settings();
    s.upstream = sandbox.upstream_settings(&s.upstream);
    s.upstream.circuit_failure_threshold = 50;
    s.rate_limit.cool_down_after_503s = 1000;
    s.shared_state.redis_url = Some(redis.url());
    s.shared_state.command_timeout = Duration::from_millis(300);
    let mut gateways = Vec::new();
    for _ in 0..REPLICAS {
        gateways.push(Gateway::start(s.clone()).await);
    }
    let clients: Arc<Vec<Client>> = Arc::new(gateways.iter().map(Gateway::client).collect());

    let mut rng = fastrand::Rng::with_seed(seed);
    let work_orders = [1001i64, 1002, 1005, 1006];

    // Redis pauses: 2 or 3, each starting when the run reaches a seeded call,
    // lasting 300–800 ms; one after the other.
    let mut pause_at: Vec<(usize, u64)> = (0..rng.usize(2..=3))
        .map(|_| {
            (
                rng.usize(ops / 10..(ops * 9 / 10).max(ops / 10 + 1)),
                rng.u64(300..=800),
            )
        })
        .collect();
    pause_at.sort_unstable();
    let (pause_tx, mut pause_rx) = mpsc::unbounded_channel::<u64>();
    let pauser = {
        let redis = Arc::clone(&redis);
        tokio::spawn(async move {
            let mut paused = Vec::new();
            while let Some(ms) = pause_rx.recv().await {
                let r = Arc::clone(&redis);
                tokio::task::spawn_blocking(move || r.signal("-STOP"))
                    .await
                    .expect("SIGSTOP");
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let r = Arc::clone(&redis);
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
    };
    let mut running = futures_util::stream::FuturesUnordered::new();
    for i in 0..ops {
        for (_, ms) in pause_at.iter().filter(|(at, _)| *at == i) {
            pause_tx.send(*ms).expect("pauser");
        }
        let wo = work_orders[rng.usize(0..work_orders.len())];
        let kind = rng.u8(0..10);
        let size = rng.usize(1..150_000);
        let chunk = rng.usize(1..70_000);
        let cancel_at = (rng.u8(0..20) == 0).then(|| rng.usize(0..=size.div_ceil(chunk)));
        let plan = Plan {
            chunk,
            cancel_at,
            come_back: rng.bool(),
            lose_answer: rng.u8(0..10) == 0,
            rng_seed: rng.u64(..),
        };
        let data = pattern(size, rng.u8(..));
        let clients = Arc::clone(&clients);
        if kind < 3 {
            let mut c = clients[rng.usize(0..REPLICAS)].clone();
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
    nothing_half_done(&sandbox).await;
    uploads.sort_by_key(|u| u.name.clone());

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
    let mut resend_refused = 0usize;
    for u in &uploads {
        let held = stored.remove(&u.name).unwrap_or_default();
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
                // Sent again after an OK and not answered OK this time.
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
            extra += held.len();
            println!(
                "extra upstream: {} ({}) held as {:?}, but its caller never got OK: {}",
                u.name,
                u.message_id,
                held.iter()
                    .map(|a| describe(a, &u.data))
                    .collect::<Vec<_>>(),
                u.history()
            );
        }
    }
    // Anything left is of no upload of this run at all.
    for (name, held) in &stored {
        extra += held.len();
        println!("extra upstream: {name}, of no upload of this run");
    }
    let dup_ids = by_message_id.values().filter(|n| **n > 1).count();

    let answered_ok = uploads.iter().filter(|u| u.answered_ok()).count();
    let abandoned = uploads.iter().filter(|u| u.abandoned).count();
    let came_back = uploads.iter().filter(|u| u.came_back).count();
    let lost = uploads.iter().filter(|u| u.resent_after_ok).count();
    let retries: usize = uploads.iter().map(|u| u.retries).sum();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut final_reasons: BTreeMap<String, usize> = BTreeMap::new();
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
        if !u.answered_ok() {
            if let Some(Answer::Err {
                retryable: true, ..
            }) = u.attempts.last().map(|a| &a.answer)
            {
                println!(
                    "  {} ({}) gave up after {} attempts: {}",
                    u.name,
                    u.message_id,
                    u.attempts.len(),
                    u.history()
                );
            }
            let why = match u.attempts.last().map(|a| &a.answer) {
                Some(Answer::Err { code, reason, .. }) => format!("{code:?} {reason}"),
                Some(Answer::Abandoned { .. }) => "abandoned".into(),
                _ => "?".into(),
            };
            *final_reasons.entry(why).or_default() += 1;
        }
    }
    let st = sandbox.stats();
    println!(
        "randomized run, 3 replicas and one Redis (seed {seed}): {ops} calls ({} uploads, {abandoned} of them \
         abandoned by the caller, {came_back} of those sent again; {} lists, {} OK), {} faults injected, \
         {retries} retries, {} Redis pauses ({pauses:?} ms), {lost} OK answers lost and resent; \
         {answered_ok} uploads OK, {} failed; upstream holds {upstream_holds}; mismatches: {mismatches}, \
         missing: {missing}, extra: {extra}, duplicates: {duplicates} ({dup_ids} message ids twice), \
         inconsistent answers: {inconsistent}; {:.1} s",
        uploads.len(),
        lists.0,
        lists.1,
        st.faults_injected,
        pauses.len(),
        uploads.len() - answered_ok,
        started.elapsed().as_secs_f64()
    );
    println!("  errors seen by attempts: {reasons:?}");
    println!("  failed uploads, by last answer: {final_reasons:?}");
    println!("  failed lists: {list_errors:?}");

    assert!(st.faults_injected > 10, "faults were injected");
    assert!(pauses.len() >= 2, "Redis was paused");
    assert!(retries > 0, "callers retried");
    assert!(answered_ok > 10, "uploads succeeded");
    assert_eq!(mismatches, 0, "OK answers match what the upstream holds");
    assert_eq!(missing, 0, "every upload answered OK is upstream");
    assert_eq!(extra, 0, "nothing upstream beyond the uploads answered OK");
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
    // The abandoned streams stay open to the end.
    let open: Vec<_> = uploads
        .iter_mut()
        .filter_map(|u| u.keep_open.take())
        .collect();
    drop(gateways);
    drop(open);
}
