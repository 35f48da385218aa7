//! SHA-256 implementations side by side on this machine: the `sha2` crate as the
//! upload path uses it (0.10; 0.11 is in the tree too), and `ring::digest`.
//!
//! ```sh
//! cargo run --release --example sha256_impls            # 256 MiB per run, 7 runs
//! SHA_MIB=64 SHA_RUNS=3 cargo run --release --example sha256_impls
//! ```
//!
//! Each run hashes the same bytes in pieces of the given size (as an upload's
//! chunks arrive), from a buffer too large for the cache and from a 1 MiB one
//! hashed over and over (a chunk has just arrived when the gateway hashes it);
//! the implementations take turns within each run, so a busy machine slows them
//! alike. Prints GiB/s (median and best of the runs) and
//! which x86 features the CPU reports (sha2 and ring both pick their SHA-NI code
//! at run time when `sha` is there).

use std::time::Instant;

type Hash = fn(&[u8], usize) -> [u8; 32];

fn sha2_010(data: &[u8], piece: usize) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in data.chunks(piece) {
        h.update(p);
    }
    h.finalize().into()
}

fn sha2_011(data: &[u8], piece: usize) -> [u8; 32] {
    use sha2_011::Digest;
    let mut h = sha2_011::Sha256::new();
    for p in data.chunks(piece) {
        h.update(p);
    }
    let mut out = [0; 32];
    out.copy_from_slice(&h.finalize());
    out
}

fn ring_017(data: &[u8], piece: usize) -> [u8; 32] {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    for p in data.chunks(piece) {
        h.update(p);
    }
    let mut out = [0; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    println!(
        "cpu: sha {}, avx2 {}, ssse3 {}, sse4.1 {}",
        std::arch::is_x86_feature_detected!("sha"),
        std::arch::is_x86_feature_detected!("avx2"),
        std::arch::is_x86_feature_detected!("ssse3"),
        std::arch::is_x86_feature_detected!("sse4.1"),
    );
    let mib = env("SHA_MIB", 256);
    let runs = env("SHA_RUNS", 7);
    let data: Vec<u8> = (0..mib * 1024 * 1024)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let impls: [(&str, Hash); 3] = [
        ("sha2 0.10 (the gateway's)", sha2_010),
        ("sha2 0.11", sha2_011),
        ("ring 0.17 digest::SHA256", ring_017),
    ];
    let gib = data.len() as f64 / (1u64 << 30) as f64;
    println!("{mib} MiB per run, {runs} runs; GiB/s median (best)");
    println!("from memory: one {mib} MiB buffer; in cache: a 1 MiB buffer, {mib} times");
    println!("(an upload's chunk has just arrived when it is hashed: in cache)\n");
    println!("| piece | data | {} |", impls.map(|(n, _)| n).join(" | "));
    println!("|---|---|{}", "---:|".repeat(impls.len()));
    let small = &data[..1024 * 1024];
    let cases = [16 * 1024, 64 * 1024, 256 * 1024]
        .into_iter()
        .flat_map(|p| [(p, false), (p, true)]);
    for (piece, cached) in cases {
        let mut rates = vec![Vec::new(); impls.len()];
        let mut digest = None;
        for _ in 0..runs {
            for (i, (_, f)) in impls.iter().enumerate() {
                let t = Instant::now();
                let d = if cached {
                    let mut d = [0; 32];
                    for _ in 0..mib {
                        d = std::hint::black_box(f(std::hint::black_box(small), piece));
                    }
                    d
                } else {
                    std::hint::black_box(f(std::hint::black_box(&data), piece))
                };
                rates[i].push(gib / t.elapsed().as_secs_f64());
                // All of them agree, or the comparison means nothing.
                assert_eq!(*digest.get_or_insert(d), d, "digests differ");
            }
        }
        let cells: Vec<String> = rates
            .iter_mut()
            .map(|r| {
                r.sort_by(f64::total_cmp);
                format!("{:.2} ({:.2})", r[r.len() / 2], r[r.len() - 1])
            })
            .collect();
        let kind = if cached { "in cache" } else { "from memory" };
        println!("| {} KiB | {kind} | {} |", piece / 1024, cells.join(" | "));
    }
}
