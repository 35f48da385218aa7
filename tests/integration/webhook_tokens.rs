//! CorrigoPro's webhook tokens as CorrigoPro writes them (a claims identity,
//! plain or gzip), each reading the gateway tries by itself, the tenant bound by
//! `webhooks.expected_name`, sizes past the upload limit, deep upstream objects,
//! and the operators' token checker.

use std::time::{Duration, SystemTime};

use attachment_gateway::proto::download_attachment_response::Payload as Down;
use attachment_gateway::proto::{DownloadAttachmentRequest, ListAttachmentsRequest};
use attachment_gateway::sandbox::notifier::{
    AUDIENCE, INTEGRATION_NAME, SignHash, SignedOver, Signer, TokenShape,
};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::notify::{OTHER_KEY_PEM, added, bearer, forged_token, metric, post, signer};
use crate::common::watch::{next_event, no_event_for, watch};
use crate::common::*;

const TTL: Duration = Duration::from_secs(1200);

fn shaped(issued: SystemTime, shape: &TokenShape) -> String {
    signer()
        .token_shaped(AUDIENCE, issued, TTL, shape)
        .expect("token")
}

#[tokio::test]
async fn every_reading_plain_or_gzip_is_acknowledged_and_reaches_a_subscriber() {
    let h = with_webhooks(|s| s.webhooks.expected_name = Some(INTEGRATION_NAME.into())).await;
    let mut c = h.gateway.client();
    let (mut w, _) = watch(&mut c, vec![], "").await;
    let readings = [
        (
            SignedOver::DataText,
            SignHash::Sha256,
            "data-text",
            "rsa-sha256",
        ),
        (
            SignedOver::DataBytes,
            SignHash::Sha256,
            "data-bytes",
            "rsa-sha256",
        ),
        (
            SignedOver::DataText,
            SignHash::Sha512,
            "data-text",
            "rsa-sha512",
        ),
        (
            SignedOver::DataBytes,
            SignHash::Sha512,
            "data-bytes",
            "rsa-sha512",
        ),
    ];
    for (over, hash, part, algorithm) in readings {
        for gzip in [false, true] {
            let t = shaped(
                SystemTime::now(),
                &TokenShape {
                    gzip,
                    signed_over: over,
                    hash,
                    ..TokenShape::default()
                },
            );
            assert_eq!(t.starts_with("H4sI"), gzip);
            let id = format!("{part}-{algorithm}-{gzip}");
            let r = post(
                &h.webhook_url,
                bearer(&t),
                &added(1001, &id, &format!("m-{id}")),
            )
            .await;
            assert_eq!(
                r.status(),
                200,
                "{id}: {}",
                r.text().await.unwrap_or_default()
            );
            let e = next_event(&mut w).await;
            assert_eq!(e.attachment.expect("attachment").attachment_id, id);
        }
        assert_eq!(
            metric(
                &h,
                &format!(
                    "webhook_token_readings_total{{part=\"{part}\",algorithm=\"{algorithm}\"}}"
                )
            ),
            2,
            "{part} {algorithm}"
        );
    }
}

#[tokio::test]
async fn expired_foreign_or_another_keys_tokens_are_refused_and_record_nothing() {
    let h = with_webhooks(|s| s.webhooks.expected_name = Some(INTEGRATION_NAME.into())).await;
    let mut c = h.gateway.client();
    let (mut w, _) = watch(&mut c, vec![], "").await;
    let now = SystemTime::now();
    let other_key = Signer::from_pem(OTHER_KEY_PEM).expect("key");
    let other_name = TokenShape {
        name: Some("some-other-integration".into()),
        ..TokenShape::default()
    };
    let no_name = TokenShape {
        name: None,
        ..TokenShape::default()
    };
    let cases = [
        (
            shaped(now - Duration::from_secs(2 * 3600), &TokenShape::default()),
            "refused_expired",
        ),
        (
            signer()
                .token_shaped("SomeoneElse", now, TTL, &TokenShape::default())
                .expect("t"),
            "refused_wrong_audience",
        ),
        (shaped(now, &other_name), "refused_wrong_name"),
        (shaped(now, &no_name), "refused_wrong_name"),
        (
            other_key.token(AUDIENCE, now, TTL, false).expect("t"),
            "refused_bad_signature",
        ),
        (
            other_key.token(AUDIENCE, now, TTL, true).expect("t"),
            "refused_bad_signature",
        ),
    ];
    for (i, (t, reason)) in cases.iter().enumerate() {
        let r = post(
            &h.webhook_url,
            bearer(t),
            &added(1001, "x", &format!("r{i}")),
        )
        .await;
        assert_eq!(r.status(), 401, "{reason}");
        assert_eq!(
            r.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "a refusal closes its connection"
        );
        let text = r.text().await.expect("body");
        assert!(text.contains(reason), "{reason}: {text}");
        let (data, _) = t.split_once("<---->").expect("shape");
        assert!(!text.contains(data), "the token is never echoed");
    }
    assert_eq!(
        metric(&h, "webhook_requests_total{outcome=\"refused_wrong_name\"}"),
        2
    );
    no_event_for(&mut w, Duration::from_millis(300)).await;
    let r = post(
        &h.webhook_url,
        bearer(&shaped(now, &TokenShape::default())),
        &added(1001, "ok", "accepted"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(next_event(&mut w).await.upstream_message_id, "accepted");
}

/// A forged token sent again and again costs one check: it is refused from
/// memory afterwards (401, the same reason), spends no budget, and a token
/// never seen before still verifies.
#[tokio::test]
async fn a_replayed_forged_token_costs_one_check() {
    let h = with_webhooks(|s| {
        s.webhooks.failed_checks = attachment_gateway::config::Rate { rps: 1, burst: 3 };
    })
    .await;
    let forged = forged_token();
    for i in 0..20 {
        let r = post(
            &h.webhook_url,
            bearer(&forged),
            &added(1001, "x", &format!("r{i}")),
        )
        .await;
        assert_eq!(r.status(), 401, "try {i}: refused, never throttled");
    }
    assert_eq!(
        metric(&h, "webhook_requests_total{outcome=\"throttled\"}"),
        0
    );
    assert_eq!(
        metric(
            &h,
            "webhook_requests_total{outcome=\"refused_bad_signature\"}"
        ),
        20,
        "each refusal still counted by its reason"
    );
    let fresh = shaped(SystemTime::now(), &TokenShape::default());
    let r = post(&h.webhook_url, bearer(&fresh), &added(1001, "a", "fresh")).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn garbage_does_not_spend_the_failure_budget_forged_signatures_do() {
    let h = with_webhooks(|s| {
        s.webhooks.failed_checks = attachment_gateway::config::Rate { rps: 1, burst: 5 };
    })
    .await;
    for i in 0..40 {
        let auth = match i % 4 {
            0 => None,
            1 => bearer("nonsense"),
            2 => bearer("eyJhIjoxfQ<---->%%%"),
            _ => Some("Basic dXNlcjpwYXNz".into()),
        };
        let r = post(&h.webhook_url, auth, &added(1001, "x", &format!("g{i}"))).await;
        assert_eq!(
            r.status(),
            401,
            "garbage is refused as cheaply as it is made"
        );
    }
    // A token never seen before is still checked, and verifies.
    let fresh = shaped(SystemTime::now(), &TokenShape::default());
    let r = post(&h.webhook_url, bearer(&fresh), &added(1001, "a", "fresh")).await;
    assert_eq!(r.status(), 200);
    // Forged signatures cost a check each: past the budget, unknown
    // credentials wait (429); the token that verified does not.
    let mut statuses = Vec::new();
    for i in 0..10 {
        let r = post(
            &h.webhook_url,
            bearer(&forged_token()),
            &added(1001, "x", &format!("f{i}")),
        )
        .await;
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let r = post(
        &h.webhook_url,
        bearer(&fresh),
        &added(1001, "b", "fresh-again"),
    )
    .await;
    assert_eq!(r.status(), 200);
}

/// The vendor's own "Attachment added" example carries a 223 MiB file.
#[tokio::test]
async fn a_customers_attachment_past_the_upload_limit_keeps_its_size_in_events() {
    let h = with_webhooks(|_| {}).await;
    let mut c = h.gateway.client();
    let (mut w, _) = watch(&mut c, vec![], "").await;
    let mut body = added(1001, "7c9e6679-7425-40de-944b-e07fc1f90ae7", "big-1");
    body["Size"] = json!(234256756_u64);
    let r = post(
        &h.webhook_url,
        bearer(&shaped(SystemTime::now(), &TokenShape::default())),
        &body,
    )
    .await;
    assert_eq!(r.status(), 200);
    let a = next_event(&mut w).await.attachment.expect("attachment");
    assert_eq!(a.size_bytes, 234_256_756);
}

/// An upstream object nested past what protobuf decoders accept (100 levels of
/// messages) reaches the caller decodable: deep parts as JSON text.
#[tokio::test]
async fn lists_keep_large_sizes_and_deep_upstream_objects_decode() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "t", "token_type": "bearer", "expires_in": 1199
        })))
        .mount(&server)
        .await;
    let mut deep = json!({"bottom": true});
    for i in 0..60 {
        deep = json!({ format!("level{i}"): deep });
    }
    for (route, answer) in [
        (
            "bare",
            json!([{"AttachmentId": "big", "Name": "scan.tif", "Size": 234256756_u64, "Deep": deep}]),
        ),
        (
            "wrapped",
            json!({"Attachments": [{"AttachmentId": "big", "Name": "scan.tif", "Size": 234256756_u64, "Deep": deep}], "Total": 1}),
        ),
    ] {
        server.reset().await;
        Mock::given(method("POST"))
            .and(path("/oauth/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "access_token": "t", "token_type": "bearer", "expires_in": 1199
            })))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/Direct/api/attachments"))
            .respond_with(ResponseTemplate::new(200).set_body_json(answer))
            .mount(&server)
            .await;
        let gw = Gateway::start(settings_for(&server.uri())).await;
        let mut c = gw.client();
        let list = c
            .list_attachments(ListAttachmentsRequest {
                work_order_id: 7,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{route}: the answer decodes: {e:?}"))
            .into_inner();
        let a = &list.attachments[0];
        assert_eq!(a.size_bytes, 234_256_756, "{route}");
        // Walk down: typed to the cut, then the rest as its JSON text.
        let mut depth = 0;
        let mut v = a.upstream.as_ref().expect("upstream").fields["Deep"].clone();
        let text = loop {
            use prost_types::value::Kind;
            match v.kind {
                Some(Kind::StructValue(s)) => {
                    v = s.fields.into_values().next().expect("one key");
                    depth += 1;
                }
                Some(Kind::StringValue(t)) => break t,
                other => panic!("{route}: {other:?}"),
            }
        };
        assert_eq!(depth, 16, "{route}");
        assert!(
            text.starts_with(r#"{"level43":{"#) && text.contains(r#""level0":{"bottom":true}"#),
            "{route}: {text}"
        );
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
    }
}

#[tokio::test]
async fn a_download_past_the_upload_limit_states_its_whole_size() {
    // A link host that declares a 223 MiB body: the first message says so.
    let host = raw_http_server(
        b"HTTP/1.1 200 OK\r\nContent-Type: image/tiff\r\nContent-Length: 234256756\r\n\r\n0123456789"
            .to_vec(),
    )
    .await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "t", "token_type": "bearer", "expires_in": 1199
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments/downloadUrl"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(format!("{host}/f"))))
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let mut c = gw.client();
    let mut st = c
        .download_attachment(DownloadAttachmentRequest {
            work_order_id: 7,
            attachment_id: "big".into(),
            ..Default::default()
        })
        .await
        .expect("download")
        .into_inner();
    let Some(Down::Metadata(m)) = st.message().await.expect("m").expect("some").payload else {
        panic!("metadata first")
    };
    assert_eq!(m.size_bytes, 234_256_756);
}
