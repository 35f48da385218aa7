//! Where a download goes on disk: into a temporary file beside the destination,
//! renamed once complete (no partial file under the final name), never over an
//! existing file unless asked (the name may come from the storage's
//! Content-Disposition), and cleaned up on Ctrl-C, unless `--resume` asked to
//! keep it: then it has a name of its own (`.attachment-<work order>-<id>.part`
//! in the destination's folder), a run that fails or is interrupted keeps it,
//! and the next `--resume` continues from its length (an attachment's content
//! never changes upstream). The partial file is locked while a run writes it.

use std::path::{Path, PathBuf};

use attachment_gateway::client::{ClientError, GatewayClient, Progress};
use attachment_gateway::proto::Attachment;
use tonic::Code;

/// Where the user asked the file to go.
pub enum Target {
    /// Standard output.
    Stdout,
    /// This file.
    File(PathBuf),
    /// This folder, under the attachment's own name.
    Folder(PathBuf),
}

impl Target {
    /// `--out`: `-`, an existing folder, or a file path (default: the current
    /// folder).
    pub fn from_arg(out: Option<&Path>) -> Self {
        match out {
            Some(p) if p == Path::new("-") => Self::Stdout,
            Some(p) if p.is_dir() => Self::Folder(p.to_path_buf()),
            Some(p) => Self::File(p.to_path_buf()),
            None => Self::Folder(PathBuf::from(".")),
        }
    }
}

/// A file name from the gateway, safe to create in a folder: no path, no control
/// characters, not `.` or `..`.
pub fn safe_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = base
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    match clean.trim() {
        "" | "." | ".." => "attachment.bin".into(),
        _ => clean,
    }
}

/// The temporary file of a download under way; removed when dropped unless kept.
struct Partial {
    path: PathBuf,
    keep: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The partial file `--resume` keeps for `attachment_id` of `work_order` in
/// `dir`: a name of its own, made of characters safe anywhere.
pub fn resume_path(dir: &Path, work_order: i64, attachment_id: &str) -> PathBuf {
    let id: String = attachment_id
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!(".attachment-{work_order}-{id}.part"))
}

/// Opens the partial file: a fresh one under a random name, or (`resume`) the
/// kept one, created when missing, locked against a second run. Returns the
/// file, positioned at its end, and the bytes it holds.
fn open_partial(path: &Path, resume: bool) -> std::io::Result<(tokio::fs::File, u64)> {
    let mut o = std::fs::OpenOptions::new();
    if resume {
        o.read(true).write(true).create(true);
    } else {
        o.write(true).create_new(true);
    }
    let f = o.open(path)?;
    if resume {
        f.try_lock().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "another download is writing this partial file",
            )
        })?;
    }
    let len = f.metadata()?.len();
    let mut f = tokio::fs::File::from_std(f);
    if len > 0 {
        // Appending from here; a std seek on the owned file is immediate.
        let mut std_f = f
            .try_into_std()
            .map_err(|_| std::io::Error::other("file busy"))?;
        std::io::Seek::seek(&mut std_f, std::io::SeekFrom::End(0))?;
        f = tokio::fs::File::from_std(std_f);
    }
    Ok((f, len))
}

/// Downloads into a file (or folder) under a temporary name, then moves it into
/// place without replacing an existing file unless `force`. Ctrl-C removes the
/// temporary file (keeps it, with `resume`) and ends the call. Returns the
/// metadata and the final path.
pub async fn to_file(
    client: &GatewayClient,
    work_order: i64,
    attachment_id: &str,
    target: Target,
    (force, resume): (bool, bool),
    progress: Option<Progress>,
) -> Result<(Attachment, PathBuf), ClientError> {
    let (dir, file) = match target {
        Target::Folder(d) => (d, None),
        Target::File(f) => {
            let dir = f
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            (dir, Some(f))
        }
        Target::Stdout => {
            return Err(ClientError::local(
                Code::InvalidArgument,
                "standard output is not a file: --resume and a partial file need --out <file or folder>",
            ));
        }
    };
    if !dir.is_dir() {
        return Err(ClientError::local_file(
            &dir,
            &std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
        ));
    }
    if let Some(f) = &file
        && f.exists()
        && !force
    {
        return Err(exists(f));
    }
    let tmp = if resume {
        resume_path(&dir, work_order, attachment_id)
    } else {
        dir.join(format!(".attachment-{}.part", uuid::Uuid::new_v4()))
    };
    let (mut out, have) = open_partial(&tmp, resume).map_err(|e| {
        ClientError::local(
            Code::InvalidArgument,
            format!("cannot write {}: {e}", tmp.display()),
        )
    })?;
    let mut partial = Partial {
        path: tmp.clone(),
        keep: resume,
    };
    let kept = |what: &str| {
        format!(
            "{what}; the partial download is kept in {} (run again with --resume to continue)",
            tmp.display()
        )
    };
    let run = async {
        match client
            .download_from(work_order, attachment_id, have, &mut out, progress)
            .await
        {
            // Every byte was there already: the metadata from the list.
            Err(e) if have > 0 && e.reason.as_deref() == Some("OFFSET_PAST_END") => {
                complete_already(client, work_order, attachment_id, have, &e).await
            }
            r => r,
        }
    };
    let meta = tokio::select! {
        r = run => match r {
            Ok(m) => m,
            // A partial file that is not this attachment's says so itself.
            Err(e) if resume && e.code == Code::FailedPrecondition => return Err(e),
            Err(mut e) if resume && e.code != Code::NotFound => {
                e.message = kept(&e.message);
                return Err(e);
            }
            Err(e) => {
                partial.keep = false;
                return Err(e);
            }
        },
        _ = tokio::signal::ctrl_c() => {
            drop(out);
            let m = if resume { kept("interrupted") } else { "interrupted; nothing was kept".into() };
            return Err(ClientError::local(Code::Cancelled, m));
        }
    };
    out.sync_all().await?;
    drop(out);
    let dest = file.unwrap_or_else(|| dir.join(safe_file_name(&meta.name)));
    match place(&tmp, &dest, force) {
        Ok(()) => {
            partial.keep = true;
            Ok((meta, dest))
        }
        Err(mut e) if resume => {
            e.message = kept(&e.message);
            Err(e)
        }
        Err(e) => {
            partial.keep = false;
            Err(e)
        }
    }
}

/// A kept partial file that already holds `have` bytes, and the gateway says
/// the attachment has no byte past them: complete when its listed size is
/// exactly that (a longer partial file is not this attachment's).
async fn complete_already(
    client: &GatewayClient,
    work_order: i64,
    attachment_id: &str,
    have: u64,
    past_end: &ClientError,
) -> Result<Attachment, ClientError> {
    let size = past_end
        .detail("size_bytes")
        .and_then(|s| s.parse::<u64>().ok());
    let listed = client
        .list(work_order)
        .await?
        .into_iter()
        .find(|a| a.attachment_id == attachment_id);
    match (size, listed) {
        (Some(size), Some(a)) if size == have => Ok(Attachment {
            size_bytes: size,
            ..a
        }),
        (size, _) => Err(ClientError::local(
            Code::FailedPrecondition,
            format!(
                "the partial file holds {have} bytes but the attachment has {}: it is not a part of this attachment; remove it and download again",
                size.map_or_else(|| "fewer".to_string(), |s| s.to_string())
            ),
        )),
    }
}

fn exists(dest: &Path) -> ClientError {
    ClientError::local(
        Code::InvalidArgument,
        format!(
            "{} exists; use --force to replace it, or --out to choose another name",
            dest.display()
        ),
    )
}

/// Moves the complete download into place: without `force`, only if nothing is
/// there (a hard link fails on an existing name, so no check can be raced).
fn place(tmp: &Path, dest: &Path, force: bool) -> Result<(), ClientError> {
    if force {
        std::fs::rename(tmp, dest)?;
        return Ok(());
    }
    match std::fs::hard_link(tmp, dest) {
        Ok(()) => {
            let _ = std::fs::remove_file(tmp);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(exists(dest)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_gateway_stay_in_their_folder() {
        assert_eq!(safe_file_name("photo.jpg"), "photo.jpg");
        assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name("a\\b\\c.txt"), "c.txt");
        assert_eq!(safe_file_name(".."), "attachment.bin");
        assert_eq!(safe_file_name(""), "attachment.bin");
        assert_eq!(safe_file_name("x\u{1b}[2J.txt"), "x_[2J.txt");
    }
}
