//! A write record as Redis holds it: its key, `<prefix>w:<hex>` (the SHA-256
//! of the write's key fields, as [`Fingerprint::of`] digests fields), and its
//! value: `r|<lease token>|<fingerprint>` while the write runs,
//! `d|<fingerprint>|<outcome as JSON>` once done.

use crate::store::error::StoreError;
use crate::store::writes::{Begin, Fingerprint, LeaseToken, WriteKey};

/// The Redis key of a write's record.
pub(super) fn key(prefix: &str, k: &WriteKey) -> String {
    let digest = Fingerprint::of(&[
        k.caller.as_bytes(),
        k.call.as_bytes(),
        &k.work_order_id.to_le_bytes(),
        k.message_id.as_bytes(),
    ]);
    format!("{prefix}w:{}", hex::encode(digest.0))
}

/// The value of a record while its write runs.
pub(super) fn running(token: LeaseToken, fp: Fingerprint) -> String {
    format!("r|{:032x}|{}", token.0, hex::encode(fp.0))
}

/// How a running record held by `token` starts (what the scripts compare).
pub(super) fn holder(token: LeaseToken) -> String {
    format!("r|{:032x}|", token.0)
}

fn fingerprint(hex_fp: &str) -> Result<Fingerprint, StoreError> {
    let bytes =
        hex::decode(hex_fp).map_err(|_| StoreError("a write record is malformed".into()))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError("a write record is malformed".into()))?;
    Ok(Fingerprint(arr))
}

/// Reads a stored record.
pub(super) fn parse(v: &str) -> Result<Begin, StoreError> {
    let bad = || StoreError("a write record is malformed".into());
    let mut parts = v.splitn(3, '|');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("r"), Some(_token), Some(fp)) => Ok(Begin::Running {
            fingerprint: fingerprint(fp)?,
        }),
        (Some("d"), Some(fp), Some(outcome)) => Ok(Begin::Done {
            fingerprint: fingerprint(fp)?,
            outcome: serde_json::from_str(outcome).map_err(|_| bad())?,
        }),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys are what they were when the digest was written out by hand: the
    /// records replicas stored before still answer.
    #[test]
    fn a_record_key_is_the_sha256_of_the_length_prefixed_fields() {
        let k = WriteKey {
            caller: "api_key:billing".into(),
            call: "upload",
            work_order_id: 1001,
            message_id: "m-1".into(),
        };
        assert_eq!(
            key("p:", &k),
            "p:w:f34494e278c9f5d472791afb465858e263ac9e83c45f7953c93a18e25e9f48c7"
        );
    }
}
