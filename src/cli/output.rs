//! What the CLI shows: sizes, text safe for a terminal, JSON, progress bars.

use std::io::IsTerminal;

use attachment_gateway::client::Progress;
use attachment_gateway::proto::{Attachment, DocumentType};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

pub fn human_size(n: u64) -> String {
    const U: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// Text from the gateway or the upstream (file names, messages) made safe to print
/// on a terminal: control characters (escape sequences among them) and
/// direction overrides are shown escaped, not interpreted.
pub fn terminal_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

pub fn attachment_json(a: &Attachment) -> serde_json::Value {
    json!({
        "attachment_id": a.attachment_id, "name": a.name, "mime_type": a.mime_type,
        "size_bytes": a.size_bytes,
        "document_type": DocumentType::try_from(a.document_type).map(|d| d.as_str_name()).unwrap_or("DOCUMENT_TYPE_UNSPECIFIED"),
        "subtype": a.subtype,
    })
}

/// A progress bar on stderr with bytes, rate and time left, drawn only when
/// stderr is a terminal and `enabled`. It restarts from zero on a retry.
pub fn progress_bar(enabled: bool) -> Option<Progress> {
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
    bar.set_style(
        ProgressStyle::with_template(
            "{bytes}/{total_bytes} {percent:>3}% [{wide_bar}] {binary_bytes_per_sec}, {eta} left",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    Some(Box::new(move |done: u64, total: Option<u64>| {
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
        if total == Some(done) {
            bar.finish();
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_interpret() {
        assert_eq!(terminal_safe("plain name.pdf"), "plain name.pdf");
        assert_eq!(terminal_safe("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(terminal_safe("x\ny\r"), "x\\ny\\r");
        assert_eq!(terminal_safe("evil\u{202e}fdp.exe"), "evil\\u{202e}fdp.exe");
        assert_eq!(terminal_safe("résumé.pdf"), "résumé.pdf");
    }
}
