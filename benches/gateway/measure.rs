//! Medians, percentiles, the rows of the table, and running calls at concurrency.

use std::time::Instant;

use futures_util::StreamExt;

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
