#!/usr/bin/env bash
# API conformance: schemathesis (pinned in .ci/conformance-requirements.txt) against the
# OpenAPI document served by a live Ghostkey, every check on every operation. Fails on any
# answer the document does not allow, on any 5xx, and when an operation of the document
# never answered a 2xx during the run (counted from the server's own request log by
# .ci/conformance_tally.py): a run that only collected refusals checked nothing.
#
#   bash .ci/conformance.sh target/release/ghostkey
#
# CONFORMANCE_EXAMPLES (default 100) and CONFORMANCE_SEED change how much
# and what is explored; CONFORMANCE_VENV reuses a virtualenv already holding the
# requirements.
set -euo pipefail
# (Not GHOSTKEY_*: the server reads every GHOSTKEY_* variable as configuration.)
cd "$(dirname "$0")/.."
ghostkey_bin=$(realpath "${1:?usage: conformance.sh PATH-TO-GHOSTKEY-BINARY}")
stage_start=$SECONDS

conf_dir=$(mktemp -d)
conf_pid=
# Only ever kill the server this script started.
trap 'if [ -n "$conf_pid" ]; then kill "$conf_pid" 2>/dev/null || true; fi; rm -rf "$conf_dir"' EXIT

venv="${CONFORMANCE_VENV:-}"
if [ -z "$venv" ]; then
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq python3 python3-venv
    fi
    venv="$conf_dir/venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        -r .ci/conformance-requirements.txt
fi

conf_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$conf_dir/ghostkey.toml" <<TOML
# A development instance (development SMS and e-mail sinks) on loopback, for this stage only.
service_id = "ghostkey-conformance"
[server]
listen = "127.0.0.1:$conf_port"
[database]
path = "$conf_dir/ghostkey.db"
TOML
gk() { "$ghostkey_bin" --config "$conf_dir/ghostkey.toml" "$@"; }
"$ghostkey_bin" client keygen --out "$conf_dir/app.key" > "$conf_dir/app.pub" 2>/dev/null
conf_app=$(gk app add --name conformance --key-id k1 --public-key "$(cat "$conf_dir/app.pub")")
# The run sends thousands of requests from one address, and wrong codes on purpose: raise
# the per-address and per-app limits, and let the hooks lift the lock (and clear the
# failure budget) of the seeded user as an operator, without waiting. The seed step sends
# many codes to its users' e-mail addresses and starts many recoveries: raise those limits
# too. A waiting period of one second lets a verified recovery answer `waiting` and then be
# released during the run.
gk app policy set "$conf_app" --requests-per-address-per-minute 100000 \
    --code-checks-per-app-per-minute 1000000 \
    --user-lock-threshold 100 --user-backoff-base-secs 0 \
    --sends-per-destination-per-hour 100 --sends-per-destination-per-day 1000 \
    --recovery-starts-per-user-per-day 20 --waiting-period-secs 1 >/dev/null
# Not through `gk`: a function in the background runs in a subshell, whose pid is not the
# server's, and a TERM to it would leave the server running.
"$ghostkey_bin" --config "$conf_dir/ghostkey.toml" serve > "$conf_dir/server.log" 2>&1 &
conf_pid=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$conf_port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
export GK_BASE_URL="http://127.0.0.1:$conf_port" GK_SERVICE_ID=ghostkey-conformance \
    GK_APP_ID="$conf_app" GK_KEY_ID=k1 GK_KEY_FILE="$conf_dir/app.key" GK_BIN="$ghostkey_bin" \
    GK_SEED_FILE="$conf_dir/seed.json" GK_CONFIG="$conf_dir/ghostkey.toml" \
    GK_SERVER_LOG="$conf_dir/server.log" GK_FIXTURE_REPORT="$conf_dir/fixtures.txt"
"$venv/bin/python" .ci/schemathesis_hooks.py seed "$GK_SEED_FILE"
curl -sf "$GK_BASE_URL/v1/openapi.json" > "$conf_dir/openapi.json"
# Only the requests from here on are the run's (the seed step's are not counted).
log_offset=$(wc -c < "$conf_dir/server.log")
# A fixed seed keeps CI reproducible; CONFORMANCE_SEED picks another exploration.
conformant=yes
if ! SCHEMATHESIS_HOOKS=.ci/schemathesis_hooks.py "$venv/bin/schemathesis" \
    --config-file .ci/schemathesis.toml run \
    --checks all \
    --max-examples "${CONFORMANCE_EXAMPLES:-100}" \
    --seed "${CONFORMANCE_SEED:-20240607}" \
    --request-timeout 20 \
    "$GK_BASE_URL/v1/openapi.json"; then
    conformant=no
    echo "schemathesis found nonconformances; the server's last log lines:"
    tail -n 40 "$conf_dir/server.log"
fi
echo "answers to the hooks' fixtures (fixture, status, count):"
sed 's/^/  /' "$conf_dir/fixtures.txt" 2>/dev/null || echo "  (no report)"
# What the run reached, from the server's log: every operation must have answered a 2xx,
# and nothing a 5xx.
reached=yes
"$venv/bin/python" .ci/conformance_tally.py "$conf_dir/server.log" "$log_offset" \
    "$conf_dir/openapi.json" || reached=no
if [ "$conformant" != yes ] || [ "$reached" != yes ]; then
    echo "conformance stage FAILED after $((SECONDS - stage_start)) s"
    exit 1
fi
# The server must still be up, and stop cleanly.
kill -0 "$conf_pid"
kill -TERM "$conf_pid"
wait "$conf_pid"
conf_pid=
echo "conformance stage: $((SECONDS - stage_start)) s"
