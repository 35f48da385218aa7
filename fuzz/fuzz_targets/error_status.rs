//! The error path, end to end on arbitrary input: an HTTP status and body become
//! the upstream error, then the gRPC status the caller gets. No panic; never OK;
//! never UNAUTHENTICATED (the upstream's credentials are not the caller's); the
//! upstream's message stays bounded.
#![no_main]

use attachment_gateway::api::error::{Error, Op, classify};
use attachment_gateway::upstream::UpstreamError;
use attachment_gateway::upstream::error::parse_error_body;
use libfuzzer_sys::fuzz_target;
use tonic::Code;

fuzz_target!(|input: &[u8]| {
    let Some((head, body)) = input.split_first_chunk::<3>() else {
        return;
    };
    let status = 100 + u16::from_le_bytes([head[0], head[1]]) % 500;
    let op = if head[2] & 1 == 0 {
        Op::Read
    } else {
        Op::Write
    };
    let api = parse_error_body(status, body, None);
    assert_eq!(api.http_status, status);
    assert!(
        api.message
            .as_ref()
            .is_none_or(|m| m.chars().count() <= 1001)
    );
    let (code, reason) = classify(&api);
    assert_ne!(code, Code::Ok);
    assert_ne!(code, Code::Unauthenticated);
    assert!(!reason.is_empty());
    let s = tonic::Status::from(Error::upstream(UpstreamError::Api(Box::new(api)), op));
    assert_eq!(s.code(), code);
    assert!(
        s.message().chars().count() <= 2000,
        "a status message that carries too much"
    );
});
