//! State that replicas must share to act as one gateway, behind one interface per
//! use, each with an in-process backend (the default, for one replica).
//!
//! - [`writes`]: writes remembered by the caller's message id (idempotency);
//! - [`event_log`]: the log of attachment events that watches read.
//!
//! [`redis`] holds the shared backends of all three (and the shared quotas).

pub mod event_log;
pub mod redis;
pub mod writes;

/// A shared store could not be reached or answered something unusable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the shared state store is unavailable: {0}")]
pub struct StoreError(pub String);
