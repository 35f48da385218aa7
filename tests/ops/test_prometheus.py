"""The alerts and the dashboard, proven with Prometheus's own tools: `promtool check
rules` and `promtool test rules` (tests/ops/alerts_test.yaml: a test per alert,
firing and not), then a real Prometheus server (Debian's `prometheus` package,
scripts/test.sh installs it) scraping a running gateway every second on loopback:
traffic is driven through it (calls over TLS with an API key, a watch, the
sandbox's signed notifications, refused webhooks, shared state in a real
redis-server), and Prometheus's HTTP API must then know every metric the rules and
the dashboard name, run every dashboard query, and hold the "webhooks all
refused" alert pending once only refused webhooks arrive (the rules' copy used
here has short windows and `for:`).

Run by scripts/test.sh after the binary is built.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = ROOT / "tests" / "ops" / "alerts_test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "attachment-gateway.json"
OPERATIONS = ROOT / "docs" / "operations.md"
GATEWAY_BIN = os.environ.get("GATEWAY_BIN", str(ROOT / "target" / "debug" / "attachment-gateway"))

# Registered in src/metrics.rs, but set by code that is being written elsewhere:
# they may have no sample yet. Remove each name once its value is set where it is
# known (the earliest not_after as webhooks.certificate_file is read; a write's
# outcome as its record ends).

METRIC = re.compile(r"\b((?:attachment_gateway|process)_[a-z0-9_]+)\b")
API_KEY = "ops-test-key-0123456789"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} must be installed (scripts/test.sh installs Debian's prometheus package)"
    return path


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard_queries() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in d["templating"]["list"] if v["type"] == "query"]
    return exprs


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the Markdown headings."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


# ---------------------------------------------------------------- promtool


def test_promtool_checks_the_rules():
    out = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


def test_promtool_unit_tests_pass_with_a_firing_and_a_quiet_case_per_alert():
    out = subprocess.run([tool("promtool"), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                         timeout=120, cwd=RULE_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    cases: dict[str, list[list]] = {}
    for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for c in t.get("alert_rule_test", []):
            cases.setdefault(c["alertname"], []).append(c.get("exp_alerts") or [])
    for r in rules():
        got = cases.get(r["alert"], [])
        assert any(got), f"{r['alert']}: no case where it fires"
        assert any(not e for e in got), f"{r['alert']}: no case where it stays quiet"
        # Where it fires, other deployments in the same input stay quiet.
        assert all(len(e) <= 1 for e in got), r["alert"]


def test_every_alert_says_what_it_is_and_links_its_own_runbook_section():
    sections = anchors(OPERATIONS.read_text())
    seen = set()
    for r in rules():
        a = r["annotations"]
        assert a.get("summary") and a.get("description"), r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        path, anchor = a["runbook_url"].split("#")
        assert path == "docs/operations.md", r["alert"]
        assert anchor in sections, f"{r['alert']}: no section #{anchor} in docs/operations.md"
        assert anchor not in seen, f"{r['alert']}: shares its runbook section"
        seen.add(anchor)


# ------------------------------------------------------- a real Prometheus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float = 30, every: float = 0.2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            got = check()
            if got:
                return got
            last = got
        except (OSError, urllib.error.URLError, ValueError) as e:
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fast_rules(path: pathlib.Path) -> None:
    """The rules with windows of 15 s and `for:` of 2 s, for a 1 s scrape."""
    doc = yaml.safe_load(RULES.read_text())
    for g in doc["groups"]:
        g["interval"] = "1s"
        for r in g["rules"]:
            r["expr"] = re.sub(r"\[\d+[smhd]\]", "[15s]", r["expr"])
            if "for" in r:
                r["for"] = "2s"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def stubs(out: pathlib.Path):
    from grpc_tools import protoc
    import grpc_tools

    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{well_known}", f"--python_out={out}",
                        f"--grpc_python_out={out}", "corrigopro/attachments/v1/attachments.proto"])
    assert code == 0, "protoc failed"
    for d in ["corrigopro", "corrigopro/attachments", "corrigopro/attachments/v1"]:
        (out / d / "__init__.py").touch()
    sys.path.insert(0, str(out))
    return (importlib.import_module("corrigopro.attachments.v1.attachments_pb2"),
            importlib.import_module("corrigopro.attachments.v1.attachments_pb2_grpc"))


class Stack:
    """A redis-server, the gateway (sandbox upstream, TLS, API keys, webhooks,
    shared state) and Prometheus scraping it."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.ports = {k: free_port() for k in ("redis", "grpc", "admin", "hooks", "prometheus")}

    def spawn(self, name: str, cmd: list[str], **kw) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, stdout=kw.pop("stdout", log), stderr=log, **kw)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()

    def start(self) -> None:
        p = self.ports
        data = self.root / "redis"
        data.mkdir()
        self.spawn("redis", [tool("redis-server"), "--bind", "127.0.0.1", "--port", str(p["redis"]),
                             "--dir", str(data), "--save", "", "--appendonly", "no",
                             "--maxmemory-policy", "noeviction"])
        # A server certificate that expires in 10 days: the TLS alert must fire.
        self.cert, key = self.root / "tls.crt", self.root / "tls.key"
        out = subprocess.run([tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
                              "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(self.cert),
                              "-days", "10", "-subj", "/CN=localhost", "-addext",
                              "subjectAltName=IP:127.0.0.1,DNS:localhost"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        keys = self.root / "api-keys.toml"
        keys.write_text(f'[[keys]]\ncaller = "ops"\nsha256 = "{hashlib.sha256(API_KEY.encode()).hexdigest()}"\n'
                        'scopes = ["attachments.read", "attachments.write"]\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTACHMENT_GATEWAY_")}
        env.update({
            "ATTACHMENT_GATEWAY_TLS__CERT_FILE": str(self.cert),
            "ATTACHMENT_GATEWAY_TLS__KEY_FILE": str(key),
            "ATTACHMENT_GATEWAY_AUTH__API_KEYS__FILE": str(keys),
            "ATTACHMENT_GATEWAY_SHARED_STATE__REDIS_URL": f"redis://127.0.0.1:{p['redis']}/0",
            "ATTACHMENT_GATEWAY_LOG__FORMAT": "json",
        })
        self.banner = self.root / "banner.txt"
        self.gateway = self.spawn("gateway", [GATEWAY_BIN, "--sandbox", "--listen", f"127.0.0.1:{p['grpc']}",
                                              "--admin-listen", f"127.0.0.1:{p['admin']}",
                                              "--webhook-listen", f"127.0.0.1:{p['hooks']}"],
                                  env=env, stdout=open(self.banner, "w"))
        self.metrics_url = f"http://127.0.0.1:{p['admin']}/metrics"
        wait_for("the gateway's metrics", lambda: urllib.request.urlopen(self.metrics_url, timeout=2).status == 200)
        self.emulator = wait_for("the emulator's address", lambda: next(
            (l.split(": ", 1)[1].removesuffix("/Direct") for l in self.banner.read_text().splitlines()
             if l.startswith("sandbox upstream (CorrigoPro emulator): ")), None))
        fast_rules(self.root / "rules.yaml")
        (self.root / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(self.root / "rules.yaml")],
            "scrape_configs": [{"job_name": "attachment-gateway",
                                "static_configs": [{"targets": [f"127.0.0.1:{p['admin']}"],
                                                    "labels": {"namespace": "ops-test"}}]}],
        }))
        self.prom = f"http://127.0.0.1:{p['prometheus']}"
        self.spawn("prometheus", [tool("prometheus"), f"--config.file={self.root / 'prometheus.yml'}",
                                  f"--storage.tsdb.path={self.root / 'tsdb'}",
                                  f"--web.listen-address=127.0.0.1:{p['prometheus']}", "--log.level=warn"])
        wait_for("Prometheus to be ready", lambda: urllib.request.urlopen(f"{self.prom}/-/ready", timeout=2).status == 200)
        wait_for("the gateway scraped", lambda: self.query('up{job="attachment-gateway"} == 1'))

    def query(self, promql: str) -> list:
        d = get_json(f"{self.prom}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert d["status"] == "success", d
        return d["data"]["result"]

    def alert_state(self, name: str) -> str | None:
        for a in get_json(f"{self.prom}/api/v1/alerts")["data"]["alerts"]:
            if a["labels"]["alertname"] == name:
                return a["state"]
        return None

    def post_webhook(self, authorization: str) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports['hooks']}/webhooks/corrigopro", data=b"{}",
                                     method="POST", headers={"Authorization": authorization,
                                                             "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def customer_adds_an_attachment(self, name: str) -> None:
        """The emulator's customer adds a file: CorrigoPro's signed notification
        reaches the webhook listener."""
        req = urllib.request.Request(f"{self.emulator}/sandbox/customer/work-orders/1001/attachments?name={name}",
                                     data=b"x", method="POST")
        urllib.request.urlopen(req, timeout=5).close()

        def delivered():
            d = get_json(f"{self.emulator}/sandbox/notifications")
            return all(n["delivered"] for n in d) and d

        wait_for("the notification delivered", delivered)

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop(p)


def drive_calls(stack: Stack, tmp: pathlib.Path) -> None:
    """Every RPC, answers good and bad, over TLS with the API key; a watch that
    sees an event; a caller with a wrong key."""
    import grpc

    pb2, pb2_grpc = stubs(tmp)
    creds = grpc.ssl_channel_credentials(root_certificates=stack.cert.read_bytes())
    md = [("x-api-key", API_KEY)]
    with grpc.secure_channel(f"127.0.0.1:{stack.ports['grpc']}", creds) as channel:
        stub = pb2_grpc.AttachmentServiceStub(channel)
        watch = stub.WatchAttachments(pb2.WatchAttachmentsRequest(), metadata=md, timeout=120)
        seen = []

        def read():
            try:
                for msg in watch:
                    if msg.WhichOneof("payload") == "event":
                        seen.append(msg)
            except grpc.RpcError:
                pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        stub.ListAttachments(pb2.ListAttachmentsRequest(work_order_id=1001), metadata=md, timeout=10)
        for bad in (0, 9999):  # refused here, refused upstream
            with pytest.raises(grpc.RpcError):
                stub.ListAttachments(pb2.ListAttachmentsRequest(work_order_id=bad), metadata=md, timeout=10)
        with pytest.raises(grpc.RpcError) as e:
            stub.ListAttachments(pb2.ListAttachmentsRequest(work_order_id=1001),
                                 metadata=[("x-api-key", "wrong")], timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED

        def upload(wo: int, message_id: str):
            yield pb2.UploadAttachmentRequest(metadata=pb2.UploadMetadata(
                work_order_id=wo, name="ops.bin", mime_type="application/octet-stream",
                performed_by=pb2.Person(name="Ops"), message_id=message_id))
            yield pb2.UploadAttachmentRequest(chunk=os.urandom(200_000))

        r = stub.UploadAttachment(upload(1002, "ops-upload-1"), metadata=md, timeout=30)
        with pytest.raises(grpc.RpcError):  # a work order in a state that refuses files
            stub.UploadAttachment(upload(1003, "ops-upload-2"), metadata=md, timeout=30)
        ref = dict(work_order_id=1002, attachment_id=r.attachment_id)
        stub.GetDownloadUrl(pb2.GetDownloadUrlRequest(**ref), metadata=md, timeout=10)
        got = sum(len(m.chunk) for m in stub.DownloadAttachment(pb2.DownloadAttachmentRequest(**ref),
                                                                  metadata=md, timeout=30))
        assert got == 200_000
        stub.UpdateAttachment(pb2.UpdateAttachmentRequest(**ref, name="ops-renamed.bin", message_id="ops-update-1"),
                              metadata=md, timeout=10)
        stub.DeleteAttachment(pb2.DeleteAttachmentRequest(**ref, message_id="ops-delete-1"), metadata=md, timeout=10)
        wait_for("the watch to see the writes", lambda: len(seen) >= 3)
        # Keep the watch open until Prometheus has seen it.
        wait_for("the open watch scraped", lambda: stack.query("attachment_gateway_event_subscribers >= 1"))
        watch.cancel()
        reader.join(timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tool("prometheus")
    root = tmp_path_factory.mktemp("ops")
    s = Stack(root)
    try:
        s.start()
        drive_calls(s, root)
        yield s
    finally:
        s.stop()
    for name in ("gateway", "prometheus"):
        assert "panicked" not in s.log(name), s.log(name)
    assert API_KEY not in s.log("gateway")


def test_webhooks_all_refused_goes_pending_only_once_nothing_passes(stack):
    name = "AttachmentGatewayWebhooksAllRefused"
    stack.customer_adds_an_attachment("first.txt")
    for _ in range(5):
        assert stack.post_webhook("Bearer not-a-signed-token") == 401
    # Refused requests, but a notification passed within the window: quiet.
    wait_for("the refusals scraped", lambda: stack.query(
        'sum(increase(attachment_gateway_webhook_requests_total{outcome=~"refused_.*"}[15s])) >= 3'))
    time.sleep(2)  # two more evaluations
    assert stack.alert_state(name) is None
    # Only refused requests from now on: pending, then firing (for: 2s).
    deadline = time.time() + 60
    state = None
    while time.time() < deadline and state is None:
        assert stack.post_webhook("Bearer not-a-signed-token") == 401
        time.sleep(0.5)
        state = stack.alert_state(name)
    assert state in ("pending", "firing"), stack.log("prometheus")
    (alert,) = [a for a in get_json(f"{stack.prom}/api/v1/alerts")["data"]["alerts"]
                if a["labels"]["alertname"] == name]
    assert alert["labels"]["job"] == "attachment-gateway" and alert["labels"]["namespace"] == "ops-test"
    assert alert["annotations"]["runbook_url"] == "docs/operations.md#attachmentgatewaywebhooksallrefused"
    assert "refused by the credential check" in alert["annotations"]["description"]


def test_every_metric_in_the_rules_and_the_dashboard_exists(stack):
    names = set()
    for r in rules():
        names |= set(METRIC.findall(r["expr"]))
    for q in dashboard_queries():
        names |= set(METRIC.findall(q))
    assert len(names) > 20, names
    missing = []
    for n in sorted(names):
        if not stack.query(f'count({{__name__="{n}", job="attachment-gateway"}})'):
            missing.append(n)
    assert not missing, f"not exported by the gateway: {missing}"
    # What the flags and gauges say about this gateway.
    assert stack.query("attachment_gateway_shared_state_configured == 1")
    assert stack.query("attachment_gateway_webhook_listener_enabled == 1")
    assert stack.query("process_resident_memory_bytes > 1e6")
    assert stack.query("process_cpu_seconds_total > 0")
    assert stack.query("attachment_gateway_events_delivered_total >= 3")
    assert stack.query('attachment_gateway_grpc_requests_total{method="ListAttachments", code="Unauthenticated"} >= 1')
    assert stack.query('attachment_gateway_events_recorded_total{source="gateway"} >= 3')


def test_every_dashboard_query_runs_and_shows_the_traffic(stack):
    empty = []
    for q in dashboard_queries():
        promql = q.replace("$__rate_interval", "1m").replace("$job", ".*").replace("$instance", ".*")
        if promql.startswith("label_values("):
            m = re.match(r"label_values\((.+), (\w+)\)$", promql)
            result = stack.query(f"count by ({m.group(2)}) ({m.group(1)})")
        else:
            result = stack.query(promql)
        if not result:
            empty.append(q)
    # Panels about what did not happen here (failures, refusals, a webhook
    # certificate) may be empty; the rest must show this run's traffic.
    may_be_empty = re.compile(r"failures|refusals|stall|webhook_certificate|write_outcomes|auth_failures|watches_ended"
                              r"|code!=\"Ok\"|event_subscribers|uploads_in_flight")
    assert [q for q in empty if not may_be_empty.search(q)] == []


def test_the_served_certificates_expiry_is_exported_and_alerted(stack):
    (r,) = stack.query("attachment_gateway_tls_certificate_not_after_seconds")
    left = float(r["value"][1]) - time.time()
    assert 9 * 86400 < left <= 10 * 86400 + 60, left
    wait_for("the TLS alert", lambda: stack.alert_state("AttachmentGatewayTlsCertificateExpiring") == "firing")
    # One replica, sharing state, the listener on, writes answered: quiet.
    for quiet in ("AttachmentGatewayReplicasWithoutSharedState", "AttachmentGatewaySharedStateFailing",
                  "AttachmentGatewayCircuitOpen", "AttachmentGatewayTokenFetchFailing"):
        assert stack.alert_state(quiet) is None, quiet
