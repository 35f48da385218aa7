//! Tolerant reading of the upstream's success answers. The list endpoint's exact JSON
//! and the download-link answer are not public: accept the plausible shapes, ignore
//! unknown fields, and keep each raw object so nothing is lost.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::error::UpstreamError;
use super::json::{get_ci, value_str};
use super::list_reader;
use super::model::{DownloadLink, UploadReceipt, UpstreamAttachment, fields};
use super::struct_json;
use crate::domain::{DOWNLOAD_LINK_TTL, ListView};
use crate::proto::struct_wire::RawStruct;
use crate::secret::Secret;

fn protocol(what: &str) -> UpstreamError {
    UpstreamError::Protocol(what.to_string())
}

fn parse_json(body: &[u8]) -> Result<Value, UpstreamError> {
    serde_json::from_slice(body).map_err(|e| UpstreamError::Protocol(format!("not JSON: {e}")))
}

/// Reads one attachment object, keeping the object itself (encoded).
fn attachment(obj: prost_types::Struct) -> Option<UpstreamAttachment> {
    use struct_json::{as_string, as_u64, get_ci};
    let s = |names: &[&str]| get_ci(&obj, names).and_then(as_string).unwrap_or_default();
    let attachment_id = s(fields::ID);
    if attachment_id.is_empty() {
        return None;
    }
    Some(UpstreamAttachment {
        attachment_id,
        name: s(fields::NAME),
        mime_type: s(fields::MIME_TYPE),
        size_bytes: get_ci(&obj, fields::SIZE).and_then(as_u64).unwrap_or(0),
        document_type: get_ci(&obj, fields::DOCUMENT_TYPE).and_then(as_string),
        subtype: s(fields::SUBTYPE),
        raw: RawStruct::from(&obj),
    })
}

/// Reads the list answer: a bare array of attachments, or an object holding one
/// (under `Attachments`, `Items`, `Data`, `value`, or its only array field).
///
/// A bare array (the sandbox's shape, and the likely one) is read in one pass
/// straight into wire bytes; any other shape through a value tree first.
pub fn parse_list(body: &[u8], view: ListView) -> Result<Vec<UpstreamAttachment>, UpstreamError> {
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first == Some(&b'[') {
        return list_reader::read_attachments(body, view == ListView::Full)
            .map_err(|e| UpstreamError::Protocol(format!("not JSON: {e}")));
    }
    let mut items = parse_list_tree(body)?;
    if view == ListView::Basic {
        for a in &mut items {
            a.raw = RawStruct::default();
        }
    }
    Ok(items)
}

/// [`parse_list`] through a value tree, for every shape. Public for the
/// differential fuzz target, which checks both readers agree on arrays.
#[doc(hidden)]
pub fn parse_list_tree(body: &[u8]) -> Result<Vec<UpstreamAttachment>, UpstreamError> {
    use prost_types::value::Kind;
    let v =
        struct_json::parse(body).map_err(|e| UpstreamError::Protocol(format!("not JSON: {e}")))?;
    let items = match v.kind {
        Some(Kind::ListValue(l)) => l.values,
        Some(Kind::StructValue(mut obj)) => {
            let known = ["Attachments", "Items", "Data", "Value", "Results"]
                .iter()
                .find_map(|n| {
                    obj.fields
                        .keys()
                        .find(|k| k.eq_ignore_ascii_case(n))
                        .cloned()
                });
            match known
                .and_then(|k| obj.fields.remove(&k))
                .and_then(|v| v.kind)
            {
                Some(Kind::ListValue(l)) => l.values,
                Some(Kind::NullValue(_)) => return Ok(Vec::new()),
                Some(_) => return Err(protocol("the list answer's attachments are not an array")),
                None => {
                    let mut arrays = obj.fields.into_values().filter_map(|v| match v.kind {
                        Some(Kind::ListValue(l)) => Some(l.values),
                        _ => None,
                    });
                    match (arrays.next(), arrays.next()) {
                        (Some(items), None) => items,
                        (None, _) => return Ok(Vec::new()),
                        _ => return Err(protocol("the list answer holds several arrays")),
                    }
                }
            }
        }
        Some(Kind::NullValue(_)) | None => return Ok(Vec::new()),
        Some(_) => {
            return Err(protocol(
                "the list answer is neither an array nor an object",
            ));
        }
    };
    Ok(items
        .into_iter()
        .filter_map(|i| match i.kind {
            Some(Kind::StructValue(mut o)) => {
                crate::proto::deep::flatten_struct(&mut o);
                attachment(o)
            }
            _ => None,
        })
        .collect())
}

/// Reads the download-link answer: a JSON string, an object with the link under
/// `Url`/`DownloadUrl`/`Link`, or the bare link as text. The expiry is the
/// upstream's when it gives one (RFC 3339), else 15 minutes after `asked_at`.
pub fn parse_download_link(
    body: &[u8],
    asked_at: SystemTime,
) -> Result<DownloadLink, UpstreamError> {
    let default_expiry = asked_at + DOWNLOAD_LINK_TTL;
    let (url, expires_at) = match serde_json::from_slice::<Value>(body) {
        Ok(Value::String(s)) => (s, default_expiry),
        Ok(Value::Object(obj)) => {
            let url = get_ci(&obj, &["Url", "DownloadUrl", "Link", "Uri", "Href"])
                .and_then(value_str)
                .ok_or_else(|| protocol("the download-link answer has no URL"))?;
            let expires = get_ci(
                &obj,
                &[
                    "ExpireTime",
                    "ExpiresAt",
                    "Expires",
                    "ExpirationDate",
                    "ExpirationTime",
                    "ValidUntil",
                ],
            )
            .and_then(value_str)
            .and_then(|s| humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok())
            .filter(|t| *t > asked_at && *t < asked_at + Duration::from_secs(24 * 3600))
            .unwrap_or(default_expiry);
            (url, expires)
        }
        Ok(_) => return Err(protocol("the download-link answer is not a link")),
        Err(_) => (
            String::from_utf8_lossy(body).trim().to_string(),
            default_expiry,
        ),
    };
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|_| protocol("the download link is not a valid URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(protocol("the download link is not an http(s) URL"));
    }
    Ok(DownloadLink {
        url: Secret::new(parsed.as_str()),
        expires_at,
    })
}

/// Reads `{"AttachmentId": "…", "MessageId": "…"}`.
pub fn parse_upload_receipt(body: &[u8]) -> Result<UploadReceipt, UpstreamError> {
    let Value::Object(obj) = parse_json(body)? else {
        return Err(protocol("the upload answer is not an object"));
    };
    let attachment_id = get_ci(&obj, &["AttachmentId", "Id"])
        .and_then(value_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| protocol("the upload answer has no AttachmentId"))?;
    Ok(UploadReceipt {
        attachment_id,
        message_id: get_ci(&obj, &["MessageId"]).and_then(value_str),
    })
}

/// Reads `{"MessageId": "…"}`; an empty or absent id is not an error.
pub fn parse_message_id(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(obj) => get_ci(&obj, &["MessageId"]).and_then(value_str),
        Value::String(s) => Some(s),
        _ => None,
    }
    .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_shapes() {
        let arr = br#"[{"AttachmentId":"a1","Name":"x.jpg","MimeType":"image/jpeg","Size":12,"DocumentType":"Picture","Extra":true}]"#;
        let l = parse_list(arr, ListView::Full).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].size_bytes, 12);
        assert_eq!(l[0].document_type.as_deref(), Some("Picture"));
        assert!(l[0].raw.to_struct().unwrap().fields.contains_key("Extra"));
        let wrapped = br#"{"Attachments":[{"attachmentId":"a1","size":"7"}],"Total":1}"#;
        assert_eq!(
            parse_list(wrapped, ListView::Full).unwrap()[0].size_bytes,
            7
        );
        let other = br#"{"Whatever":[{"Id":"z"}]}"#;
        assert_eq!(
            parse_list(other, ListView::Full).unwrap()[0].attachment_id,
            "z"
        );
        assert!(parse_list(b"[]", ListView::Full).unwrap().is_empty());
        let escaped = parse_list(
            r#"[{"Id":"r\u00e9sum\u00e9 \ud83d\ude00","Name":"café"}]"#.as_bytes(),
            ListView::Full,
        )
        .unwrap();
        assert_eq!(escaped[0].attachment_id, "r\u{e9}sum\u{e9} \u{1f600}");
        assert_eq!(escaped[0].name, "caf\u{e9}");
        assert!(parse_list(b"null", ListView::Full).unwrap().is_empty());
        assert!(parse_list(b"nope", ListView::Full).is_err());
        assert!(parse_list(b"42", ListView::Full).is_err());
    }

    /// Both readers' results, with each raw object in prost's canonical encoding
    /// (the one-pass reader keeps the JSON's key order; prost writes a map in key
    /// order, and the last of repeated keys).
    fn decoded(
        r: Result<Vec<UpstreamAttachment>, UpstreamError>,
    ) -> Option<Vec<UpstreamAttachment>> {
        r.ok().map(|l| {
            l.into_iter()
                .map(|mut a| {
                    a.raw = RawStruct::from(&a.raw.to_struct().expect("valid protobuf"));
                    a
                })
                .collect()
        })
    }

    #[test]
    fn both_list_readers_agree_on_arrays() {
        for body in [
            &br#"[{"AttachmentId":"a1","Name":"x.jpg","Size":12.7,"PerformedBy":{"Name":"Ana","Phone":null}}]"#[..],
            br#" [ {"id": 5, "ID": "upper", "size": "-1", "SIZE": 3, "documenttype": 2}, 1, [], null, {"Id": ""} ] "#,
            br#"[{"AttachmentId":"dup","AttachmentId":"last","FileName":"f","ContentType":"c","SubType":"s"}]"#,
            br#"[{"AttachmentId":1e3,"Size":-0.0,"Length":"  42 "}, {"Id": 123456789012345678}]"#,
            br#"[{"AttachmentId":"a"},]"#,
            b"[{\"AttachmentId\":\"\xc3\"}]",
            b"[[\"m\xa2[\"\r\r\r]]",
            b"[1, {\"Id\": \"a\"}, \"\xff\"]",
            b"[[1e999], 2e999, {\"Id\": \"a\"}]",
            b"[[1e999], {\"Id\": \"a\"}]",
            b"[{\"Id\": \"a\", \"x\": [1e999]}]",
            "[{\"AttachmentId\":\"r\u{e9}sum\u{e9}\",\"Name\":\"\\u00e9\\ud83d\\ude00\"}]".as_bytes(),
            b"[",
            b"[]",
        ] {
            assert_eq!(
                decoded(parse_list(body, ListView::Full)),
                decoded(parse_list_tree(body)),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(
                parse_list(body, ListView::Basic).ok(),
                without_raw(parse_list(body, ListView::Full)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_basic_view_reads_the_typed_fields_only_in_every_shape() {
        for body in [
            &br#"[{"AttachmentId":"a1","Name":"x.jpg","Size":12,"Extra":{"k":[1]}}]"#[..],
            br#"{"Attachments":[{"attachmentId":"a1","size":"7"}],"Total":1}"#,
        ] {
            let basic = parse_list(body, ListView::Basic).unwrap();
            assert_eq!(basic[0].attachment_id, "a1");
            assert!(basic[0].raw.as_bytes().is_empty());
            assert_eq!(Some(basic), without_raw(parse_list(body, ListView::Full)));
        }
    }

    /// The typed fields alone, as the basic view should read them.
    fn without_raw(
        r: Result<Vec<UpstreamAttachment>, UpstreamError>,
    ) -> Option<Vec<UpstreamAttachment>> {
        r.ok().map(|l| {
            l.into_iter()
                .map(|a| UpstreamAttachment {
                    raw: RawStruct::default(),
                    ..a
                })
                .collect()
        })
    }

    mod differential {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn both_list_readers_agree_on_any_array(
                objects in prop::collection::vec(
                    prop::collection::vec(
                        (
                            prop::sample::select(vec![
                                "AttachmentId", "attachmentid", "ATTACHMENTID", "Id", "id", "Name",
                                "name", "FileName", "MimeType", "ContentType", "Size", "SIZE",
                                "SizeBytes", "FileSize", "Length", "DocumentType", "Subtype",
                                "SubType", "Other", "", "é",
                            ]),
                            prop_oneof![
                                any::<String>().prop_map(serde_json::Value::from),
                                any::<i64>().prop_map(serde_json::Value::from),
                                any::<f64>()
                                    .prop_filter("finite", |f| f.is_finite())
                                    .prop_map(serde_json::Value::from),
                                any::<bool>().prop_map(serde_json::Value::from),
                                Just(serde_json::Value::Null),
                                "[0-9 ]{0,6}".prop_map(serde_json::Value::from),
                                prop::collection::vec(any::<u8>(), 0..300)
                                    .prop_map(|v| serde_json::json!({"nested": v, "s": "x"})),
                            ],
                        ),
                        0..12,
                    ),
                    0..6,
                )
            ) {
                // Objects written by hand, so repeated keys survive into the text.
                let text = format!(
                    "[{}]",
                    objects
                        .iter()
                        .map(|o| format!(
                            "{{{}}}",
                            o.iter()
                                .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(*k)))
                                .collect::<Vec<_>>()
                                .join(",")
                        ))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                let body = text.as_bytes();
                prop_assert_eq!(decoded(parse_list(body, ListView::Full)), decoded(parse_list_tree(body)));
                prop_assert_eq!(
                    parse_list(body, ListView::Basic).ok(),
                    without_raw(parse_list(body, ListView::Full))
                );
            }
        }
    }

    #[test]
    fn link_shapes() {
        let now = SystemTime::now();
        let l = parse_download_link(br#""https://files.example/x?sig=1""#, now).unwrap();
        assert_eq!(l.expires_at, now + DOWNLOAD_LINK_TTL);
        let l = parse_download_link(br#"{"Url":"https://files.example/x"}"#, now).unwrap();
        assert_eq!(l.url.expose(), "https://files.example/x");
        let l = parse_download_link(b"https://files.example/y\n", now).unwrap();
        assert_eq!(l.url.expose(), "https://files.example/y");
        assert!(parse_download_link(br#"{"Nope":1}"#, now).is_err());
        assert!(parse_download_link(b"ftp://x/y", now).is_err());
    }

    /// The success bodies as CorrigoPro's documentation shows them, verbatim
    /// (`<guid>` is its own placeholder).
    #[test]
    fn the_documented_success_bodies() {
        let r =
            parse_upload_receipt(br#"{"AttachmentId": "<guid>", "MessageId": "<guid>"}"#).unwrap();
        assert_eq!(r.attachment_id, "<guid>");
        assert_eq!(r.message_id.as_deref(), Some("<guid>"));
        assert_eq!(
            parse_message_id(br#"{"MessageId": "<guid>"}"#).as_deref(),
            Some("<guid>")
        );
    }

    #[test]
    fn receipts() {
        let r = parse_upload_receipt(br#"{"AttachmentId":"a","MessageId":"m"}"#).unwrap();
        assert_eq!(r.attachment_id, "a");
        assert!(parse_upload_receipt(br#"{"MessageId":"m"}"#).is_err());
        assert_eq!(
            parse_message_id(br#"{"MessageId":"m"}"#).as_deref(),
            Some("m")
        );
        assert_eq!(parse_message_id(b""), None);
    }
}
