//! Where a download goes on disk: into a temporary file beside the destination,
//! renamed once complete (no partial file under the final name), never over an
//! existing file unless asked (the name may come from the storage's
//! Content-Disposition), and cleaned up on Ctrl-C.

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

/// Downloads into a file (or folder) under a temporary name, then moves it into
/// place without replacing an existing file unless `force`. Ctrl-C removes the
/// temporary file and ends the call. Returns the metadata and the final path.
pub async fn to_file(
    client: &GatewayClient,
    work_order: i64,
    attachment_id: &str,
    target: Target,
    force: bool,
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
            return Err(ClientError::local(Code::Internal, "stdout is not a file"));
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
    let tmp = dir.join(format!(".attachment-{}.part", uuid::Uuid::new_v4()));
    let mut out = tokio::fs::File::create(&tmp).await.map_err(|e| {
        ClientError::local(
            Code::InvalidArgument,
            format!("cannot write in {}: {e}", dir.display()),
        )
    })?;
    let partial = Partial {
        path: tmp.clone(),
        keep: false,
    };
    let meta = tokio::select! {
        r = client.download_to(work_order, attachment_id, &mut out, progress) => r?,
        _ = tokio::signal::ctrl_c() => {
            drop(out);
            drop(partial);
            return Err(ClientError::local(Code::Cancelled, "interrupted; nothing was kept"));
        }
    };
    out.sync_all().await?;
    drop(out);
    let dest = file.unwrap_or_else(|| dir.join(safe_file_name(&meta.name)));
    place(&tmp, &dest, force)?;
    let mut partial = partial;
    partial.keep = true;
    Ok((meta, dest))
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
