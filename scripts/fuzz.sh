#!/usr/bin/env bash
# Fuzzes what the upstream sends (answer parsers, error mapper) with cargo-fuzz
# and libFuzzer on the stable toolchain (`-s none`: no sanitizer, which would need
# nightly). Each target runs for FUZZ_SECONDS (default 10; scripts/test.sh uses the
# default) from the committed seeds in fuzz/seeds/<target>; inputs it finds go to
# target/fuzz/corpus/<target>, crashes to fuzz/artifacts/<target>/ (reproduce one
# with `cargo fuzz run -s none --dev <target> <file>`).
#   scripts/fuzz.sh                       # every target, 10 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh error_status
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
SECONDS_EACH="${FUZZ_SECONDS:-10}"
TARGET_DIR="$PWD/../target/fuzz"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
# --dev: an unoptimized build takes 2 minutes instead of 5, and a CI run fuzzes
# for seconds; run long sessions with -O.
cargo fuzz build -s none --dev --target-dir "$TARGET_DIR"
for t in "${targets[@]}"; do
  mkdir -p "$TARGET_DIR/corpus/$t"
  echo "fuzzing $t for ${SECONDS_EACH}s"
  log="$TARGET_DIR/$t.log"
  status=0
  cargo fuzz run -s none --dev --target-dir "$TARGET_DIR" "$t" \
    "$TARGET_DIR/corpus/$t" "seeds/$t" -- \
    -max_total_time="$SECONDS_EACH" -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb|INFO: seed corpus)" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "fuzz target $t failed (exit $status): the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
