//! The audit trail: one structured log line, on the `audit` target, for every
//! write that reached the upstream (succeeded, was refused there, or has an
//! outcome not known yet), every write answered from its record or reconciled,
//! and every change recorded from CorrigoPro's notifications. Route them apart
//! by target (`RUST_LOG`-style filters, or a log shipper selecting
//! `"target":"audit"` in the JSON logs).
//!
//! The schema is stable (docs/operations.md, "Audit trail"); a line never
//! carries a token, a download URL or file bytes.

use crate::telemetry::trace_id_of;

/// A write of the gateway's callers.
pub struct Write<'a> {
    /// Who asked: the caller's identity with its kind (`api_key:billing`).
    pub caller: &'a str,
    /// `UploadAttachment`, `UpdateAttachment` or `DeleteAttachment`.
    pub method: &'static str,
    pub work_order_id: i64,
    /// Empty when the upstream gave none (a failed upload).
    pub attachment_id: &'a str,
    /// The file name (uploads, updates); empty for deletes.
    pub name: &'a str,
    pub size_bytes: Option<u64>,
    pub sha256: Option<&'a str>,
    pub message_id: &'a str,
    /// `ok`, `failed`, `outcome_unknown` or `reconciled`.
    pub outcome: &'a str,
    /// The gRPC status the caller got (`OK`, `FAILED_PRECONDITION`, …).
    pub code: &'a str,
    /// Answered from the record of writes: done before, not run now.
    pub replayed: bool,
    /// Found by reconciling with the upstream after an answer was lost.
    pub reconciled: bool,
}

/// Emits one `audit` line for a write.
pub fn write(w: &Write<'_>) {
    let trace_id = trace_id_of(&tracing::Span::current()).unwrap_or_default();
    tracing::info!(
        target: "audit",
        audit = "write",
        caller = w.caller,
        method = w.method,
        work_order_id = w.work_order_id,
        attachment_id = w.attachment_id,
        name = w.name,
        size_bytes = w.size_bytes,
        sha256 = w.sha256,
        message_id = w.message_id,
        outcome = w.outcome,
        code = w.code,
        replayed = w.replayed,
        reconciled = w.reconciled,
        trace_id = %trace_id,
        "write"
    );
}

/// A change CorrigoPro notified.
pub struct Notification<'a> {
    /// The notification's `Header.Action` (`AttachmentAdded`, …).
    pub action: &'a str,
    pub work_order_id: i64,
    pub attachment_id: &'a str,
    pub name: &'a str,
    pub size_bytes: u64,
    /// The notification's `Header.MessageId`.
    pub message_id: &'a str,
    /// `recorded`, or `duplicate` (delivered again, recorded before).
    pub outcome: &'a str,
    /// The verified token's name claim, when it has one.
    pub integration: &'a str,
}

/// Emits one `audit` line for a change recorded from a notification.
pub fn notification(n: &Notification<'_>) {
    let trace_id = trace_id_of(&tracing::Span::current()).unwrap_or_default();
    tracing::info!(
        target: "audit",
        audit = "notification",
        caller = "corrigopro",
        method = n.action,
        work_order_id = n.work_order_id,
        attachment_id = n.attachment_id,
        name = n.name,
        size_bytes = n.size_bytes,
        message_id = n.message_id,
        outcome = n.outcome,
        integration = n.integration,
        trace_id = %trace_id,
        "notification"
    );
}
