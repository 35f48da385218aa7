//! Every parser of an upstream success answer, on arbitrary bytes: no panic, and
//! what they accept holds the invariants the adapter relies on.
#![no_main]

use std::time::{Duration, SystemTime};

use attachment_gateway::domain::ListView;
use attachment_gateway::upstream::answers::{
    parse_download_link, parse_list, parse_list_tree, parse_message_id, parse_upload_receipt,
};
use attachment_gateway::upstream::error::parse_retry_after;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let fast = parse_list(body, ListView::Full);
    // The basic view reads the same typed fields and refuses the same input.
    let basic = parse_list(body, ListView::Basic);
    assert_eq!(
        fast.is_ok(),
        basic.is_ok(),
        "the two views disagree on success"
    );
    if let (Ok(f), Ok(b)) = (&fast, &basic) {
        assert_eq!(f.len(), b.len(), "the two views disagree on the count");
        for (x, y) in f.iter().zip(b) {
            assert_eq!(x.attachment_id, y.attachment_id);
            assert_eq!(
                (&x.name, &x.mime_type, x.size_bytes),
                (&y.name, &y.mime_type, y.size_bytes)
            );
            assert_eq!(
                (&x.document_type, &x.subtype),
                (&y.document_type, &y.subtype)
            );
            assert!(
                y.raw.as_bytes().is_empty(),
                "the basic view kept a raw object"
            );
        }
    }
    if let Ok(items) = &fast {
        for a in items {
            assert!(!a.attachment_id.is_empty(), "an attachment without an id");
            assert!(
                a.raw.to_struct().is_ok(),
                "an upstream object that is not protobuf"
            );
        }
    }
    // Bare arrays are read in one pass straight to wire bytes: the tree reader
    // (every shape) must agree with it, field for field.
    let tree = parse_list_tree(body);
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        assert_eq!(
            fast.is_ok(),
            tree.is_ok(),
            "the two list readers disagree on success"
        );
        if let (Ok(a), Ok(b)) = (fast, tree) {
            assert_eq!(
                a.len(),
                b.len(),
                "the two list readers disagree on the count"
            );
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(
                    (
                        &x.attachment_id,
                        &x.name,
                        &x.mime_type,
                        x.size_bytes,
                        &x.document_type,
                        &x.subtype
                    ),
                    (
                        &y.attachment_id,
                        &y.name,
                        &y.mime_type,
                        y.size_bytes,
                        &y.document_type,
                        &y.subtype
                    ),
                );
                assert_eq!(x.raw.to_struct().ok(), y.raw.to_struct().ok());
            }
        }
    }
    let asked_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    if let Ok(link) = parse_download_link(body, asked_at) {
        assert!(
            link.url.expose().starts_with("http"),
            "a link that is not http(s)"
        );
    }
    if let Ok(r) = parse_upload_receipt(body) {
        assert!(!r.attachment_id.is_empty(), "a receipt without an id");
    }
    let _ = parse_message_id(body);
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = parse_retry_after(text);
    }
});
