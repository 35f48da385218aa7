//! An upstream of this test suite's own, apart from the sandbox: the
//! attachments API as far as the gateway uses it (token, list, upload, delete),
//! with answers lost on purpose after (or before) a write is applied, the way
//! they are lost over the internet. It keeps every write it received, so a test
//! checks on the upstream's side what was stored.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{Multipart, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::json;
use tokio::net::TcpListener;

/// What happens to the next write's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lose {
    /// Applied, then the connection closes without an answer.
    DropAfterApply,
    /// Applied, then a proxy's 502.
    BadGatewayAfterApply,
    /// A 502 before anything is applied.
    BadGatewayBeforeApply,
    /// Applied twice (another identical file appears at once), then dropped.
    DuplicateThenDrop,
}

#[derive(Debug, Clone)]
pub struct Held {
    pub attachment_id: String,
    pub work_order_id: i64,
    pub name: String,
    pub mime_type: String,
    pub bytes: Bytes,
    pub message_id: String,
}

#[derive(Default)]
pub struct MockState {
    next: u64,
    pub held: Vec<Held>,
    pub lose: VecDeque<Lose>,
    /// Upload requests whose body arrived whole.
    pub uploads_received: usize,
    /// Upload requests whose body did not.
    pub uploads_broken: usize,
    pub deletes_received: usize,
    /// Deletes wait this long before they apply (and answer).
    pub delete_delay: std::time::Duration,
    /// The next lists fail (500).
    pub fail_lists: usize,
    /// What the next lists answer, one entry each, in order: `None` the list,
    /// `Some(status)` that error status.
    pub list_script: VecDeque<Option<StatusCode>>,
    /// Once the next upload is applied, lists fail for this long.
    pub fail_lists_after_upload: std::time::Duration,
    fail_lists_until: Option<std::time::Instant>,
}

/// A running mock; `url` is its base (`{url}/Direct/api/…`, `{url}/oauth/token`).
pub struct LossyUpstream {
    pub url: String,
    pub state: Arc<Mutex<MockState>>,
}

impl LossyUpstream {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(MockState::default()));
        let app = axum::Router::new()
            .route("/oauth/token", post(token))
            .route(
                "/Direct/api/attachments",
                get(list).post(upload).delete(delete),
            )
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(Arc::clone(&state));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(serve(listener, app));
        Self { url, state }
    }

    /// Loses the answers of the next writes, in this order.
    pub fn lose(&self, how: &[Lose]) {
        self.state.lock().expect("mock").lose.extend(how);
    }

    pub fn held(&self, work_order_id: i64) -> Vec<Held> {
        let s = self.state.lock().expect("mock");
        s.held
            .iter()
            .filter(|h| h.work_order_id == work_order_id)
            .cloned()
            .collect()
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut MockState) -> T) -> T {
        f(&mut self.state.lock().expect("mock"))
    }

    /// Stores an attachment as if someone else had uploaded it.
    pub fn put(&self, work_order_id: i64, name: &str, mime: &str, bytes: &[u8]) -> String {
        let mut s = self.state.lock().expect("mock");
        s.next += 1;
        let id = format!("held-{}", s.next);
        s.held.push(Held {
            attachment_id: id.clone(),
            work_order_id,
            name: name.into(),
            mime_type: mime.into(),
            bytes: Bytes::copy_from_slice(bytes),
            message_id: String::new(),
        });
        id
    }
}

type St = State<Arc<Mutex<MockState>>>;

/// Marks a response whose connection must close unanswered.
#[derive(Clone, Copy)]
struct Drop;

async fn token() -> Response {
    axum::Json(json!({"access_token": "mock-token", "token_type": "bearer", "expires_in": 1199}))
        .into_response()
}

async fn list(State(st): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let wo: i64 = q
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("workorderid"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut s = st.lock().expect("mock");
    let failing = s
        .fail_lists_until
        .is_some_and(|t| std::time::Instant::now() < t);
    if let Some(status) = s.list_script.pop_front().flatten() {
        return (status, "list refused").into_response();
    }
    if s.fail_lists > 0 || failing {
        s.fail_lists = s.fail_lists.saturating_sub(1);
        return (StatusCode::INTERNAL_SERVER_ERROR, "list failed").into_response();
    }
    let items: Vec<_> = s
        .held
        .iter()
        .filter(|h| h.work_order_id == wo)
        .map(|h| {
            json!({"AttachmentId": h.attachment_id, "Name": h.name, "MimeType": h.mime_type,
                   "Size": h.bytes.len()})
        })
        .collect();
    axum::Json(items).into_response()
}

/// The form's text fields (lowercase names) and its file.
async fn form(mut m: Multipart) -> Option<(HashMap<String, String>, Option<Bytes>)> {
    let mut fields = HashMap::new();
    let mut file = None;
    while let Some(f) = m.next_field().await.ok()? {
        let name = f.name().unwrap_or_default().to_ascii_lowercase();
        if name == "file" {
            file = Some(f.bytes().await.ok()?);
        } else {
            fields.insert(name, f.text().await.ok()?);
        }
    }
    Some((fields, file))
}

/// The answer of a write just applied (`applied`), or of one lost.
fn lost_or(st: &mut MockState, how: Option<Lose>, ok: serde_json::Value) -> Response {
    match how {
        None => axum::Json(ok).into_response(),
        Some(Lose::DropAfterApply | Lose::DuplicateThenDrop) => {
            let mut r = StatusCode::OK.into_response();
            r.extensions_mut().insert(Drop);
            r
        }
        Some(Lose::BadGatewayAfterApply | Lose::BadGatewayBeforeApply) => {
            let _ = st;
            (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response()
        }
    }
}

async fn upload(State(st): St, m: Multipart) -> Response {
    let Some((fields, Some(file))) = form(m).await else {
        st.lock().expect("mock").uploads_broken += 1;
        return (StatusCode::BAD_REQUEST, "broken form").into_response();
    };
    let mut s = st.lock().expect("mock");
    s.uploads_received += 1;
    let how = s.lose.pop_front();
    if how == Some(Lose::BadGatewayBeforeApply) {
        return lost_or(&mut s, how, json!({}));
    }
    let field = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let copies = if how == Some(Lose::DuplicateThenDrop) {
        2
    } else {
        1
    };
    let mut id = String::new();
    for _ in 0..copies {
        s.next += 1;
        id = format!("att-{}", s.next);
        s.held.push(Held {
            attachment_id: id.clone(),
            work_order_id: field("workorderid").parse().unwrap_or(0),
            name: field("name"),
            mime_type: field("mimetype"),
            bytes: file.clone(),
            message_id: field("messageid"),
        });
    }
    let mid = field("messageid");
    let d = std::mem::take(&mut s.fail_lists_after_upload);
    if !d.is_zero() {
        s.fail_lists_until = Some(std::time::Instant::now() + d);
    }
    lost_or(&mut s, how, json!({"AttachmentId": id, "MessageId": mid}))
}

async fn delete(State(st): St, m: Multipart) -> Response {
    let Some((fields, _)) = form(m).await else {
        return (StatusCode::BAD_REQUEST, "broken form").into_response();
    };
    let delay = st.lock().expect("mock").delete_delay;
    tokio::time::sleep(delay).await;
    let mut s = st.lock().expect("mock");
    s.deletes_received += 1;
    let how = s.lose.pop_front();
    if how == Some(Lose::BadGatewayBeforeApply) {
        return lost_or(&mut s, how, json!({}));
    }
    let id = fields.get("attachmentid").cloned().unwrap_or_default();
    let before = s.held.len();
    s.held.retain(|h| h.attachment_id != id);
    if s.held.len() == before {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"Code": 3003, "Message": format!("Attachment {id} was not found.")})),
        )
            .into_response();
    }
    let mid = fields.get("messageid").cloned().unwrap_or_default();
    lost_or(&mut s, how, json!({"MessageId": mid}))
}

/// Serves `app`; a response marked [`Drop`] closes its connection unanswered
/// (the service fails, and hyper closes the connection).
async fn serve(listener: TcpListener, app: axum::Router) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    while let Ok((tcp, _)) = listener.accept().await {
        let svc = Dropping(app.clone());
        tokio::spawn(async move {
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(svc))
                .await;
        });
    }
}

#[derive(Clone)]
struct Dropping(axum::Router);

impl<B> tower::Service<axum::http::Request<B>> for Dropping
where
    B: axum::body::HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, std::io::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        use tower::ServiceExt;
        let app = self.0.clone();
        Box::pin(async move {
            let r = app
                .oneshot(req.map(axum::body::Body::new))
                .await
                .map_err(std::io::Error::other)?;
            if r.extensions().get::<Drop>().is_some() {
                return Err(std::io::Error::other("the answer is lost"));
            }
            Ok(r)
        })
    }
}
