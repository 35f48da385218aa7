"""The Helm chart, tested offline: rendered with Helm's own library (helm-python-sdk,
Helm v4), linted strictly, its values schema exercised, every object validated
against the Kubernetes schemas of the oldest and newest supported versions
(kubernetes-validate, strict), assertions on the objects, and the rendered
configuration accepted by the real gateway binary.

Run by scripts/test.sh after `cargo test` (which builds the binary).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import socket
import subprocess
import time

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "attachment-gateway"
CI = CHART / "ci"
VALUE_SETS = sorted(p.stem.removesuffix("-values") for p in CI.glob("*-values.yaml"))
# The chart's kubeVersion floor and the newest schemas.
KUBE_VERSIONS = ["1.27.0", "1.37.0"]
GATEWAY_BIN = os.environ.get("GATEWAY_BIN", str(ROOT / "target" / "debug" / "attachment-gateway"))


def values(name: str) -> dict:
    return helm.values_from_yaml((CI / f"{name}-values.yaml").read_text())


def render(vals: dict) -> list[dict]:
    chart = helm.Chart.load(str(CHART))
    out = chart.render(vals, name="ag", namespace="attachments", is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def gateway_toml(docs: list[dict]) -> str:
    (cm,) = [c for c in of_kind(docs, "ConfigMap") if "gateway.toml" in c.get("data", {})]
    return cm["data"]["gateway.toml"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_is_clean_in_strict_mode(name):
    report = helm.lint(str(CHART), values(name), strict=True, namespace="attachments")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


@pytest.mark.parametrize("name", VALUE_SETS)
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_every_object_validates_against_kubernetes_schemas(name, kube):
    docs = render(values(name))
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: not in the Kubernetes schemas (checked below)
        kubernetes_validate.validate(doc, kube, strict=True)


def test_schema_refuses_bad_values():
    chart = helm.Chart.load(str(CHART))
    good = values("default")
    chart.validate_schema(good)
    bad = [
        {"replicaCount": "two"},
        {"unknownTopLevelKey": True},
        {"image": {"repository": "r", "tag": "latest"}},
        {"service": {"grpcPort": 70000}},
        {"auth": {"jwt": {"defaultScopes": ["attachments.admin"]}}},
        {"auth": {"apiKeys": {"keys": [{"caller": "x", "sha256": "not-hex", "scopes": []}]}}},
        {"rateLimit": {"perCaller": {"rps": 0, "burst": 1}}},
        {"upstream": {"requestTimeout": "thirty seconds"}},
        {"log": {"format": "xml"}},
        {"limits": {"maxChunkBytes": 10}},
    ]
    for b in bad:
        merged = {**good, **b}
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(merged)


def test_latest_image_is_refused_even_without_the_schema():
    with pytest.raises(helm.HelmError):
        render({**values("default"), "image": {"repository": "r", "tag": "latest", "pullPolicy": "IfNotPresent"}})


def test_deployment_is_production_shaped():
    docs = render(values("default"))
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    (c,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 50051, "admin": 9090}
    # Plain HTTP probes on the admin port (they work whatever TLS the gRPC port asks).
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == "admin", probe
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # A pinned image.
    assert not c["image"].endswith(":latest") and ":" in c["image"]
    assert c["image"] == "attachment-gateway:0.1.0"
    # Security context.
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    # Resources.
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    # Termination grace longer than drain + grace.
    toml = gateway_toml(docs)
    drain = int(re.search(r'drain_delay = "(\d+)s"', toml).group(1))
    grace = int(re.search(r'shutdown_grace = "(\d+)s"', toml).group(1))
    assert spec["terminationGracePeriodSeconds"] > drain + grace
    assert "lifecycle" not in c, "no preStop hook: the drain delay does its job"
    # A config or secret change rolls the pods.
    ann = pod["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", ann["checksum/config"])
    assert re.fullmatch(r"[0-9a-f]{64}", ann["checksum/secret"])
    # Spread over nodes.
    keys = [t["topologyKey"] for t in spec["topologySpreadConstraints"]]
    assert "kubernetes.io/hostname" in keys
    # Config from the ConfigMap, secrets from the Secret.
    assert c["args"] == ["--config", "/etc/attachment-gateway/config/gateway.toml"]
    env = {e["name"]: e for e in c["env"]}
    assert env["ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_ID"]["valueFrom"]["secretKeyRef"]["key"] == "client-id"
    # The in-cluster JWKS fetch needs the gateway's own token.
    assert spec["automountServiceAccountToken"] is True


def test_checksum_changes_with_the_config():
    a = one(render(values("default")), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    v = values("default")
    v["log"] = {"format": "pretty", "level": "debug"}
    b = one(render(v), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert a["checksum/config"] != b["checksum/config"]
    assert a["checksum/secret"] == b["checksum/secret"]


def test_labels_and_selectors_agree():
    docs = render(values("autoscaling"))
    dep = one(docs, "Deployment")
    selector = dep["spec"]["selector"]["matchLabels"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert one(docs, "Service")["spec"]["selector"] == selector
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    assert one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == selector
    for d in docs:
        labels = d["metadata"]["labels"]
        for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                  "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert k in labels, (d["kind"], k)


def test_service_ports():
    svc = one(render(values("default")), "Service")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc" and ports["grpc"]["targetPort"] == "grpc"
    assert ports["admin"]["port"] == 9090


def test_secrets_never_inlined_in_the_configmap():
    for name in VALUE_SETS:
        docs = render(values(name))
        data = str([c["data"] for c in of_kind(docs, "ConfigMap")])
        assert "ci-secret-value-1234" not in data, name
        assert "client_secret_file" in data and 'client_secret =' not in data
        env = str(one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0].get("env"))
        assert "ci-secret-value-1234" not in env, name


def test_existing_secret_is_used_and_no_secret_is_created():
    docs = render(values("existing-secret"))
    assert of_kind(docs, "Secret") == []
    dep = one(docs, "Deployment")
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["credentials"]["secret"]["secretName"] == "corrigopro-credentials"
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"].endswith("@sha256:" + "0123456789abcdef" * 4)


def test_hpa_and_pdb_only_when_enabled():
    default = render(values("default"))
    assert of_kind(default, "HorizontalPodAutoscaler") == []
    assert "replicas" in one(default, "Deployment")["spec"]
    scaled = render(values("autoscaling"))
    hpa = one(scaled, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 8)
    assert "replicas" not in one(scaled, "Deployment")["spec"], "the HPA owns the replica count"
    v = values("default")
    v["podDisruptionBudget"] = {"enabled": False, "maxUnavailable": 1}
    assert of_kind(render(v), "PodDisruptionBudget") == []
    assert one(default, "PodDisruptionBudget")["apiVersion"] == "policy/v1"


def test_upstream_budget_is_divided_by_the_largest_replica_count():
    # 80 rps / 8 replicas (maxReplicas) = 10; burst 40 / 8 = 5.
    toml = gateway_toml(render(values("autoscaling")))
    assert "upstream = { rps = 10, burst = 5 }" in toml
    # 50 / 2 replicas = 25.
    assert "upstream = { rps = 25, burst = 25 }" in gateway_toml(render(values("default")))


def test_servicemonitor_only_when_asked_or_available():
    assert of_kind(render(values("default")), "ServiceMonitor") == []  # no such API offline
    sm = one(render(values("servicemonitor")), "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "admin"
    assert sm["metadata"]["labels"]["release"] == "prometheus"


def test_probes_never_need_the_grpc_ports_tls():
    # With the chart's own mTLS values, no probe speaks gRPC (the kubelet's gRPC
    # probe has no client certificate) and every probe targets the admin port,
    # which the configuration binds in plain HTTP.
    docs = render(values("mtls"))
    c = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "grpc" not in c[probe], probe
        assert c[probe]["httpGet"]["port"] == "admin", probe
    toml = gateway_toml(docs)
    assert "client_ca_file" in toml and 'admin_listen = "0.0.0.0:9090"' in toml


def test_mtls_mounts_the_tls_secret():
    docs = render(values("mtls"))
    toml = gateway_toml(docs)
    assert 'client_ca_file = "/etc/attachment-gateway/tls/ca.crt"' in toml
    assert '"spiffe://cluster.local/ns/billing/sa/billing-api" = ["attachments.read","attachments.write"]' in toml
    dep = one(docs, "Deployment")
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["tls"]["secret"]["secretName"] == "attachment-gateway-tls"
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_telemetry_values_become_otel_env():
    c = one(render(values("autoscaling")), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"


def test_app_version_matches_the_crate():
    cargo = (ROOT / "Cargo.toml").read_text()
    crate_version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == crate_version
    assert chart["apiVersion"] == "v2"


def materialize(docs: list[dict], root: pathlib.Path) -> pathlib.Path:
    """Writes the ConfigMap and Secret files as the pod would see them, under root."""
    mounts = root / "etc" / "attachment-gateway"
    (mounts / "config").mkdir(parents=True)
    (mounts / "credentials").mkdir()
    (mounts / "api-keys").mkdir()
    toml = gateway_toml(docs).replace("/etc/attachment-gateway/", f"{mounts}/")
    (mounts / "config" / "gateway.toml").write_text(toml)
    for s in of_kind(docs, "Secret"):
        for key, val in s.get("stringData", {}).items():
            target = mounts / ("api-keys" if key == "api-keys.toml" else "credentials") / key
            target.write_text(val)
    return mounts / "config" / "gateway.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rendered_default_config_passes_the_gateways_own_checks(tmp_path):
    config = materialize(render(values("default")), tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTACHMENT_GATEWAY_")}
    env["ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_ID"] = "ci-client"
    out = subprocess.run([GATEWAY_BIN, "--check-config", "--config", str(config)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ci-secret-value-1234" not in out.stdout
    assert 'jwks_url = "https://kubernetes.default.svc/openid/v1/jwks"' in out.stdout


def test_rendered_config_serves_with_the_sandbox_upstream(tmp_path):
    grpcurl = shutil.which("grpcurl")
    assert grpcurl, "grpcurl must be installed (scripts/test.sh does it)"
    config = materialize(render(values("apikeys")), tmp_path)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTACHMENT_GATEWAY_")}
    env["ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_ID"] = "ci-client"
    env["ATTACHMENT_GATEWAY_TELEMETRY__ADMIN_LISTEN"] = "127.0.0.1:0"
    log = tmp_path / "gateway.log"
    # Logs go to a file: a pipe nobody reads would fill up and stall the gateway.
    with open(log, "w") as log_file:
        proc = subprocess.Popen([GATEWAY_BIN, "--config", str(config), "--sandbox", "--listen", f"127.0.0.1:{port}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    addr = f"127.0.0.1:{port}"
    svc = "corrigopro.attachments.v1.AttachmentService"

    def call(*args):
        return subprocess.run([grpcurl, "-plaintext", "-max-time", "10", *args], capture_output=True, text=True, timeout=30)

    try:
        # grpcurl resolves methods by reflection, which needs a credential here.
        for _ in range(100):
            r = call("-H", "x-api-key: ci-reader-key", addr, "grpc.health.v1.Health/Check")
            if r.returncode == 0:
                break
            time.sleep(0.1)
        assert '"SERVING"' in r.stdout, (r.stdout, r.stderr)
        r = call("-H", "x-api-key: ci-reader-key", "-d", '{"work_order_id": 1001}', addr, f"{svc}/ListAttachments")
        assert r.returncode == 0, r.stderr
        assert "leak-under-sink.txt" in r.stdout
        r = call("-H", "x-api-key: wrong", "-d", '{"work_order_id": 1001}', addr, f"{svc}/ListAttachments")
        assert "Unauthenticated" in r.stderr, r.stderr
        r = call("-H", "x-api-key: ci-reader-key", "-d", '{"work_order_id": 1001, "attachment_id": "x"}',
                 addr, f"{svc}/DeleteAttachment")
        assert "PermissionDenied" in r.stderr, r.stderr
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = log.read_text()
    assert proc.returncode == 0, err
    assert "ci-secret-value-1234" not in err


def test_dockerfile_builds_from_what_it_copies(tmp_path):
    """No Docker engine here: check the image's recipe instead. What the build
    stage copies must be enough to build the binary (locked), and the runtime
    stage must be non-root and expose the gRPC and admin ports."""
    text = (ROOT / "Dockerfile").read_text()
    assert "cargo build --release --locked" in text
    assert "USER 65532:65532" in text and "EXPOSE 50051 9090" in text
    assert 'ENTRYPOINT ["/usr/local/bin/attachment-gateway"]' in text
    assert ":latest" not in text
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for line in text.splitlines():
        m = re.match(r"COPY (?!--from)(.+) (\S+)$", line)
        if not m:
            continue
        for src in m.group(1).split():
            p = ROOT / src
            if p.is_dir():
                shutil.copytree(p, ctx / src)
            else:
                shutil.copy2(p, ctx / src)
    out = subprocess.run(
        ["cargo", "check", "--locked", "--offline", "--bin", "attachment-gateway"],
        cwd=ctx, env={**os.environ, "CARGO_TARGET_DIR": str(ROOT / "target")},
        capture_output=True, text=True, timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-3000:]


def test_webhooks_have_their_own_port_service_ingress_path_and_secret():
    default = render(values("default"))
    assert not [s for s in of_kind(default, "Service") if s["metadata"]["name"].endswith("-webhooks")]
    assert "listen" not in gateway_toml(default).split("[webhooks]")[1].split("[")[0]
    docs = render(values("webhooks"))
    svc = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    hooks = svc["ag-attachment-gateway-webhooks"]
    assert [p["targetPort"] for p in hooks["spec"]["ports"]] == ["webhooks"]
    # The main Service does not carry the webhook port, nor the webhook one the gRPC port.
    assert "webhooks" not in [p["name"] for p in svc["ag-attachment-gateway"]["spec"]["ports"]]
    ing = one(docs, "Ingress")
    paths = ing["spec"]["rules"][0]["http"]["paths"]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/webhooks/corrigopro", "Exact")]
    assert paths[0]["backend"]["service"]["name"] == "ag-attachment-gateway-webhooks"
    dep = one(docs, "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "webhooks", "containerPort": 8081, "protocol": "TCP"} in c["ports"]
    assert any(m["mountPath"] == "/etc/attachment-gateway/webhooks" for m in c["volumeMounts"])
    secret = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == "ag-attachment-gateway-webhooks"]
    assert "BEGIN CERTIFICATE" in secret[0]["stringData"]["corrigopro.crt"]
    toml = gateway_toml(docs)
    assert 'listen = "0.0.0.0:8081"' in toml
    assert 'certificate_file = "/etc/attachment-gateway/webhooks/corrigopro.crt"' in toml
    assert 'expected_name = "sandbox-integration-0001"' in toml
    assert 'signed_part = "auto"' in toml
    assert "BEGIN CERTIFICATE" not in toml
    netpol = one(docs, "NetworkPolicy")
    assert any(r["ports"][0]["port"] == "webhooks" and "from" not in r for r in netpol["spec"]["ingress"])


def test_webhooks_without_a_certificate_or_secret_are_refused():
    vals = values("webhooks")
    vals["webhooks"]["certificate"] = ""
    with pytest.raises(Exception, match="webhooks.certificate"):
        render(vals)
    vals["webhooks"]["verify"] = "shared-secret"
    with pytest.raises(Exception, match="webhooks.sharedSecret"):
        render(vals)
    vals["webhooks"]["existingSecret"] = "hooks"
    docs = render(vals)
    vols = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert vols["webhooks"]["secret"]["secretName"] == "hooks"


def test_rendered_webhook_config_verifies_the_sandboxs_notifications(tmp_path):
    """The rendered config, served by the binary (sandbox upstream): a notification
    signed by the sandbox's key is recorded; an unsigned one is refused."""
    docs = render(values("webhooks"))
    mounts = tmp_path / "etc" / "attachment-gateway"
    (mounts / "config").mkdir(parents=True)
    (mounts / "webhooks").mkdir()
    hooks_port, port = free_port(), free_port()
    toml = gateway_toml(docs).replace("/etc/attachment-gateway/", f"{mounts}/")
    toml = toml.replace('listen = "0.0.0.0:8081"', f'listen = "127.0.0.1:{hooks_port}"')
    toml = "\n".join(l for l in toml.splitlines() if not l.startswith("forward_url"))
    (mounts / "config" / "gateway.toml").write_text(toml)
    for s in of_kind(docs, "Secret"):
        if s["metadata"]["name"].endswith("-webhooks"):
            (mounts / "webhooks" / "corrigopro.crt").write_text(s["stringData"]["corrigopro.crt"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTACHMENT_GATEWAY_")}
    env["ATTACHMENT_GATEWAY_TELEMETRY__ADMIN_LISTEN"] = "127.0.0.1:0"
    env["ATTACHMENT_GATEWAY_AUTH__ALLOW_UNAUTHENTICATED"] = "true"
    env["ATTACHMENT_GATEWAY_AUTH__JWT__ENABLED"] = "false"
    log = tmp_path / "gateway.log"
    with open(log, "w") as log_file, open(tmp_path / "banner.txt", "w") as banner:
        proc = subprocess.Popen([GATEWAY_BIN, "--config", str(mounts / "config" / "gateway.toml"), "--sandbox",
                                 "--listen", f"127.0.0.1:{port}"], env=env, stdout=banner, stderr=log_file)
    import urllib.error
    import urllib.request

    try:
        url = f"http://127.0.0.1:{hooks_port}/webhooks/corrigopro"
        for _ in range(100):
            try:
                urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=5)
            except urllib.error.HTTPError as e:
                status = e.code
                break
            except OSError:
                time.sleep(0.1)
        assert status == 401, "an unsigned notification is refused"
        # The emulator signs with the key of the certificate the chart mounted.
        emulator = next(l.split(": ", 1)[1].removesuffix("/Direct") for l in (tmp_path / "banner.txt").read_text().splitlines()
                        if l.startswith("sandbox upstream"))
        req = urllib.request.Request(f"{emulator}/sandbox/customer/work-orders/1001/attachments?name=x.txt",
                                     data=b"x", method="POST")
        urllib.request.urlopen(req, timeout=5)
        import json as _json
        for _ in range(100):
            with urllib.request.urlopen(f"{emulator}/sandbox/notifications", timeout=5) as r:
                d = _json.load(r)
            if d and d[0]["delivered"]:
                break
            time.sleep(0.1)
        assert d[0]["delivered"] and d[0]["last_outcome"] == "200", d
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()


def test_shared_state_points_every_replica_at_one_redis_with_the_password_from_a_secret():
    vals = values("default")
    assert "redis_url" not in gateway_toml(render(vals))
    vals["sharedState"] = {"redis": {"url": "rediss://redis.data.svc:6380/0", "existingSecret": "redis-auth"}}
    docs = render(vals)
    toml = gateway_toml(docs)
    assert 'redis_url = "rediss://redis.data.svc:6380/0"' in toml
    assert 'password_file = "/etc/attachment-gateway/redis/redis-password"' in toml
    vols = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert vols["redis"]["secret"]["secretName"] == "redis-auth"
    # Shared through Redis, the upstream budget is the deployment's, undivided.
    assert "upstream = { rps = 50, burst = 50 }" in toml
    vals["sharedState"]["redis"]["url"] = "rediss://:pw@redis:6380"
    with pytest.raises(Exception):
        render(vals)


def test_shared_state_over_tls_trusts_the_ca_from_a_secret():
    vals = values("default")
    vals["sharedState"] = {"redis": {"url": "rediss://redis.data.svc:6380/0", "tls": {"caSecret": "redis-ca"}}}
    docs = render(vals)
    assert 'ca_file = "/etc/attachment-gateway/redis-ca/ca.crt"' in gateway_toml(docs)
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["redis-ca"]["secret"]["secretName"] == "redis-ca"
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["redis-ca"]["mountPath"] == "/etc/attachment-gateway/redis-ca"
    # A CA for a plain redis:// URL is a mistake, said at render time.
    vals["sharedState"]["redis"]["url"] = "redis://redis.data.svc:6379/0"
    with pytest.raises(Exception, match="rediss"):
        render(vals)


def test_several_replicas_without_shared_state_must_be_accepted_explicitly():
    vals = values("default")
    vals["sharedState"] = {"acceptPerReplicaState": False, "bundled": {"enabled": False}}
    with pytest.raises(Exception, match="sharedState.redis.url"):
        render(vals)
    vals["replicaCount"] = 1
    render(vals)
    vals["replicaCount"] = 3
    vals["sharedState"] = {"redis": {"url": "redis://redis:6379/0"}}
    render(vals)


def notes(vals: dict) -> str:
    out = helm.Chart.load(str(CHART)).render(vals, name="ag", namespace="attachments", is_install=True)
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


def test_notes_say_what_replicas_share_or_warn_that_they_do_not():
    vals = values("default")
    vals["sharedState"] = {"redis": {"url": "redis://redis:6379/0"}}
    text = notes(vals)
    assert "Shared through Redis by every replica" in text
    assert "WARNING" not in text
    vals["sharedState"] = {"acceptPerReplicaState": True, "bundled": {"enabled": False}}
    vals["replicaCount"] = 3
    text = notes(vals)
    assert "WARNING: up to" in text and "watch sees only the events" in text
