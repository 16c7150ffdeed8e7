#!/usr/bin/env bash
# Sets up everything on a fresh Debian machine and runs the whole test suite
# against the real services. This is the one test command (.ci/run calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Unit tests, then the integration tests (one binary against RabbitMQ,
# PostgreSQL, Redis and osmem-server; each test in its own vhost and database).
# No doc tests: the crates' examples are the integration tests.
status=0
# The fuzz targets build (several minutes from cold: their own sanitizer
# build of every dependency) while the tests run, which mostly wait on the
# services; the fuzz run itself comes after them.
cargo test --workspace --locked --lib --bins --tests --no-run
fuzz_build_log="$(mktemp)"
FUZZ_STEP=build nice -n 19 scripts/fuzz.sh >"$fuzz_build_log" 2>&1 &
fuzz_build=$!
cargo test --workspace --locked --lib --bins --tests -- --test-threads "${TEST_THREADS:-6}" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
# Then a bounded fuzz run of the body decoders and validation (about 80 s
# plus its build; FUZZ_SECONDS per target): a crash fails the run.
fuzz_status=0
if wait "$fuzz_build"; then
  tail -n 1 "$fuzz_build_log"
  FUZZ_STEP=run scripts/fuzz.sh || fuzz_status=$?
else
  fuzz_status=$?
  echo "fuzz: building the targets failed:"
  tail -n 60 "$fuzz_build_log"
fi
rm -f "$fuzz_build_log"
if [ "$status" -eq 0 ]; then
  status="$fuzz_status"
fi
exit "$status"
