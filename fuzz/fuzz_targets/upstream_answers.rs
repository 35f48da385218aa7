//! Every parser of an upstream success answer, on arbitrary bytes: no panic, and
//! what they accept holds the invariants the adapter relies on.
#![no_main]

use std::time::{Duration, SystemTime};

use attachment_gateway::upstream::error::parse_retry_after;
use attachment_gateway::upstream::model::{
    parse_download_link, parse_list, parse_message_id, parse_upload_receipt,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(items) = parse_list(body) {
        for a in &items {
            assert!(!a.attachment_id.is_empty(), "an attachment without an id");
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
