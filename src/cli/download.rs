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
/// `dir`: one name per attachment and one attachment per name. An id of
/// lowercase letters, digits and `-` (the upstream's UUIDs) is used as it is;
/// any other is written in hex after a `_`, which the first form never holds.
pub fn resume_path(dir: &Path, work_order: i64, attachment_id: &str) -> PathBuf {
    let plain = !attachment_id.is_empty()
        && attachment_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let id = if plain {
        format!("-{attachment_id}")
    } else {
        format!("_{}", hex::encode(attachment_id.as_bytes()))
    };
    dir.join(format!(".attachment-{work_order}{id}.part"))
}

/// A partial file this run may write: opened without following a symbolic
/// link, a regular file of this user's with one name, that nobody else may
/// write (a folder shared with others cannot plant one).
fn open_checked(path: &Path, resume: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut o = std::fs::OpenOptions::new();
    o.write(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
    if resume {
        o.read(true).create(true);
    } else {
        o.create_new(true);
    }
    let f = o.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            std::io::Error::new(e.kind(), "it is a symbolic link; refused")
        } else {
            e
        }
    })?;
    let m = f.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let refuse = |why: &str| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            why.to_string(),
        ))
    };
    if !m.file_type().is_file() {
        return refuse("it is not a regular file; refused");
    }
    if m.uid() != me || m.nlink() != 1 || m.mode() & 0o022 != 0 {
        return refuse(
            "it is not a file of this user's alone (another owner, another name, or writable by others); refused",
        );
    }
    Ok(f)
}

/// The partial file opened: written through `file` (positioned at its end),
/// locked (with `--resume`) through `lock` until dropped, holding `len` bytes.
struct Opened {
    file: tokio::fs::File,
    lock: Option<std::fs::File>,
    len: u64,
}

/// Opens the partial file: a fresh one under a random name, or (`resume`) the
/// kept one, created when missing, locked against a second run.
fn open_partial(path: &Path, resume: bool) -> std::io::Result<Opened> {
    let mut f = open_checked(path, resume)?;
    let lock = if resume {
        f.try_lock().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "another download is writing this partial file",
            )
        })?;
        // The lock is the open file's: a second handle keeps it held until
        // the file is in place, after the writer is closed.
        Some(f.try_clone()?)
    } else {
        None
    };
    let len = std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))?;
    Ok(Opened {
        file: tokio::fs::File::from_std(f),
        lock,
        len,
    })
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
    let Opened {
        file: mut out,
        lock: _lock,
        len: have,
    } = open_partial(&tmp, resume).map_err(|e| {
        ClientError::local(
            Code::InvalidArgument,
            format!("cannot write {}: {e}", tmp.display()),
        )
    })?;
    let mut partial = Partial {
        path: tmp.clone(),
        keep: resume,
    };
    // With --resume, a failed run keeps what it received (an empty file is
    // not worth keeping) and says where.
    let kept = |partial: &mut Partial, what: &str| {
        let empty = std::fs::metadata(&tmp).map_or(true, |m| m.len() == 0);
        if empty {
            partial.keep = false;
            return what.to_string();
        }
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
                drop(out);
                e.message = kept(&mut partial, &e.message);
                return Err(e);
            }
            Err(e) => {
                partial.keep = false;
                return Err(e);
            }
        },
        _ = tokio::signal::ctrl_c() => {
            drop(out);
            let m = if resume { kept(&mut partial, "interrupted") } else { "interrupted; nothing was kept".into() };
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
            e.message = kept(&mut partial, &e.message);
            Err(e)
        }
        Err(e) => {
            partial.keep = false;
            Err(e)
        }
    }
}

/// A kept partial file that already holds `have` bytes, and the gateway says
/// the attachment has no byte past them: complete when the attachment's size
/// (from the gateway's answer, else the list) is exactly that; a longer
/// partial file is not this attachment's.
async fn complete_already(
    client: &GatewayClient,
    work_order: i64,
    attachment_id: &str,
    have: u64,
    past_end: &ClientError,
) -> Result<Attachment, ClientError> {
    let listed = client
        .list(work_order)
        .await?
        .into_iter()
        .find(|a| a.attachment_id == attachment_id)
        .ok_or_else(|| {
            ClientError::local(
                Code::NotFound,
                format!(
                    "attachment {attachment_id} is no longer listed on work order {work_order}"
                ),
            )
        })?;
    let size = past_end
        .detail("size_bytes")
        .and_then(|s| s.parse::<u64>().ok())
        .or((listed.size_bytes > 0).then_some(listed.size_bytes));
    match size {
        Some(size) if size == have => Ok(Attachment {
            size_bytes: size,
            ..listed
        }),
        Some(size) => Err(ClientError::local(
            Code::FailedPrecondition,
            format!(
                "the partial file holds {have} bytes but the attachment has {size}: it is not a part of this attachment; remove it and download again"
            ),
        )),
        None => Err(ClientError::local(
            Code::FailedPrecondition,
            format!(
                "the partial file holds {have} bytes and neither the gateway nor the list says the attachment's size, so whether it is complete cannot be told; remove it and download again"
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
    fn one_partial_file_name_per_attachment() {
        let d = Path::new("/d");
        let name = |wo, id| resume_path(d, wo, id).display().to_string();
        assert_eq!(
            name(7, "0f8e7a52-1b2c-4d3e-9f00-aa11bb22cc33"),
            "/d/.attachment-7-0f8e7a52-1b2c-4d3e-9f00-aa11bb22cc33.part"
        );
        // Ids that a character-for-character cleaning would merge stay apart,
        // and none leaves the folder.
        let ids = ["a.b", "a_b", "a/b", "A-b", "a-b", "../x", "61-62", "_6162"];
        let names: std::collections::HashSet<String> = ids.iter().map(|i| name(7, i)).collect();
        assert_eq!(names.len(), ids.len(), "{names:?}");
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("/d/.attachment-7") && !n[3..].contains('/'))
        );
        assert_ne!(name(7, "x"), name(70, "x"));
        assert_ne!(
            name(7, "1-x"),
            name(71, "x"),
            "the work order and the id do not run together"
        );
    }

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
