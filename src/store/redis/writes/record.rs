//! A write record as Redis holds it: its key, `<prefix>w:<hex>` (the SHA-256
//! of the write's key fields, as [`Fingerprint::of`] digests fields), and its
//! value: `r|<lease token>|<fingerprint>` while the write runs,
//! `c|<token>|<fingerprint>|<pending as JSON>` once it was sent whole and until
//! its outcome is known, `d|<fingerprint>|<outcome as JSON>` once done.

use crate::store::error::StoreError;
use crate::store::writes::{Begin, Fingerprint, LeaseToken, Outcome, Pending, WriteKey};

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
    format!("r|{}|", token_hex(token))
}

/// A token as the records and scripts write it.
pub(super) fn token_hex(token: LeaseToken) -> String {
    format!("{:032x}", token.0)
}

/// The value of a record sent whole whose outcome is not known yet.
pub(super) fn committed(
    token: LeaseToken,
    fp: Fingerprint,
    pending: &Pending,
) -> Result<String, StoreError> {
    let json = serde_json::to_string(pending).map_err(|e| StoreError(e.to_string()))?;
    Ok(format!(
        "c|{}|{}|{json}",
        token_hex(token),
        hex::encode(fp.0)
    ))
}

/// The value of a record whose write is done.
pub(super) fn done(fp: Fingerprint, outcome: &Outcome) -> Result<String, StoreError> {
    let json = serde_json::to_string(outcome).map_err(|e| StoreError(e.to_string()))?;
    Ok(format!("d|{}|{json}", hex::encode(fp.0)))
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
    let mut parts = v.splitn(4, '|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("r"), Some(_token), Some(fp), None) => Ok(Begin::Running {
            fingerprint: fingerprint(fp)?,
        }),
        (Some("c"), Some(token), Some(fp), Some(pending)) => Ok(Begin::Committed {
            fingerprint: fingerprint(fp)?,
            token: LeaseToken(u128::from_str_radix(token, 16).map_err(|_| bad())?),
            pending: serde_json::from_str(pending).map_err(|_| bad())?,
        }),
        (Some("d"), Some(fp), Some(first), rest) => {
            // The outcome's JSON may hold `|`: it is everything after the fingerprint.
            let outcome = match rest {
                Some(r) => format!("{first}|{r}"),
                None => first.to_string(),
            };
            Ok(Begin::Done {
                fingerprint: fingerprint(fp)?,
                outcome: serde_json::from_str(&outcome).map_err(|_| bad())?,
            })
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::writes::{Attempt, Outcome};

    #[test]
    fn every_record_reads_back_as_written() {
        let fp = Fingerprint::of(&[b"x"]);
        let t = LeaseToken(0xabc);
        assert_eq!(
            parse(&running(t, fp)).unwrap(),
            Begin::Running { fingerprint: fp }
        );
        let pending = Pending {
            committed_at_ms: 5,
            given_up: true,
            message_id: "m|1".into(),
            attempt: Attempt::Delete {
                attachment_id: "a|b".into(),
            },
        };
        assert_eq!(
            parse(&committed(t, fp, &pending).unwrap()).unwrap(),
            Begin::Committed {
                fingerprint: fp,
                token: t,
                pending
            }
        );
        let outcome = Outcome::MessageId("with | bars".into());
        assert_eq!(
            parse(&done(fp, &outcome).unwrap()).unwrap(),
            Begin::Done {
                fingerprint: fp,
                outcome
            }
        );
        // An outcome stored before `reconciled` existed still reads.
        let old = format!(
            r#"d|{}|{{"Upload":{{"attachment_id":"a","message_id":"m","size_bytes":1,"sha256":"s"}}}}"#,
            hex::encode(fp.0)
        );
        assert!(matches!(
            parse(&old).unwrap(),
            Begin::Done {
                outcome: Outcome::Upload {
                    reconciled: false,
                    ..
                },
                ..
            }
        ));
    }

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
