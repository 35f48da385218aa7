//! The run's table (Markdown, as BENCHMARKS.md quotes it) and its JSON.

use serde_json::json;

use crate::measure::Row;
use crate::{MIB, Params};

/// The figures of section 7 and the run's totals, beside the rows.
pub(crate) struct Figures {
    /// GiB uploaded through the gateway.
    pub(crate) gib: f64,
    pub(crate) cpu_per_gib: f64,
    pub(crate) cpu_per_10k: f64,
    pub(crate) basic_cpu_per_10k: f64,
    pub(crate) unary_calls: usize,
    pub(crate) hop_per_gib: f64,
    pub(crate) hop_per_10k: f64,
    pub(crate) peak_growth_kib: u64,
    pub(crate) idle_rss_kib: u64,
    pub(crate) sink_bytes_in: u64,
    /// A health check's p50 through the gateway and through a bare tonic server.
    pub(crate) health_p50: Option<(f64, f64)>,
    /// The gateway's and the relay's own CPU per GiB downloaded (scenario 6).
    pub(crate) dl_per_gib: f64,
    pub(crate) hop_dl_per_gib: f64,
    /// One thread hashing a GiB with SHA-256 as the upload path does.
    pub(crate) sha256_per_gib: f64,
}

/// /proc counts CPU in 10 ms ticks: a quick run may be too short to see any.
fn ticks(v: f64) -> String {
    if v > 0.0 {
        format!("{v:.2}")
    } else {
        "too short to measure".to_string()
    }
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}

/// The table, to stdout.
pub(crate) fn print(p: &Params, rows: &[Row], f: &Figures) {
    println!(
        "\nattachment-gateway benchmark ({} mode; {} cores; client + sink in one process, gateway in its own; {} rounds, medians)\n",
        if p.quick { "quick" } else { "full" },
        cores(),
        p.rounds
    );
    println!(
        "| scenario | unit | direct | via gateway | gateway/direct | via a bare TCP hop | hop/direct | gateway/hop | note |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        // gateway/hop: how close the gateway comes to the cheapest extra hop.
        let (hop, hop_ratio, of_floor) = match r.hop {
            Some(h) => (
                format!("{h:.2}"),
                format!("{:.2}", h / r.direct),
                format!("{:.2}", r.gateway / h),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2}{} | {hop} | {hop_ratio} | {of_floor} | {} |",
            r.scenario,
            r.unit,
            r.direct,
            r.gateway,
            r.ratio(),
            if r.higher_is_better {
                ""
            } else {
                " (lower is better)"
            },
            r.note
        );
    }
    println!(
        "| 7. gateway CPU per GiB uploaded | s | | {:.2} | | {:.2} GiB through the gateway |",
        f.cpu_per_gib, f.gib
    );
    println!(
        "| 7. gateway CPU per 10k unary calls, FULL view | s | | {:.2} | | {} calls |",
        f.cpu_per_10k, f.unary_calls
    );
    println!(
        "| 7. gateway CPU per 10k unary calls, BASIC view | s | | {:.2} | | {} calls |",
        f.basic_cpu_per_10k, f.unary_calls
    );
    println!(
        "| 7. bare hop's own CPU per GiB uploaded (scenarios 1 and 3) | s | | | | {} | | the relay process |",
        ticks(f.hop_per_gib)
    );
    println!(
        "| 7. bare hop's own CPU per 10k unary calls (scenario 5) | s | | | | {} | | the relay process |",
        ticks(f.hop_per_10k)
    );
    println!(
        "| 7. gateway CPU per GiB downloaded (scenario 6) | s | | {} | | {} | | the relay process beside it |",
        ticks(f.dl_per_gib),
        ticks(f.hop_dl_per_gib)
    );
    println!(
        "| 7. SHA-256 alone per GiB (sha2, {} KiB pieces, one thread) | s | | {:.3} | | | | part of the gateway's upload CPU |",
        p.chunk / 1024,
        f.sha256_per_gib
    );
    println!(
        "\npeak RSS growth (32 concurrent big uploads): {:.1} MiB; sink received {:.0} MiB",
        f.peak_growth_kib as f64 / 1024.0,
        f.sink_bytes_in as f64 / MIB as f64
    );
}

/// The same figures as JSON, to `BENCH_OUT` or `target/bench-<mode>.json`.
pub(crate) fn write_json(p: &Params, rows: &[Row], f: &Figures) {
    let json = json!({
        "mode": if p.quick { "quick" } else { "full" },
        "cores": cores(),
        "params": {"rounds": p.rounds, "big_bytes": p.big, "small_bytes": p.small, "small_files": p.small_files,
                   "concurrency": p.concurrency, "big_concurrency": p.big_concurrency, "latency_calls": p.latency_calls,
                   "unary_calls": p.unary_calls, "unary_concurrency": p.unary_concurrency, "chunk_bytes": p.chunk,
                   "list_items": p.list_items},
        "scenarios": rows.iter().map(|r| json!({"scenario": r.scenario, "unit": r.unit, "direct": r.direct,
            "gateway": r.gateway, "ratio": r.ratio(), "bare_hop": r.hop,
            "bare_hop_ratio": r.hop.map(|h| h / r.direct), "gateway_vs_bare_hop": r.hop.map(|h| r.gateway / h),
            "note": r.note})).collect::<Vec<_>>(),
        "gateway_cpu_seconds_per_gib_uploaded": f.cpu_per_gib,
        "gateway_cpu_seconds_per_10k_unary": f.cpu_per_10k,
        "gateway_cpu_seconds_per_10k_unary_basic_view": f.basic_cpu_per_10k,
        "gateway_peak_rss_growth_mib": f.peak_growth_kib as f64 / 1024.0,
        "gateway_idle_rss_mib": f.idle_rss_kib as f64 / 1024.0,
        "bare_hop_cpu_seconds_per_gib_uploaded": f.hop_per_gib,
        "bare_hop_cpu_seconds_per_10k_unary": f.hop_per_10k,
        "sha256_cpu_seconds_per_gib": f.sha256_per_gib,
        "gateway_cpu_seconds_per_gib_downloaded": f.dl_per_gib,
        "bare_hop_cpu_seconds_per_gib_downloaded": f.hop_dl_per_gib,
        "gateway_health_check_p50_ms": f.health_p50.map(|h| h.0),
        "bare_tonic_health_check_p50_ms": f.health_p50.map(|h| h.1),
    });
    let out = std::env::var("BENCH_OUT").unwrap_or_else(|_| {
        format!(
            "{}/target/bench-{}.json",
            env!("CARGO_MANIFEST_DIR"),
            if p.quick { "quick" } else { "full" }
        )
    });
    if let Err(e) = std::fs::write(&out, serde_json::to_string_pretty(&json).expect("json")) {
        eprintln!("cannot write {out}: {e}");
    } else {
        println!("figures written to {out}");
    }
}
