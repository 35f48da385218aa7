//! gRPC messages read straight off a request body, without tonic's decode buffer.
//!
//! tonic's `Streaming` copies every HTTP/2 DATA frame into a buffer of its own
//! before prost sees a byte. An upload's chunks are most of its bytes: read here,
//! a message that lies within one frame is a slice of that frame, and prost's
//! `Bytes` field a slice of it in turn.
//!
//! Most chunks do not lie within one frame: the caller's HTTP/2 stack cuts its
//! DATA frames where the flow-control window ends. A message that is one `bytes`
//! field (an upload's chunk) is then handed on in the pieces it came in, each as
//! a message of its own ([`Messages::split`]): nothing is copied. Any other
//! message cut across frames is put together, one copy, as tonic does.
//!
//! What a hostile caller could do with slices is bounded here, not left to the
//! caller's framing: frames under [`GATHER_BELOW`] bytes are gathered (copied)
//! into one buffer as they arrive, so neither the queue nor the pieces of a chunk
//! grow with the number of frames (a chunk sent one byte a frame costs what it
//! costs in tonic: a copy), and a piece is a slice of a frame only when that
//! frame was large.
//!
//! Framing errors read as tonic's decoder reads them (codes and texts), with
//! two differences, both refusals where tonic would end the stream cleanly: a
//! body that ends (or ends in trailers) right after a message's prefix, and a
//! body that fails with CANCELLED, are errors here: an upload cut there is not
//! a whole one.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body as _;
use tonic::Status;

/// The 5-byte prefix of each gRPC message: a compression flag and the length.
const PREFIX: usize = 5;

/// Frames smaller than this are gathered into one buffer (a copy) instead of
/// being held as slices: bounds the queue and a chunk's pieces by bytes, not by
/// how many frames a caller cuts them into.
pub const GATHER_BELOW: usize = 16 * 1024;

/// Room in a decoded message beyond the chunk itself (field tags, metadata):
/// a message may be this much larger than the largest chunk.
pub const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// Frames held as slices (not yet taken) at most; later ones are gathered
/// until a message is taken. A slice keeps the whole read buffer it was cut
/// from (up to about twice the largest frame) alive, and a caller choosing its
/// frames could otherwise pin a buffer per 16 KiB of a message: this bounds
/// what a stream pins to a few buffers, whatever its framing.
pub const MAX_HELD_SLICES: usize = 8;

/// A request body set aside for its handler to read with [`Messages`]: the
/// service sees an empty body in its place. Request extensions must be `Clone`
/// and `Sync`; the body is taken once.
#[derive(Clone)]
pub struct RawBody(Arc<Mutex<Option<tonic::body::Body>>>);

impl RawBody {
    pub fn new(body: tonic::body::Body) -> Self {
        Self(Arc::new(Mutex::new(Some(body))))
    }

    /// The body, the first time.
    pub fn take(&self) -> Option<tonic::body::Body> {
        self.0.lock().ok()?.take()
    }
}

/// The messages of a request body, decoded as they arrive.
pub struct Messages<T> {
    /// `None` once the body ended or failed.
    body: Option<tonic::body::Body>,
    /// Data received and not yet taken, in order; `gathered` follows it.
    queued: VecDeque<Bytes>,
    /// Small frames received after those in `queued`, copied together.
    gathered: BytesMut,
    /// Bytes in `queued` and `gathered`.
    len: usize,
    /// The largest message accepted.
    max: usize,
    /// Messages of one `bytes` field handed on in pieces (see [`Messages::split`]).
    split: Option<Split<T>>,
    /// Pieces of such a message not yet handed on.
    pieces: VecDeque<Bytes>,
    _message: PhantomData<fn() -> T>,
}

/// Which messages are handed on in pieces, and how a piece becomes a message.
struct Split<T> {
    /// The field's key byte (field number and wire type 2).
    key: u8,
    /// Fields larger than this are put together instead (the handler refuses
    /// them whole, as it would have).
    max: usize,
    make: fn(Bytes) -> T,
}

/// What [`Messages::take`] found.
enum Taken {
    /// A message's bytes.
    Whole(Bytes),
    /// The first piece of a one-field message cut across frames; the others
    /// were queued in `pieces`.
    Piece(Bytes),
}

/// The error of a message whose bytes the queue does not hold after all: a
/// broken invariant of this reader, reported, never a panic.
fn lost() -> Status {
    Status::internal("the request's message framing was lost")
}

impl<T: prost::Message + Default> Messages<T> {
    /// The messages of `body`, each at most `max` bytes.
    pub fn new(body: tonic::body::Body, max: usize) -> Self {
        Self {
            body: Some(body),
            queued: VecDeque::new(),
            gathered: BytesMut::new(),
            len: 0,
            max,
            split: None,
            pieces: VecDeque::new(),
            _message: PhantomData,
        }
    }

    /// A message whose only field is the `bytes` field `field` (at most `max`
    /// bytes) and that came cut across frames is handed on as one message per
    /// piece, each made by `make`. The pieces' bytes are the field's, in order.
    /// `field` is below 16 (its key is one byte); others split nothing.
    pub fn split(mut self, field: u8, max: usize, make: fn(Bytes) -> T) -> Self {
        self.split = (field > 0 && field < 16).then_some(Split {
            key: (field << 3) | 2,
            max,
            make,
        });
        self
    }

    /// The next message; `None` once the body ended cleanly. After an error,
    /// `None`.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<T>, Status>> {
        loop {
            if let Some(piece) = self.pieces.pop_front() {
                return Poll::Ready(self.make(piece));
            }
            match self.take() {
                Ok(Some(Taken::Whole(m))) => {
                    return Poll::Ready(match T::decode(m) {
                        Ok(m) => Ok(Some(m)),
                        // As tonic's prost decoder answers.
                        Err(e) => Err(self.fail(Status::internal(e.to_string()))),
                    });
                }
                Ok(Some(Taken::Piece(p))) => return Poll::Ready(self.make(p)),
                Ok(None) => {}
                Err(s) => return Poll::Ready(Err(self.fail(s))),
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Ok(None));
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.push(data),
                    // Trailers: the stream's end.
                    Err(_) => return Poll::Ready(self.end()),
                },
                Some(Err(status)) => return Poll::Ready(Err(self.fail(status))),
                None => return Poll::Ready(self.end()),
            }
        }
    }

    /// Takes in a frame: a large one as it is, a small one copied onto the
    /// gathered ones.
    fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if data.len() < GATHER_BELOW || self.queued.len() >= MAX_HELD_SLICES {
            self.gathered.extend_from_slice(&data);
            return;
        }
        self.flush();
        self.queued.push_back(data);
    }

    /// Moves the gathered bytes to the end of the queue.
    fn flush(&mut self) {
        if !self.gathered.is_empty() {
            self.queued.push_back(self.gathered.split().freeze());
        }
    }

    /// A piece as a message: only `split` makes pieces, so its `make` is
    /// there; if it were not, that is a lost invariant, never a clean end.
    fn make(&mut self, piece: Bytes) -> Result<Option<T>, Status> {
        match self.split.as_ref() {
            Some(s) => Ok(Some((s.make)(piece))),
            None => Err(self.fail(lost())),
        }
    }

    fn end(&mut self) -> Result<Option<T>, Status> {
        self.body = None;
        if self.len > 0 {
            return Err(self.fail(Status::internal("Unexpected EOF decoding stream.")));
        }
        Ok(None)
    }

    fn fail(&mut self, status: Status) -> Status {
        self.body = None;
        self.queued.clear();
        self.gathered = BytesMut::new();
        self.pieces.clear();
        self.len = 0;
        status
    }

    /// A whole message's bytes, if they have all arrived; an error as soon as
    /// a prefix is wrong.
    fn take(&mut self) -> Result<Option<Taken>, Status> {
        if self.len < PREFIX {
            return Ok(None);
        }
        let mut prefix = [0u8; PREFIX];
        self.peek(&mut prefix);
        match prefix[0] {
            0 => {}
            1 => {
                return Err(Status::internal(
                    "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                ));
            }
            f => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
                )));
            }
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.max {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                self.max
            )));
        }
        if self.len - PREFIX < len {
            return Ok(None);
        }
        self.flush();
        if !self.advance(PREFIX) {
            return Err(lost());
        }
        self.len -= PREFIX + len;
        if len == 0 {
            return Ok(Some(Taken::Whole(Bytes::new())));
        }
        if let Some(front) = self.queued.front_mut()
            && front.len() >= len
        {
            // Within one frame: a slice of it, nothing copied.
            let m = front.split_to(len);
            if front.is_empty() {
                self.queued.pop_front();
            }
            return Ok(Some(Taken::Whole(m)));
        }
        if let Some(field) = self.one_field(len) {
            // One `bytes` field cut across frames: its pieces as they came.
            if !self.advance(len - field) {
                return Err(lost());
            }
            return match self.slices(field) {
                Some(first) => Ok(Some(Taken::Piece(first))),
                None => Err(lost()),
            };
        }
        // Cut across frames: put together once.
        let mut m = BytesMut::with_capacity(len);
        while m.len() < len {
            let Some(front) = self.queued.front_mut() else {
                return Err(lost());
            };
            let n = (len - m.len()).min(front.len());
            m.extend_from_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                self.queued.pop_front();
            }
        }
        Ok(Some(Taken::Whole(m.freeze())))
    }

    /// Copies the first `out.len()` bytes held (at most as many as there are)
    /// to `out`.
    fn peek(&self, out: &mut [u8]) {
        let mut at = 0;
        let held = self.queued.iter().map(|b| &b[..]);
        for b in held.chain(std::iter::once(&self.gathered[..])) {
            let n = (out.len() - at).min(b.len());
            out[at..at + n].copy_from_slice(&b[..n]);
            at += n;
            if at == out.len() {
                break;
            }
        }
    }

    /// For a queued message of `len` bytes (prefix taken) that is only the split
    /// field, of `GATHER_BELOW` to the split's `max` bytes, the field's length.
    fn one_field(&self, len: usize) -> Option<usize> {
        let split = self.split.as_ref()?;
        // The key and up to 10 bytes of length.
        let mut head = [0u8; 11];
        let n = head.len().min(len);
        self.peek(&mut head[..n]);
        if head[0] != split.key {
            return None;
        }
        let mut rest = &head[1..n];
        let field = usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?;
        let field_head = n - rest.len();
        let whole = field_head.checked_add(field)? == len;
        // A small chunk is put together: a copy costs less than more messages.
        (whole && field <= split.max && field >= GATHER_BELOW).then_some(field)
    }

    /// The next `n` queued bytes (there are that many, `n` > 0) as pieces: the
    /// first is returned, the others queued in `pieces`. Slices, no copy.
    fn slices(&mut self, mut n: usize) -> Option<Bytes> {
        let mut first = None;
        while n > 0 {
            let front = self.queued.front_mut()?;
            let piece = if front.len() <= n {
                self.queued.pop_front()?
            } else {
                front.split_to(n)
            };
            n -= piece.len();
            if first.is_none() {
                first = Some(piece);
            } else {
                self.pieces.push_back(piece);
            }
        }
        first
    }

    /// Drops `n` queued bytes (`len` is adjusted by the caller); `false` if
    /// there were fewer.
    fn advance(&mut self, mut n: usize) -> bool {
        while n > 0 {
            let Some(front) = self.queued.front_mut() else {
                return false;
            };
            let k = n.min(front.len());
            front.advance(k);
            n -= k;
            if front.is_empty() {
                self.queued.pop_front();
            }
        }
        true
    }
}

#[cfg(test)]
mod tests;
