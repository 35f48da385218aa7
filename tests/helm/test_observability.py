"""The chart's alerts (PrometheusRule) and Grafana dashboard (ConfigMap): rendered
from the same files as the plain ones in deploy/, and valid (the rule groups by
`promtool check rules`, the dashboard as JSON Grafana can load).

Run by scripts/test.sh (promtool comes with Debian's prometheus package, which it
installs).
"""

from __future__ import annotations

import copy
import json
import pathlib
import shutil
import subprocess

import yaml

from test_chart import CHART, ROOT, of_kind, one, render, values

PLAIN_RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PLAIN_DASHBOARD = ROOT / "deploy" / "grafana" / "attachment-gateway.json"


def test_the_chart_carries_the_same_files_as_deploy():
    # Helm reads only files inside the chart: it carries copies. After changing
    # deploy/, copy: cp deploy/prometheus/alerts.yaml helm/attachment-gateway/files/alerts.yaml
    # and deploy/grafana/attachment-gateway.json to files/grafana-dashboard.json.
    assert (CHART / "files" / "alerts.yaml").read_bytes() == PLAIN_RULES.read_bytes()
    assert (CHART / "files" / "grafana-dashboard.json").read_bytes() == PLAIN_DASHBOARD.read_bytes()


def test_off_by_default():
    docs = render(values("credentials-only"))
    assert of_kind(docs, "PrometheusRule") == []
    assert [c for c in of_kind(docs, "ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]] == []


def test_the_prometheus_rule_is_the_plain_file_with_the_charts_settings(tmp_path):
    docs = render(values("observability"))
    pr = one(docs, "PrometheusRule")
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    assert pr["metadata"]["namespace"] == "monitoring"
    assert pr["metadata"]["labels"]["release"] == "prometheus"
    assert pr["metadata"]["labels"]["app.kubernetes.io/instance"] == "ag"
    want = copy.deepcopy(yaml.safe_load(PLAIN_RULES.read_text())["groups"])
    for g in want:
        for r in g["rules"]:
            r["labels"]["team"] = "integrations"
            r["annotations"]["runbook_url"] = ("https://git.example.com/attachment-gateway/blob/v0.1.0/"
                                               + r["annotations"]["runbook_url"])
            if r["alert"] == "AttachmentGatewayNoNotifications":
                assert r["for"] == "6h"
                r["for"] = "12h"
    assert pr["spec"]["groups"] == want
    # Valid for Prometheus itself.
    promtool = shutil.which("promtool")
    assert promtool, "promtool must be installed (scripts/test.sh installs Debian's prometheus package)"
    rules = tmp_path / "rendered.yaml"
    rules.write_text(yaml.safe_dump({"groups": pr["spec"]["groups"]}))
    out = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in want)} rules found" in out.stdout


def test_the_plain_settings_render_the_plain_file():
    vals = values("credentials-only")
    vals["metrics"] = {"prometheusRule": {"enabled": True}}
    pr = one(render(vals), "PrometheusRule")
    assert pr["metadata"]["namespace"] == "attachments"
    assert pr["spec"]["groups"] == yaml.safe_load(PLAIN_RULES.read_text())["groups"]


def test_the_dashboard_config_map_is_the_plain_dashboard_for_the_sidecar():
    docs = render(values("observability"))
    (cm,) = [c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"] == "ag-attachment-gateway-dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Integrations"}
    (key,) = cm["data"]
    assert key.endswith(".json")
    assert json.loads(cm["data"][key]) == json.loads(PLAIN_DASHBOARD.read_text())


def test_the_dashboard_is_one_grafana_can_load():
    d = json.loads(PLAIN_DASHBOARD.read_text())
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        for t in p["targets"]:
            if "attachment_gateway_" in t["expr"] or "process_" in t["expr"]:
                assert 'job=~"$job"' in t["expr"] and 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])
    titles = " ".join(p["title"] for p in d["panels"]).lower()
    for topic in ("calls", "errors", "latency", "bytes", "upstream", "budget", "webhooks", "events", "watch",
                  "redis", "memory", "cpu"):
        assert topic in titles, topic
