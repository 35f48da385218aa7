//! Inbound auth and limits over real TCP: API keys, JWT (JWKS file and URL, key
//! rotation), mTLS, scopes per method, per-caller rate limits, upload bounds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use attachment_gateway::config::{Rate, Settings};
use attachment_gateway::proto::attachment_service_client::AttachmentServiceClient;
use attachment_gateway::proto::{ListAttachmentsRequest, UploadAttachmentRequest};
use attachment_gateway::sandbox::Sandbox;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");

fn list_req(token: Option<(&'static str, &str)>) -> Request<ListAttachmentsRequest> {
    let mut r = Request::new(ListAttachmentsRequest {
        work_order_id: 1001,
        ..Default::default()
    });
    if let Some((header, value)) = token {
        r.metadata_mut()
            .insert(header, MetadataValue::try_from(value).expect("ascii"));
    }
    r
}

fn upload_req(
    header: &'static str,
    value: &str,
) -> Request<tokio_stream::Iter<std::vec::IntoIter<UploadAttachmentRequest>>> {
    let mut r = Request::new(tokio_stream::iter(upload_messages(
        metadata(1001, "a.txt"),
        b"abc",
        3,
    )));
    r.metadata_mut()
        .insert(header, MetadataValue::try_from(value).expect("ascii"));
    r
}

async fn gateway_with(tweak: impl FnOnce(&mut Settings)) -> (Sandbox, Gateway) {
    let sandbox = Sandbox::start(Default::default()).await.expect("sandbox");
    let mut s = base_settings();
    s.auth.allow_unauthenticated = false;
    s.upstream = sandbox.upstream_settings(&s.upstream);
    tweak(&mut s);
    let gw = Gateway::start(s).await;
    (sandbox, gw)
}

#[tokio::test]
async fn api_keys_authenticate_and_scopes_authorize() {
    let dir = scratch("keys");
    let file = dir.path().join("keys.toml");
    write_keys(
        &file,
        &[
            ("reader-svc", "read-key-123", &["attachments.read"]),
            (
                "writer-svc",
                "write-key-456",
                &["attachments.read", "attachments.write"],
            ),
        ],
    );
    let f = file.clone();
    let (_sb, gw) = gateway_with(move |s| {
        s.auth.api_keys.file = Some(f);
        s.auth.api_keys.reload_interval = Duration::from_millis(100);
    })
    .await;
    let mut c = gw.client();

    let err = c
        .list_attachments(list_req(None))
        .await
        .expect_err("no credentials");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(error_reason(&err), "MISSING_CREDENTIALS");

    let err = c
        .list_attachments(list_req(Some(("x-api-key", "nope"))))
        .await
        .expect_err("bad key");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(error_reason(&err), "UNKNOWN_API_KEY");
    assert!(
        !err.message().contains("nope"),
        "the credential is never echoed"
    );

    c.list_attachments(list_req(Some(("x-api-key", "read-key-123"))))
        .await
        .expect("reader lists");
    c.list_attachments(list_req(Some(("authorization", "Bearer read-key-123"))))
        .await
        .expect("a key as a bearer token");

    let err = c
        .upload_attachment(upload_req("x-api-key", "read-key-123"))
        .await
        .expect_err("reader uploads");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(error_reason(&err), "MISSING_SCOPE");
    assert_eq!(
        error_metadata(&err)
            .get("required_scope")
            .map(String::as_str),
        Some("attachments.write")
    );
    c.upload_attachment(upload_req("x-api-key", "write-key-456"))
        .await
        .expect("writer uploads");

    // Health needs no credentials (probes carry none).
    let ch = Channel::from_shared(format!("http://{}", gw.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health is public");

    // The key file is reloaded when it changes: a new key works, a removed one stops.
    write_keys(
        &file,
        &[("rotated-svc", "new-key-789", &["attachments.read"])],
    );
    let mut ok = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if c.list_attachments(list_req(Some(("x-api-key", "new-key-789"))))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "the new key was picked up");
    let err = c
        .list_attachments(list_req(Some(("x-api-key", "read-key-123"))))
        .await
        .expect_err("removed");
    assert_eq!(err.code(), Code::Unauthenticated);
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn sign(alg: Algorithm, kid: &str, claims: serde_json::Value) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/{kid}.pem")).expect("key");
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .expect("encoding key");
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

fn claims(sub: &str, scope: &str) -> serde_json::Value {
    json!({"iss": "https://issuer.test", "aud": "attachment-gateway", "sub": sub, "scope": scope,
           "exp": now() + 600, "nbf": now() - 5, "iat": now()})
}

fn jwt_settings(s: &mut Settings) {
    s.auth.jwt.enabled = true;
    s.auth.jwt.issuers = vec!["https://issuer.test".into()];
    s.auth.jwt.audiences = vec!["attachment-gateway".into()];
    s.auth.jwt.leeway = Duration::from_secs(5);
}

#[tokio::test]
async fn jwt_from_a_jwks_file() {
    let (_sb, gw) = gateway_with(|s| {
        jwt_settings(s);
        s.auth.jwt.jwks_file = Some(format!("{FIXTURES}/jwks.json").into());
        s.auth.jwt.subject_scopes.insert(
            "system:serviceaccount:billing:billing-api".into(),
            vec!["attachments.read".into(), "attachments.write".into()],
        );
    })
    .await;
    let mut c = gw.client();
    let bearer = |t: &str| format!("Bearer {t}");

    let reader = sign(
        Algorithm::RS256,
        "rsa-1",
        claims("reports", "attachments.read profile"),
    );
    c.list_attachments(list_req(Some(("authorization", &bearer(&reader)))))
        .await
        .expect("RS256 reader");
    let err = c
        .upload_attachment(upload_req("authorization", &bearer(&reader)))
        .await
        .expect_err("no write");
    assert_eq!(err.code(), Code::PermissionDenied);

    let writer = sign(
        Algorithm::ES256,
        "ec-1",
        claims("intake", "attachments.write"),
    );
    c.upload_attachment(upload_req("authorization", &bearer(&writer)))
        .await
        .expect("ES256 writer");

    // A Kubernetes projected service-account token: no scope claim; scopes by subject.
    let sa = sign(
        Algorithm::RS256,
        "rsa-1",
        json!({"iss": "https://issuer.test", "aud": ["attachment-gateway"], "sub": "system:serviceaccount:billing:billing-api",
               "exp": now() + 600, "iat": now(), "kubernetes.io": {"namespace": "billing"}}),
    );
    c.upload_attachment(upload_req("authorization", &bearer(&sa)))
        .await
        .expect("mapped subject writes");
    // Same shape, unmapped subject, no default scopes: authenticated but may do nothing.
    let other = sign(
        Algorithm::RS256,
        "rsa-1",
        json!({"iss": "https://issuer.test", "aud": "attachment-gateway", "sub": "system:serviceaccount:x:y", "exp": now() + 600}),
    );
    let err = c
        .list_attachments(list_req(Some(("authorization", &bearer(&other)))))
        .await
        .expect_err("no scopes");
    assert_eq!(err.code(), Code::PermissionDenied);

    let cases = [
        ("expired", {
            let mut c = claims("a", "attachments.read");
            c["exp"] = json!(now() - 60);
            sign(Algorithm::RS256, "rsa-1", c)
        }),
        ("not valid yet (nbf)", {
            let mut c = claims("a", "attachments.read");
            c["nbf"] = json!(now() + 600);
            sign(Algorithm::RS256, "rsa-1", c)
        }),
        ("audience not accepted", {
            let mut c = claims("a", "attachments.read");
            c["aud"] = json!("someone-else");
            sign(Algorithm::RS256, "rsa-1", c)
        }),
        ("issuer not accepted", {
            let mut c = claims("a", "attachments.read");
            c["iss"] = json!("https://evil.test");
            sign(Algorithm::RS256, "rsa-1", c)
        }),
        (
            "signed by an unknown key",
            sign(Algorithm::RS256, "rsa-2", claims("a", "attachments.read")),
        ),
        ("the algorithm is not accepted (RS*, PS*, ES* only)", {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("rsa-1".into());
            jsonwebtoken::encode(
                &h,
                &claims("a", "attachments.read"),
                &EncodingKey::from_secret(b"guess").expect("hmac key"),
            )
            .expect("hs")
        }),
    ];
    for (why, token) in cases {
        let err = c
            .list_attachments(list_req(Some(("authorization", &bearer(&token)))))
            .await
            .expect_err(why);
        assert_eq!(err.code(), Code::Unauthenticated, "{why}");
        assert_eq!(error_reason(&err), "INVALID_TOKEN");
        assert!(err.message().contains(why), "{why}: {}", err.message());
        assert!(!err.message().contains(&token), "the token is never echoed");
    }
    // A small clock skew is tolerated (leeway 5 s).
    let mut skewed = claims("a", "attachments.read");
    skewed["exp"] = json!(now() - 2);
    c.list_attachments(list_req(Some((
        "authorization",
        &bearer(&sign(Algorithm::RS256, "rsa-1", skewed)),
    ))))
    .await
    .expect("within leeway");
}

/// JWT without an audience check would accept any token the issuer minted for
/// another service: it must be asked for by name.
#[tokio::test]
async fn jwt_needs_an_audience_and_an_issuer_unless_told_otherwise() {
    let sandbox = Sandbox::start(Default::default()).await.expect("sandbox");
    let mut s = base_settings();
    s.auth.allow_unauthenticated = false;
    s.upstream = sandbox.upstream_settings(&s.upstream);
    s.auth.jwt.enabled = true;
    s.auth.jwt.jwks_file = Some(format!("{FIXTURES}/jwks.json").into());
    s.auth.jwt.issuers = vec!["https://issuer.test".into()];
    let err = s.validate().expect_err("no audiences").to_string();
    assert!(err.contains("auth.jwt.audiences"), "{err}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = attachment_gateway::server::serve(s.clone(), listener, std::future::pending())
        .await
        .expect_err("the server refuses to start too");
    assert!(err.to_string().contains("auth.jwt.audiences"), "{err}");

    // Asked for by name: any audience goes.
    s.auth.jwt.allow_any_audience = true;
    s.validate().expect("explicit opt-out");
    let gw = Gateway::start(s).await;
    let mut other = claims("reports", "attachments.read");
    other["aud"] = json!("some-other-service");
    let token = sign(Algorithm::RS256, "rsa-1", other);
    gw.client()
        .list_attachments(list_req(Some((
            "authorization",
            &format!("Bearer {token}"),
        ))))
        .await
        .expect("any audience, as configured");
}

#[tokio::test]
async fn jwks_url_rotation_needs_no_restart() {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let jwks = MockServer::start().await;
    // The JWKS endpoint wants the gateway's own token (as the Kubernetes API does).
    let token_dir = scratch("jwks-token");
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, "gateway-sa-token\n").expect("token");
    let first: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/jwks.json")).expect("jwks"))
            .expect("json");
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .and(header("authorization", "Bearer gateway-sa-token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(first))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&jwks)
        .await;
    let rotated: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{FIXTURES}/rsa-2.jwks.json")).expect("jwks"),
    )
    .expect("json");
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .and(header("authorization", "Bearer gateway-sa-token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(rotated))
        .with_priority(2)
        .mount(&jwks)
        .await;
    let url = format!("{}/jwks", jwks.uri());
    let (_sb, gw) = gateway_with(move |s| {
        jwt_settings(s);
        s.auth.jwt.jwks_url = Some(url);
        s.auth.jwt.jwks_token_file = Some(token_file);
    })
    .await;
    let mut c = gw.client();
    let old = sign(Algorithm::RS256, "rsa-1", claims("a", "attachments.read"));
    c.list_attachments(list_req(Some(("authorization", &format!("Bearer {old}")))))
        .await
        .expect("first key");
    // The issuer rotates to rsa-2: the unknown kid triggers a fetch of the new set.
    let new = sign(Algorithm::RS256, "rsa-2", claims("a", "attachments.read"));
    c.list_attachments(list_req(Some(("authorization", &format!("Bearer {new}")))))
        .await
        .expect("rotated key");
}

/// The JWKS fetch follows no redirect (one could leave https for plain http) and
/// reads a bounded answer.
#[tokio::test]
async fn jwks_fetches_follow_no_redirect_and_read_a_bounded_answer() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let jwks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/jwks.json")).expect("jwks"))
            .expect("json");
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/moved"))
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", format!("{}/jwks", server.uri())),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(jwks.clone()))
        .mount(&server)
        .await;
    // A valid set padded past 1 MiB.
    let mut huge = serde_json::to_string(&jwks).expect("json");
    huge.insert_str(1, &" ".repeat(2 * 1024 * 1024));
    Mock::given(method("GET"))
        .and(path("/huge"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(huge, "application/json"))
        .mount(&server)
        .await;
    let token = sign(Algorithm::RS256, "rsa-1", claims("a", "attachments.read"));
    for (route, accepted) in [("/jwks", true), ("/moved", false), ("/huge", false)] {
        let url = format!("{}{route}", server.uri());
        let (_sb, gw) = gateway_with(move |s| {
            jwt_settings(s);
            s.auth.jwt.jwks_url = Some(url);
        })
        .await;
        let r = gw
            .client()
            .list_attachments(list_req(Some((
                "authorization",
                &format!("Bearer {token}"),
            ))))
            .await;
        assert_eq!(r.is_ok(), accepted, "{route}: {r:?}");
        if let Err(e) = r {
            assert_eq!(e.code(), Code::Unauthenticated, "{route}");
        }
    }
}

/// An unknown `kid` fetches the JWKS again, one fetch at a time, and not again
/// until the interval has passed since the last such fetch *ended*: a slow JWKS
/// endpoint does not shorten the interval.
#[tokio::test]
async fn unknown_kid_fetches_are_spaced_from_the_end_of_the_last() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let first: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/jwks.json")).expect("jwks"))
            .expect("json");
    let rotated: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{FIXTURES}/rsa-2.jwks.json")).expect("jwks"),
    )
    .expect("json");
    let server = MockServer::start().await;
    // The set at start; then a slow endpoint still serving the old set; then the
    // rotated one.
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(first.clone()))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(first)
                .set_delay(Duration::from_millis(1500)),
        )
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(rotated))
        .with_priority(3)
        .mount(&server)
        .await;
    let url = format!("{}/jwks", server.uri());
    let (_sb, gw) = gateway_with(move |s| {
        jwt_settings(s);
        s.auth.jwt.jwks_url = Some(url);
        s.auth.jwt.unknown_kid_refresh_interval = Duration::from_secs(1);
    })
    .await;
    let new = sign(Algorithm::RS256, "rsa-2", claims("a", "attachments.read"));
    let bearer = format!("Bearer {new}");
    // Five at once: one slow fetch (which still has the old set), all refused.
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let mut c = gw.client();
            let b = bearer.clone();
            tokio::spawn(async move {
                c.list_attachments(list_req(Some(("authorization", &b))))
                    .await
            })
        })
        .collect();
    for call in calls {
        assert!(call.await.expect("task").is_err());
    }
    let fetches = || async { server.received_requests().await.unwrap_or_default().len() };
    assert_eq!(fetches().await, 2, "the start, then one fetch for all five");
    // 1.5 s after that fetch *started*, but only a moment after it ended: no fetch.
    let mut c = gw.client();
    assert!(
        c.list_attachments(list_req(Some(("authorization", &bearer))))
            .await
            .is_err()
    );
    assert_eq!(
        fetches().await,
        2,
        "the interval counts from the end of a fetch"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.list_attachments(list_req(Some(("authorization", &bearer))))
        .await
        .expect("after the interval, the rotated set is fetched");
    assert_eq!(fetches().await, 3);
}

#[tokio::test]
async fn mtls_identity_from_the_client_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("key");
    let server_cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    let client_cert_for = |uri: &str| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
        let cert = p.signed_by(&key, &issuer).expect("client cert");
        Identity::from_pem(cert.pem(), key.serialize_pem())
    };
    let tmp = scratch("mtls");
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("w");
    std::fs::write(dir.join("server.pem"), server_cert.pem()).expect("w");
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).expect("w");
    let d = dir.clone();
    let (_sb, gw) = gateway_with(move |s| {
        s.tls.cert_file = Some(d.join("server.pem"));
        s.tls.key_file = Some(d.join("server.key"));
        s.tls.client_ca_file = Some(d.join("ca.pem"));
        s.auth.mtls.identities.insert(
            "spiffe://cluster.local/ns/billing/sa/api".into(),
            vec!["attachments.read".into(), "attachments.write".into()],
        );
        s.auth.mtls.default_scopes = vec!["attachments.read".into()];
    })
    .await;
    let connect = |identity: Option<Identity>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.pem()))
            .domain_name("localhost");
        if let Some(id) = identity {
            tls = tls.identity(id);
        }
        let addr = gw.addr;
        async move {
            let ch = Channel::from_shared(format!("https://{addr}"))
                .expect("uri")
                .tls_config(tls)
                .expect("tls")
                .connect()
                .await?;
            Ok::<_, tonic::transport::Error>(AttachmentServiceClient::new(ch))
        }
    };
    let mut billing = connect(Some(client_cert_for(
        "spiffe://cluster.local/ns/billing/sa/api",
    )))
    .await
    .expect("mtls");
    billing
        .list_attachments(list_req(None))
        .await
        .expect("mapped identity reads");
    billing
        .upload_attachment(tokio_stream::iter(upload_messages(
            metadata(1001, "m.txt"),
            b"mtls",
            4,
        )))
        .await
        .expect("mapped identity writes");
    let mut other = connect(Some(client_cert_for("spiffe://cluster.local/ns/x/sa/y")))
        .await
        .expect("mtls");
    other
        .list_attachments(list_req(None))
        .await
        .expect("default scopes read");
    let err = other
        .upload_attachment(tokio_stream::iter(upload_messages(
            metadata(1001, "m.txt"),
            b"x",
            1,
        )))
        .await
        .expect_err("default scopes don't write");
    assert_eq!(err.code(), Code::PermissionDenied);
    // Without a client certificate the handshake (or the first call) fails.
    match connect(None).await {
        Err(_) => {}
        Ok(mut c) => {
            let err = c
                .list_attachments(list_req(None))
                .await
                .expect_err("no client cert");
            assert_ne!(err.code(), Code::Ok);
        }
    }
}

#[tokio::test]
async fn per_caller_rate_limits_are_shared_across_connections() {
    let dir = scratch("rl");
    let file = dir.path().join("keys.toml");
    write_keys(
        &file,
        &[
            ("a", "key-a", &["attachments.read"]),
            ("b", "key-b", &["attachments.read"]),
            ("vip", "key-vip", &["attachments.read"]),
        ],
    );
    let (_sb, gw) = gateway_with(move |s| {
        s.auth.api_keys.file = Some(file);
        s.rate_limit.per_caller = Rate { rps: 1, burst: 2 };
        s.rate_limit
            .overrides
            .insert("api_key:vip".into(), Rate { rps: 1, burst: 5 });
    })
    .await;
    // Two separate connections of the same caller share one bucket.
    let mut c1 = connect(gw.addr).await;
    let mut c2 = connect(gw.addr).await;
    c1.list_attachments(list_req(Some(("x-api-key", "key-a"))))
        .await
        .expect("1");
    c2.list_attachments(list_req(Some(("x-api-key", "key-a"))))
        .await
        .expect("2");
    let err = c1
        .list_attachments(list_req(Some(("x-api-key", "key-a"))))
        .await
        .expect_err("3rd");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(
        error_metadata(&err).get("limit").map(String::as_str),
        Some("per_caller_rate")
    );
    let q = tonic_types::StatusExt::get_error_details(&err)
        .quota_failure()
        .cloned()
        .expect("QuotaFailure");
    assert_eq!(q.violations[0].subject, "caller:api_key:a");
    let delay = retry_delay(&err).expect("RetryInfo");
    assert!(
        delay <= Duration::from_secs(1) && delay > Duration::ZERO,
        "{delay:?}"
    );
    // Another caller has its own bucket; an override gives a bigger one.
    c2.list_attachments(list_req(Some(("x-api-key", "key-b"))))
        .await
        .expect("b");
    for i in 0..5 {
        c2.list_attachments(list_req(Some(("x-api-key", "key-vip"))))
            .await
            .unwrap_or_else(|e| panic!("vip {i}: {e:?}"));
    }
    // Refused calls never reach the upstream; health is never limited.
    let ch = Channel::from_shared(format!("http://{}", gw.addr))
        .expect("uri")
        .connect()
        .await
        .expect("c");
    let mut h = HealthClient::new(ch);
    for _ in 0..5 {
        h.check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health");
    }
}

/// A broken API key file keeps the last good keys for `max_stale` only: then every
/// API key is refused (a revoked key must not live on), visibly, until the file
/// is fixed.
#[tokio::test]
async fn a_broken_api_key_file_stops_serving_old_keys_after_max_stale() {
    let dir = scratch("broken-keys");
    let file = dir.path().join("keys.toml");
    write_keys(&file, &[("old", "key-old", &["attachments.read"])]);
    let f = file.clone();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin_addr = admin.local_addr().expect("addr");
    let sandbox = Sandbox::start(Default::default()).await.expect("sandbox");
    let mut s = base_settings();
    s.auth.allow_unauthenticated = false;
    s.upstream = sandbox.upstream_settings(&s.upstream);
    s.auth.api_keys.file = Some(f);
    s.auth.api_keys.reload_interval = Duration::from_millis(100);
    s.auth.api_keys.max_stale = Duration::from_secs(1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serving = tokio::spawn(attachment_gateway::server::serve_with(
        s,
        attachment_gateway::server::Listeners {
            grpc: listener,
            admin: Some(admin),
            webhooks: None,
        },
        std::sync::Arc::new(attachment_gateway::metrics::Metrics::new()),
        std::future::pending(),
    ));
    let mut c = connect(addr).await;
    c.list_attachments(list_req(Some(("x-api-key", "key-old"))))
        .await
        .expect("the key works");
    // The operator revokes `old` and breaks the file in the same edit.
    std::fs::write(&file, "[[keys]]\ncaller = \"new\"\nsha256 = ").expect("write");
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.list_attachments(list_req(Some(("x-api-key", "key-old"))))
        .await
        .expect("within max_stale, the last good keys hold");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let err = c
        .list_attachments(list_req(Some(("x-api-key", "key-old"))))
        .await
        .expect_err("past max_stale, API keys are refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(error_reason(&err), "API_KEYS_UNAVAILABLE");
    let metrics = reqwest::get(format!("http://{admin_addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("attachment_gateway_api_key_file_reload_failures_total "),
        "{metrics}"
    );
    assert!(
        !metrics.contains("attachment_gateway_api_key_file_stale_seconds 0\n"),
        "{metrics}"
    );
    // Fixed: the new keys apply at once, and the revoked one stays out.
    write_keys(&file, &[("new", "key-new", &["attachments.read"])]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.list_attachments(list_req(Some(("x-api-key", "key-new"))))
        .await
        .expect("the fixed file's key");
    let err = c
        .list_attachments(list_req(Some(("x-api-key", "key-old"))))
        .await
        .expect_err("revoked");
    assert_eq!(error_reason(&err), "UNKNOWN_API_KEY");
    serving.abort();
}

/// Failed authentication is throttled per source address: past the budget, new
/// credentials are refused without a check, while credentials that verified
/// recently keep working (behind a mesh every caller shares one address).
#[tokio::test]
async fn failed_authentications_are_throttled_without_locking_out_known_callers() {
    let dir = scratch("throttle");
    let file = dir.path().join("keys.toml");
    write_keys(
        &file,
        &[
            ("known", "key-known", &["attachments.read"]),
            ("later", "key-later", &["attachments.read"]),
        ],
    );
    let (_sb, gw) = gateway_with(move |s| {
        s.auth.api_keys.file = Some(file);
        s.auth.failed_attempts.per_source = Rate { rps: 1, burst: 5 };
    })
    .await;
    let mut c = gw.client();
    c.list_attachments(list_req(Some(("x-api-key", "key-known"))))
        .await
        .expect("a caller known before the attack");
    for i in 0..5 {
        let err = c
            .list_attachments(list_req(Some(("x-api-key", &format!("guess-{i}")))))
            .await
            .expect_err("a guess");
        assert_eq!(error_reason(&err), "UNKNOWN_API_KEY");
    }
    let err = c
        .list_attachments(list_req(Some(("x-api-key", "guess-5"))))
        .await
        .expect_err("past the budget");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(
        error_metadata(&err).get("limit").map(String::as_str),
        Some("failed_auth_per_source")
    );
    assert!(retry_delay(&err).is_some_and(|d| d <= Duration::from_secs(1)));
    c.list_attachments(list_req(Some(("x-api-key", "key-known"))))
        .await
        .expect("the known caller is not locked out");
    let err = c
        .list_attachments(list_req(Some(("x-api-key", "key-later"))))
        .await
        .expect_err("a credential not seen before waits for the budget");
    assert_eq!(err.code(), Code::ResourceExhausted);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.list_attachments(list_req(Some(("x-api-key", "key-later"))))
        .await
        .expect("the budget refilled");
}

/// A token that failed for good (here, a bad signature) is refused again without
/// the work of a check: the metrics count one check and the rest from the cache.
#[tokio::test]
async fn a_refused_token_is_refused_again_without_a_check() {
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin_addr = admin.local_addr().expect("addr");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = grpc.local_addr().expect("addr");
    let sandbox = Sandbox::start(Default::default()).await.expect("sandbox");
    let mut s = base_settings();
    s.auth.allow_unauthenticated = false;
    s.upstream = sandbox.upstream_settings(&s.upstream);
    jwt_settings(&mut s);
    s.auth.jwt.jwks_file = Some(format!("{FIXTURES}/jwks.json").into());
    let serving = tokio::spawn(attachment_gateway::server::serve_with(
        s,
        attachment_gateway::server::Listeners {
            grpc,
            admin: Some(admin),
            webhooks: None,
        },
        std::sync::Arc::new(attachment_gateway::metrics::Metrics::new()),
        std::future::pending(),
    ));
    // Signed with rsa-2's key, claiming rsa-1's: a bad signature.
    let pem = std::fs::read(format!("{FIXTURES}/rsa-2.pem")).expect("key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let forged = jsonwebtoken::encode(
        &header,
        &claims("x", "attachments.read"),
        &EncodingKey::from_rsa_pem(&pem).expect("key"),
    )
    .expect("sign");
    let bearer = format!("Bearer {forged}");
    let mut c = connect(addr).await;
    for _ in 0..20 {
        let err = c
            .list_attachments(list_req(Some(("authorization", &bearer))))
            .await
            .expect_err("forged");
        assert_eq!(error_reason(&err), "INVALID_TOKEN");
    }
    let text = reqwest::get(format!("http://{admin_addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let value = |how: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("attachment_gateway_auth_credential_checks_total")
                    && l.contains(&format!(r#"how="{how}""#))
                    && l.contains(r#"result="refused""#)
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(value("checked"), Some(1), "{text}");
    assert_eq!(value("cached"), Some(19), "{text}");
    serving.abort();
}

/// An API-key caller and a JWT subject that share a name are two callers: an
/// override for one neither limits nor shares a bucket with the other.
#[tokio::test]
async fn rate_limit_overrides_name_the_callers_kind() {
    let dir = scratch("rl-kind");
    let file = dir.path().join("keys.toml");
    write_keys(&file, &[("billing", "key-billing", &["attachments.read"])]);
    let (_sb, gw) = gateway_with(move |s| {
        s.auth.api_keys.file = Some(file);
        jwt_settings(s);
        s.auth.jwt.jwks_file = Some(format!("{FIXTURES}/jwks.json").into());
        s.rate_limit.per_caller = Rate { rps: 1, burst: 3 };
        s.rate_limit
            .overrides
            .insert("api_key:billing".into(), Rate { rps: 1, burst: 1 });
    })
    .await;
    let mut c = gw.client();
    let token = sign(
        Algorithm::RS256,
        "rsa-1",
        claims("billing", "attachments.read"),
    );
    let bearer = format!("Bearer {token}");
    c.list_attachments(list_req(Some(("x-api-key", "key-billing"))))
        .await
        .expect("the API key's one call");
    let err = c
        .list_attachments(list_req(Some(("x-api-key", "key-billing"))))
        .await
        .expect_err("the override (burst 1) applies to the API-key caller");
    assert_eq!(err.code(), Code::ResourceExhausted);
    for i in 0..3 {
        c.list_attachments(list_req(Some(("authorization", &bearer))))
            .await
            .unwrap_or_else(|e| panic!("JWT `billing` call {i}: its own default bucket: {e:?}"));
    }
}

#[test]
fn rate_limit_override_keys_without_a_kind_are_refused() {
    let mut s = Settings::default();
    s.sandbox.enabled = true;
    s.rate_limit
        .overrides
        .insert("billing".into(), Rate { rps: 1, burst: 1 });
    let err = s.validate().expect_err("a bare name").to_string();
    assert!(
        err.contains("rate_limit.overrides") && err.contains("api_key:"),
        "{err}"
    );
}

#[tokio::test]
async fn concurrent_uploads_past_the_bound_are_refused_fast() {
    let (sb, gw) = gateway_with(|s| {
        s.auth.allow_unauthenticated = true;
        s.rate_limit.max_concurrent_uploads = 1;
    })
    .await;
    let (tx, rx) = mpsc::channel(4);
    let mut c = gw.client();
    let first = tokio::spawn(async move { c.upload_attachment(ReceiverStream::new(rx)).await });
    tx.send(meta_msg(metadata(1001, "slow.bin")))
        .await
        .expect("send");
    tx.send(chunk_msg(vec![1u8; 1000])).await.expect("send");
    eventually("first upload under way", || sb.stats().uploads_started == 1).await;
    let started = std::time::Instant::now();
    let err = gw
        .client()
        .upload_attachment(tokio_stream::iter(upload_messages(
            metadata(1001, "b.bin"),
            b"x",
            1,
        )))
        .await
        .expect_err("over the bound");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused fast, not queued"
    );
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(
        error_metadata(&err).get("limit").map(String::as_str),
        Some("concurrent_uploads")
    );
    drop(tx); // the first upload ends cleanly and is stored
    first.await.expect("task").expect("first upload");
    gw.client()
        .upload_attachment(tokio_stream::iter(upload_messages(
            metadata(1001, "c.bin"),
            b"y",
            1,
        )))
        .await
        .expect("a slot is free again");
}

#[tokio::test]
async fn no_auth_configured_refuses_to_start() {
    let mut s = base_settings();
    s.auth.allow_unauthenticated = false;
    s.upstream.client_id = "x".into();
    s.upstream.client_secret = attachment_gateway::secret::Secret::new("y");
    let err = s.validate().expect_err("no auth mode");
    assert!(err.to_string().contains("auth"), "{err}");
    s.auth.allow_unauthenticated = true;
    s.validate().expect("explicitly insecure is allowed");
}

/// Two issuers' tokens with one subject are two callers: their write
/// records, rates, watches and scopes are apart, and a token without a
/// subject (or, with several issuers, without an issuer) is refused.
#[tokio::test]
async fn callers_of_two_issuers_are_two_callers() {
    let full = vec!["attachments.read".into(), "attachments.write".into()];
    let (_sb, gw) = gateway_with(|s| {
        jwt_settings(s);
        s.auth.jwt.jwks_file = Some(format!("{FIXTURES}/jwks.json").into());
        s.auth.jwt.issuers = vec!["https://a.test".into(), "https://b.test".into()];
        s.auth
            .jwt
            .subject_scopes
            .insert("https://a.test shared".into(), full.clone());
        s.auth
            .jwt
            .subject_scopes
            .insert("https://b.test shared".into(), full.clone());
        s.auth.jwt.subject_scopes.insert(
            "https://a.test reader".into(),
            vec!["attachments.read".into()],
        );
    })
    .await;
    let mut c = gw.client();
    let token = |iss: &str, sub: Option<&str>| {
        let mut cl = json!({"iss": iss, "aud": "attachment-gateway", "exp": now() + 600});
        if let Some(s) = sub {
            cl["sub"] = json!(s);
        }
        format!("Bearer {}", sign(Algorithm::RS256, "rsa-1", cl))
    };
    // One issuer's subject does not get the other's scopes.
    c.list_attachments(list_req(Some((
        "authorization",
        &token("https://a.test", Some("reader")),
    ))))
    .await
    .expect("a's reader reads");
    let err = c
        .list_attachments(list_req(Some((
            "authorization",
            &token("https://b.test", Some("reader")),
        ))))
        .await
        .expect_err("b's reader is not a's");
    assert_eq!(err.code(), Code::PermissionDenied);
    // One message id, two callers: two writes, neither refused as a reuse.
    for (iss, seed) in [("https://a.test", 1u8), ("https://b.test", 2)] {
        let mut m = metadata(1002, "same-id.bin");
        m.message_id = "shared-message-id".into();
        let mut req = Request::new(tokio_stream::iter(upload_messages(
            m,
            &pattern(1000, seed),
            500,
        )));
        req.metadata_mut().insert(
            "authorization",
            token(iss, Some("shared")).parse().expect("header"),
        );
        c.upload_attachment(req)
            .await
            .unwrap_or_else(|e| panic!("{iss}: its own write: {e:?}"));
    }
    // No subject: refused, never one shared "unknown" caller.
    let err = c
        .list_attachments(list_req(Some((
            "authorization",
            &token("https://a.test", None),
        ))))
        .await
        .expect_err("no sub");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("sub"), "{}", err.message());
}

#[test]
fn with_several_issuers_subject_scopes_must_name_the_issuer() {
    let mut s = settings_for("http://127.0.0.1:1");
    s.auth.jwt.enabled = true;
    s.auth.jwt.jwks_file = Some(format!("{FIXTURES}/jwks.json").into());
    s.auth.jwt.audiences = vec!["attachment-gateway".into()];
    s.auth.jwt.issuers = vec!["https://a.test".into(), "https://b.test".into()];
    s.auth
        .jwt
        .subject_scopes
        .insert("billing".into(), vec!["attachments.read".into()]);
    let err = s.validate().expect_err("ambiguous subject").to_string();
    assert!(
        err.contains("auth.jwt.subject_scopes") && err.contains("billing"),
        "{err}"
    );
    s.auth.jwt.subject_scopes.clear();
    s.auth.jwt.subject_scopes.insert(
        "https://a.test billing".into(),
        vec!["attachments.read".into()],
    );
    s.validate().expect("named by issuer");
}
