//! Properties of the input validation, the upstream-answer parsers and the error
//! mapping, over generated inputs (proptest). The coverage-guided counterparts
//! of the parser properties are the cargo-fuzz targets in `fuzz/`.

use attachment_gateway::api::error::{Error, Op, classify};
use attachment_gateway::domain::{
    AttachmentName, ListView, MessageId, MimeType, PerformedBy, WorkOrderId,
};
use attachment_gateway::upstream::answers::{
    parse_download_link, parse_list, parse_message_id, parse_upload_receipt,
};
use attachment_gateway::upstream::error::{parse_error_body, parse_retry_after};
use attachment_gateway::upstream::{ApiError, UpstreamError};
use proptest::prelude::*;
use tonic::Code;

/// JSON-shaped text: objects and arrays of the keys the parsers look for.
fn jsonish() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("AttachmentId"),
        Just("Name"),
        Just("Size"),
        Just("Code"),
        Just("Message"),
        Just("ValidationErrors"),
        Just("Url"),
        Just("MessageId"),
        Just("Attachments"),
        Just("x"),
    ];
    let scalar = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| if f.is_finite() {
            f.to_string()
        } else {
            "0".into()
        }),
        "[a-zA-Z0-9:/._ -]{0,20}".prop_map(|s| format!("{s:?}")),
    ];
    let leaf = (key, scalar).prop_map(|(k, v)| format!("{{\"{k}\": {v}}}"));
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(inner, 0..4).prop_map(|v| {
                let fields: Vec<String> = v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| format!("\"k{i}\": {x}"))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512), status in 100u16..600) {
        let _ = parse_error_body(status, &body, None);
        let _ = parse_list(&body, ListView::Full);
        let _ = parse_download_link(&body, std::time::SystemTime::now());
        let _ = parse_upload_receipt(&body);
        let _ = parse_message_id(&body);
        let _ = parse_retry_after(&String::from_utf8_lossy(&body));
    }

    #[test]
    fn parsers_never_panic_on_json(body in jsonish(), status in 100u16..600) {
        let e = parse_error_body(status, body.as_bytes(), None);
        prop_assert_eq!(e.http_status, status);
        prop_assert!(e.message.as_ref().is_none_or(|m| m.chars().count() <= 1001));
        if let Ok(items) = parse_list(body.as_bytes(), ListView::Full) {
            prop_assert!(items.iter().all(|a| !a.attachment_id.is_empty()));
        }
        if let Ok(link) = parse_download_link(body.as_bytes(), std::time::SystemTime::now()) {
            prop_assert!(link.url.expose().starts_with("http"));
        }
    }

    #[test]
    fn every_upstream_answer_maps_to_an_error_status(status in 100u16..600, code in prop::option::of(any::<i64>()), write in any::<bool>()) {
        let api = ApiError { http_status: status, code, ..ApiError::default() };
        let (grpc, reason) = classify(&api);
        prop_assert_ne!(grpc, Code::Ok);
        prop_assert_ne!(grpc, Code::Unauthenticated, "the caller's credentials are not the upstream's");
        prop_assert!(!reason.is_empty());
        let s = tonic::Status::from(Error::upstream(UpstreamError::Api(Box::new(api)), if write { Op::Write } else { Op::Read }));
        prop_assert_eq!(s.code(), grpc);
    }

    #[test]
    fn accepted_names_are_plain_file_names(s in "\\PC{0,300}") {
        if let Ok(n) = AttachmentName::new(&s) {
            let n = n.as_str();
            prop_assert!(!n.contains(['/', '\\']) && !n.chars().any(char::is_control));
            prop_assert!(n.chars().count() <= 255);
            let (stem, ext) = n.rsplit_once('.').expect("an extension");
            prop_assert!(!stem.is_empty() && !ext.is_empty());
        }
    }

    #[test]
    fn other_fields_hold_their_limits(s in "\\PC{0,120}", n in any::<i64>()) {
        if let Ok(m) = MimeType::new(&s) { prop_assert!(m.as_str().contains('/')); }
        if let Ok(m) = MessageId::new_or_generate(&s) { prop_assert!(!m.as_str().is_empty() && m.as_str().len() <= 36); }
        if let Ok(p) = PerformedBy::name(&s) { prop_assert!(!p.is_empty() && p.chars().count() <= 100); }
        prop_assert_eq!(WorkOrderId::new(n).is_ok(), n > 0);
    }
}
