#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for a bounded time and fails on a
# crash. Called by scripts/test.sh after the cargo tests.
#
#   FUZZ_SECONDS   seconds per target (default 20)
#   FUZZ_TARGETS   which targets (default: all four)
#   FUZZ_STEP      `build` (only build the targets), `run` (only run them,
#                  after a build), or `all` (default)
#
# Toolchain: nightly when rustup has one (AddressSanitizer, cargo-fuzz's
# default); otherwise stable with RUSTC_BOOTSTRAP=1 and no sanitizer. It
# says which mode it ran; it never skips silently. Each target starts from
# its committed seeds (fuzz/seeds/<target>/, partly the hostile corpus's
# bodies) plus what earlier runs found (fuzz/corpus/<target>/, not
# committed). A crash leaves its input in fuzz/artifacts/<target>/: add it
# to fuzz/seeds/<target>/ with the fix, as a regression seed.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"
targets="${FUZZ_TARGETS:-request task source_event validate}"
step="${FUZZ_STEP:-all}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is missing; installing it (cargo install cargo-fuzz --locked)."
  cargo install cargo-fuzz --locked
fi

toolchain=()
if command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly'; then
  toolchain=(+nightly)
  sanitizer=address
  mode="nightly toolchain, AddressSanitizer"
else
  export RUSTC_BOOTSTRAP=1
  sanitizer=none
  mode="stable toolchain with RUSTC_BOOTSTRAP=1, no sanitizer"
  # A failed stable probe is cached here and would fail every later build.
  rm -f fuzz/target/.rustc_info.json
fi
echo "fuzz: mode: $mode ($(cargo "${toolchain[@]}" --version)); ${seconds} s per target: ${targets}"

# One build for every target; debug assertions on, so an arithmetic
# overflow is a crash too.
if [ "$step" != run ]; then
  cargo "${toolchain[@]}" fuzz build --sanitizer "$sanitizer" --debug-assertions
fi
if [ "$step" = build ]; then
  echo "fuzz: targets built (FUZZ_STEP=build)"
  exit 0
fi

failed=()
summary=()
for t in $targets; do
  mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
  log="$(mktemp)"
  status=0
  cargo "${toolchain[@]}" fuzz run --sanitizer "$sanitizer" --debug-assertions "$t" \
    "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  execs="$(awk '/^stat::number_of_executed_units/ { print $NF }' "$log" | tail -1)"
  seeds="$(find "fuzz/seeds/$t" -type f | wc -l)"
  if [ "$status" -ne 0 ]; then
    failed+=("$t")
    summary+=("$t: FAILED (exit $status) after ${execs:-?} executions")
    echo "fuzz: target $t failed; its output:"
    tail -n 60 "$log"
  else
    summary+=("$t: ok, ${execs:-?} executions in ${seconds} s from ${seeds} seeds")
  fi
  rm -f "$log"
done
echo "fuzz: mode: $mode"
printf 'fuzz: %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
