//! The binary as an operator runs it: settings layering (defaults < file < env <
//! flags), errors naming the setting, secret files, and `--sandbox` serving until
//! SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use attachment_gateway::proto::ListAttachmentsRequest;

const BIN: &str = env!("CARGO_BIN_EXE_attachment-gateway");

fn gateway() -> Command {
    let mut c = Command::new(BIN);
    // Start from a clean environment of gateway settings.
    for (k, _) in std::env::vars() {
        if k.starts_with("ATTACHMENT_GATEWAY_") {
            c.env_remove(k);
        }
    }
    c
}

fn output(c: &mut Command) -> (i32, String, String) {
    let out = c.output().expect("run the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A file in a scratch directory; the directory goes when the guard drops.
fn temp_file(name: &str, content: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("ag-test-")
        .tempdir()
        .expect("scratch dir");
    let p = dir.path().join(name);
    std::fs::write(&p, content).expect("write");
    (dir, p)
}

#[test]
fn missing_credentials_fail_at_start_naming_the_setting() {
    let (code, _, err) = output(gateway().arg("--check-config"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("upstream.client_id"), "{err}");
    assert!(
        err.contains("ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_ID"),
        "{err}"
    );
}

#[test]
fn layers_apply_in_order_and_secrets_stay_hidden() {
    let (_tmp, file) = temp_file(
        "gateway.toml",
        r#"
listen = "127.0.0.1:7001"
[upstream]
client_id = "from-file"
request_timeout = "12s"
[limits]
max_upload_bytes = 1000000
"#,
    );
    let (_tmp, secret) = temp_file("secret", "s3cret-from-file\n");
    let (code, out, err) = output(
        gateway()
            .args(["--check-config", "--config"])
            .arg(&file)
            .args([
                "--listen",
                "127.0.0.1:7003",
                "--admin-listen",
                "127.0.0.1:7100",
            ])
            .env("ATTACHMENT_GATEWAY_LISTEN", "127.0.0.1:7002")
            .env("ATTACHMENT_GATEWAY_AUTH__ALLOW_UNAUTHENTICATED", "true")
            .env("ATTACHMENT_GATEWAY_LIMITS__MAX_UPLOAD_BYTES", "2000000")
            .env("ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_SECRET_FILE", &secret),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(r#"listen = "127.0.0.1:7003""#),
        "flag wins: {out}"
    );
    assert!(
        out.contains("max_upload_bytes = 2000000"),
        "env beats file: {out}"
    );
    assert!(
        out.contains(r#"client_id = "from-file""#),
        "file beats default: {out}"
    );
    assert!(out.contains(r#"request_timeout = "12s""#), "{out}");
    assert!(
        !out.contains("s3cret-from-file"),
        "the secret is never printed: {out}"
    );
    assert!(out.contains(r#"client_secret = "<redacted>""#), "{out}");
}

#[test]
fn bad_values_and_unknown_keys_are_named() {
    let (code, _, err) = output(
        gateway()
            .args(["--check-config", "--sandbox"])
            .env("ATTACHMENT_GATEWAY_LIMITS__MAX_UPLOAD_BYTES", "lots"),
    );
    assert_eq!(code, 2);
    assert!(
        err.to_lowercase().contains("limits.max_upload_bytes"),
        "{err}"
    );

    let (_tmp, file) = temp_file("typo.toml", "[upstream]\nbase_ulr = \"https://x\"\n");
    let (code, _, err) = output(
        gateway()
            .args(["--check-config", "--sandbox", "--config"])
            .arg(&file),
    );
    assert_eq!(code, 2);
    assert!(err.contains("base_ulr"), "{err}");

    let (code, _, err) = output(
        gateway()
            .args(["--check-config", "--sandbox"])
            .env("ATTACHMENT_GATEWAY_UPSTREAM__REQUEST_TIMEOUT", "0s"),
    );
    assert_eq!(code, 2);
    assert!(err.contains("upstream.request_timeout"), "{err}");

    let (code, _, err) = output(gateway().args([
        "--check-config",
        "--sandbox",
        "--upstream-base-url",
        "not a url",
    ]));
    assert_eq!(code, 2);
    assert!(err.contains("upstream.base_url"), "{err}");

    let (code, _, err) =
        output(gateway().args(["--check-config", "--config", "/nonexistent/gw.toml"]));
    assert_eq!(code, 2);
    assert!(err.contains("--config"), "{err}");

    let (_tmp, secret) = temp_file("both", "x");
    let (code, _, err) = output(
        gateway()
            .args(["--check-config"])
            .env("ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_ID", "id")
            .env("ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_SECRET", "y")
            .env("ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_SECRET_FILE", &secret)
            .env("ATTACHMENT_GATEWAY_AUTH__ALLOW_UNAUTHENTICATED", "true"),
    );
    assert_eq!(code, 2);
    assert!(err.contains("client_secret_file"), "{err}");
}

/// Binds the default admin address, so the gateway finds it taken. When the bind
/// fails, another process already holds it: taken either way.
fn hold_default_admin_port() -> Option<std::net::TcpListener> {
    std::net::TcpListener::bind("127.0.0.1:9090").ok()
}

/// Reads the banner from a sandbox gateway's stdout: the gRPC address and the
/// whole text.
fn read_banner(stdout: std::process::ChildStdout) -> (std::net::SocketAddr, String) {
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = String::new();
    while let Some(Ok(line)) = lines.next() {
        banner.push_str(&line);
        banner.push('\n');
        if let Some(rest) = line.strip_prefix("attachment-gateway (sandbox) serving gRPC on ") {
            let addr: std::net::SocketAddr = rest.trim().parse().expect("addr");
            // Keep reading the rest of the banner, to its last line.
            for l in lines.by_ref().map_while(Result::ok) {
                banner.push_str(&l);
                banner.push('\n');
                if l.starts_with("stop with Ctrl-C") {
                    break;
                }
            }
            return (addr, banner);
        }
    }
    panic!("no banner: {banner}");
}

#[test]
fn a_digits_only_secret_from_the_environment_is_accepted_and_never_printed() {
    let (code, out, err) = output(
        gateway()
            .arg("--check-config")
            .env("ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_ID", "0042")
            .env("ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_SECRET", "981273645501")
            .env("ATTACHMENT_GATEWAY_AUTH__ALLOW_UNAUTHENTICATED", "true"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("981273645501") && !err.contains("981273645501"));
    assert!(out.contains(r#"client_id = "0042""#), "verbatim: {out}");
    assert!(out.contains(r#"client_secret = "<redacted>""#), "{out}");
}

#[test]
fn check_config_never_prints_credentials_in_urls() {
    let (code, out, err) = output(
        gateway()
            .args(["--check-config", "--sandbox", "--upstream-base-url"])
            .arg("https://svc:hunter2@api.example.test/Direct")
            .env(
                "ATTACHMENT_GATEWAY_UPSTREAM__TOKEN_URL",
                "https://svc:hunter3@auth.example.test/OAuth/Token",
            ),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("hunter2") && !out.contains("hunter3"),
        "{out}"
    );
    assert!(
        out.contains(r#"base_url = "https://<redacted>@api.example.test/Direct""#),
        "{out}"
    );
}

/// Credentials from the environment reach the token endpoint exactly as written:
/// not read as numbers (`0042` is not 42) or tables.
#[tokio::test]
async fn credentials_from_the_environment_reach_the_token_endpoint_verbatim() {
    use wiremock::matchers::{body_string_contains, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(body_string_contains("client_id=0042&"))
        .and(body_string_contains("client_secret=%7Ba%3D1%7D"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "t0k", "expires_in": 1199})),
        )
        .expect(1)
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([])))
        .mount(&upstream)
        .await;
    let base = upstream.uri();
    let mut child = gateway()
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--upstream-base-url", &format!("{base}/Direct")])
        .env(
            "ATTACHMENT_GATEWAY_UPSTREAM__TOKEN_URL",
            format!("{base}/oauth/token"),
        )
        .env("ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_ID", "0042")
        .env("ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_SECRET", "{a=1}")
        .env("ATTACHMENT_GATEWAY_AUTH__ALLOW_UNAUTHENTICATED", "true")
        .env("ATTACHMENT_GATEWAY_TELEMETRY__ADMIN_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let addr = listening_addr(&mut child).await;
    let mut client = crate::common::connect(addr).await;
    let list = client
        .list_attachments(ListAttachmentsRequest {
            work_order_id: 7,
            ..Default::default()
        })
        .await;
    let _ = child.kill();
    let _ = child.wait();
    list.expect("the token endpoint got the credentials as written");
    upstream.verify().await;
}

/// Reads a JSON-logging gateway's stderr until its `listening` line; keeps
/// draining it afterwards.
async fn listening_addr(child: &mut std::process::Child) -> std::net::SocketAddr {
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("attachment-gateway listening")
                && let Some(tx) = tx.take()
            {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
            }
        }
    });
    tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
        .await
        .expect("join")
        .expect("the gateway said where it listens")
        .parse()
        .expect("addr")
}

#[tokio::test]
async fn sandbox_mode_serves_and_stops_on_sigterm() {
    // The default admin port is taken (9090 is Prometheus's default too): the
    // sandbox must serve anyway, with metrics on a free port it names.
    let _held = hold_default_admin_port();
    let mut child = tokio::task::spawn_blocking(|| {
        gateway()
            .args([
                "--sandbox",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    })
    .await
    .expect("join");
    let stdout = child.stdout.take().expect("stdout");
    let (addr, banner) = tokio::task::spawn_blocking(move || read_banner(stdout))
        .await
        .expect("join");
    let metrics_url = banner
        .lines()
        .find_map(|l| l.strip_prefix("metrics: "))
        .unwrap_or_else(|| panic!("the banner names the metrics address: {banner}"));
    assert!(
        !metrics_url.contains(":9090/"),
        "a free port, not the taken default: {banner}"
    );
    let metrics = http_get(metrics_url).await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(banner.contains("1003 (Rejected)"), "{banner}");
    assert!(banner.contains("grpcurl -plaintext"), "{banner}");
    assert!(banner.contains("webhooks: http://127.0.0.1:"), "{banner}");
    assert!(
        banner.contains("/sandbox/customer/work-orders/1001/attachments"),
        "{banner}"
    );

    let mut client = crate::common::connect(addr).await;
    let list = client
        .list_attachments(ListAttachmentsRequest {
            work_order_id: 1001,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.attachments.len(), 1);

    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if let Some(s) = child.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return (s, err);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("the gateway did not stop on SIGTERM");
    })
    .await
    .expect("join");
    assert!(exit.0.success(), "exit {:?}: {}", exit.0, exit.1);
    // JSON logs, one object per line, with the shutdown recorded.
    let lines: Vec<&str> = exit.1.lines().collect();
    assert!(lines.iter().all(|l| l.starts_with('{')), "{}", exit.1);
    assert!(exit.1.contains("shutdown requested"), "{}", exit.1);
    // The call's access log line carries its span: trace id, RPC, caller, work order.
    let line = lines
        .iter()
        .find(|l| l.contains("call finished") && l.contains("ListAttachments"))
        .unwrap_or_else(|| panic!("no access log line: {}", exit.1));
    let v: serde_json::Value = serde_json::from_str(line).expect("json");
    let span = &v["span"];
    assert_eq!(span["rpc.method"], "ListAttachments", "{line}");
    assert_eq!(span["work_order_id"], 1001, "{line}");
    assert_eq!(span["caller"], "anonymous:anonymous", "{line}");
    assert_eq!(span["trace_id"].as_str().map(str::len), Some(32), "{line}");
    assert_eq!(v["code"], "Ok", "{line}");
    assert!(!exit.1.contains("sandbox-secret"), "no secret in logs");
}

/// A minimal HTTP/1.1 GET over loopback, answer as text.
async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// Runs the binary with `args` until it exits (it must, within 20 s).
fn run_to_exit(args: &[&str]) -> (i32, String, String) {
    let mut child = gateway()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    for _ in 0..400 {
        if child.try_wait().expect("wait").is_some() {
            let out = child.wait_with_output().expect("output");
            return (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the gateway kept running: {args:?}");
}

#[test]
fn an_explicit_admin_address_that_is_taken_stops_the_gateway_before_any_banner() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, out, err) = run_to_exit(&[
        "--sandbox",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        &addr,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on the admin address {addr}")),
        "{err}"
    );
    assert!(
        err.contains("--admin-listen"),
        "says how to change it: {err}"
    );
    assert!(!out.contains("serving"), "no banner: {out}");
}

#[test]
fn a_taken_grpc_address_stops_the_gateway_before_any_banner() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, out, err) = run_to_exit(&[
        "--sandbox",
        "--listen",
        &addr,
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(!out.contains("serving"), "no banner: {out}");
}

#[tokio::test]
async fn no_secret_reaches_the_logs_even_at_debug() {
    use attachment_gateway::client::{GatewayClient, NewUpload};
    use std::io::Read;
    let mut child = gateway()
        .args([
            "--sandbox",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env("ATTACHMENT_GATEWAY_TELEMETRY__ADMIN_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Drain stderr all along (a full pipe would stall the gateway).
    let mut stderr = child.stderr.take().expect("stderr");
    let logs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let stdout = child.stdout.take().expect("stdout");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep reading stdout to its end, as a terminal would.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("attachment-gateway (sandbox) serving gRPC on ") {
                let _ = addr_tx.send(rest.trim().to_string());
            }
        }
    });
    let addr = tokio::task::spawn_blocking(move || {
        addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("banner")
    })
    .await
    .expect("join");

    let client = GatewayClient::builder(format!("http://{addr}"))
        .connect()
        .await
        .expect("connect");
    let dir = tempfile::Builder::new()
        .prefix("ag-secret-")
        .tempdir()
        .expect("scratch dir");
    let file = dir.path().join("evidence.txt");
    std::fs::write(&file, b"secret-free bytes").expect("write");
    let up = match client
        .upload_file(&file, NewUpload::new(1001, "Auditor"))
        .await
    {
        Ok(u) => u,
        Err(e) => {
            let _ = child.kill();
            let text = logs.join().unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            panic!(
                "upload: {e:?}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    };
    client.list(1001).await.expect("list");
    let link = client
        .download_url(1001, &up.attachment_id)
        .await
        .expect("url");
    let sig = link
        .url
        .split("sig=")
        .nth(1)
        .expect("signed link")
        .to_string();
    let mut out = Vec::new();
    client
        .download_to(1001, &up.attachment_id, &mut out, None)
        .await
        .expect("download");
    client
        .delete(1001, &up.attachment_id)
        .await
        .expect("delete");
    let _ = client.list(0).await; // an error path too

    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let logs = logs.join().expect("logs");
    assert!(
        logs.lines().count() > 50,
        "debug logs were produced: {}",
        logs.lines().count()
    );
    for (what, secret) in [
        ("client secret", attachment_gateway::sandbox::CLIENT_SECRET),
        // Every token of CorrigoPro's shape (the sandbox's access tokens
        // are) holds this separator; nothing else the gateway logs does.
        ("access token", "<---->"),
        ("download link signature", sig.as_str()),
        ("download link", link.url.as_str()),
    ] {
        assert!(!logs.contains(secret), "the {what} appears in the logs");
    }
}

/// Without an OTLP endpoint no OpenTelemetry spans are made, yet the trace context
/// still flows: the call's log line carries the caller's trace id, and the upstream
/// gets a `traceparent` of the same trace with the gateway's own span id and the
/// caller's flags and `tracestate`. A call without one starts a trace of its own.
#[tokio::test]
async fn without_an_exporter_the_callers_trace_reaches_logs_and_upstream() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "t0k", "expires_in": 1199})),
        )
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([])))
        .mount(&upstream)
        .await;
    let base = upstream.uri();
    let mut child = tokio::task::spawn_blocking(move || {
        gateway()
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--upstream-base-url", &format!("{base}/Direct")])
            .env(
                "ATTACHMENT_GATEWAY_UPSTREAM__TOKEN_URL",
                format!("{base}/oauth/token"),
            )
            .env("ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_ID", "trace-test")
            .env("ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_SECRET", "trace-secret")
            .env("ATTACHMENT_GATEWAY_AUTH__ALLOW_UNAUTHENTICATED", "true")
            .env("ATTACHMENT_GATEWAY_TELEMETRY__ADMIN_LISTEN", "127.0.0.1:0")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    })
    .await
    .expect("join");
    // Read the logs until the listening line, then keep draining them.
    let stderr = child.stderr.take().expect("stderr");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let logs = std::thread::spawn(move || {
        let mut all = String::new();
        let mut addr_tx = Some(addr_tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("attachment-gateway listening")
                && let Some(tx) = addr_tx.take()
            {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr: std::net::SocketAddr =
        tokio::task::spawn_blocking(move || addr_rx.recv_timeout(Duration::from_secs(20)))
            .await
            .expect("join")
            .expect("the gateway said where it listens")
            .parse()
            .expect("addr");
    let mut client = crate::common::connect(addr).await;

    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut req = tonic::Request::new(ListAttachmentsRequest {
        work_order_id: 1001,
        ..Default::default()
    });
    let md = req.metadata_mut();
    md.insert(
        "traceparent",
        format!("00-{caller_trace}-b7ad6b7169203331-01")
            .parse()
            .expect("ascii"),
    );
    md.insert("tracestate", "vendor=opaque".parse().expect("ascii"));
    client
        .list_attachments(req)
        .await
        .expect("list in the caller's trace");
    client
        .list_attachments(ListAttachmentsRequest {
            work_order_id: 1002,
            ..Default::default()
        })
        .await
        .expect("list in a trace of its own");

    let sent: Vec<(String, Option<String>)> = upstream
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter(|r| r.url.path() == "/Direct/api/attachments")
        .map(|r| {
            let h = |n: &str| {
                r.headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            (h("traceparent").unwrap_or_default(), h("tracestate"))
        })
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let parts: Vec<&str> = sent[0].0.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent:?}");
    assert_eq!(parts[1], caller_trace, "the caller's trace goes upstream");
    assert_ne!(parts[2], "b7ad6b7169203331", "the gateway's own span id");
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "01", "the caller's sampling decision");
    assert_eq!(sent[0].1.as_deref(), Some("vendor=opaque"));
    let own: Vec<&str> = sent[1].0.split('-').collect();
    assert_eq!(own.len(), 4, "{sent:?}");
    assert!(
        own[1].len() == 32 && own[1] != caller_trace && own[1] != "0".repeat(32),
        "a new trace: {sent:?}"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let logs = logs.join().unwrap_or_default();
    let finished: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.contains("call finished"))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let trace_of = |wo: i64| {
        finished
            .iter()
            .find(|v| v["span"]["work_order_id"] == wo)
            .and_then(|v| v["span"]["trace_id"].as_str().map(str::to_string))
    };
    assert_eq!(trace_of(1001).as_deref(), Some(caller_trace), "{logs}");
    assert_eq!(trace_of(1002).as_deref(), Some(own[1]), "{logs}");
}

/// A gateway whose upstream serves one attachment (id `x`, work order 7) with
/// `disposition` as its Content-Disposition, the bytes delayed by `delay`.
async fn hostile_download_upstream(
    disposition: &str,
    delay: Duration,
) -> (wiremock::MockServer, crate::common::Gateway) {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "t", "expires_in": 1199})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments/downloadUrl"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"DownloadUrl": format!("{}/blob", server.uri())}),
            ),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/blob"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-disposition", disposition)
                .set_body_bytes(b"the bytes".to_vec())
                .set_delay(delay),
        )
        .mount(&server)
        .await;
    let gw = crate::common::Gateway::start(crate::common::settings_for(&server.uri())).await;
    (server, gw)
}

fn cli(gw: &crate::common::Gateway, args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    output(
        gateway()
            .arg("download")
            .args(["--addr", &format!("http://{}", gw.addr)])
            .args(["--work-order", "7", "x"])
            .args(args)
            .current_dir(dir),
    )
}

/// The CLI never replaces a file silently (the name may come from the storage),
/// shows names from the wire escaped, and keeps them inside the folder.
#[tokio::test(flavor = "multi_thread")]
async fn cli_downloads_refuse_to_overwrite_and_print_names_safely() {
    let (_server, gw) = hostile_download_upstream(
        "attachment; filename*=UTF-8''..%2F..%2Fx%1B%5B2J%1B%5D0%3Bpwned%07.txt",
        Duration::ZERO,
    )
    .await;
    let dir = crate::common::scratch("cli-dl");
    let d = dir.path();
    let (code, out, err) = cli(&gw, &[], d);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    let files: Vec<String> = std::fs::read_dir(d)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        !files[0].contains('\u{1b}') && !files[0].contains('/'),
        "{files:?}"
    );
    // Again into the same place: refused, the file untouched.
    std::fs::write(d.join(&files[0]), b"mine").expect("write");
    let (code, _, err) = cli(&gw, &[], d);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(d.join(&files[0])).expect("read"), b"mine");
    let leftovers = std::fs::read_dir(d).expect("dir").count();
    assert_eq!(leftovers, 1, "no temporary file left behind");
    // With --force it is replaced.
    let (code, _, err) = cli(&gw, &["--force", "--out", &files[0]], d);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(d.join(&files[0])).expect("read"),
        b"the bytes"
    );
}

/// Ctrl-C during a download removes the temporary file.
#[tokio::test(flavor = "multi_thread")]
async fn cli_download_interrupted_leaves_nothing_behind() {
    let (_server, gw) =
        hostile_download_upstream("attachment; filename=\"slow.txt\"", Duration::from_secs(10))
            .await;
    let dir = crate::common::scratch("cli-int");
    let child = gateway()
        .arg("download")
        .args(["--addr", &format!("http://{}", gw.addr)])
        .args(["--work-order", "7", "x"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait for the temporary file, then interrupt.
    let d = dir.path().to_path_buf();
    for _ in 0..100 {
        if std::fs::read_dir(&d).expect("dir").count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::read_dir(&d).expect("dir").count(),
        1,
        "a .part file"
    );
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(&d).expect("dir").count(),
        0,
        "the temporary file is gone"
    );
}

/// Runs `download` of work order `wo`'s `id` in `dir`, off the runtime's
/// threads (the gateway it talks to runs on them).
async fn cli_download(
    addr: std::net::SocketAddr,
    wo: i64,
    id: &str,
    args: &[&str],
    dir: &std::path::Path,
) -> (i32, String, String) {
    let mut c = gateway();
    c.arg("download")
        .args(["--addr", &format!("http://{addr}")])
        .args(["--work-order", &wo.to_string(), id])
        .args(args)
        .current_dir(dir);
    tokio::task::spawn_blocking(move || output(&mut c))
        .await
        .expect("join")
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `download --resume` keeps what a failed run received and continues from
/// its last byte; without it a failed run leaves nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn cli_download_resume_continues_a_kept_partial_file() {
    use crate::common::link_host::{Cut, LinkHost};
    let data = crate::common::pattern(1_000_000, 6);
    let host = LinkHost::start(data.clone(), true).await;
    let gw = crate::common::Gateway::start(crate::common::settings_for(&host.uri)).await;
    let dir = crate::common::scratch("cli-resume");
    let d = dir.path();
    let breaks = || {
        [
            Cut::After(400_000),
            Cut::After(0),
            Cut::After(0),
            Cut::After(0),
        ]
    };

    // A partial file planted by someone else is refused, never written
    // through: a symbolic link (to a file of the user's), or a file that
    // others may write.
    let part = d.join(".attachment-7-x.part");
    let victim = d.join("victim.txt");
    std::fs::write(&victim, b"mine").expect("write");
    std::os::unix::fs::symlink(&victim, &part).expect("symlink");
    let (code, _, err) = cli_download(gw.addr, 7, "x", &["--resume"], d).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"mine");
    std::fs::remove_file(&part).expect("unlink");
    std::fs::remove_file(&victim).expect("unlink");
    std::fs::write(&part, b"planted").expect("write");
    std::fs::set_permissions(&part, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .expect("chmod");
    let (code, _, err) = cli_download(gw.addr, 7, "x", &["--resume"], d).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("writable by others"), "{err}");
    assert_eq!(std::fs::read(&part).expect("planted"), b"planted");
    std::fs::remove_file(&part).expect("unlink");
    assert!(
        host.ranges_asked().is_empty(),
        "nothing was downloaded for them"
    );

    // Without --resume: the run fails, nothing is kept.
    host.cut_next(breaks());
    let (code, _, err) = cli_download(gw.addr, 7, "x", &[], d).await;
    assert_ne!(code, 0, "{err}");
    assert!(names_in(d).is_empty(), "{:?}", names_in(d));
    host.heal();

    // With --resume: the bytes received are kept, and the error says where.
    host.cut_next(breaks());
    let (code, _, err) = cli_download(gw.addr, 7, "x", &["--resume"], d).await;
    assert_ne!(code, 0, "{err}");
    assert_eq!(names_in(d), vec![".attachment-7-x.part".to_string()]);
    assert!(
        err.contains(".attachment-7-x.part") && err.contains("--resume"),
        "{err}"
    );
    let kept = std::fs::read(d.join(".attachment-7-x.part")).expect("partial");
    assert!(
        kept == data[..400_000],
        "the first 400000 bytes, {} kept",
        kept.len()
    );
    host.heal();

    // Again with --resume: from byte 400000, into its own name, the partial gone.
    let before = host.ranges_asked().len();
    let (code, out, err) = cli_download(gw.addr, 7, "x", &["--resume"], d).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("blob.bin"), "{out}");
    assert_eq!(
        host.ranges_asked()[before..],
        [Some("bytes=400000-".to_string())],
        "one request, from the kept length"
    );
    assert_eq!(names_in(d), vec!["blob.bin".to_string()]);
    assert!(std::fs::read(d.join("blob.bin")).expect("file") == data);

    // No-clobber still holds: the finished file is not replaced, the new
    // partial is kept for a run with --force or --out.
    let (code, _, err) = cli_download(gw.addr, 7, "x", &["--resume"], d).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--force"), "{err}");
    assert!(std::fs::read(d.join("blob.bin")).expect("file") == data);
    let (code, _, err) = cli_download(gw.addr, 7, "x", &["--resume", "--out", "-"], d).await;
    assert_eq!(code, 2, "standard output cannot be resumed: {err}");
}

/// A kept partial file that already holds every byte is finished from the
/// list; one longer than the attachment is refused, and left for the user.
#[tokio::test(flavor = "multi_thread")]
async fn cli_download_resume_of_a_complete_or_foreign_partial_file() {
    let h = crate::common::with_sandbox().await;
    let mut c = h.gateway.client();
    let data = crate::common::pattern(50_000, 8);
    let msgs =
        crate::common::upload_messages(crate::common::metadata(1001, "done.bin"), &data, 16 * 1024);
    let id = c
        .upload_attachment(tokio_stream::iter(msgs))
        .await
        .expect("upload")
        .into_inner()
        .attachment_id;
    let dir = crate::common::scratch("cli-resume-done");
    let d = dir.path();
    let part = d.join(format!(".attachment-1001-{id}.part"));
    std::fs::write(&part, &data).expect("write");
    let (code, _, err) = cli_download(h.gateway.addr, 1001, &id, &["--resume"], d).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(names_in(d), vec!["done.bin".to_string()]);
    assert!(std::fs::read(d.join("done.bin")).expect("file") == data);

    let mut longer = data.clone();
    longer.extend_from_slice(b"more");
    std::fs::write(&part, &longer).expect("write");
    let (code, _, err) = cli_download(
        h.gateway.addr,
        1001,
        &id,
        &["--resume", "--out", "again.bin"],
        d,
    )
    .await;
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("not a part of this attachment"), "{err}");
    assert_eq!(std::fs::read(&part).expect("kept").len(), longer.len());
}

#[test]
fn webhook_settings_say_what_verification_needs() {
    let creds = [
        ("ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_ID", "id"),
        ("ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_SECRET", "secret"),
        ("ATTACHMENT_GATEWAY_AUTH__ALLOW_UNAUTHENTICATED", "true"),
    ];
    // A webhook port without CorrigoPro's certificate: refused, naming the setting.
    let (code, _, err) = output(
        gateway()
            .args(["--check-config", "--webhook-listen", "127.0.0.1:0"])
            .envs(creds),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("webhooks.certificate_file"), "{err}");
    // The environment variable the contract names, and shared-secret without its file.
    let (code, _, err) = output(
        gateway()
            .arg("--check-config")
            .envs(creds)
            .env("ATTACHMENT_GATEWAY_WEBHOOKS__LISTEN", "127.0.0.1:0")
            .env("ATTACHMENT_GATEWAY_WEBHOOKS__VERIFY", "shared-secret"),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("webhooks.shared_secret_file"), "{err}");
    // The sandbox trusts its emulator unless told how to verify.
    let (code, out, err) = output(gateway().args(["--check-config", "--sandbox"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[webhooks]"), "{out}");
    // The readings are tried by themselves unless pinned; the tenant is bound by
    // the environment variable the contract names, and a blank one is refused.
    assert!(out.contains("signed_part = \"auto\""), "{out}");
    assert!(out.contains("signature_algorithm = \"auto\""), "{out}");
    let (code, out, err) = output(gateway().args(["--check-config", "--sandbox"]).env(
        "ATTACHMENT_GATEWAY_WEBHOOKS__EXPECTED_NAME",
        "integration-42",
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("expected_name = \"integration-42\""), "{out}");
    let (code, _, err) = output(
        gateway()
            .args(["--check-config", "--sandbox"])
            .env("ATTACHMENT_GATEWAY_WEBHOOKS__EXPECTED_NAME", "  "),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("webhooks.expected_name"), "{err}");
    let (code, _, err) = output(
        gateway()
            .args(["--check-config", "--sandbox"])
            .env("ATTACHMENT_GATEWAY_WEBHOOKS__VERIFY", "signed-token"),
    );
    assert_eq!(
        code, 2,
        "explicit verification needs its certificate: {err}"
    );
    let (code, _, err) = output(
        gateway()
            .args(["--check-config", "--sandbox"])
            .env("ATTACHMENT_GATEWAY_WEBHOOKS__VERIFY", "sometimes"),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("webhooks.verify") || err.contains("sometimes"),
        "{err}"
    );
}

#[test]
fn shared_state_settings_are_checked_redacted_and_required_at_start() {
    let (code, out, err) = output(gateway().args(["--check-config", "--sandbox"]).env(
        "ATTACHMENT_GATEWAY_SHARED_STATE__REDIS_URL",
        "redis://:hunter2secret@127.0.0.1:1/0",
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("hunter2secret"),
        "the password is never printed: {out}"
    );
    let (code, _, err) = output(gateway().args(["--check-config", "--sandbox"]).env(
        "ATTACHMENT_GATEWAY_SHARED_STATE__REDIS_URL",
        "http://127.0.0.1:1",
    ));
    assert_eq!(code, 2);
    assert!(err.contains("shared_state.redis_url"), "{err}");
    // A Redis that cannot be reached: the gateway does not start (a replica that
    // cannot share state must not serve as if it did).
    let (code, _, err) = output(
        gateway()
            .args([
                "--sandbox",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .env(
                "ATTACHMENT_GATEWAY_SHARED_STATE__REDIS_URL",
                "redis://127.0.0.1:1/0",
            )
            .env("ATTACHMENT_GATEWAY_SHARED_STATE__COMMAND_TIMEOUT", "200ms"),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("shared state") && err.contains("Redis"),
        "{err}"
    );
}

/// `webhook-token check` with `token` on stdin; (exit code, stdout, stderr).
fn check_token(args: &[&str], token: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = gateway()
        .args(["webhook-token", "check"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(token.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_token_checker_names_the_reading_the_claims_and_the_verdict() {
    use attachment_gateway::sandbox::notifier::{
        AUDIENCE, INTEGRATION_NAME, SignHash, SignedOver, Signer, TokenShape,
    };
    use attachment_gateway::sandbox::{NOTIFIER_CERT_PEM, NOTIFIER_KEY_PEM};
    use std::time::SystemTime;
    let (_dir, cert) = temp_file("corrigopro.pem", NOTIFIER_CERT_PEM);
    let cert = cert.to_str().expect("utf-8").to_string();
    let signer = Signer::from_pem(NOTIFIER_KEY_PEM).expect("key");
    let ttl = Duration::from_secs(1200);
    let shape = TokenShape {
        gzip: true,
        signed_over: SignedOver::DataBytes,
        hash: SignHash::Sha512,
        ..TokenShape::default()
    };
    let good = signer
        .token_shaped(AUDIENCE, SystemTime::now(), ttl, &shape)
        .expect("token");
    let signature = good.split_once("<---->").expect("shape").1;

    // Verifies: the reading, the claims, the verdict; never the signature.
    let (code, out, err) = check_token(
        &["--certificate", &cert],
        &format!("Authorization: Bearer {good}\n"),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("verifies: data-bytes, rsa-sha512 (certificate 1 of 1"),
        "{out}"
    );
    assert!(
        out.contains(r#"webhooks.signed_part = "data-bytes""#),
        "{out}"
    );
    assert!(out.contains("claims identity, gzip JSON"), "{out}");
    assert!(
        out.contains(&format!("name       {INTEGRATION_NAME}")),
        "{out}"
    );
    assert!(out.contains("audience   CorrigoProDirect"), "{out}");
    assert!(out.contains("verdict    verifies now"), "{out}");
    assert!(!out.contains(signature) && !err.contains(signature));

    // Bound to another integration: refused, exit 2, the reason in words.
    let (code, out, _) = check_token(
        &["--certificate", &cert, "--expected-name", "someone-else"],
        &good,
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("refused: the token was issued for another integration (refused_wrong_name)"),
        "{out}"
    );

    // Expired.
    let old = signer
        .token(
            AUDIENCE,
            SystemTime::now() - Duration::from_secs(7200),
            ttl,
            false,
        )
        .expect("token");
    let (code, out, _) = check_token(&["--certificate", &cert, "--json"], &old);
    assert_eq!(code, 2, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["verifies"], false);
    assert_eq!(v["reason"], "refused_expired");
    assert_eq!(v["reading"]["signature_algorithm"], "rsa-sha256");
    assert_eq!(v["claims"]["name"], INTEGRATION_NAME);

    // Another key: the signature does not verify; the claims are shown as claimed.
    let other = Signer::from_pem(include_str!("../fixtures/webhooks/other-key.pem")).expect("key");
    let forged = other
        .token(AUDIENCE, SystemTime::now(), ttl, false)
        .expect("token");
    let (code, out, _) = check_token(&["--certificate", &cert], &forged);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("does not verify with the 1 certificate(s)"),
        "{out}"
    );
    assert!(out.contains("(as the unverified token claims)"), "{out}");
    assert!(out.contains("(refused_bad_signature)"), "{out}");

    // A pinned reading that is not the token's.
    let (code, out, _) = check_token(
        &[
            "--certificate",
            &cert,
            "--signed-part",
            "data-text",
            "--signature-algorithm",
            "rsa-sha256",
        ],
        &good,
    );
    assert_eq!(code, 2, "{out}");

    // Not a token at all, and a certificate file that is not one.
    let (code, out, _) = check_token(&["--certificate", &cert], "hello\n");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("refused_malformed"), "{out}");
    let (_d, not_cert) = temp_file("x.pem", "not a certificate");
    let (code, _, err) = check_token(&["--certificate", not_cert.to_str().expect("utf-8")], &good);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("webhooks.certificate_file"), "{err}");
}

/// The audit trail: one JSON line on the `audit` target per write that reached
/// the upstream (or was answered from its record) and per change CorrigoPro
/// notified, every field of the documented schema there, and no token, link
/// or file byte.
#[tokio::test]
async fn the_audit_trail_has_one_line_per_change_with_every_field() {
    use attachment_gateway::proto::{DeleteAttachmentRequest, UpdateAttachmentRequest};
    let mut child = tokio::task::spawn_blocking(|| {
        gateway()
            .args([
                "--sandbox",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    })
    .await
    .expect("join");
    let stdout = child.stdout.take().expect("stdout");
    let (addr, banner) = tokio::task::spawn_blocking(move || read_banner(stdout))
        .await
        .expect("join");
    let emulator = banner
        .lines()
        .find_map(|l| l.strip_prefix("sandbox upstream (CorrigoPro emulator): "))
        .expect("emulator")
        .trim_end_matches("/Direct")
        .to_string();
    let mut c = crate::common::connect(addr).await;
    let data = crate::common::pattern(5000, 3);
    let mut m = crate::common::metadata(1002, "audited.bin");
    m.message_id = "audit-upload-1".into();
    let up = c
        .upload_attachment(tokio_stream::iter(crate::common::upload_messages(
            m.clone(),
            &data,
            1000,
        )))
        .await
        .expect("upload")
        .into_inner();
    // The same again: answered from the record.
    c.upload_attachment(tokio_stream::iter(crate::common::upload_messages(
        m, &data, 1000,
    )))
    .await
    .expect("replay");
    c.update_attachment(UpdateAttachmentRequest {
        work_order_id: 1002,
        attachment_id: up.attachment_id.clone(),
        name: "renamed.bin".into(),
        message_id: "audit-update-1".into(),
        ..Default::default()
    })
    .await
    .expect("update");
    let err = c
        .upload_attachment(tokio_stream::iter(crate::common::upload_messages(
            crate::common::metadata(1003, "refused.bin"),
            &data,
            1000,
        )))
        .await
        .expect_err("a rejected work order");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    c.delete_attachment(DeleteAttachmentRequest {
        work_order_id: 1002,
        attachment_id: up.attachment_id.clone(),
        message_id: "audit-delete-1".into(),
    })
    .await
    .expect("delete");
    // The customer adds one: CorrigoPro notifies it.
    let r = crate::common::notify::http()
        .post(format!(
            "{emulator}/sandbox/customer/work-orders/1001/attachments?name=from-customer.txt"
        ))
        .body("hello")
        .send()
        .await
        .expect("customer");
    assert!(r.status().is_success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("output");
    let logs = String::from_utf8_lossy(&out.stderr).into_owned();
    let audit: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "audit")
        .collect();
    let by = |method: &str| -> Vec<&serde_json::Value> {
        audit.iter().filter(|v| v["method"] == method).collect()
    };
    let uploads = by("UploadAttachment");
    assert_eq!(uploads.len(), 3, "{audit:#?}");
    for (u, (outcome, replayed, code)) in uploads.iter().zip([
        ("ok", false, "OK"),
        ("ok", true, "OK"),
        ("failed", false, "FAILED_PRECONDITION"),
    ]) {
        assert_eq!(u["audit"], "write");
        assert_eq!(u["caller"], "anonymous:anonymous");
        assert_eq!(u["outcome"], outcome, "{u}");
        assert_eq!(u["code"], code, "{u}");
        assert_eq!(u["replayed"], replayed, "{u}");
        assert_eq!(u["reconciled"], false, "{u}");
        assert_eq!(u["size_bytes"], 5000, "{u}");
        assert_eq!(u["sha256"], crate::common::sha256_hex(&data), "{u}");
        assert_eq!(u["trace_id"].as_str().map(str::len), Some(32), "{u}");
        assert!(u["timestamp"].is_string(), "{u}");
        assert!(u["message_id"].is_string(), "{u}");
        assert!(u["name"].is_string() && u["work_order_id"].is_i64(), "{u}");
    }
    assert_eq!(uploads[0]["attachment_id"], up.attachment_id.as_str());
    assert_eq!(uploads[0]["message_id"], "audit-upload-1");
    assert_eq!(uploads[0]["work_order_id"], 1002);
    assert_eq!(uploads[0]["name"], "audited.bin");
    let update = by("UpdateAttachment");
    assert_eq!(update.len(), 1, "{audit:#?}");
    assert_eq!(update[0]["name"], "renamed.bin");
    assert_eq!(update[0]["message_id"], "audit-update-1");
    assert_eq!(update[0]["outcome"], "ok");
    let delete = by("DeleteAttachment");
    assert_eq!(delete.len(), 1, "{audit:#?}");
    assert_eq!(delete[0]["attachment_id"], up.attachment_id.as_str());
    let notified = by("AttachmentAdded");
    assert_eq!(notified.len(), 1, "{audit:#?}");
    let n = notified[0];
    assert_eq!(n["audit"], "notification");
    assert_eq!(n["caller"], "corrigopro");
    assert_eq!(n["name"], "from-customer.txt");
    assert_eq!(n["size_bytes"], 5);
    assert_eq!(n["work_order_id"], 1001);
    assert_eq!(n["outcome"], "recorded");
    assert_eq!(n["integration"], "sandbox-integration-0001");
    assert!(!n["message_id"].as_str().unwrap_or_default().is_empty());
    // Never a token, a link or file bytes.
    for line in logs.lines().filter(|l| l.contains("\"audit\"")) {
        assert!(
            !line.contains("Bearer") && !line.contains("sig=") && !line.contains("<---->"),
            "{line}"
        );
    }
}
