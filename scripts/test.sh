#!/usr/bin/env bash
# Sets up everything on a fresh Debian machine and runs the whole test suite
# against the real services. This is the one test command (.ci/run calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Unit tests, then the integration tests (one binary against RabbitMQ,
# PostgreSQL, Redis and osmem-server; each test in its own vhost and database).
cargo test --workspace --locked -- --test-threads "${TEST_THREADS:-6}"
