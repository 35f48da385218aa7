"""The documentation holds together: every relative link and anchor in the
Markdown resolves, the README stays short enough to read in ten minutes, and
every setting the gateway has (as `--check-config` prints them, from the
settings struct itself) is in docs/settings.md, so the page cannot drift.

Run by scripts/test.sh (needs the binary: `cargo build`).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
GATEWAY_BIN = os.environ.get("GATEWAY_BIN", str(ROOT / "target" / "debug" / "attachment-gateway"))
DOCS = sorted(
    [ROOT / "README.md", ROOT / "RELIABILITY.md", ROOT / "BENCHMARKS.md",
     ROOT / "helm" / "attachment-gateway" / "README.md"]
    + list((ROOT / "docs").glob("*.md"))
)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    h = heading.strip().lower()
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path.read_text()).splitlines():
        m = re.match(r"^#{1,6} (.*)$", line)
        if not m:
            continue
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(prose(doc.read_text())):
            if re.match(r"^[a-z]+:", target):
                continue  # an absolute URL
            path, _, anchor = target.partition("#")
            dest = doc if not path else (doc.parent / path).resolve()
            if not dest.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
                continue
            if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == [], "\n".join(broken)


def test_the_readme_reads_in_ten_minutes():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines; move reference material to docs/"


def settings() -> list[str]:
    """Every setting's dotted name, from the gateway's own `--check-config`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTACHMENT_GATEWAY_")}
    out = subprocess.run([GATEWAY_BIN, "--check-config", "--sandbox"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    names = []

    def walk(prefix: str, table: dict) -> None:
        for k, v in table.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict) and k.endswith(("scopes", "overrides", "identities")):
                names.append(name)  # a map: its entries are the operator's
            elif isinstance(v, dict) and v and set(v) <= {"rps", "burst"}:
                names.append(name)  # a rate: `{ rps, burst }`
            elif isinstance(v, dict):
                walk(name + ".", v)
            else:
                names.append(name)

    walk("", tomllib.loads(out.stdout))
    assert len(names) > 50, names
    return names


def test_every_setting_is_documented():
    text = (ROOT / "docs" / "settings.md").read_text()
    missing = []
    for name in settings():
        if f"`{name}`" in text or f"`{name}." in text:
            continue
        # A row may name siblings after the first in short: `section.a` / `b`.
        section, _, leaf = name.rpartition(".")
        if section and any(f"`{section}." in line and f"`{leaf}`" in line for line in text.splitlines()):
            continue
        missing.append(name)
    assert missing == [], f"settings not in docs/settings.md: {missing}"
