#!/usr/bin/env bash
# A short run of every cargo-fuzz target under crates/fuzz (stable toolchain, `-s none`).
#
#   bash .ci/fuzz-smoke.sh                        # 20 s per target
#   FUZZ_SECONDS=300 bash .ci/fuzz-smoke.sh
#
# A crash, an input slower than 10 s or running out of memory fails; the input is saved
# under crates/fuzz/artifacts/<target>/; turn it into a regression test beside the code it
# broke before fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
stage_start=$SECONDS
# libfuzzer-sys compiles libFuzzer, which is C++.
if ! command -v c++ >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq g++
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# cargo fuzz has no --locked: check that the fuzz workspace's own Cargo.lock is current.
cargo metadata --locked --format-version 1 --manifest-path crates/fuzz/Cargo.toml >/dev/null
fuzz_target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
fuzz_seconds="${FUZZ_SECONDS:-20}"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
cargo fuzz build --fuzz-dir crates/fuzz -s none --target-dir "$fuzz_target_dir"
for target in $(cargo fuzz list --fuzz-dir crates/fuzz); do
    echo "-- fuzz $target for ${fuzz_seconds} s"
    mkdir -p "crates/fuzz/corpus/$target" "crates/fuzz/artifacts/$target"
    log="$logs/$target.log"
    if ! cargo fuzz run --fuzz-dir crates/fuzz -s none --target-dir "$fuzz_target_dir" "$target" -- \
        -max_total_time="$fuzz_seconds" -timeout=10 -print_final_stats=1 > "$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target failed"
        exit 1
    fi
    grep -E '^Done|stat::number_of_executed_units' "$log" || true
done
echo "fuzz stage: $((SECONDS - stage_start)) s"
