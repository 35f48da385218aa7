"""An outside check of the webhook's token verification: tokens in CorrigoPro's
public shape (a serialized claims identity, plain or gzip base64url, signed
`<data><---->`<signature>`), made here with Python's `cryptography` and a key of
this test's own, none of the gateway's code. The gateway binary runs with the
certificate of that key (`webhooks.certificate_file`) and a bound tenant
(`webhooks.expected_name`); each reading it tries by itself must be acknowledged
and reach a WatchAttachments subscriber, and every wrong token must get 401.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import gzip
import json
import os
import pathlib
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

ROOT = pathlib.Path(__file__).resolve().parents[2]
GATEWAY_BIN = os.environ.get("GATEWAY_BIN", str(ROOT / "target" / "debug" / "attachment-gateway"))
NAME_CLAIM = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name"
INTEGRATION = "integration-7f3a"


def new_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate(key) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "outside signer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def identity(audience: str, name: str | None, issued: float, ttl: float = 1200) -> dict:
    """The claims identity, field for field as the public example shows it."""
    def claim(t, v):
        return {"Type": t, "Value": v, "ValueType": "http://www.w3.org/2001/XMLSchema#string",
                "Issuer": "LOCAL AUTHORITY", "OriginalIssuer": "LOCAL AUTHORITY"}
    claims = ([claim(NAME_CLAIM, name)] if name is not None else []) + [
        claim("urn:oauth:scope", ""), claim("Aud", audience)]
    return {"AuthenticationType": "Bearer", "NameClaimType": NAME_CLAIM, "RoleClaimType": NAME_CLAIM,
            "Claims": claims,
            "Properties": {"Dictionary": {".issued": email.utils.formatdate(issued, usegmt=True),
                                          ".expires": email.utils.formatdate(issued + ttl, usegmt=True)}}}


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(key, claims: dict, *, gzipped=False, signed="text", hash_=hashes.SHA256()) -> str:
    raw = json.dumps(claims).encode()
    if gzipped:
        raw = gzip.compress(raw)
    data = b64url(raw)
    message = data.encode() if signed == "text" else raw
    signature = key.sign(message, padding.PKCS1v15(), hash_)
    return f"{data}<---->{b64url(signature)}"


@pytest.fixture(scope="module")
def keys():
    return new_key(), new_key()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, keys):
    """The gateway binary (sandbox upstream) trusting only this test's certificate."""
    d = tmp_path_factory.mktemp("hooks")
    cert = d / "corrigopro.pem"
    cert.write_bytes(certificate(keys[0]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTACHMENT_GATEWAY_")}
    env.update({
        "ATTACHMENT_GATEWAY_TELEMETRY__ADMIN_LISTEN": "127.0.0.1:0",
        "ATTACHMENT_GATEWAY_WEBHOOKS__CERTIFICATE_FILE": str(cert),
        "ATTACHMENT_GATEWAY_WEBHOOKS__EXPECTED_NAME": INTEGRATION,
    })
    log = open(d / "gateway.log", "w")
    proc = subprocess.Popen([GATEWAY_BIN, "--sandbox", "--listen", "127.0.0.1:0",
                             "--webhook-listen", "127.0.0.1:0"],
                            env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    grpc_addr = hook = None
    deadline = time.time() + 30
    while time.time() < deadline and not (grpc_addr and hook):
        line = proc.stdout.readline()
        if not line:
            break
        if "serving gRPC on " in line:
            grpc_addr = line.rsplit(" ", 1)[1].strip()
        if line.startswith("webhooks: "):
            hook = line.split()[1]
    assert grpc_addr and hook, (d / "gateway.log").read_text()
    yield grpc_addr, hook, d / "gateway.log"
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def post(url: str, tok: str | None, message_id: str, attachment_id: str) -> tuple[int, str]:
    body = {"AttachmentId": attachment_id, "Name": "test.doc", "MimeType": "application/msword",
            "Size": 234256, "Subtype": "x",
            "Header": {"WorkOrderId": 1001, "BranchId": 492042,
                       "Sender": {"Name": "Jon Snow", "Phone": "+12025550141", "Type": "CorrigoPro"},
                       "Action": "AttachmentAdded", "ActionDate": "2017-10-04T08:28:36.9484279Z",
                       "ApiVersion": "1.0", "MessageId": message_id}}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json; charset=utf-8", "Event-Type": "AttachmentAdded"})
    if tok is not None:
        req.add_header("Authorization", f"Bearer {tok}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_tokens_signed_outside_in_the_public_shape(gateway, keys, stubs):
    import grpc

    grpc_addr, hook, log = gateway
    key, other_key = keys
    pb2, pb2_grpc = stubs
    events: queue.Queue = queue.Queue()
    channel = grpc.insecure_channel(grpc_addr)
    stub = pb2_grpc.AttachmentServiceStub(channel)
    watch = stub.WatchAttachments(pb2.WatchAttachmentsRequest(), timeout=60)

    def read():
        try:
            for msg in watch:
                if msg.WhichOneof("payload") == "event":
                    events.put(msg.event)
        except grpc.RpcError:
            pass

    threading.Thread(target=read, daemon=True).start()
    time.sleep(0.5)
    now = time.time()
    good = identity("CorrigoProDirect", INTEGRATION, now)
    readings = [(signed, h, z) for signed in ("text", "bytes")
                for h in (hashes.SHA256(), hashes.SHA512()) for z in (False, True)]
    for i, (signed, h, z) in enumerate(readings):
        t = token(key, good, gzipped=z, signed=signed, hash_=h)
        assert t.startswith("H4sI" if z else "eyJ")
        status, text = post(hook, t, f"outside-{i}", f"att-{i}")
        assert status == 200, (signed, h.name, z, text)
        e = events.get(timeout=10)
        assert e.attachment.attachment_id == f"att-{i}"
        assert e.upstream_message_id == f"outside-{i}"

    refused = [
        (token(other_key, good), "refused_bad_signature"),
        (token(key, identity("CorrigoProDirect", INTEGRATION, now - 7200)), "refused_expired"),
        (token(key, identity("CorrigoProDirect", INTEGRATION, now + 3600)), "refused_not_yet_valid"),
        (token(key, identity("SomeoneElse", INTEGRATION, now)), "refused_wrong_audience"),
        (token(key, identity("CorrigoProDirect", "another-integration", now)), "refused_wrong_name"),
        (token(key, {"Claims": [{"Type": "Aud", "Value": "CorrigoProDirect"}]}), "refused_malformed"),
        ("not-a-token", "refused_malformed"),
        (None, "refused_missing"),
    ]
    for i, (t, reason) in enumerate(refused):
        status, text = post(hook, t, f"refused-{i}", f"no-{i}")
        assert status == 401 and reason in text, (reason, status, text)
    # Nothing of the refused ones was recorded.
    with pytest.raises(queue.Empty):
        events.get(timeout=1)
    watch.cancel()
    channel.close()
    # The reading that verified is logged once, to be pinned; the token never.
    logged = log.read_text()
    assert "webhooks.signed_part" in logged
    assert token(key, good).split("<---->")[1] not in logged
