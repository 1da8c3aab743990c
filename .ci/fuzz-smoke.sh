#!/usr/bin/env bash
# A short run of every cargo-fuzz target under crates/fuzz (stable toolchain, `-s none`).
#
#   bash .ci/fuzz-smoke.sh                        # 20 s per target
#   FUZZ_SECONDS=300 bash .ci/fuzz-smoke.sh
#   FUZZ_MIN_EXECS=50000 bash .ci/fuzz-smoke.sh  # a higher floor of inputs per target
#
# Each target starts from its working corpus (crates/fuzz/corpus/<target>, not committed)
# plus the committed seeds (crates/fuzz/seeds/<target>, written by
# crates/fuzz/seeds/generate.sh) and uses its committed dictionary
# (crates/fuzz/dict/<target>.dict). The harnesses sign fuzzed claims and blocks with fixed
# keys, so the runs reach the claim checks and chain rules behind the signatures.
#
# The run fails when:
# - a target crashes, an input is slower than 10 s or runs out of memory: the input is
#   saved under crates/fuzz/artifacts/<target>/; turn it into a regression test beside the
#   code it broke before fixing it;
# - a target executes fewer than FUZZ_MIN_EXECS inputs (default: 100 per second of
#   FUZZ_SECONDS, i.e. 2000 for 20 s). The slowest targets, envelope and chain_block,
#   which sign, seal and verify with Ed25519 and X25519 keys for most inputs, ran 490 to
#   880 inputs a second on the 2-core development machine under a load of 4 to 8; the
#   others 800 (sealed_blob) to 4,400 (request_bodies). A run below the floor did not
#   fuzz: it stopped early, or a harness became so slow that the smoke run proves nothing;
# - a target never reaches the outcome that shows it got past the signatures (listed in
#   `required` below; the harnesses count outcomes when GHOSTKEY_FUZZ_STATS is set).
#
# Per target, the log shows the inputs executed, the final coverage (cov: edges, ft:
# features) and the outcome counts.
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
min_execs="${FUZZ_MIN_EXECS:-$((100 * fuzz_seconds))}"
# The outcome each target must reach (see GHOSTKEY_FUZZ_STATS in crates/fuzz/src/lib.rs).
declare -A required=(
    [assertion]="claims:accepted="
    [chain_block]="append:accepted="
    [request_bodies]="enrollment:accepted="
    [sealed_blob]="sealed:opened="
    [envelope]="envelope:sealed="
)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
cargo fuzz build --fuzz-dir crates/fuzz -s none --target-dir "$fuzz_target_dir"
failed=0
summary=""
for target in $(cargo fuzz list --fuzz-dir crates/fuzz); do
    echo "-- fuzz $target for ${fuzz_seconds} s"
    mkdir -p "crates/fuzz/corpus/$target" "crates/fuzz/artifacts/$target"
    corpora=("crates/fuzz/corpus/$target")
    if [ -d "crates/fuzz/seeds/$target" ]; then
        corpora+=("crates/fuzz/seeds/$target")
    fi
    options=(-max_total_time="$fuzz_seconds" -timeout=10 -print_final_stats=1)
    if [ -f "crates/fuzz/dict/$target.dict" ]; then
        options+=(-dict="crates/fuzz/dict/$target.dict")
    fi
    log="$logs/$target.log"
    if ! GHOSTKEY_FUZZ_STATS=1 cargo fuzz run --fuzz-dir crates/fuzz -s none --target-dir "$fuzz_target_dir" \
        "$target" "${corpora[@]}" -- "${options[@]}" > "$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target failed"
        exit 1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
    coverage=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | grep -oE 'cov: [0-9]+ ft: [0-9]+' | tail -n 1 || true)
    outcomes=$(grep '^outcomes after' "$log" | tail -n 1 || true)
    echo "$target: ${execs:-0} inputs executed, ${coverage:-no coverage line}"
    echo "  ${outcomes:-no outcome counts}"
    summary+="$target execs=${execs:-0} ${coverage}"$'\n'
    if [ "${execs:-0}" -lt "$min_execs" ]; then
        echo "fuzz target $target executed ${execs:-0} inputs, fewer than the floor of $min_execs (FUZZ_MIN_EXECS)"
        failed=1
    fi
    want="${required[$target]-}"
    if [ -n "$want" ] && [[ "$outcomes" != *"$want"* ]]; then
        echo "fuzz target $target never reached ${want%=}: its harness no longer gets past the signatures"
        failed=1
    fi
done
printf '%s' "$summary"
echo "fuzz stage: $((SECONDS - stage_start)) s"
exit "$failed"
