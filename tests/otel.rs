//! Traces and metrics end to end: an in-process OTLP receiver gets one server span
//! per RPC (child of the caller's trace) and a client span per upstream call; the
//! upstream receives a `traceparent` of the same trace; `/metrics` counts it all.
//!
//! One test in this binary: it installs the process-wide subscriber.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use attachment_gateway::metrics::Metrics;
use attachment_gateway::proto::ListAttachmentsRequest;
use attachment_gateway::{server, telemetry};
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::json;
use tokio::net::TcpListener;
use tonic::Request;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a AnyValue> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_str(s: &Span, key: &str) -> Option<String> {
    match attr(s, key)? {
        AnyValue::StringValue(v) => Some(v.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_and_metrics_count_calls() {
    // The OTLP receiver.
    let receiver = Receiver::default();
    let otlp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let otlp_addr = otlp.local_addr().expect("addr");
    let svc = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(otlp)),
    );
    // SAFETY: set before any other thread of this test binary reads the environment.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp_addr}"));
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
        std::env::set_var("OTEL_SERVICE_NAME", "attachment-gateway-test");
    }
    let guard = telemetry::init(&Default::default()).expect("telemetry");

    // The upstream.
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                json!({"access_token": "s3cret-access-token-9f8e", "expires_in": 1199}),
            ),
        )
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([{"AttachmentId": "a1", "Name": "x.jpg"}])),
        )
        .mount(&upstream)
        .await;

    // The gateway, with its admin port.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin_addr = admin.local_addr().expect("addr");
    let settings = settings_for(&upstream.uri());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gw = tokio::spawn(server::serve_with(
        settings,
        server::Listeners {
            grpc: listener,
            admin: Some(admin),
            webhooks: None,
        },
        Arc::new(Metrics::new()),
        async move {
            let _ = stopped.await;
        },
    ));
    let mut client = connect(addr).await;

    // A call inside the caller's trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut req = Request::new(ListAttachmentsRequest {
        work_order_id: 4242,
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-{caller_span}-01")
            .parse()
            .expect("header"),
    );
    let list = client
        .list_attachments(req)
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.attachments.len(), 1);
    // And a refused one (validation) in another trace.
    let _ = client
        .list_attachments(ListAttachmentsRequest {
            work_order_id: 0,
            ..Default::default()
        })
        .await;

    // The upstream got a traceparent of the caller's trace.
    let reqs = upstream.received_requests().await.expect("recorded");
    let api_call = reqs
        .iter()
        .find(|r| r.url.path() == "/Direct/api/attachments")
        .expect("api call");
    let tp = api_call
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("traceparent sent upstream");
    assert!(tp.starts_with(&format!("00-{caller_trace}-")), "{tp}");

    // Spans arrive at the receiver.
    let trace_bytes = hex::decode(caller_trace).expect("hex");
    let mut server_span = None;
    let mut client_spans = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let spans = receiver.0.lock().expect("lock").clone();
        let ours: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace_bytes).collect();
        server_span = ours
            .iter()
            .find(|s| s.kind == SpanKind::Server as i32)
            .map(|s| (*s).clone());
        client_spans = ours
            .iter()
            .filter(|s| s.kind == SpanKind::Client as i32)
            .map(|s| (*s).clone())
            .collect();
        if server_span.is_some() && !client_spans.is_empty() {
            break;
        }
    }
    let server_span = server_span.expect("a server span in the caller's trace");
    assert_eq!(
        server_span.name,
        "corrigopro.attachments.v1.AttachmentService/ListAttachments"
    );
    assert_eq!(
        server_span.parent_span_id,
        hex::decode(caller_span).expect("hex"),
        "child of the caller's span"
    );
    assert_eq!(
        attr_str(&server_span, "rpc.system").as_deref(),
        Some("grpc")
    );
    assert_eq!(
        attr_str(&server_span, "rpc.service").as_deref(),
        Some("corrigopro.attachments.v1.AttachmentService")
    );
    assert_eq!(
        attr_str(&server_span, "rpc.method").as_deref(),
        Some("ListAttachments")
    );
    assert_eq!(
        attr_str(&server_span, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert_eq!(
        attr_str(&server_span, "work_order_id").as_deref(),
        Some("4242")
    );
    assert_eq!(
        attr_str(&server_span, "caller").as_deref(),
        Some("anonymous:anonymous")
    );
    let api_span = client_spans
        .iter()
        .find(|s| attr_str(s, "upstream.call").as_deref() == Some("list"))
        .expect("a client span for the list call");
    assert_eq!(
        api_span.parent_span_id, server_span.span_id,
        "child of the server span"
    );
    assert_eq!(
        attr_str(api_span, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        attr_str(api_span, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr_str(api_span, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert!(
        tp.contains(&hex::encode(&api_span.span_id)),
        "the upstream's parent is the client span"
    );
    let everything = format!("{:?}", receiver.0.lock().expect("lock"));
    assert!(
        !everything.contains("s3cret-access-token-9f8e"),
        "no token in any exported span"
    );
    assert!(
        !everything.contains("test-secret-value"),
        "no client secret in any exported span"
    );

    // Metrics.
    let text = reqwest::get(format!("http://{admin_addr}/metrics"))
        .await
        .expect("GET")
        .text()
        .await
        .expect("body");
    assert!(
        text.contains(
            r#"attachment_gateway_grpc_requests_total{method="ListAttachments",code="Ok"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"attachment_gateway_grpc_requests_total{method="ListAttachments",code="InvalidArgument"} 1"#), "{text}");
    assert!(
        text.contains(r#"attachment_gateway_upstream_requests_total{call="list",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("attachment_gateway_upstream_token_refreshes_total 1"),
        "{text}"
    );
    assert!(
        text.contains("attachment_gateway_grpc_request_duration_seconds_bucket"),
        "{text}"
    );

    let _ = stop.send(());
    let _ = gw.await;
    drop(guard);
}
