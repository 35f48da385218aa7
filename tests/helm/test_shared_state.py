"""The chart's shared state: the bundled Valkey a credentials-only install runs, a
Redis of one's own replacing it, one replica without either; and the rendered
configuration served by the gateway binary against a real Redis-protocol server
(Debian's redis-server, started here on a free loopback port with the rendered
server configuration, adjusted only for addresses and paths).

Run by scripts/test.sh after the binary is built (like test_chart.py).
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import subprocess
import time
import urllib.request

import helm_python as helm
import pytest
import yaml

from test_chart import CHART, GATEWAY_BIN, free_port, gateway_toml, notes, of_kind, one, render, values

SVC = "corrigopro.attachments.v1.AttachmentService"


def named(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, got {[d['metadata']['name'] for d in of_kind(docs, kind)]}"
    return found[0]


def secret_value(secret: dict, key: str) -> str:
    if key in secret.get("stringData", {}):
        return secret["stringData"][key]
    return base64.b64decode(secret["data"][key]).decode()


def matches(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


VALKEY = "ag-attachment-gateway-valkey"


def test_credentials_only_gives_several_replicas_sharing_a_bundled_valkey():
    docs = render(values("credentials-only"))
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    sts = named(docs, "StatefulSet", VALKEY)
    assert sts["spec"]["replicas"] == 1
    pod = sts["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    # A pinned official image: an exact version, never `latest`.
    image, tag = c["image"].rsplit(":", 1)
    assert image == "valkey/valkey" and tag.count(".") == 2 and tag[0].isdigit(), c["image"]
    # No disk: nothing saved, no append-only file; the configuration sets noeviction.
    assert c["command"] == ["valkey-server"]
    assert c["args"] == ["/etc/valkey/config/valkey.conf", "--save", "", "--appendonly", "no"]
    conf = named(docs, "ConfigMap", VALKEY)["data"]["valkey.conf"]
    assert "maxmemory-policy noeviction" in conf.splitlines()
    assert "maxmemory 256mb" in conf.splitlines()
    assert "include /etc/valkey/auth/auth.conf" in conf.splitlines()
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "emptyDir" in vols["data"] and "volumeClaimTemplates" not in sts["spec"]
    # Hardened like the gateway.
    sc, psc = c["securityContext"], pod["spec"]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = c[probe]["exec"]["command"]
        assert cmd[:2] == ["sh", "-c"] and "valkey-cli" in cmd[2] and "PONG" in cmd[2], probe
        # The password comes from the mounted Secret, never the command line.
        assert "redis-password)" in cmd[2] and " -a " not in cmd[2], probe
    # The password: generated, in a Secret, the same for the server and the gateway.
    secret = named(docs, "Secret", VALKEY)
    password = secret_value(secret, "redis-password")
    assert len(password) >= 32 and password.isalnum()
    assert secret_value(secret, "auth.conf") == f"requirepass {password}\n"
    assert password not in json.dumps([d for d in docs if d["kind"] != "Secret"])
    # The gateway points at it, with the password from that Secret.
    toml = gateway_toml(docs)
    assert f'redis_url = "redis://{VALKEY}:6379/0"' in toml
    assert 'password_file = "/etc/attachment-gateway/redis/redis-password"' in toml
    spec = dep["spec"]["template"]["spec"]
    gvols = {v["name"]: v for v in spec["volumes"]}
    assert gvols["redis"]["secret"] == {"secretName": VALKEY, "items": [{"key": "redis-password", "path": "redis-password"}]}
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["redis"] == "/etc/attachment-gateway/redis"
    (init,) = spec["initContainers"]
    assert VALKEY in init["command"][2] and init["image"] == c["image"]
    # Replicas share the whole upstream budget through it.
    assert "upstream = { rps = 50, burst = 50 }" in toml


def test_the_bundled_valkey_is_reachable_only_from_the_gateways_pods():
    docs = render(values("credentials-only"))
    sts = named(docs, "StatefulSet", VALKEY)
    valkey_labels = sts["spec"]["template"]["metadata"]["labels"]
    gateway_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    netpol = named(docs, "NetworkPolicy", VALKEY)
    assert matches(netpol["spec"]["podSelector"]["matchLabels"], valkey_labels)
    assert netpol["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = netpol["spec"]["ingress"]
    (peer,) = rule["from"]
    assert list(peer) == ["podSelector"], "pods of this namespace only"
    assert matches(peer["podSelector"]["matchLabels"], gateway_labels)
    assert not matches(peer["podSelector"]["matchLabels"], valkey_labels)
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
    # The gateway's own selectors never pick the Valkey pod.
    for kind in ("Service", "PodDisruptionBudget"):
        for d in of_kind(docs, kind):
            sel = d["spec"]["selector"]
            sel = sel.get("matchLabels", sel)
            assert matches(sel, valkey_labels) != matches(sel, gateway_labels), (kind, d["metadata"]["name"])
    svc = named(docs, "Service", VALKEY)
    assert matches(svc["spec"]["selector"], valkey_labels)
    assert [p["port"] for p in svc["spec"]["ports"]] == [6379]
    assert sts["spec"]["serviceName"] == f"{VALKEY}-headless"
    assert named(docs, "Service", f"{VALKEY}-headless")["spec"]["clusterIP"] == "None"


def test_persistence_keeps_an_append_only_file_on_a_claim():
    docs = render(values("bundled-persistent"))
    sts = named(docs, "StatefulSet", VALKEY)
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["/etc/valkey/config/valkey.conf", "--save", "", "--appendonly", "yes",
                         "--appendfsync", "everysec"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert "data" not in {v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert "maxmemory 512mb" in named(docs, "ConfigMap", VALKEY)["data"]["valkey.conf"]
    text = notes(values("bundled-persistent"))
    assert "PersistentVolumeClaim" in text and "No failover" in text


def test_a_redis_url_replaces_the_bundled_server():
    docs = render(values("external-redis"))
    assert [d for d in docs if "valkey" in d["metadata"]["name"]] == []
    assert of_kind(docs, "StatefulSet") == []
    toml = gateway_toml(docs)
    assert 'redis_url = "redis://redis-master.data.svc:6379/0"' in toml
    assert 'password_file = "/etc/attachment-gateway/redis/redis-password"' in toml
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in spec["volumes"]}["redis"]["secret"]["secretName"] == "redis-auth"
    assert "initContainers" not in spec
    text = notes(values("external-redis"))
    assert "Shared state: your Redis (redis://redis-master.data.svc:6379/0)" in text
    assert "bundled" not in text and "No failover" not in text


def test_one_replica_without_shared_state_stays_allowed():
    docs = render(values("single-replica"))
    assert one(docs, "Deployment")["spec"]["replicas"] == 1
    assert [d for d in docs if "valkey" in d["metadata"]["name"]] == []
    toml = gateway_toml(docs)
    assert "redis_url" not in toml and "password_file" not in toml
    assert "WARNING" not in notes(values("single-replica"))
    # Two replicas, neither: refused, naming the ways out.
    vals = values("single-replica")
    vals["replicaCount"] = 2
    with pytest.raises(helm.HelmError, match="sharedState.bundled.enabled"):
        render(vals)


def test_notes_say_which_shared_state_is_in_use_and_what_the_bundled_one_lacks():
    text = notes(values("credentials-only"))
    assert f"Shared state: the chart's own Valkey (valkey/valkey:" in text
    assert "No failover" in text and "No persistence: a restart of its pod starts empty" in text
    assert "CURSOR_EXPIRED" in text and "WARNING" not in text


def test_the_bundled_image_must_be_pinned():
    chart = helm.Chart.load(str(CHART))
    for tag in ("latest", ""):
        vals = values("credentials-only")
        vals["sharedState"] = {"bundled": {"image": {"repository": "valkey/valkey", "tag": tag}}}
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(vals)
    for bad in ({"unknownKey": True}, {"maxMemory": "256 MiB"}):  # Valkey reads 256mb, not MiB
        vals = values("credentials-only")
        vals["sharedState"] = {"bundled": bad}
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(vals)
    vals = values("credentials-only")
    vals["sharedState"] = {"bundled": {"maxMemory": "1GB"}}
    chart.validate_schema(vals)


def test_the_password_is_kept_from_the_existing_secret(tmp_path):
    """lookup answers nothing offline, so the helper that reads its answer is
    rendered from a parent chart, given a Secret as lookup would return it."""
    parent = tmp_path / "parent"
    (parent / "charts").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "attachment-gateway")
    (parent / "Chart.yaml").write_text("apiVersion: v2\nname: parent\nversion: 0.0.1\n")
    (parent / "templates").mkdir()
    kept = base64.b64encode(b"the-password-of-the-first-install").decode()
    (parent / "templates" / "probe.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n"
        f'  kept: {{{{ include "attachment-gateway.valkey.password" (dict "existing" (dict "data" (dict "redis-password" "{kept}"))) | quote }}}}\n'
        '  fresh: {{ include "attachment-gateway.valkey.password" (dict "existing" dict) | quote }}\n'
        '  other: {{ include "attachment-gateway.valkey.password" (dict "existing" (dict "data" (dict "x" "eQ=="))) | quote }}\n'
    )
    out = helm.Chart.load(str(parent)).render(
        {"attachment-gateway": values("credentials-only")}, name="ag", namespace="attachments", is_install=True)
    probe = yaml.safe_load(next(t for p, t in out.items() if p.endswith("probe.yaml")))["data"]
    assert probe["kept"] == "the-password-of-the-first-install"
    assert len(probe["fresh"]) == 40 and probe["fresh"].isalnum()
    assert len(probe["other"]) == 40 and probe["other"] != probe["fresh"]


def wait_port(port: int, proc: subprocess.Popen, log: pathlib.Path, timeout: float = 30) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text() if log.exists() else "exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}: {log.read_text() if log.exists() else ''}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def redis_cli(port: int, password: str | None, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("REDISCLI_AUTH",)}
    if password is not None:
        env["REDISCLI_AUTH"] = password
    out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args], env=env,
                         capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


def start_server(docs: list[dict], name: str, root: pathlib.Path, port: int) -> tuple[subprocess.Popen, str]:
    """The Redis-protocol server the deployment would reach, on loopback: for the
    bundled one, the rendered configuration, Secret and arguments."""
    assert shutil.which("redis-server"), "redis-server must be installed (scripts/test.sh does it)"
    log = root / "redis.log"
    data = root / "data"
    data.mkdir()
    if name == "credentials-only":
        secret = named(docs, "Secret", VALKEY)
        password = secret_value(secret, "redis-password")
        auth = root / "auth.conf"
        auth.write_text(secret_value(secret, "auth.conf"))
        conf = named(docs, "ConfigMap", VALKEY)["data"]["valkey.conf"]
        adjusted = (conf.replace("bind * -::*", "bind 127.0.0.1")
                    .replace("port 6379", f"port {port}")
                    .replace("dir /data", f"dir {data}")
                    .replace("/etc/valkey/auth/auth.conf", str(auth)))
        assert adjusted.count(str(port)) == 1 and str(auth) in adjusted and str(data) in adjusted
        (root / "valkey.conf").write_text(adjusted)
        (c,) = named(docs, "StatefulSet", VALKEY)["spec"]["template"]["spec"]["containers"]
        args = [str(root / "valkey.conf") if a == "/etc/valkey/config/valkey.conf" else a for a in c["args"]]
        cmd = ["redis-server", *args]
    else:
        # A Redis of one's own, run as the chart README asks.
        password = "external-redis-password-0123456789"
        cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data), "--save", "",
               "--appendonly", "no", "--maxmemory-policy", "noeviction", "--requirepass", password]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    wait_port(port, proc, log)
    return proc, password


@pytest.mark.parametrize("name", ["credentials-only", "external-redis"])
def test_rendered_config_serves_against_a_real_redis(name, tmp_path):
    grpcurl = shutil.which("grpcurl")
    assert grpcurl, "grpcurl must be installed (scripts/test.sh does it)"
    docs = render(values(name))
    redis_port = free_port()
    server, password = start_server(docs, name, tmp_path, redis_port)
    gateway = None
    try:
        # The server refuses callers without the password.
        assert "NOAUTH" in redis_cli(redis_port, None, "ping")
        assert redis_cli(redis_port, password, "config", "get", "maxmemory-policy").splitlines()[-1] == "noeviction"
        # The pod's files: the rendered gateway.toml and the Secrets' keys.
        mounts = tmp_path / "etc" / "attachment-gateway"
        for d in ("config", "credentials", "redis"):
            (mounts / d).mkdir(parents=True)
        (mounts / "redis" / "redis-password").write_text(password)
        for s in of_kind(docs, "Secret"):
            if s["metadata"]["name"].endswith("-credentials"):
                for key in s.get("stringData", {}):
                    (mounts / "credentials" / key).write_text(secret_value(s, key))
        grpc_port, admin_port = free_port(), free_port()
        toml = gateway_toml(docs)
        (url,) = [l.split('"')[1] for l in toml.splitlines() if l.startswith("redis_url = ")]
        toml = (toml.replace("/etc/attachment-gateway/", f"{mounts}/")
                .replace(url, f"redis://127.0.0.1:{redis_port}/0")
                .replace('listen = "0.0.0.0:50051"', f'listen = "127.0.0.1:{grpc_port}"')
                .replace('admin_listen = "0.0.0.0:9090"', f'admin_listen = "127.0.0.1:{admin_port}"'))
        assert f"127.0.0.1:{grpc_port}" in toml and f"127.0.0.1:{admin_port}" in toml
        (mounts / "config" / "gateway.toml").write_text(toml)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTACHMENT_GATEWAY_")}
        env["ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_ID"] = "ci-client"
        # The chart's callers authenticate with Kubernetes service-account tokens,
        # which need a cluster: callers go unauthenticated here.
        env["ATTACHMENT_GATEWAY_AUTH__JWT__ENABLED"] = "false"
        env["ATTACHMENT_GATEWAY_AUTH__ALLOW_UNAUTHENTICATED"] = "true"
        log = tmp_path / "gateway.log"
        with open(log, "w") as f:
            gateway = subprocess.Popen([GATEWAY_BIN, "--config", str(mounts / "config" / "gateway.toml"), "--sandbox"],
                                       env=env, stdout=subprocess.DEVNULL, stderr=f)
        wait_port(grpc_port, gateway, log)
        addr = f"127.0.0.1:{grpc_port}"

        def call(method: str, body: str) -> subprocess.CompletedProcess:
            return subprocess.run([grpcurl, "-plaintext", "-max-time", "20", "-d", "@", addr, f"{SVC}/{method}"],
                                  input=body, capture_output=True, text=True, timeout=30)

        upload = json.dumps({"metadata": {"work_order_id": 1002, "name": "shared.txt", "mime_type": "text/plain",
                                          "performed_by": {"name": "Ops"}, "message_id": f"chart-{name}"}})
        upload += json.dumps({"chunk": base64.b64encode(b"shared through redis").decode()})
        first = call("UploadAttachment", upload)
        assert first.returncode == 0, first.stderr
        again = call("UploadAttachment", upload)
        assert again.returncode == 0, again.stderr
        # The retry got the first answer, from the write record in Redis.
        assert json.loads(first.stdout)["attachmentId"] == json.loads(again.stdout)["attachmentId"]
        keys = redis_cli(redis_port, password, "--scan", "--pattern", "attachment-gateway:*").splitlines()
        assert keys, "the gateway keeps its state in the server"
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert "attachment_gateway_shared_state_configured 1" in metrics
        assert 'attachment_gateway_events_recorded_total{source="gateway"} 1' in metrics
        failures = [l for l in metrics.splitlines() if l.startswith("attachment_gateway_shared_state_failures_total{")]
        assert failures and all(l.endswith(" 0") for l in failures), failures
    finally:
        if gateway is not None:
            stop(gateway)
        stop(server)
    err = log.read_text()
    assert gateway.returncode == 0, err
    assert "may evict keys" not in err, "the server runs with noeviction"
    assert password not in err and "ci-secret-value-1234" not in err
