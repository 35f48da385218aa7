//! A fast CorrigoPro-shaped sink on loopback: token, upload, list, link, file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Multipart, State};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::json;
use tokio::net::TcpListener;

use crate::Params;

#[derive(Clone)]
pub(crate) struct Sink {
    pub(crate) list: Bytes,
    pub(crate) file: Bytes,
    pub(crate) base: Arc<String>,
    pub(crate) bytes_in: Arc<AtomicU64>,
}

pub(crate) async fn sink_token() -> axum::Json<serde_json::Value> {
    axum::Json(json!({"access_token": "bench-token", "token_type": "bearer", "expires_in": 1199}))
}

pub(crate) async fn sink_upload(
    State(s): State<Sink>,
    mut mp: Multipart,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut n = 0u64;
    loop {
        match mp.next_field().await {
            Ok(Some(mut f)) => loop {
                match f.chunk().await {
                    Ok(Some(c)) => n += c.len() as u64,
                    Ok(None) => break,
                    Err(_) => {
                        return (axum::http::StatusCode::BAD_REQUEST, "broken").into_response();
                    }
                }
            },
            Ok(None) => break,
            Err(_) => return (axum::http::StatusCode::BAD_REQUEST, "broken").into_response(),
        }
    }
    s.bytes_in.fetch_add(n, Ordering::Relaxed);
    axum::Json(
        json!({"AttachmentId": "00000000-0000-0000-0000-000000000001", "MessageId": "bench"}),
    )
    .into_response()
}

pub(crate) async fn sink_list(
    State(s): State<Sink>,
) -> ([(axum::http::HeaderName, &'static str); 1], Bytes) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        s.list.clone(),
    )
}

pub(crate) async fn sink_link(State(s): State<Sink>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({"Url": format!("{}/files/big?sig=x", s.base)}))
}

pub(crate) async fn sink_file(
    State(s): State<Sink>,
) -> ([(axum::http::HeaderName, &'static str); 1], Bytes) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        s.file.clone(),
    )
}

pub(crate) async fn start_sink(p: &Params) -> (SocketAddr, Sink) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
    let addr = listener.local_addr().expect("addr");
    let items: Vec<_> = (0..p.list_items)
        .map(|i| {
            json!({"AttachmentId": format!("3f2b8c1e-5d4a-4e7b-9c61-{i:012}"), "Name": format!("photo-{i}.jpg"),
                   "MimeType": "image/jpeg", "Size": 123_456 + i, "DocumentType": "Picture", "Subtype": "Picture",
                   "CreatedDate": "2026-11-28T10:00:00Z", "PerformedBy": {"Name": "Ana Tech", "Phone": null}})
        })
        .collect();
    let sink = Sink {
        list: Bytes::from(serde_json::to_vec(&items).expect("json")),
        file: Bytes::from(vec![7u8; p.big]),
        base: Arc::new(format!("http://{addr}")),
        bytes_in: Arc::new(AtomicU64::new(0)),
    };
    let app = axum::Router::new()
        .route("/oauth/token", post(sink_token))
        .route("/Direct/api/attachments", get(sink_list).post(sink_upload))
        .route("/Direct/api/attachments/downloadUrl", get(sink_link))
        .route("/files/big", get(sink_file))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(sink.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, sink)
}
