#!/usr/bin/env bash
# Ghostkey's benchmark: builds the release binaries, then runs `ghostkey-bench run`, which
# measures a one-durable-write actix-web baseline and Ghostkey in the same run, with the
# same closed-loop HTTP load generator, and writes docs/benchmarks*.json and the tables in
# docs/BENCHMARKS.md.
#
#   bash bench/run.sh                 # small store (the users the run itself enrols)
#   bash bench/run.sh --scale-test    # the same, after bulk-loading 1,000,000 users
#   bash bench/run.sh --quick         # a tenth of the operations, to try the harness
#   bash bench/run.sh --backend postgres            # Ghostkey on a PostgreSQL cluster of its own
#   bash bench/run.sh --backend postgres --nodes 2  # two Ghostkey nodes sharing it
#
# On a machine with two or more cores the servers run on core 0 and the load generator on
# core 1 (taskset), so they do not compete for a core. With `--backend postgres` the run
# starts its own PostgreSQL cluster (initdb + pg_ctl in a temp directory, as the `postgres`
# OS user when run as root, on a free loopback port, fsync and synchronous_commit on),
# pinned to the servers' core like the nodes: the server side stays on one core, as with
# SQLite (which runs inside the server), and the cluster is stopped and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

label=small
json=docs/benchmarks.json
markdown=docs/BENCHMARKS.md
extra=()
backend=sqlite
nodes=1
quick=0
scale_test=0
args=("$@")
i=0
while [ $i -lt ${#args[@]} ]; do
    arg="${args[$i]}"
    case "$arg" in
        --scale-test) scale_test=1; extra+=(--preload-users 1000000) ;;
        # A try of the harness: nothing in docs/ changes.
        --quick) quick=1; extra+=(--scale 0.1) ;;
        --backend) i=$((i + 1)); backend="${args[$i]:-}" ;;
        --backend=*) backend="${arg#--backend=}" ;;
        --nodes) i=$((i + 1)); nodes="${args[$i]:-}" ;;
        --nodes=*) nodes="${arg#--nodes=}" ;;
        *) extra+=("$arg") ;;
    esac
    i=$((i + 1))
done
case "$backend" in
    sqlite|postgres) ;;
    *) echo "--backend must be sqlite or postgres" >&2; exit 2 ;;
esac
if ! [[ "$nodes" =~ ^[1-9][0-9]*$ ]]; then
    echo "--nodes must be a positive number" >&2; exit 2
fi
if [ "$backend" = sqlite ] && [ "$nodes" -gt 1 ]; then
    echo "--nodes > 1 needs --backend postgres (nodes share one database)" >&2; exit 2
fi
# The result's name: small / 1m for SQLite (as before), postgres[-Nnodes][-1m] otherwise.
if [ "$backend" = postgres ]; then
    label=postgres
    [ "$nodes" -gt 1 ] && label="postgres-${nodes}nodes"
    [ "$scale_test" = 1 ] && label="$label-1m"
    json="docs/benchmarks-$label.json"
elif [ "$scale_test" = 1 ]; then
    label=1m; json=docs/benchmarks-1m.json
fi
if [ "$quick" = 1 ]; then
    if [ "$label" = small ]; then label=quick; else label="quick-$label"; fi
    json="/tmp/ghostkey-bench-$label.json"; markdown="/tmp/ghostkey-bench-$label.md"
fi
# BENCH_JSON / BENCH_MARKDOWN: write the result elsewhere (an experiment that should not
# replace the published figures).
json="${BENCH_JSON:-$json}"
markdown="${BENCH_MARKDOWN:-$markdown}"

# BENCH_BIN_DIR: measure the `ghostkey` and `ghostkey-bench` binaries already there (a
# private copy, safe from other builds in the same target directory) instead of building.
if [ -n "${BENCH_BIN_DIR:-}" ]; then
    target="$BENCH_BIN_DIR"
else
    cargo build --release --locked -p ghostkey -p ghostkey-bench
    target="${CARGO_TARGET_DIR:-$PWD/target}/release"
fi

cores=$(nproc)
if [ "$cores" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
    pin=(taskset -c 1)
    server_cpu=0
else
    echo "fewer than 2 cores or no taskset: running unpinned" >&2
    pin=()
    server_cpu=-1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/ghostkey-bench.XXXXXX")
pgdata=""
pgbin=""
as_pg=()
cleanup() {
    if [ -n "$pgdata" ] && [ -f "$pgdata/postmaster.pid" ]; then
        "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null 2>&1 || true
    fi
    [ -n "$pgdata" ] && rm -rf "$(dirname "$pgdata")"
    rm -rf "$work"
}
trap cleanup EXIT

if [ "$backend" = postgres ]; then
    pgbin=$(pg_config --bindir 2>/dev/null || true)
    if [ ! -x "$pgbin/initdb" ]; then
        pgbin=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -1)
    fi
    [ -x "$pgbin/initdb" ] || { echo "no PostgreSQL server binaries (initdb) found" >&2; exit 1; }
    pgroot=$(mktemp -d "${TMPDIR:-/tmp}/ghostkey-bench-pg.XXXXXX")
    pgdata="$pgroot/data"
    if [ "$(id -u)" = 0 ]; then
        # PostgreSQL refuses to run as root.
        chown postgres: "$pgroot"
        as_pg=(runuser -u postgres --)
    fi
    pgport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "${as_pg[@]}" "$pgbin/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 --no-locale \
        >"$pgroot/initdb.log" 2>&1 || { cat "$pgroot/initdb.log" >&2; exit 1; }
    # Durable: every commit fsynced before it is acknowledged.
    pg_pin=()
    [ "$server_cpu" -ge 0 ] && pg_pin=(taskset -c "$server_cpu")
    "${pg_pin[@]}" "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdata" -l "$pgroot/postgres.log" -w \
        -o "-p $pgport -c listen_addresses=127.0.0.1 -c unix_socket_directories=$pgroot -c fsync=on -c synchronous_commit=on -c full_page_writes=on -c wal_sync_method=fdatasync -c max_connections=200" \
        start >/dev/null
    psql "postgres://postgres@127.0.0.1:$pgport/postgres?sslmode=disable" -X -q -v ON_ERROR_STOP=1 \
        -c "CREATE DATABASE ghostkey_bench"
    echo "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pgport ($pgdata), pinned: ${pg_pin[*]:-no}" >&2
    extra+=(--database-url "postgres://postgres@127.0.0.1:$pgport/ghostkey_bench?sslmode=disable" --nodes "$nodes")
fi

export BENCH_COMMAND_LINE="bash bench/run.sh $*"
"${pin[@]}" "$target/ghostkey-bench" run \
    --ghostkey "$target/ghostkey" \
    --work "$work/run" \
    --json "$json" \
    --markdown "$markdown" \
    --label "$label" \
    --server-cpu "$server_cpu" \
    "${extra[@]}"
