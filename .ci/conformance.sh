#!/usr/bin/env bash
# API conformance: schemathesis (pinned in .ci/conformance-requirements.txt) against the
# OpenAPI document served by a live Ghostkey, every check on every operation. Fails on a
# 5xx or on any answer the document does not allow.
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
# the per-address limit, and let the hooks lift the lock (and clear the failure budget) of
# the seeded user as an operator, without waiting.
gk app policy set "$conf_app" --requests-per-address-per-minute 100000 \
    --user-lock-threshold 100 --user-backoff-base-secs 0 >/dev/null
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
    GK_SEED_FILE="$conf_dir/seed.json" GK_CONFIG="$conf_dir/ghostkey.toml"
"$venv/bin/python" .ci/schemathesis_hooks.py seed "$GK_SEED_FILE"
# A fixed seed keeps CI reproducible; CONFORMANCE_SEED picks another exploration.
if ! SCHEMATHESIS_HOOKS=.ci/schemathesis_hooks.py "$venv/bin/schemathesis" \
    --config-file .ci/schemathesis.toml run \
    --checks all \
    --max-examples "${CONFORMANCE_EXAMPLES:-100}" \
    --seed "${CONFORMANCE_SEED:-20240607}" \
    --request-timeout 20 \
    "$GK_BASE_URL/v1/openapi.json"; then
    echo "schemathesis found nonconformances; the server's last log lines:"
    tail -n 40 "$conf_dir/server.log"
    exit 1
fi
# What the run reached: answers per route and status (the successes show that the hooks'
# live ids and codes got past the refusals).
echo "answers by route and status:"
grep -o 'method=[A-Z]* route=[^ ]* status=[0-9]*' "$conf_dir/server.log" | sort | uniq -c
# The server must still be up, and stop cleanly.
kill -0 "$conf_pid"
kill -TERM "$conf_pid"
wait "$conf_pid"
conf_pid=
echo "conformance stage: $((SECONDS - stage_start)) s"
