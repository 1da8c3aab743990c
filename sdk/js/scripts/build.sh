#!/bin/sh
# Builds @ghostkey/client: the Rust core for wasm32, its JavaScript bindings, a
# size-optimised module, then the TypeScript API. Output: sdk/js/dist/.
#
#   sh sdk/js/scripts/build.sh      (or: cd sdk/js && npm ci && npm run build)
#
# Needs: rustup target wasm32-unknown-unknown, wasm-bindgen (the version of Cargo.lock),
# wasm-opt (binaryen), node and this package's devDependencies (npm ci). Cargo's output
# goes to $CARGO_TARGET_DIR, or the repository's target/ by default.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
repo=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
out=$here/dist

fail() {
    echo "build.sh: $*" >&2
    exit 1
}

# wasm-bindgen's command-line tool must be the exact version of the crate in Cargo.lock:
# the generated glue and the module's custom section are versioned together.
locked=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$repo/Cargo.lock")
[ -n "$locked" ] || fail "no wasm-bindgen in $repo/Cargo.lock"
command -v wasm-bindgen >/dev/null 2>&1 ||
    fail "wasm-bindgen is not installed; run: cargo install wasm-bindgen-cli --version =$locked"
have=$(wasm-bindgen --version | awk '{ print $2 }')
[ "$have" = "$locked" ] ||
    fail "wasm-bindgen $have is installed but Cargo.lock pins $locked; run: cargo install wasm-bindgen-cli --version =$locked --force"
# Required, not optional: the published module is the optimised one, reproducibly.
command -v wasm-opt >/dev/null 2>&1 ||
    fail "wasm-opt is not installed; install binaryen (apt-get install binaryen, or brew install binaryen)"
rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown ||
    fail "the Rust target is missing; run: rustup target add wasm32-unknown-unknown"
[ -x "$here/node_modules/.bin/tsc" ] ||
    fail "TypeScript is not installed; run: (cd $here && npm ci)"

# Size over speed for the module: the workspace's release profile is tuned for the server,
# so override it for this build only (environment and --config, not Cargo.toml). The
# exception is curve25519-dalek, which chain verification spends its time in: at
# opt-level 3 it verifies a 1,000-block chain about 1.7 times faster for 5 KiB gzipped.
echo "build.sh: cargo build (wasm32, release)" >&2
CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
CARGO_PROFILE_RELEASE_LTO=true \
CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
CARGO_PROFILE_RELEASE_PANIC=abort \
CARGO_TARGET_DIR=$target_dir \
    cargo build --locked --manifest-path "$repo/Cargo.toml" -p ghostkey-wasm \
    --target wasm32-unknown-unknown --release \
    --config 'profile.release.package."curve25519-dalek".opt-level=3'

rm -rf "$out"
mkdir -p "$out/wasm"
# wasm-opt runs on cargo's module, before wasm-bindgen: the glue wasm-bindgen adds uses
# table instructions (externref) that the binaryen of stable distributions (108) cannot
# read yet. The exported describe functions wasm-bindgen reads survive -Oz.
raw=$target_dir/wasm32-unknown-unknown/release/ghostkey_wasm.wasm
# Same file name in another directory: wasm-bindgen names its output after its input.
mkdir -p "$target_dir/wasm32-unknown-unknown/release/opt"
opt=$target_dir/wasm32-unknown-unknown/release/opt/ghostkey_wasm.wasm
echo "build.sh: wasm-opt -Oz" >&2
wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
    --enable-mutable-globals --enable-reference-types --enable-multivalue \
    "$raw" -o "$opt"
echo "build.sh: wasm-bindgen $have" >&2
wasm-bindgen --target web --remove-name-section --remove-producers-section --out-dir "$out/wasm" "$opt"

echo "build.sh: tsc" >&2
(cd "$here" && ./node_modules/.bin/tsc -p tsconfig.json)
echo "build.sh: built $out" >&2
