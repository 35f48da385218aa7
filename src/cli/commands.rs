//! One function per subcommand: each connects, makes its calls and returns what
//! to print (text, or JSON with `--json`).

use std::path::PathBuf;
use std::time::Duration;

use attachment_gateway::client::{ClientError, NewUpload};
use attachment_gateway::proto::{AttachmentView, DocumentType, MessageVisibility};
use serde_json::json;

use super::download::{self, Target};
use super::output::{attachment_json, human_size, progress_bar, terminal_safe};
use super::{Conn, connect};

/// What `upload` was given.
pub struct Upload {
    pub work_order: i64,
    pub performed_by: String,
    pub phone: String,
    pub name: Option<String>,
    pub mime_type: Option<String>,
    pub document_type: Option<DocumentType>,
    pub visibility: Option<MessageVisibility>,
    pub message_id: Option<String>,
    pub file: PathBuf,
}

pub async fn upload(conn: &Conn, u: Upload) -> Result<String, ClientError> {
    let client = connect(conn).await?;
    let mut meta = NewUpload::new(u.work_order, u.performed_by);
    meta.phone = u.phone;
    meta.name = u.name.unwrap_or_default();
    meta.mime_type = u.mime_type.unwrap_or_default();
    meta.document_type = u.document_type.unwrap_or(DocumentType::Unspecified);
    meta.visibility = u.visibility.unwrap_or(MessageVisibility::Unspecified);
    meta.message_id = u.message_id.unwrap_or_default();
    let r = match progress_bar(!conn.quiet && !conn.json) {
        Some(p) => client.upload_file_with_progress(&u.file, meta, p).await?,
        None => client.upload_file(&u.file, meta).await?,
    };
    Ok(if conn.json {
        json!({"attachment_id": r.attachment_id, "message_id": r.message_id, "size_bytes": r.size_bytes, "sha256": r.sha256}).to_string()
    } else {
        format!(
            "uploaded {} ({}, sha256 {})",
            terminal_safe(&r.attachment_id),
            human_size(r.size_bytes),
            r.sha256
        )
    })
}

pub async fn list(conn: &Conn, work_order: i64) -> Result<String, ClientError> {
    // The typed fields are all it prints: the cheaper view.
    let list = connect(conn)
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
                    terminal_safe(&a.attachment_id),
                    human_size(a.size_bytes),
                    terminal_safe(&a.mime_type),
                    terminal_safe(&a.name)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

pub async fn download(
    conn: &Conn,
    work_order: i64,
    attachment_id: &str,
    out: Option<PathBuf>,
    (force, resume): (bool, bool),
) -> Result<String, ClientError> {
    let client = connect(conn).await?;
    let target = Target::from_arg(out.as_deref());
    if matches!(target, Target::Stdout) && !resume {
        let mut stdout = tokio::io::stdout();
        let m = client
            .download_to(work_order, attachment_id, &mut stdout, None)
            .await?;
        return Ok(if conn.json {
            attachment_json(&m).to_string()
        } else {
            String::new()
        });
    }
    let progress = progress_bar(!conn.quiet && !conn.json);
    let (m, dest) = download::to_file(
        &client,
        work_order,
        attachment_id,
        target,
        (force, resume),
        progress,
    )
    .await?;
    Ok(if conn.json {
        let mut v = attachment_json(&m);
        v["path"] = json!(dest.display().to_string());
        v.to_string()
    } else {
        format!(
            "downloaded {} ({}) to {}",
            terminal_safe(&m.attachment_id),
            human_size(m.size_bytes),
            terminal_safe(&dest.display().to_string())
        )
    })
}

pub async fn url(conn: &Conn, work_order: i64, attachment_id: &str) -> Result<String, ClientError> {
    let u = connect(conn)
        .await?
        .download_url(work_order, attachment_id)
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
        format!("{}\n(expires {expires})", terminal_safe(&u.url))
    })
}

pub async fn update(
    conn: &Conn,
    work_order: i64,
    attachment_id: &str,
    name: &str,
    document_type: Option<DocumentType>,
    visibility: Option<MessageVisibility>,
) -> Result<String, ClientError> {
    let id = connect(conn)
        .await?
        .update(
            work_order,
            attachment_id,
            name,
            document_type.unwrap_or(DocumentType::Unspecified),
            visibility.unwrap_or(MessageVisibility::Unspecified),
        )
        .await?;
    Ok(if conn.json {
        json!({"message_id": id}).to_string()
    } else {
        format!(
            "updated {} (message {})",
            terminal_safe(attachment_id),
            terminal_safe(&id)
        )
    })
}

pub async fn delete(
    conn: &Conn,
    work_order: i64,
    attachment_id: &str,
) -> Result<String, ClientError> {
    let id = connect(conn)
        .await?
        .delete(work_order, attachment_id)
        .await?;
    Ok(if conn.json {
        json!({"message_id": id}).to_string()
    } else {
        format!(
            "deleted {} (message {})",
            terminal_safe(attachment_id),
            terminal_safe(&id)
        )
    })
}
