//! An upstream for download tests, hand-rolled on loopback so that a body can
//! break off exactly where a test says: the token route, the download-link
//! route (its link leads back here) and the link host itself, which serves
//! ranges or ignores them (answering 200 with the whole file), states its
//! length or sends the body chunked, and records the `Range` of every request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the next file request gets.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// The head and this many bytes of the body, then the connection is closed.
    After(usize),
}

struct State {
    file: Vec<u8>,
    honour_ranges: bool,
    chunked: bool,
    /// Bodies without a length and not chunked: they end where the
    /// connection closes (so a cut reads as a clean end).
    close_delimited: bool,
    /// A range served is at most this long (a host that caps its ranges).
    max_range: Option<usize>,
    cuts: VecDeque<Cut>,
    ranges: Vec<Option<String>>,
}

pub struct LinkHost {
    /// `http://127.0.0.1:<port>`: the upstream's base for `settings_for`.
    pub uri: String,
    state: Arc<Mutex<State>>,
}

impl LinkHost {
    /// Serves `file` at the link; with `honour_ranges`, a `Range` gets a 206
    /// (or a 416 past the end), else every request gets the whole file.
    pub async fn start(file: Vec<u8>, honour_ranges: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let uri = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State {
            file,
            honour_ranges,
            chunked: false,
            close_delimited: false,
            max_range: None,
            cuts: VecDeque::new(),
            ranges: Vec::new(),
        }));
        let (s, link) = (Arc::clone(&state), format!("{uri}/blob"));
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, Arc::clone(&s), link.clone()));
            }
        });
        Self { uri, state }
    }

    /// The next file requests break off as `cuts` say, in order.
    pub fn cut_next(&self, cuts: impl IntoIterator<Item = Cut>) {
        self.state.lock().expect("lock").cuts.extend(cuts);
    }

    /// Drops the cuts not used yet: the next requests are served whole.
    pub fn heal(&self) {
        self.state.lock().expect("lock").cuts.clear();
    }

    /// Bodies sent chunked, without a length.
    pub fn set_chunked(&self, chunked: bool) {
        self.state.lock().expect("lock").chunked = chunked;
    }

    /// Bodies that end where the connection closes (no length, not chunked).
    pub fn set_close_delimited(&self) {
        self.state.lock().expect("lock").close_delimited = true;
    }

    /// Ranges served at most `n` bytes long, whatever was asked.
    pub fn cap_ranges(&self, n: usize) {
        self.state.lock().expect("lock").max_range = Some(n);
    }

    /// The `Range` header of every file request so far, in order.
    pub fn ranges_asked(&self) -> Vec<Option<String>> {
        self.state.lock().expect("lock").ranges.clone()
    }
}

/// Reads one request head (and drops its body, by `Content-Length`).
async fn read_request(sock: &mut TcpStream) -> Option<(String, Vec<(String, String)>)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut left = length.saturating_sub(head.len() - end - 4);
    while left > 0 {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Some((target, headers))
}

async fn json(sock: &mut TcpStream, body: &str) {
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(answer.as_bytes()).await;
}

/// `bytes=<first>-[<last>]` against a file of `len` bytes.
fn range(v: &str, len: usize) -> Option<(usize, usize)> {
    let (f, l) = v.trim().strip_prefix("bytes=")?.split_once('-')?;
    let first: usize = f.trim().parse().ok()?;
    let last = match l.trim() {
        "" => len.saturating_sub(1),
        l => l.parse::<usize>().ok()?.min(len.saturating_sub(1)),
    };
    Some((first, last))
}

async fn serve(mut sock: TcpStream, state: Arc<Mutex<State>>, link: String) {
    let Some((target, headers)) = read_request(&mut sock).await else {
        return;
    };
    if target.starts_with("/oauth/token") {
        json(&mut sock, r#"{"access_token":"t","expires_in":1199}"#).await;
        return;
    }
    if target.contains("/attachments/downloadUrl") {
        json(&mut sock, &format!(r#"{{"DownloadUrl":"{link}"}}"#)).await;
        return;
    }
    if !target.starts_with("/blob") {
        let _ = sock
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    }
    let asked = headers
        .iter()
        .find(|(k, _)| k == "range")
        .map(|(_, v)| v.clone());
    let answer = {
        let mut s = state.lock().expect("lock");
        s.ranges.push(asked.clone());
        let len = s.file.len();
        let cut = s.cuts.pop_front();
        let wanted = asked
            .as_deref()
            .filter(|_| s.honour_ranges)
            .and_then(|v| range(v, len));
        match wanted {
            Some((first, _)) if first >= len => Err(len),
            Some((first, last)) => {
                let last = s.max_range.map_or(last, |n| last.min(first + n.max(1) - 1));
                Ok((
                    s.file[first..=last.max(first)].to_vec(),
                    format!("206 Partial Content\r\ncontent-range: bytes {first}-{last}/{len}"),
                    cut,
                    s.chunked,
                ))
            }
            None => Ok((s.file.clone(), "200 OK".to_string(), cut, s.chunked)),
        }
        .map(|a| (a, s.close_delimited))
    };
    let ((body, status, cut, chunked), close_delimited) = match answer {
        Ok(a) => a,
        Err(len) => {
            let answer = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */{len}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = sock.write_all(answer.as_bytes()).await;
            return;
        }
    };
    let framing = if close_delimited {
        "x-framing: close".to_string()
    } else if chunked {
        "transfer-encoding: chunked".to_string()
    } else {
        format!("content-length: {}", body.len())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/octet-stream\r\ncontent-disposition: attachment; filename=\"blob.bin\"\r\naccept-ranges: bytes\r\n{framing}\r\nconnection: close\r\n\r\n"
    );
    if sock.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let send = match cut {
        Some(Cut::After(n)) => n.min(body.len()),
        None => body.len(),
    };
    for piece in body[..send].chunks(16 * 1024) {
        let ok = if chunked {
            let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
            framed.extend_from_slice(piece);
            framed.extend_from_slice(b"\r\n");
            sock.write_all(&framed).await
        } else {
            sock.write_all(piece).await
        };
        if ok.is_err() {
            return;
        }
    }
    if cut.is_none() && chunked {
        let _ = sock.write_all(b"0\r\n\r\n").await;
    }
    let _ = sock.flush().await;
    if cut.is_some() {
        // The bytes sent arrive; then the connection ends mid-body.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
