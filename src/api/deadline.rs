//! When a call must be over, and running upstream work within that bound: the
//! caller's `grpc-timeout` capped by the gateway's own timeout, and the cut that
//! ends calls still running after the shutdown grace period.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;

use super::error::{Error, Op};
use crate::upstream::UpstreamError;

/// How much sooner than the caller's `grpc-timeout` the gateway gives up: enough
/// for its DEADLINE_EXCEEDED (with details) to reach the caller before the
/// caller's own timer cuts the call, on a busy machine too.
pub fn margin(t: Duration) -> Duration {
    (t / 10).min(Duration::from_millis(50))
}

/// When a call arrived (before the gates' work: authentication, the shared rate
/// check), in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub Instant);

/// When a call must be over: the caller's `grpc-timeout`, capped by the gateway's
/// own timeout, counted from when the call arrived (else from now). A caller's
/// deadline is shortened by a small margin so that the caller gets the
/// gateway's DEADLINE_EXCEEDED (with details) rather than the transport cutting
/// the call first.
pub fn deadline(metadata: &MetadataMap, arrived: Option<&Arrived>, default: Duration) -> Instant {
    let now = arrived.map_or_else(Instant::now, |a| a.0);
    match metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
    {
        Some(t) if t < default => now + t.saturating_sub(margin(t)),
        _ => now + default,
    }
}

/// Parses the `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Runs upstream work within a deadline and the shutdown cut.
#[derive(Clone, Default)]
pub struct Bounds {
    /// Cancelled as the gateway closes its listener: watches, which never
    /// finish by themselves, end then (not after the grace period meant for
    /// calls that do finish).
    pub closing: CancellationToken,
    /// Cancelled when the shutdown grace period is over: calls still running end
    /// with UNAVAILABLE (and their upstream requests are aborted).
    pub cut: CancellationToken,
}

impl Bounds {
    /// Runs one upstream call before `deadline`, mapping its failure. `what` names
    /// the work in logs and in the DEADLINE_EXCEEDED message.
    pub async fn run<T>(
        &self,
        deadline: Instant,
        op: Op,
        what: &'static str,
        fut: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, Error> {
        let result = tokio::select! {
            r = tokio::time::timeout_at(deadline, fut) => r,
            () = self.cut.cancelled() => return Err(Error::ShuttingDown { op, nothing_applied: false }),
        };
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, call = what, "upstream call failed");
                Err(Error::upstream(e, op))
            }
            Err(_) => {
                tracing::warn!(call = what, "deadline passed during the upstream call");
                Err(Error::Deadline {
                    op,
                    what,
                    nothing_applied: false,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "5", "5x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
