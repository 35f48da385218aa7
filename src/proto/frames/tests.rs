use http_body::Frame;
use prost::Message as _;
use tonic::Code;
use tonic::codec::{Codec, Streaming};

use super::*;
use crate::proto::wire::upload_attachment_request::Payload;
use crate::proto::wire::{UploadAttachmentRequest, UploadMetadata};

type Req = UploadAttachmentRequest;
type Item = Result<Frame<Bytes>, Status>;

const MAX: usize = 1 << 20;

/// A body of the given frames (data, trailers or an error), then its end.
struct Frames(VecDeque<Item>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Item>> {
        Poll::Ready(self.0.pop_front())
    }
}

fn body(frames: &[Item]) -> tonic::body::Body {
    let copy = frames.iter().map(|f| match f {
        Ok(f) => Ok(match f.data_ref() {
            Some(d) => Frame::data(d.clone()),
            None => Frame::trailers(f.trailers_ref().cloned().unwrap_or_default()),
        }),
        Err(s) => Err(Status::new(s.code(), s.message())),
    });
    tonic::body::Body::new(Frames(copy.collect()))
}

/// `all` cut at `cuts`, one data frame per piece.
fn cut(all: &Bytes, cuts: &[usize]) -> Vec<Item> {
    let mut frames = Vec::new();
    let mut at = 0;
    for c in cuts.iter().copied().chain([all.len()]) {
        frames.push(Ok(Frame::data(all.slice(at..c))));
        at = c;
    }
    frames
}

fn framed(m: &Req) -> Vec<u8> {
    let body = m.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn chunk(fill: u8, n: usize) -> Req {
    chunk_message(Bytes::from(vec![fill; n]))
}

fn chunk_message(b: Bytes) -> Req {
    Req {
        payload: Some(Payload::Chunk(b)),
    }
}

fn metadata(name_len: usize) -> Req {
    Req {
        payload: Some(Payload::Metadata(UploadMetadata {
            name: "n".repeat(name_len),
            ..Default::default()
        })),
    }
}

/// How a reading went: the messages, then its end (`None`: a clean one).
type Read = (Vec<Req>, Option<(Code, String)>);

/// A reading in brief, for failure messages (chunks can be large).
fn brief(r: &Read) -> String {
    let kinds: Vec<String> =
        r.0.iter()
            .map(|m| match &m.payload {
                Some(Payload::Chunk(b)) => format!("chunk {}", b.len()),
                Some(Payload::Metadata(_)) => "metadata".into(),
                None => "none".into(),
            })
            .collect();
    format!("{kinds:?} then {:?}", r.1)
}

#[track_caller]
fn same(got: &Read, want: &Read, what: &str) {
    assert!(
        got == want,
        "{what}: {} instead of {}",
        brief(got),
        brief(want)
    );
}

/// What tonic's decoder reads from `frames`.
async fn tonic_reads(frames: &[Item]) -> Read {
    let decoder = tonic_prost::ProstCodec::<Req, Req>::default().decoder();
    let mut s = Streaming::new_request(decoder, body(frames), None, Some(MAX));
    let mut got = Vec::new();
    loop {
        match s.message().await {
            Ok(Some(m)) => got.push(m),
            Ok(None) => return (got, None),
            Err(e) => return (got, Some((e.code(), e.message().to_string()))),
        }
    }
}

/// What [`Messages`] reads from `frames`; with `split`, chunks cut across
/// frames come in pieces. After its end, it stays ended.
async fn ours(frames: &[Item], split: bool) -> Read {
    let mut m = Messages::<Req>::new(body(frames), MAX);
    if split {
        m = m.split(2, MAX, chunk_message);
    }
    let mut got = Vec::new();
    let end = loop {
        match m.message().await {
            Ok(Some(msg)) => got.push(msg),
            Ok(None) => break None,
            Err(e) => break Some((e.code(), e.message().to_string())),
        }
    };
    assert_eq!(m.message().await.ok(), Some(None), "ended for good");
    (got, end)
}

/// Consecutive chunks as one: what a reader that hands chunks on in
/// pieces must still agree on.
fn joined(messages: Vec<Req>) -> Vec<Req> {
    let mut out: Vec<Req> = Vec::new();
    for m in messages {
        if let (
            Some(Req {
                payload: Some(Payload::Chunk(prev)),
            }),
            Some(Payload::Chunk(next)),
        ) = (out.last_mut(), &m.payload)
        {
            *prev = Bytes::from([&prev[..], &next[..]].concat());
            continue;
        }
        out.push(m);
    }
    out
}

/// A small stream of every kind of message: metadata, chunks, an empty
/// chunk and a message with no field.
fn small_stream() -> (Bytes, Vec<usize>) {
    let messages = [
        metadata(20),
        chunk(1, 40),
        Req { payload: None },
        chunk(2, 0),
        chunk(3, 9),
    ];
    let mut all = Vec::new();
    let mut starts = Vec::new();
    for m in &messages {
        starts.push(all.len());
        all.extend_from_slice(&framed(m));
    }
    (Bytes::from(all), starts)
}

/// A message sent in many large frames: no more than `MAX_HELD_SLICES`
/// of them are held as slices of their read buffers, the rest are
/// gathered, and the message (whole or in pieces) reads as tonic reads it.
#[tokio::test]
async fn a_message_in_many_frames_pins_few_read_buffers() {
    let m = chunk(7, 40 * GATHER_BELOW);
    let all = Bytes::from(framed(&m));
    let cuts: Vec<usize> = (1..42)
        .map(|i| i * GATHER_BELOW)
        .filter(|c| *c < all.len())
        .collect();
    let frames = cut(&all, &cuts);
    assert!(frames.len() > 3 * MAX_HELD_SLICES, "{}", frames.len());
    // Fed frame by frame: the slices held stay bounded.
    let mut r = Messages::<Req>::new(body(&[]), MAX);
    for f in &frames {
        let data = f
            .as_ref()
            .ok()
            .and_then(|f| f.data_ref())
            .cloned()
            .expect("data");
        r.push(data);
        assert!(r.queued.len() <= MAX_HELD_SLICES, "{}", r.queued.len());
    }
    let want = tonic_reads(&frames).await;
    same(&ours(&frames, false).await, &want, "whole");
    let (got, end) = ours(&frames, true).await;
    assert!(got.len() <= MAX_HELD_SLICES + 1, "pieces: {}", got.len());
    same(
        &(joined(got), end),
        &(joined(want.0.clone()), None),
        "in pieces",
    );
}

#[tokio::test]
async fn every_cut_of_a_stream_reads_as_tonic_reads_it() {
    let (all, _) = small_stream();
    let want = tonic_reads(&cut(&all, &[])).await;
    assert_eq!(want.0.len(), 5);
    assert_eq!(want.1, None);
    for a in 0..=all.len() {
        for b in a..=all.len() {
            let frames = cut(&all, &[a, b]);
            same(
                &tonic_reads(&frames).await,
                &want,
                &format!("tonic, cuts {a} {b}"),
            );
            same(&ours(&frames, false).await, &want, &format!("cuts {a} {b}"));
            let (got, end) = ours(&frames, true).await;
            let want_joined = (joined(want.0.clone()), None);
            same(
                &(joined(got), end),
                &want_joined,
                &format!("split, cuts {a} {b}"),
            );
        }
    }
}

#[tokio::test]
async fn every_cut_of_large_chunks_reads_as_tonic_reads_it() {
    // Chunks over GATHER_BELOW, cut into frames small and large.
    let messages = [metadata(300), chunk(1, 70_000), chunk(2, 40_000)];
    let all = Bytes::from(messages.iter().flat_map(framed).collect::<Vec<_>>());
    let want = (messages.to_vec(), None);
    for a in (0..all.len())
        .step_by(997)
        .chain([1, 5, 6, 305, 306, 311, 312])
    {
        for b in [a, a + 1, a + 20_000, all.len() - 1, all.len()] {
            let b = b.min(all.len());
            let frames = cut(&all, &[a, b]);
            same(
                &tonic_reads(&frames).await,
                &want,
                &format!("tonic, cuts {a} {b}"),
            );
            same(&ours(&frames, false).await, &want, &format!("cuts {a} {b}"));
            let (got, end) = ours(&frames, true).await;
            let want_joined = (joined(want.0.clone()), None);
            same(
                &(joined(got), end),
                &want_joined,
                &format!("split, cuts {a} {b}"),
            );
        }
    }
}

#[tokio::test]
async fn a_stream_cut_short_fails_as_in_tonic_but_after_a_prefix() {
    let (all, starts) = small_stream();
    // Where tonic ends a stream cleanly that ends right after a message's
    // prefix (it drops the prefix from its buffer before the body came).
    let after_prefix: Vec<usize> = starts
        .iter()
        .zip(starts.iter().skip(1).chain([&all.len()]))
        .filter(|(s, e)| *e - *s > PREFIX)
        .map(|(s, _)| s + PREFIX)
        .collect();
    for end in 0..all.len() {
        let short = all.slice(..end);
        for frames in [cut(&short, &[]), cut(&short, &[end / 2])] {
            let want = tonic_reads(&frames).await;
            let got = ours(&frames, true).await;
            if after_prefix.contains(&end) {
                assert_eq!(want.1, None, "tonic's clean end at {end}");
                assert_eq!(got.0, want.0, "{end}");
                assert_eq!(
                    got.1,
                    Some((Code::Internal, "Unexpected EOF decoding stream.".into())),
                    "{end}"
                );
            } else {
                same(&got, &want, &format!("ends at {end}"));
            }
        }
    }
}

#[tokio::test]
async fn malformed_prefixes_and_messages_fail_as_in_tonic() {
    let next = framed(&chunk(5, 3));
    let too_large = (MAX as u32 + 1).to_be_bytes();
    let cases: Vec<Vec<u8>> = vec![
        vec![1, 0, 0, 0, 0],
        vec![2, 0, 0, 0, 1, 0],
        vec![255, 0, 0, 0, 0],
        [&[0][..], &too_large[..]].concat(),
        vec![0, 255, 255, 255, 255],
        // Not protobuf: a truncated field, a bad wire type, a bad key.
        vec![0, 0, 0, 0, 2, 0x12, 0x05],
        vec![0, 0, 0, 0, 2, 0x17, 0x00],
        vec![0, 0, 0, 0, 1, 0x00],
        // A chunk whose length runs past its message.
        vec![0, 0, 0, 0, 3, 0x12, 0x09, 0x01],
    ];
    for case in cases {
        for tail in [&[][..], &next[..]] {
            let all = Bytes::from([&case[..], tail].concat());
            for cuts in [vec![], vec![1], vec![5]] {
                let frames = cut(&all, &cuts[..cuts.len().min(all.len())]);
                let want = tonic_reads(&frames).await;
                assert!(want.1.is_some(), "{case:?}");
                same(&ours(&frames, true).await, &want, &format!("{case:?}"));
            }
        }
    }
}

#[tokio::test]
async fn body_errors_and_trailers_end_as_in_tonic() {
    let whole = Bytes::from(framed(&chunk(1, 10)));
    let trailers = Ok(Frame::trailers(http::HeaderMap::new()));
    let cases: Vec<Vec<Item>> = vec![
        vec![
            Ok(Frame::data(whole.clone())),
            Err(Status::aborted("reset")),
        ],
        vec![
            Ok(Frame::data(whole.slice(..7))),
            Err(Status::aborted("reset")),
        ],
        vec![Err(Status::invalid_argument("too large"))],
        vec![Ok(Frame::data(whole.clone())), trailers],
    ];
    for frames in cases {
        assert_eq!(ours(&frames, true).await, tonic_reads(&frames).await);
    }
    // Trailers after part of a message: tonic ends cleanly, a cut here.
    let frames = vec![
        Ok(Frame::data(whole.slice(..8))),
        Ok(Frame::trailers(http::HeaderMap::new())),
    ];
    assert_eq!(tonic_reads(&frames).await.1, None);
    assert_eq!(
        ours(&frames, true).await.1.map(|e| e.0),
        Some(Code::Internal)
    );
    // A cancelled body: tonic's clean end of a request stream, an error here.
    let frames = vec![Ok(Frame::data(whole)), Err(Status::cancelled("reset"))];
    assert_eq!(tonic_reads(&frames).await, (vec![chunk(1, 10)], None));
    let (got, end) = ours(&frames, true).await;
    assert_eq!(got, vec![chunk(1, 10)]);
    assert_eq!(end.map(|e| e.0), Some(Code::Cancelled));
}

#[tokio::test]
async fn a_chunk_within_one_frame_is_a_slice_of_it() {
    let frame = Bytes::from(framed(&chunk(7, 300_000)));
    let range = frame.as_ptr_range();
    let mut m = Messages::<Req>::new(body(&[Ok(Frame::data(frame.clone()))]), MAX);
    let Some(Req {
        payload: Some(Payload::Chunk(b)),
    }) = m.message().await.expect("a message")
    else {
        panic!("a chunk");
    };
    assert_eq!(b.len(), 300_000);
    assert!(range.contains(&b.as_ptr()), "not copied");
}

#[tokio::test]
async fn a_chunk_cut_across_large_frames_comes_in_its_pieces_uncopied() {
    let (meta, a, b) = (metadata(300), chunk(1, 200_000), chunk(2, 90_000));
    let all = Bytes::from([framed(&meta), framed(&a), framed(&b)].concat());
    for cuts in [vec![100, 150_000], vec![1, 310, 312, 100_000, 200_312]] {
        let frames = cut(&all, &cuts);
        let mut m = Messages::<Req>::new(body(&frames), MAX).split(2, MAX, chunk_message);
        assert_eq!(m.message().await.expect("ok"), Some(meta.clone()));
        let mut got = Vec::new();
        while let Some(msg) = m.message().await.expect("ok") {
            let Some(Payload::Chunk(piece)) = msg.payload else {
                panic!("a chunk");
            };
            let large_frame = frames.iter().any(|f| {
                f.as_ref().ok().and_then(Frame::data_ref).is_some_and(|d| {
                    d.len() >= GATHER_BELOW && d.as_ptr_range().contains(&piece.as_ptr())
                })
            });
            assert!(large_frame || piece.len() < GATHER_BELOW, "{cuts:?}");
            got.push(piece);
        }
        assert!(got.len() > 2, "in pieces: {cuts:?}");
        let want: Vec<u8> = [vec![1; 200_000], vec![2; 90_000]].concat();
        assert_eq!(got.concat(), want, "{cuts:?}");
    }
}

#[tokio::test]
async fn tiny_frames_are_gathered_not_held_one_by_one() {
    // A chunk sent a byte a frame, then one sent in frames alternately of
    // one byte and of GATHER_BELOW: the pieces stay few.
    let (a, b) = (chunk(1, 50_000), chunk(2, 200_000));
    let (fa, fb) = (Bytes::from(framed(&a)), Bytes::from(framed(&b)));
    let mut frames: Vec<Item> = (0..fa.len())
        .map(|i| Ok(Frame::data(fa.slice(i..i + 1))))
        .collect();
    let mut at = 0;
    let mut large = 0;
    while at < fb.len() {
        let n = if frames.len() % 2 == 0 {
            1
        } else {
            GATHER_BELOW
        };
        let n = n.min(fb.len() - at);
        large += usize::from(n >= GATHER_BELOW);
        frames.push(Ok(Frame::data(fb.slice(at..at + n))));
        at += n;
    }
    let mut m = Messages::<Req>::new(body(&frames), MAX).split(2, MAX, chunk_message);
    let first = m.message().await.expect("ok");
    assert_eq!(first, Some(a), "a byte a frame: gathered into one message");
    let mut pieces = 0;
    let mut got = Vec::new();
    while let Some(Req {
        payload: Some(Payload::Chunk(p)),
    }) = m.message().await.expect("ok")
    {
        pieces += 1;
        got.push(p);
    }
    assert!(
        pieces <= 2 * large + 2,
        "{pieces} pieces, {large} large frames"
    );
    assert_eq!(got.concat(), vec![2; 200_000]);
}

#[tokio::test]
async fn a_chunk_over_the_split_limit_comes_whole() {
    let all = Bytes::from(framed(&chunk(4, 100_000)));
    let frames = cut(&all, &[50_000]);
    let mut m = Messages::<Req>::new(body(&frames), MAX).split(2, 99_999, chunk_message);
    assert_eq!(m.message().await.expect("ok"), Some(chunk(4, 100_000)));
    assert_eq!(m.message().await.expect("end"), None);
}
