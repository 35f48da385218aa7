//! `watch`: prints attachment events as they arrive, one line each (or one JSON
//! object per line with `--json`), and opens the watch again by itself after a
//! dropped connection, from the last cursor. Ctrl-C stops it and prints the
//! cursor to resume from (`--from`).

use std::io::Write;
use std::process::ExitCode;

use attachment_gateway::client::Watched;
use attachment_gateway::proto::{AttachmentEvent, AttachmentEventType, EventSource};
use futures_util::StreamExt;
use serde_json::json;

use super::output::{attachment_json, human_size, terminal_safe};
use super::{Conn, connect, report};

fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| {
        let d =
            std::time::Duration::new(u64::try_from(t.seconds).ok()?, u32::try_from(t.nanos).ok()?);
        Some(humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + d).to_string())
    })
    .unwrap_or_default()
}

fn kind(e: &AttachmentEvent) -> &'static str {
    match AttachmentEventType::try_from(e.r#type) {
        Ok(AttachmentEventType::Added) => "ADDED",
        Ok(AttachmentEventType::Removed) => "REMOVED",
        Ok(AttachmentEventType::Updated) => "UPDATED",
        _ => "UNKNOWN",
    }
}

fn who(e: &AttachmentEvent) -> String {
    match EventSource::try_from(e.source) {
        Ok(EventSource::Gateway) => format!("by {} (gateway)", terminal_safe(&e.caller)),
        _ => match &e.sender {
            Some(s) if !s.name.is_empty() => {
                format!("by {} (CorrigoPro)", terminal_safe(&s.name))
            }
            _ => "(CorrigoPro)".to_string(),
        },
    }
}

fn line(e: &AttachmentEvent) -> String {
    let a = e.attachment.clone().unwrap_or_default();
    let mut what = terminal_safe(&a.attachment_id);
    if !a.name.is_empty() {
        what.push_str(&format!(" \"{}\"", terminal_safe(&a.name)));
    }
    if a.size_bytes > 0 {
        what.push_str(&format!(" ({})", human_size(a.size_bytes)));
    }
    format!(
        "{}  {:<7}  work order {}  {}  {}  [{}]",
        time(e.occurred_at.as_ref()),
        kind(e),
        e.work_order_id,
        what,
        who(e),
        terminal_safe(&e.event_id)
    )
}

fn event_json(e: &AttachmentEvent) -> serde_json::Value {
    json!({
        "event_id": e.event_id,
        "type": kind(e),
        "work_order_id": e.work_order_id,
        "attachment": e.attachment.as_ref().map(attachment_json),
        "source": EventSource::try_from(e.source).map(|s| s.as_str_name()).unwrap_or("EVENT_SOURCE_UNSPECIFIED"),
        "caller": e.caller,
        "sender": e.sender.as_ref().map(|s| json!({"name": s.name, "phone": s.phone, "type": s.r#type})),
        "occurred_at": time(e.occurred_at.as_ref()),
        "received_at": time(e.received_at.as_ref()),
        "upstream_message_id": e.upstream_message_id,
    })
}

/// Runs until Ctrl-C (exit 0), a closed stdout (exit 0), or an error no retry
/// can fix (its exit code).
pub async fn run(conn: &Conn, work_orders: Vec<i64>, from: Option<String>) -> ExitCode {
    let client = match connect(conn).await {
        Ok(c) => c,
        Err(e) => return report(&e, conn.json),
    };
    let mut cursor = from.clone().unwrap_or_default();
    let mut events = Box::pin(client.watch(work_orders, from));
    let stdout = std::io::stdout();
    loop {
        let next = tokio::select! {
            n = events.next() => n,
            _ = tokio::signal::ctrl_c() => {
                if !cursor.is_empty() && !conn.quiet {
                    eprintln!("stopped; resume with --from {}", terminal_safe(&cursor));
                }
                return ExitCode::SUCCESS;
            }
        };
        let text = match next {
            None => return ExitCode::SUCCESS,
            Some(Err(e)) => return report(&e, conn.json),
            Some(Ok(Watched::Heartbeat(h))) => {
                cursor = h.last_event_id;
                continue;
            }
            Some(Ok(Watched::Resuming {
                after_event_id,
                reason,
            })) => {
                if !conn.quiet {
                    eprintln!(
                        "watch: {:?}: {}; resuming after {}",
                        reason.code,
                        terminal_safe(&reason.message),
                        terminal_safe(&after_event_id)
                    );
                }
                continue;
            }
            Some(Ok(Watched::Event(e))) => {
                cursor.clone_from(&e.event_id);
                if conn.json {
                    event_json(&e).to_string()
                } else {
                    line(&e)
                }
            }
        };
        let mut out = stdout.lock();
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            // The reader went away (`| head`): done.
            return ExitCode::SUCCESS;
        }
    }
}
