//! What the caller sent of an upload: its bytes counted against the limits and
//! the declared size, and hashed.

use sha2::{Digest, Sha256};

use crate::api::error::Error;

/// Byte count, hash and limits of one upload.
pub(super) struct Progress {
    pub(super) received: u64,
    hasher: Sha256,
    limit: u64,
    declared: Option<u64>,
    max_chunk: usize,
}

impl Progress {
    /// An upload of at most `limit` bytes in chunks of at most `max_chunk`,
    /// of `declared` bytes when the metadata says.
    pub(super) fn new(limit: u64, max_chunk: usize, declared: Option<u64>) -> Self {
        Self {
            received: 0,
            hasher: Sha256::new(),
            limit,
            declared,
            max_chunk,
        }
    }

    pub(super) fn accept(&mut self, chunk: &[u8]) -> Result<(), Error> {
        if chunk.len() > self.max_chunk {
            return Err(Error::invalid(
                "chunk",
                "CHUNK_TOO_LARGE",
                format!(
                    "a chunk of {} bytes exceeds the limit of {} bytes per message",
                    chunk.len(),
                    self.max_chunk
                ),
            ));
        }
        let total = self.received + chunk.len() as u64;
        if let Some(declared) = self.declared
            && total > declared
        {
            return Err(Error::invalid(
                "metadata.size_bytes",
                "SIZE_MISMATCH",
                format!(
                    "declares {declared} bytes, but byte {} arrived",
                    declared + 1
                ),
            ));
        }
        if total > self.limit {
            return Err(Error::invalid(
                "chunk",
                "FILE_TOO_LARGE",
                format!(
                    "the file exceeds the limit of {} bytes (byte {} arrived)",
                    self.limit,
                    self.limit + 1
                ),
            ));
        }
        self.hasher.update(chunk);
        self.received = total;
        Ok(())
    }

    pub(super) fn finish(self) -> Result<(u64, String), Error> {
        if let Some(declared) = self.declared
            && declared != self.received
        {
            return Err(Error::invalid(
                "metadata.size_bytes",
                "SIZE_MISMATCH",
                format!(
                    "declares {declared} bytes, but the stream ended after {}",
                    self.received
                ),
            ));
        }
        Ok((self.received, hex::encode(self.hasher.finalize())))
    }
}
