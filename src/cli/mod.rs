//! Client subcommands for operators and scripts: upload, list, download, url,
//! update, delete. Human output by default, `--json` for scripts; a progress bar on
//! uploads and downloads when stderr is a terminal.
//!
//! Exit codes: 0 done; 2 bad input (usage, INVALID_ARGUMENT, a local file that
//! cannot be used); 3 not found; 4 not allowed (UNAUTHENTICATED,
//! PERMISSION_DENIED); 5 refused by state (FAILED_PRECONDITION); 75 temporary
//! failure, safe to retry (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED,
//! ABORTED); 130 interrupted; 1 anything else.

mod commands;
mod download;
mod output;
mod watch;
mod webhook_token;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use attachment_gateway::client::{ClientError, GatewayClient};
use attachment_gateway::proto::{DocumentType, MessageVisibility};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use serde_json::json;
use tonic::Code;

use self::output::terminal_safe;

#[derive(Debug, Args)]
pub struct Conn {
    /// The gateway's address.
    #[arg(
        long,
        env = "ATTACHMENT_GATEWAY_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    addr: String,
    /// A bearer token (JWT or API key) sent as `authorization: Bearer …`.
    #[arg(long, env = "ATTACHMENT_GATEWAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// An API key sent as `x-api-key`.
    #[arg(long, env = "ATTACHMENT_GATEWAY_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// CA certificate (PEM) to trust; implies TLS.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS, with --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// The server name to verify, when it differs from the address.
    #[arg(long)]
    tls_domain: Option<String>,
    /// Deadline of a call (uploads and downloads get ten times this).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// The values of a proto enum as the CLI spells them: `DOCUMENT_TYPE_INVOICE_PRINTOUT`
/// is `invoice-printout`. The proto is the one list of names.
fn enum_names(prefix: &str, name_of: impl Fn(i32) -> Option<&'static str>) -> Vec<String> {
    (1..64)
        .filter_map(name_of)
        .map(|n| {
            n.trim_start_matches(prefix)
                .to_ascii_lowercase()
                .replace('_', "-")
        })
        .collect()
}

fn document_type_arg() -> impl TypedValueParser<Value = DocumentType> {
    let name_of = |i| DocumentType::try_from(i).ok().map(|d| d.as_str_name());
    PossibleValuesParser::new(enum_names("DOCUMENT_TYPE_", name_of)).map(|s| {
        DocumentType::from_str_name(&format!(
            "DOCUMENT_TYPE_{}",
            s.to_uppercase().replace('-', "_")
        ))
        .unwrap_or(DocumentType::Unspecified)
    })
}

fn visibility_arg() -> impl TypedValueParser<Value = MessageVisibility> {
    let name_of = |i| MessageVisibility::try_from(i).ok().map(|v| v.as_str_name());
    PossibleValuesParser::new(enum_names("MESSAGE_VISIBILITY_", name_of)).map(|s| {
        MessageVisibility::from_str_name(&format!(
            "MESSAGE_VISIBILITY_{}",
            s.to_uppercase().replace('-', "_")
        ))
        .unwrap_or(MessageVisibility::Unspecified)
    })
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upload a file to a work order.
    Upload {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        work_order: i64,
        /// Who uploads (PerformedBy.Name).
        #[arg(long)]
        performed_by: String,
        #[arg(long, default_value = "")]
        phone: String,
        /// The attachment's name (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        /// The media type (default: from the extension).
        #[arg(long)]
        mime_type: Option<String>,
        #[arg(long, value_parser = document_type_arg())]
        document_type: Option<DocumentType>,
        #[arg(long, value_parser = visibility_arg())]
        visibility: Option<MessageVisibility>,
        /// A message id (default: generated).
        #[arg(long)]
        message_id: Option<String>,
        file: PathBuf,
    },
    /// List a work order's attachments.
    List {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        work_order: i64,
    },
    /// Download an attachment.
    Download {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        work_order: i64,
        attachment_id: String,
        /// Where to write it: a file, a folder (under its own name), or `-` for
        /// stdout; default: its own name in the current folder.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Replace a file that exists already.
        #[arg(long)]
        force: bool,
        /// Keep a partial download when the run fails or is interrupted, and
        /// continue the one a run before kept (from its last byte).
        #[arg(long)]
        resume: bool,
    },
    /// Print a temporary download link (valid 15 minutes; do not store it).
    Url {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        work_order: i64,
        attachment_id: String,
    },
    /// Change an attachment's name, document type or visibility.
    Update {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        work_order: i64,
        attachment_id: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = document_type_arg())]
        document_type: Option<DocumentType>,
        #[arg(long, value_parser = visibility_arg())]
        visibility: Option<MessageVisibility>,
    },
    /// Print attachment events as they happen (customers' changes and this
    /// gateway's writes); resumes by itself after a dropped connection.
    Watch {
        #[command(flatten)]
        conn: Conn,
        /// Only this work order's events (repeat for several; default: all).
        #[arg(long = "work-order", value_name = "ID")]
        work_orders: Vec<i64>,
        /// Start after this event id (a printed `[…]` id, or the one printed at
        /// Ctrl-C); default: from now.
        #[arg(long, value_name = "EVENT_ID")]
        from: Option<String>,
    },
    /// Tools for CorrigoPro's webhook tokens (no gateway needed).
    WebhookToken {
        #[command(subcommand)]
        action: webhook_token::WebhookToken,
    },
    /// Delete an attachment.
    Delete {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        work_order: i64,
        attachment_id: String,
    },
}

fn exit_code(e: &ClientError) -> u8 {
    match e.code {
        Code::InvalidArgument | Code::OutOfRange => 2,
        Code::NotFound => 3,
        Code::Unauthenticated | Code::PermissionDenied => 4,
        Code::FailedPrecondition => 5,
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted => 75,
        Code::Cancelled => 130,
        _ => 1,
    }
}

fn report(e: &ClientError, json_out: bool) -> ExitCode {
    if json_out {
        let mut v = json!({"error": {
            "code": format!("{:?}", e.code), "message": e.message, "reason": e.reason,
            "retry_after_ms": e.retry_after.map(|d| d.as_millis() as u64),
            "fields": e.field_violations.iter().map(|(f, d)| json!({"field": f, "description": d})).collect::<Vec<_>>(),
        }});
        // What else the ErrorInfo said (e.g. `size_bytes`), by its own keys.
        v["error"]["details"] = e
            .metadata
            .iter()
            .map(|(k, d)| (k.clone(), json!(d)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        // The same name as in the status's ErrorInfo.
        v["error"][attachment_gateway::proto::error_info::RETRY_SAFE] = json!(e.retry_safe);
        eprintln!("{v}");
    } else {
        eprintln!("error: {:?}: {}", e.code, terminal_safe(&e.message));
        for (f, d) in &e.field_violations {
            eprintln!("  {}: {}", terminal_safe(f), terminal_safe(d));
        }
        if e.is_retryable() {
            match e.retry_after {
                Some(d) => eprintln!("  safe to retry after {} ms", d.as_millis()),
                None => eprintln!("  safe to retry"),
            }
        }
    }
    ExitCode::from(exit_code(e))
}

async fn connect(c: &Conn) -> Result<GatewayClient, ClientError> {
    let mut b = GatewayClient::builder(c.addr.clone()).timeout(c.timeout);
    if let Some(t) = &c.token {
        b = b.bearer_token(t.clone());
    } else if let Some(k) = &c.api_key {
        b = b.api_key(k.clone());
    }
    if c.ca_cert.is_some() || c.cert.is_some() || c.addr.starts_with("https://") {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| ClientError::local_file(p, &e));
        let ca = c.ca_cert.as_ref().map(read).transpose()?;
        let id = match (&c.cert, &c.key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        b = b.tls(ca, id, c.tls_domain.clone());
    }
    b.connect().await
}

/// Runs one subcommand; its output goes to stdout, errors to stderr.
pub async fn run(cmd: Command) -> ExitCode {
    let (conn, result) = match cmd {
        Command::WebhookToken { action } => return webhook_token::run(action),
        Command::Watch {
            conn,
            work_orders,
            from,
        } => return watch::run(&conn, work_orders, from).await,
        Command::Upload {
            conn,
            work_order,
            performed_by,
            phone,
            name,
            mime_type,
            document_type,
            visibility,
            message_id,
            file,
        } => {
            let upload = commands::Upload {
                work_order,
                performed_by,
                phone,
                name,
                mime_type,
                document_type,
                visibility,
                message_id,
                file,
            };
            let r = commands::upload(&conn, upload).await;
            (conn, r)
        }
        Command::List { conn, work_order } => {
            let r = commands::list(&conn, work_order).await;
            (conn, r)
        }
        Command::Download {
            conn,
            work_order,
            attachment_id,
            out,
            force,
            resume,
        } => {
            let r =
                commands::download(&conn, work_order, &attachment_id, out, (force, resume)).await;
            (conn, r)
        }
        Command::Url {
            conn,
            work_order,
            attachment_id,
        } => {
            let r = commands::url(&conn, work_order, &attachment_id).await;
            (conn, r)
        }
        Command::Update {
            conn,
            work_order,
            attachment_id,
            name,
            document_type,
            visibility,
        } => {
            let r = commands::update(
                &conn,
                work_order,
                &attachment_id,
                &name,
                document_type,
                visibility,
            )
            .await;
            (conn, r)
        }
        Command::Delete {
            conn,
            work_order,
            attachment_id,
        } => {
            let r = commands::delete(&conn, work_order, &attachment_id).await;
            (conn, r)
        }
    };
    match result {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => report(&e, conn.json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_values_come_from_the_proto() {
        let name_of = |i| DocumentType::try_from(i).ok().map(|d| d.as_str_name());
        let names = enum_names("DOCUMENT_TYPE_", name_of);
        assert_eq!(
            names,
            [
                "document",
                "picture",
                "signature",
                "invoice-printout",
                "service-contract",
                "misc"
            ]
        );
        let name_of = |i| MessageVisibility::try_from(i).ok().map(|v| v.as_str_name());
        assert!(enum_names("MESSAGE_VISIBILITY_", name_of).contains(&"cru-only".to_string()));
    }
}
