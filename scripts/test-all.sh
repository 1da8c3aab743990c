#!/usr/bin/env bash
# The whole test suite, on a fresh machine: the Rust workspace (on SQLite, with the
# PostgreSQL tests on a cluster they start themselves), the integration suite again on
# PostgreSQL, then the JavaScript SDK (its WebAssembly build, Node tests, interoperability
# with the Rust client) and the reference web page in a real headless Chromium.
#
# Installs what the tests need and is missing: PostgreSQL (Debian `postgresql`), PgBouncer, the
# wasm32 target, wasm-bindgen-cli at the version Cargo.lock pins, binaryen (wasm-opt),
# Chromium, Node.js, shellcheck and systemd (tests/deploy_files.rs). Nothing is skipped: a
# missing tool is installed or the run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

run_as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

echo "== tools"
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v wasm-opt >/dev/null 2>&1 || missing+=(binaryen)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || missing+=(pgbouncer)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    run_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    run_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
rustup target list --installed | grep -qx wasm32-unknown-unknown ||
    rustup target add wasm32-unknown-unknown
# The CLI must be the exact version of the wasm-bindgen crate in Cargo.lock: the two
# generate and read the same glue.
wasm_bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wasm_bindgen_version" ]; then
    # Not --locked: the lock file packaged with wasm-bindgen-cli names crate versions the
    # registry mirror may not carry; the CLI's own version is pinned exactly.
    cargo install wasm-bindgen-cli --version "=$wasm_bindgen_version"
fi
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# Each cargo test pass has a time bound, far above what it takes (minutes), so a test that
# hangs fails the run with its name printed instead of running until CI's own limit.
bounded() {
    local seconds=$1
    shift
    timeout --kill-after=30 "$seconds" "$@" || {
        local status=$?
        [ "$status" -eq 124 ] && echo "!! timed out after ${seconds}s: $*" >&2
        return "$status"
    }
}

echo "== Rust: cargo test --workspace --locked (SQLite; the PostgreSQL-only tests start their own cluster)"
bounded 2400 cargo test --workspace --locked

# The integration tests whose behaviour both backends share, again with every test server
# on a fresh PostgreSQL database (tests/common/postgres.rs), at the default isolation
# level and then under SERIALIZABLE. Left out: tests of the SQLite file itself (its bytes
# at rest and in its WAL, its file lock, backup and restore, file modes, crashes, its
# schema history: at_rest, audit_head, code_mac, crash, exclusive_database, file_modes,
# operations and the tests skipped by name below) and tests of things that do not touch
# the database (openapi, protocol_doc, deploy_files...).
postgres_tests=(
    assertions audit brute_force chain_server clock_backwards cors dev_messages enrollment
    erasure_in_flight failure_budget_edge hostile_provider http_basics key_rotation limits
    methods metrics multi_node outbox passkey passphrase recovery restart_expiry
)
sqlite_file_tests=(
    enrolment_stores_a_blob_that_opens_with_the_user_secret_and_nothing_else
    erasure_and_replacement_leave_nothing_in_the_file_its_wal_or_a_later_backup
    after_a_jump_ahead_the_operator_resets_the_floor_with_the_server_stopped
)
postgres_args=()
for t in "${postgres_tests[@]}"; do postgres_args+=(--test "$t"); done
skip_args=()
for t in "${sqlite_file_tests[@]}"; do skip_args+=(--skip "$t"); done
echo "== Rust: the integration suite on PostgreSQL (read committed)"
GHOSTKEY_TEST_DATABASE=postgres \
    bounded 1200 cargo test --locked -p ghostkey "${postgres_args[@]}" -- "${skip_args[@]}"
echo "== Rust: the integration suite on PostgreSQL (serializable)"
GHOSTKEY_TEST_DATABASE=postgres GHOSTKEY_TEST_PG_ISOLATION=serializable \
    bounded 1200 cargo test --locked -p ghostkey "${postgres_args[@]}" -- "${skip_args[@]}"

echo "== release binary for the JavaScript tests"
cargo build --release --locked --bin ghostkey
export GHOSTKEY_BIN="${CARGO_TARGET_DIR:-$repo/target}/release/ghostkey"

echo "== JavaScript SDK: build (wasm + TypeScript) and Node tests"
(cd sdk/js && npm ci --no-audit --no-fund && npm run build && npm test && npm run test:browser)

echo "== reference web page: headless Chromium"
(cd examples/web && npm ci --no-audit --no-fund && npm test)

echo "== all tests passed"
