//! What every path of the service shares, made once when the gateway is built.

use std::sync::Arc;

use super::deadline::Bounds;
use crate::metrics::Metrics;
use crate::recorder::Recorder;
use crate::upstream::Upstream;

/// What every path of the service shares, made once when the gateway is built.
#[derive(Clone)]
pub struct Runtime {
    pub metrics: Arc<Metrics>,
    /// The shutdown's closing and cut, which bound every call.
    pub bounds: Bounds,
    /// The CorrigoPro client (budgeted, behind the breaker).
    pub upstream: Arc<Upstream>,
    /// Records the gateway's own writes into the event log (which watches read).
    pub recorder: Recorder,
}
