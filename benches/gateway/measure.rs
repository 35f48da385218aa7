//! Medians, percentiles, the rows of the table, and running calls at concurrency.

use std::time::Instant;

use futures_util::StreamExt;

use crate::MIB;

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

pub(crate) fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) unit: &'static str,
    pub(crate) direct: f64,
    pub(crate) gateway: f64,
    pub(crate) higher_is_better: bool,
    /// The same work as `direct`, through the bare TCP relay.
    pub(crate) hop: Option<f64>,
    pub(crate) note: String,
}

impl Row {
    pub(crate) fn ratio(&self) -> f64 {
        self.gateway / self.direct
    }
}

pub(crate) async fn run_concurrent<F, Fut>(n: usize, concurrency: usize, f: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let mut stream = futures_util::stream::iter((0..n).map(|i| tokio::spawn(f(i))))
        .buffer_unordered(concurrency);
    while let Some(r) = stream.next().await {
        r.expect("task");
    }
    start.elapsed().as_secs_f64()
}

/// CPU seconds this thread has run so far (not wall time: on a shared machine a
/// thread waits for a core too).
fn thread_cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// CPU seconds one thread spends hashing a GiB with SHA-256 as the upload path
/// does (`sha2::Sha256`): `mib` MiB in `chunk`-byte pieces of a 1 MiB buffer,
/// hashed over and over (a chunk the gateway hashes has just arrived: it is in
/// cache); the best of three, in the thread's own CPU time.
pub(crate) async fn sha256_seconds_per_gib(mib: usize, chunk: usize) -> f64 {
    tokio::task::spawn_blocking(move || {
        use sha2::Digest;
        let data: Vec<u8> = (0..MIB).map(|i| (i * 31 % 251) as u8).collect();
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = thread_cpu_seconds();
            let mut h = sha2::Sha256::new();
            for _ in 0..mib {
                for piece in data.chunks(chunk) {
                    h.update(piece);
                }
            }
            std::hint::black_box(h.finalize());
            best = best.min(thread_cpu_seconds() - t);
        }
        best / (mib as f64 / 1024.0)
    })
    .await
    .expect("hashing")
}

/// CPU seconds per GiB for `cpu` seconds over `bytes`; NaN when either is none
/// (/proc counts CPU in 10 ms ticks: a quick run may see none).
pub(crate) fn per_gib(cpu: f64, bytes: usize) -> f64 {
    if bytes > 0 && cpu > 0.0 {
        cpu / (bytes as f64 / (1024.0 * MIB as f64))
    } else {
        f64::NAN
    }
}
