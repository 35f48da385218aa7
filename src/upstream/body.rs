//! Reading answer bodies within bounds, and turning a non-200 answer into an error.

use bytes::{Bytes, BytesMut};
use reqwest::{StatusCode, header};

use super::error::{self, UpstreamError};

/// Passes a 200 answer through; decodes any other into [`UpstreamError::Api`],
/// reading at most [`error::MAX_ERROR_BODY_BYTES`] of its body.
pub async fn check_status(resp: reqwest::Response) -> Result<reqwest::Response, UpstreamError> {
    let status = resp.status();
    if status == StatusCode::OK {
        return Ok(resp);
    }
    let retry_after = retry_after(&resp);
    let body = read_prefix(resp, error::MAX_ERROR_BODY_BYTES).await;
    Err(UpstreamError::Api(Box::new(error::parse_error_body(
        status.as_u16(),
        &body,
        retry_after,
    ))))
}

/// As [`check_status`] (a 206 with a range passes too), without reading the
/// body of another answer (one that may quote what must not be passed on).
pub fn check_status_quietly(resp: reqwest::Response) -> Result<reqwest::Response, UpstreamError> {
    let status = resp.status();
    if status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT {
        return Ok(resp);
    }
    Err(UpstreamError::Api(Box::new(error::parse_error_body(
        status.as_u16(),
        &[],
        retry_after(&resp),
    ))))
}

fn retry_after(resp: &reqwest::Response) -> Option<std::time::Duration> {
    resp.headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(error::parse_retry_after)
}

/// Reads a whole body of at most `max` bytes; a larger one is an error.
pub async fn read_bounded(mut resp: reqwest::Response, max: usize) -> Result<Bytes, UpstreamError> {
    let too_large = || UpstreamError::Protocol(format!("the answer is larger than {max} bytes"));
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(UpstreamError::from_reqwest)? {
        if buf.len() + chunk.len() > max {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads at most `max` bytes of a body and drops the rest; never fails.
pub async fn read_prefix(mut resp: reqwest::Response, max: usize) -> Bytes {
    let mut buf = BytesMut::new();
    while buf.len() < max {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(max - buf.len());
                buf.extend_from_slice(&chunk[..take]);
            }
            _ => break,
        }
    }
    buf.freeze()
}
