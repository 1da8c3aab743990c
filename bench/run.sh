#!/usr/bin/env bash
# Ghostkey's benchmark: builds the release binaries, then runs `ghostkey-bench run`, which
# measures a one-durable-write actix-web baseline and Ghostkey in the same run, with the
# same closed-loop HTTP load generator, and writes docs/benchmarks*.json and the tables in
# docs/BENCHMARKS.md.
#
#   bash bench/run.sh                 # small store (the users the run itself enrols)
#   bash bench/run.sh --scale-test    # the same, after bulk-loading 1,000,000 users
#   bash bench/run.sh --quick         # a tenth of the operations, to try the harness
#
# On a machine with two or more cores the servers run on core 0 and the load generator on
# core 1 (taskset), so they do not compete for a core.
set -euo pipefail
cd "$(dirname "$0")/.."

label=small
json=docs/benchmarks.json
markdown=docs/BENCHMARKS.md
extra=()
for arg in "$@"; do
    case "$arg" in
        --scale-test) label=1m; json=docs/benchmarks-1m.json; extra+=(--preload-users 1000000) ;;
        # A try of the harness: nothing in docs/ changes.
        --quick) extra+=(--scale 0.1); label=quick; json=/tmp/ghostkey-bench-quick.json; markdown=/tmp/ghostkey-bench-quick.md ;;
        *) extra+=("$arg") ;;
    esac
done

cargo build --release --locked -p ghostkey -p ghostkey-bench
target="${CARGO_TARGET_DIR:-$PWD/target}/release"

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
trap 'rm -rf "$work"' EXIT
export BENCH_COMMAND_LINE="bash bench/run.sh $*"
"${pin[@]}" "$target/ghostkey-bench" run \
    --ghostkey "$target/ghostkey" \
    --work "$work/run" \
    --json "$json" \
    --markdown "$markdown" \
    --label "$label" \
    --server-cpu "$server_cpu" \
    "${extra[@]}"
