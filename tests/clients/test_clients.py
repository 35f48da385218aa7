"""The callers' side, end to end against the gateway binary in sandbox mode: Python
stubs generated from the proto (grpcio-tools) and a Python client using them, the
Rust examples, and the CLI (text and JSON output, exit codes, and the progress line
through a pseudo-terminal).

Run by scripts/test.sh after `cargo test` (which builds the binary and examples).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = ROOT / "target" / "debug"
GATEWAY_BIN = os.environ.get("GATEWAY_BIN", str(TARGET / "attachment-gateway"))
EXAMPLES = pathlib.Path(os.environ.get("EXAMPLES_DIR", str(TARGET / "examples")))
SVC = "corrigopro.attachments.v1.AttachmentService"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """The gateway binary with its sandbox upstream, on a free loopback port."""
    port = free_port()
    logs = tmp_path_factory.mktemp("gw")
    log = logs / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTACHMENT_GATEWAY_")}
    env["ATTACHMENT_GATEWAY_TELEMETRY__ADMIN_LISTEN"] = "127.0.0.1:0"
    with open(log, "w") as f, open(logs / "banner.txt", "w") as banner:
        proc = subprocess.Popen([GATEWAY_BIN, "--sandbox", "--listen", f"127.0.0.1:{port}"],
                                env=env, stdout=banner, stderr=f)
    deadline = time.time() + 30
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def emulator(gateway, tmp_path_factory):
    """The sandbox emulator's base URL, from the gateway's banner."""
    banner = next(pathlib.Path(tmp_path_factory.getbasetemp()).glob("gw*/banner.txt"))
    deadline = time.time() + 10
    while time.time() < deadline:
        for line in banner.read_text().splitlines():
            if line.startswith("sandbox upstream (CorrigoPro emulator): "):
                return line.split(": ", 1)[1].removesuffix("/Direct")
        time.sleep(0.05)
    raise AssertionError(f"no emulator address in the banner: {banner.read_text()}")


def test_python_client_uploads_lists_and_downloads(gateway, stubs):
    import grpc

    pb2, pb2_grpc = stubs
    data = os.urandom(700_000)
    with grpc.insecure_channel(gateway) as channel:
        stub = pb2_grpc.AttachmentServiceStub(channel)

        def messages():
            yield pb2.UploadAttachmentRequest(metadata=pb2.UploadMetadata(
                work_order_id=1002, name="from-python.bin", mime_type="application/octet-stream",
                document_type=pb2.DOCUMENT_TYPE_DOCUMENT, performed_by=pb2.Person(name="Python Service"),
                size_bytes=len(data)))
            for i in range(0, len(data), 256 * 1024):
                yield pb2.UploadAttachmentRequest(chunk=data[i:i + 256 * 1024])

        r = stub.UploadAttachment(messages(), timeout=30)
        assert r.size_bytes == len(data)
        assert r.sha256 == hashlib.sha256(data).hexdigest()

        listed = stub.ListAttachments(pb2.ListAttachmentsRequest(work_order_id=1002), timeout=10)
        names = {a.name: a for a in listed.attachments}
        assert names["from-python.bin"].size_bytes == len(data)
        assert names["from-python.bin"].upstream["Name"] == "from-python.bin"
        # The BASIC view: the same typed fields, no upstream object.
        basic = stub.ListAttachments(pb2.ListAttachmentsRequest(
            work_order_id=1002, view=pb2.ATTACHMENT_VIEW_BASIC), timeout=10)
        b = {a.name: a for a in basic.attachments}["from-python.bin"]
        assert b.size_bytes == len(data) and not b.HasField("upstream")

        got = bytearray()
        for msg in stub.DownloadAttachment(pb2.DownloadAttachmentRequest(work_order_id=1002, attachment_id=r.attachment_id), timeout=30):
            if msg.WhichOneof("payload") == "chunk":
                got += msg.chunk
        assert bytes(got) == data

        # Errors carry their code; a Python caller can branch on it.
        with pytest.raises(grpc.RpcError) as err:
            stub.ListAttachments(pb2.ListAttachmentsRequest(work_order_id=0), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def run(*args, env=None, timeout=60):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env)


def test_rust_examples_upload_list_download(gateway, tmp_path):
    src = tmp_path / "site-photo.jpg"
    data = os.urandom(300_000)
    src.write_bytes(data)
    addr = f"http://{gateway}"
    up = run(EXAMPLES / "upload_file", addr, 1005, src, "Example Tech")
    assert up.returncode == 0, up.stderr
    attachment_id, size, sha = up.stdout.split()
    assert int(size) == len(data) and sha == hashlib.sha256(data).hexdigest()
    ls = run(EXAMPLES / "list", addr, 1005)
    assert ls.returncode == 0, ls.stderr
    assert f"{attachment_id}\t{len(data)}\timage/jpeg\tsite-photo.jpg" in ls.stdout
    out = tmp_path / "back.jpg"
    dl = run(EXAMPLES / "download", addr, 1005, attachment_id, out)
    assert dl.returncode == 0, dl.stderr
    assert out.read_bytes() == data


def cli(gateway, *args):
    return run(GATEWAY_BIN, *args[:1], "--addr", f"http://{gateway}", *args[1:])


def test_cli_round_trip_with_json(gateway, tmp_path):
    f = tmp_path / "invoice.pdf"
    f.write_bytes(b"%PDF-1.4 test invoice")
    up = cli(gateway, "upload", "--work-order", "1006", "--performed-by", "Ops", "--document-type", "invoice-printout", "--json", f)
    assert up.returncode == 0, up.stderr
    receipt = json.loads(up.stdout)
    aid = receipt["attachment_id"]
    assert receipt["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()

    ls = cli(gateway, "list", "--work-order", "1006", "--json")
    items = json.loads(ls.stdout)
    assert [i["name"] for i in items] == ["invoice.pdf"]
    assert items[0]["mime_type"] == "application/pdf"
    assert items[0]["document_type"] == "DOCUMENT_TYPE_INVOICE_PRINTOUT"

    text = cli(gateway, "list", "--work-order", "1006")
    assert "invoice.pdf" in text.stdout and aid in text.stdout

    out = tmp_path / "copy.pdf"
    dl = cli(gateway, "download", "--work-order", "1006", aid, "--out", out)
    assert dl.returncode == 0, dl.stderr
    assert out.read_bytes() == f.read_bytes()
    stdout = cli(gateway, "download", "--work-order", "1006", aid, "--out", "-")
    assert stdout.stdout == f.read_text()
    # --out naming a folder: the file lands in it under its own name, and no
    # partial file is left beside it.
    folder = tmp_path / "downloads"
    folder.mkdir()
    dl = cli(gateway, "download", "--work-order", "1006", aid, "--out", folder, "--json")
    assert dl.returncode == 0, dl.stderr
    assert json.loads(dl.stdout)["path"] == str(folder / "invoice.pdf")
    assert [p.name for p in folder.iterdir()] == ["invoice.pdf"]
    assert (folder / "invoice.pdf").read_bytes() == f.read_bytes()

    url = cli(gateway, "url", "--work-order", "1006", aid, "--json")
    assert json.loads(url.stdout)["url"].startswith("http://127.0.0.1:")

    upd = cli(gateway, "update", "--work-order", "1006", aid, "--name", "invoice-final.pdf", "--json")
    assert upd.returncode == 0, upd.stderr
    assert len(json.loads(upd.stdout)["message_id"]) == 36
    assert json.loads(cli(gateway, "list", "--work-order", "1006", "--json").stdout)[0]["name"] == "invoice-final.pdf"

    rm = cli(gateway, "delete", "--work-order", "1006", aid)
    assert rm.returncode == 0 and "deleted" in rm.stdout
    assert json.loads(cli(gateway, "list", "--work-order", "1006", "--json").stdout) == []


def test_cli_exit_codes_tell_failures_apart(gateway, tmp_path):
    f = tmp_path / "late.jpg"
    f.write_bytes(b"jpeg")
    bad = cli(gateway, "list", "--work-order", "0", "--json")
    assert bad.returncode == 2
    err = json.loads(bad.stderr)["error"]
    assert err["code"] == "InvalidArgument" and err["fields"][0]["field"] == "work_order_id"
    missing = cli(gateway, "delete", "--work-order", "1001", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 3, missing.stderr
    rejected = cli(gateway, "upload", "--work-order", "1003", "--performed-by", "Ops", f)
    assert rejected.returncode == 5, rejected.stderr
    assert "status Rejected" in rejected.stderr
    down = run(GATEWAY_BIN, "list", "--addr", f"http://127.0.0.1:{free_port()}", "--work-order", "1")
    assert down.returncode == 75, down.stderr
    assert "safe to retry" in down.stderr
    usage = run(GATEWAY_BIN, "upload", "--addr", f"http://{gateway}", f)
    assert usage.returncode == 2  # clap: a required flag is missing


def test_cli_local_files_are_bad_input_naming_the_path(gateway, tmp_path):
    missing = tmp_path / "nonexistent.pdf"
    up = cli(gateway, "upload", "--work-order", "1001", "--performed-by", "Ops", missing)
    assert up.returncode == 2, up.stderr
    assert str(missing) in up.stderr and "Internal" not in up.stderr, up.stderr
    folder = cli(gateway, "upload", "--work-order", "1001", "--performed-by", "Ops", tmp_path)
    assert folder.returncode == 2 and str(tmp_path) in folder.stderr, folder.stderr
    unreadable = tmp_path / "secret.txt"
    unreadable.write_text("x")
    unreadable.chmod(0)
    if not os.access(unreadable, os.R_OK):  # root reads anything
        ur = cli(gateway, "upload", "--work-order", "1001", "--performed-by", "Ops", unreadable)
        assert ur.returncode == 2 and str(unreadable) in ur.stderr, ur.stderr
    nowhere = tmp_path / "no-such-folder" / "out.txt"
    dl = cli(gateway, "download", "--work-order", "1001", "3f2b8c1e-5d4a-4e7b-9c61-0a1b2c3d4e5f", "--out", nowhere)
    assert dl.returncode == 2, dl.stderr
    assert str(nowhere.parent) in dl.stderr, dl.stderr
    assert not nowhere.parent.exists()


def test_cli_shows_progress_on_a_terminal_only(gateway, tmp_path):
    f = tmp_path / "big.bin"
    f.write_bytes(os.urandom(3 * 1024 * 1024))
    cmd = f"{GATEWAY_BIN} upload --addr http://{gateway} --work-order 1002 --performed-by Ops {f}"
    # `script` runs the command on a pseudo-terminal.
    tty = run("script", "-q", "-e", "-c", cmd, "/dev/null")
    assert tty.returncode == 0, tty.stdout + tty.stderr
    assert "3.00 MiB/3.00 MiB 100%" in tty.stdout, tty.stdout
    assert "\x1b[2K" in tty.stdout, "the line is redrawn in place"
    assert "/s" in tty.stdout and "left" in tty.stdout, "rate and time left"
    plain = run(*cmd.split())
    assert plain.returncode == 0
    assert "%" not in plain.stderr, "no progress line when stderr is not a terminal"


def customer_adds(emulator: str, work_order: int, name: str, content: bytes) -> str:
    """Acts as the customer in the sandbox: adds an attachment, which CorrigoPro notifies."""
    import urllib.request

    req = urllib.request.Request(f"{emulator}/sandbox/customer/work-orders/{work_order}/attachments?name={name}",
                                 data=content, method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)["attachment_id"]


def test_python_watch_sees_a_customers_attachment_and_the_cli_resumes_from_a_cursor(gateway, emulator, stubs):
    import grpc

    pb2, pb2_grpc = stubs
    with grpc.insecure_channel(gateway) as channel:
        stub = pb2_grpc.AttachmentServiceStub(channel)
        # As in the README: watch one work order; the first message is a heartbeat
        # with the cursor to resume from.
        watch = stub.WatchAttachments(pb2.WatchAttachmentsRequest(work_order_ids=[1005]), timeout=30)
        first = next(watch)
        assert first.WhichOneof("payload") == "heartbeat"
        cursor = first.heartbeat.last_event_id
        assert cursor
        added = customer_adds(emulator, 1005, "from-customer.txt", b"hello")
        for msg in watch:
            if msg.WhichOneof("payload") == "event":
                e = msg.event
                break
        watch.cancel()
        assert e.type == pb2.ATTACHMENT_EVENT_TYPE_ADDED
        assert e.source == pb2.EVENT_SOURCE_CORRIGOPRO
        assert (e.work_order_id, e.attachment.attachment_id, e.attachment.name) == (1005, added, "from-customer.txt")

    # The CLI, from the cursor taken before the change: it prints that event.
    proc = subprocess.Popen([GATEWAY_BIN, "watch", "--addr", f"http://{gateway}", "--work-order", "1005",
                             "--from", cursor, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        event = json.loads(line)
        assert event["type"] == "ADDED" and event["source"] == "EVENT_SOURCE_CORRIGOPRO"
        assert event["attachment"]["attachment_id"] == added
        assert event["event_id"] == e.event_id
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    # A cursor of another gateway's log (or one that restarted): OUT_OF_RANGE, exit 2.
    r = run(GATEWAY_BIN, "watch", "--addr", f"http://{gateway}", "--from", "abcdef-1", timeout=30)
    assert r.returncode == 2, r.stderr
    assert "OutOfRange" in r.stderr and "ListAttachments" in r.stderr, r.stderr
