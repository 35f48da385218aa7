//! The integration suite, as one test binary: each module starts real gateways on
//! loopback ports against a real upstream (the sandbox, or wiremock for fault
//! shapes) and talks to them through the generated client, grpcurl or the binary.
//!
//! One binary instead of one per file: every test binary links the whole
//! dependency tree, so a dozen of them cost minutes of linking and gigabytes of
//! disk for nothing. `tests/otel.rs` stays apart because it sets process-wide
//! state (the OTEL_* environment and the global tracing subscriber).
//!
//! Run one area: `cargo test --test integration reliability::`.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod binary;
mod callers;
mod client_lib;
mod downloads;
mod events;
mod exactly_once;
mod grpcurl;
mod hostile;
mod lifecycle;
mod properties;
mod reliability;
mod rpcs;
mod shared_events;
mod shared_fault_run;
mod shared_state;
mod upstream_errors;
mod validation;
mod webhook_tokens;
