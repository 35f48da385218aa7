//! Client subcommands for operators and scripts: upload, list, download, url,
//! update, delete. Human output by default, `--json` for scripts; a progress line on
//! uploads and downloads when stderr is a terminal.
//!
//! Exit codes: 0 done; 2 bad input (usage, INVALID_ARGUMENT); 3 not found;
//! 4 not allowed (UNAUTHENTICATED, PERMISSION_DENIED); 5 refused by state
//! (FAILED_PRECONDITION); 75 temporary failure, safe to retry (UNAVAILABLE,
//! RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED); 1 anything else.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use attachment_gateway::client::{ClientError, GatewayClient, NewUpload, Progress};
use attachment_gateway::proto::{Attachment, AttachmentView, DocumentType, MessageVisibility};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tonic::Code;

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
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DocType {
    Document,
    Picture,
    Signature,
    InvoicePrintout,
    ServiceContract,
    Misc,
}

impl From<DocType> for DocumentType {
    fn from(d: DocType) -> Self {
        match d {
            DocType::Document => Self::Document,
            DocType::Picture => Self::Picture,
            DocType::Signature => Self::Signature,
            DocType::InvoicePrintout => Self::InvoicePrintout,
            DocType::ServiceContract => Self::ServiceContract,
            DocType::Misc => Self::Misc,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Vis {
    None,
    CruOnly,
    CruSubs,
    CruLeads,
    CruLead,
    All,
}

impl From<Vis> for MessageVisibility {
    fn from(v: Vis) -> Self {
        match v {
            Vis::None => Self::None,
            Vis::CruOnly => Self::CruOnly,
            Vis::CruSubs => Self::CruSubs,
            Vis::CruLeads => Self::CruLeads,
            Vis::CruLead => Self::CruLead,
            Vis::All => Self::All,
        }
    }
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
        #[arg(long, value_enum)]
        document_type: Option<DocType>,
        #[arg(long, value_enum)]
        visibility: Option<Vis>,
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
        #[arg(long, value_enum)]
        document_type: Option<DocType>,
        #[arg(long, value_enum)]
        visibility: Option<Vis>,
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
        _ => 1,
    }
}

fn report(e: &ClientError, json_out: bool) -> ExitCode {
    if json_out {
        let v = json!({"error": {
            "code": format!("{:?}", e.code), "message": e.message, "reason": e.reason,
            "retry_safe": e.retry_safe, "retry_after_ms": e.retry_after.map(|d| d.as_millis() as u64),
            "fields": e.field_violations.iter().map(|(f, d)| json!({"field": f, "description": d})).collect::<Vec<_>>(),
        }});
        eprintln!("{v}");
    } else {
        eprintln!("error: {:?}: {}", e.code, e.message);
        for (f, d) in &e.field_violations {
            eprintln!("  {f}: {d}");
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

fn human_size(n: u64) -> String {
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

/// A progress line on stderr, redrawn at most ten times a second.
fn progress_line(enabled: bool) -> Option<Progress> {
    if !enabled {
        return None;
    }
    let mut last = Instant::now() - Duration::from_secs(1);
    Some(Box::new(move |done: u64, total: Option<u64>| {
        let finished = total == Some(done);
        if !finished && last.elapsed() < Duration::from_millis(100) {
            return;
        }
        last = Instant::now();
        let line = match total {
            Some(t) if t > 0 => format!(
                "\r{} / {} {:>3}%",
                human_size(done),
                human_size(t),
                done * 100 / t
            ),
            _ => format!("\r{}", human_size(done)),
        };
        let mut err = std::io::stderr();
        let _ = write!(err, "{line}\x1b[K");
        if finished {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }))
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

fn attachment_json(a: &Attachment) -> serde_json::Value {
    json!({
        "attachment_id": a.attachment_id, "name": a.name, "mime_type": a.mime_type,
        "size_bytes": a.size_bytes,
        "document_type": DocumentType::try_from(a.document_type).map(|d| d.as_str_name()).unwrap_or("DOCUMENT_TYPE_UNSPECIFIED"),
        "subtype": a.subtype,
    })
}

pub async fn run(cmd: Command) -> ExitCode {
    let (conn, result) = match cmd {
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
            let show = !conn.quiet && !conn.json && std::io::stderr().is_terminal();
            let r = async {
                let client = connect(&conn).await?;
                let mut meta = NewUpload::new(work_order, performed_by);
                meta.phone = phone;
                meta.name = name.unwrap_or_default();
                meta.mime_type = mime_type.unwrap_or_default();
                meta.document_type = document_type.map(Into::into).unwrap_or(DocumentType::Unspecified);
                meta.visibility = visibility.map(Into::into).unwrap_or(MessageVisibility::Unspecified);
                meta.message_id = message_id.unwrap_or_default();
                let r = match progress_line(show) {
                    Some(p) => client.upload_file_with_progress(&file, meta, p).await?,
                    None => client.upload_file(&file, meta).await?,
                };
                Ok(if conn.json {
                    json!({"attachment_id": r.attachment_id, "message_id": r.message_id, "size_bytes": r.size_bytes, "sha256": r.sha256}).to_string()
                } else {
                    format!("uploaded {} ({}, sha256 {})", r.attachment_id, human_size(r.size_bytes), r.sha256)
                })
            }
            .await;
            (conn, r)
        }
        Command::List { conn, work_order } => {
            let r = async {
                // The typed fields are all it prints: the cheaper view.
                let list = connect(&conn)
                    .await?
                    .list_with_view(work_order, AttachmentView::Basic)
                    .await?;
                Ok(if conn.json {
                    serde_json::Value::Array(list.iter().map(attachment_json).collect()).to_string()
                } else if list.is_empty() {
                    "no attachments".to_string()
                } else {
                    list.iter()
                        .map(|a| {
                            format!(
                                "{}  {:>10}  {:<24}  {}",
                                a.attachment_id,
                                human_size(a.size_bytes),
                                a.mime_type,
                                a.name
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
            }
            .await;
            (conn, r)
        }
        Command::Download {
            conn,
            work_order,
            attachment_id,
            out,
        } => {
            let show = !conn.quiet && !conn.json && std::io::stderr().is_terminal();
            let r = async {
                let client = connect(&conn).await?;
                let to_stdout = out.as_deref() == Some(std::path::Path::new("-"));
                if to_stdout {
                    let mut stdout = tokio::io::stdout();
                    let m = client
                        .download_to(work_order, &attachment_id, &mut stdout, None)
                        .await?;
                    return Ok(if conn.json {
                        attachment_json(&m).to_string()
                    } else {
                        String::new()
                    });
                }
                // Into a temporary file beside the destination first, renamed when
                // complete: no partial file is left under the final name, and the
                // rename stays on one filesystem.
                // `--out` naming an existing folder means "into that folder".
                let into_dir = out.as_deref().filter(|p| p.is_dir()).map(PathBuf::from);
                let target = if into_dir.is_some() {
                    None
                } else {
                    out.clone()
                };
                let dir = into_dir
                    .clone()
                    .or_else(|| {
                        target
                            .as_deref()
                            .and_then(|p| p.parent())
                            .filter(|p| !p.as_os_str().is_empty())
                            .map(PathBuf::from)
                    })
                    .unwrap_or_else(|| PathBuf::from("."));
                if !dir.is_dir() {
                    return Err(ClientError::local_file(
                        &dir,
                        &std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
                    ));
                }
                let tmp = dir.join(format!(".attachment-{}.part", uuid::Uuid::new_v4()));
                let mut f = tokio::fs::File::create(&tmp).await.map_err(|e| {
                    ClientError::local(
                        Code::InvalidArgument,
                        format!("cannot write in {}: {e}", dir.display()),
                    )
                })?;
                let res = client
                    .download_to(work_order, &attachment_id, &mut f, progress_line(show))
                    .await;
                drop(f);
                let m = match res {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e);
                    }
                };
                let name = m
                    .name
                    .rsplit(['/', '\\'])
                    .next()
                    .filter(|n| !n.is_empty() && *n != ".." && *n != ".")
                    .unwrap_or("attachment.bin")
                    .to_string();
                let dest = target.unwrap_or_else(|| dir.join(&name));
                // Same folder, so a rename; if even that fails, leave nothing behind.
                if let Err(e) = std::fs::rename(&tmp, &dest) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e.into());
                }
                Ok(if conn.json {
                    let mut v = attachment_json(&m);
                    v["path"] = json!(dest.display().to_string());
                    v.to_string()
                } else {
                    format!(
                        "downloaded {} ({}) to {}",
                        m.attachment_id,
                        human_size(m.size_bytes),
                        dest.display()
                    )
                })
            }
            .await;
            (conn, r)
        }
        Command::Url {
            conn,
            work_order,
            attachment_id,
        } => {
            let r = async {
                let u = connect(&conn)
                    .await?
                    .download_url(work_order, &attachment_id)
                    .await?;
                let expires = u
                    .expire_time
                    .map(|t| {
                        let st = std::time::UNIX_EPOCH
                            + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
                        humantime::format_rfc3339_seconds(st).to_string()
                    })
                    .unwrap_or_default();
                Ok(if conn.json {
                    json!({"url": u.url, "expire_time": expires}).to_string()
                } else {
                    format!("{}\n(expires {expires})", u.url)
                })
            }
            .await;
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
            let r = async {
                let id = connect(&conn)
                    .await?
                    .update(
                        work_order,
                        &attachment_id,
                        &name,
                        document_type
                            .map(Into::into)
                            .unwrap_or(DocumentType::Unspecified),
                        visibility
                            .map(Into::into)
                            .unwrap_or(MessageVisibility::Unspecified),
                    )
                    .await?;
                Ok(if conn.json {
                    json!({"message_id": id}).to_string()
                } else {
                    format!("updated {attachment_id} (message {id})")
                })
            }
            .await;
            (conn, r)
        }
        Command::Delete {
            conn,
            work_order,
            attachment_id,
        } => {
            let r = async {
                let id = connect(&conn)
                    .await?
                    .delete(work_order, &attachment_id)
                    .await?;
                Ok(if conn.json {
                    json!({"message_id": id}).to_string()
                } else {
                    format!("deleted {attachment_id} (message {id})")
                })
            }
            .await;
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
