//! An upload's messages as the handler reads them: off the request body by the
//! gateway itself (`proto::frames`: a chunk is a slice of the HTTP/2 frames it
//! came in, and one cut across frames comes in its pieces), or, where no body
//! was set aside for it, by tonic's decoder.

use bytes::Bytes;
use tonic::{Status, Streaming};

use crate::proto::frames::{MESSAGE_OVERHEAD, Messages};
use crate::proto::wire::UploadAttachmentRequest;
use crate::proto::wire::upload_attachment_request::Payload;

/// The `chunk` field of `UploadAttachmentRequest`.
const CHUNK_FIELD: u8 = 2;

pub enum UploadStream {
    Frames(Messages<UploadAttachmentRequest>),
    Tonic(Streaming<UploadAttachmentRequest>),
}

fn chunk_message(b: Bytes) -> UploadAttachmentRequest {
    UploadAttachmentRequest {
        payload: Some(Payload::Chunk(b)),
    }
}

impl UploadStream {
    /// The messages of an upload's request body, each held to a chunk of
    /// `max_chunk` and room for its framing (as the service is configured; the
    /// message limit layer holds each to the method's limit before this). A
    /// chunk cut across frames comes in its pieces, each a message of its own
    /// (the caller's framing is no part of the contract); one over `max_chunk`
    /// comes whole, to be refused as before.
    pub fn frames(body: tonic::body::Body, max_chunk: usize) -> Self {
        let max = max_chunk.saturating_add(MESSAGE_OVERHEAD);
        Self::Frames(Messages::new(body, max).split(CHUNK_FIELD, max_chunk, chunk_message))
    }

    pub(super) async fn message(&mut self) -> Result<Option<UploadAttachmentRequest>, Status> {
        match self {
            Self::Frames(m) => m.message().await,
            Self::Tonic(s) => s.message().await,
        }
    }
}
