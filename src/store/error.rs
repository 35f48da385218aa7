//! How a shared store fails.

/// A shared store could not be reached or answered something unusable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the shared state store is unavailable: {0}")]
pub struct StoreError(pub String);
