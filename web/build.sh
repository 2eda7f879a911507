#!/usr/bin/env bash
# Builds the web app into target/web/dist, a static site: crates/advmoe-app's `advmoe-lab` for
# wasm32 with the size-optimised `web` cargo profile (Cargo.toml), wasm-bindgen's JS glue,
# binaryen's `wasm-opt -Oz`, the page (web/index.html, style.css, checks.js), the demo models
# (crates/advmoe-app/demo/) and the service worker (web/sw.js, given the site's file list and a
# version made from the files' contents). Prints the wasm's size, raw and gzipped. Extra arguments go to cargo.
# WEB_WASM_OPT=0 skips wasm-opt (3 to 13 minutes of binaryen.js on one thread) for a quick look:
# the gzipped wasm is only 0.3% larger, and the page trains about as fast on WebGPU (1.32 against
# 1.34 steps/s, bench/README.md; 2.7 times slower before the page stopped re-running its static
# constructors on every call).
set -euo pipefail
cd "$(dirname "$0")/.."
web/setup.sh

cargo build --profile web --target wasm32-unknown-unknown -p advmoe-app --bin advmoe-lab "$@"
target=${CARGO_TARGET_DIR:-target}
dist=target/web/dist
stage=target/web/dist.new
rm -rf "$stage"
mkdir -p "$stage"
wasm-bindgen --target web --no-typescript --out-dir "$stage" --out-name advmoe-lab \
  "$target/wasm32-unknown-unknown/web/advmoe-lab.wasm"
# The features Rust's wasm32 target and its SIMD functions use: wasm-bindgen drops the section
# wasm-opt would read them from. Binaryen 132 (web/tools): Debian's 108 breaks wasm-bindgen's
# reference-type table.
if [ "${WEB_WASM_OPT:-1}" != 0 ]; then
  web/tools/node_modules/.bin/wasm-opt -Oz \
    --enable-bulk-memory --enable-multivalue --enable-mutable-globals \
    --enable-nontrapping-float-to-int --enable-reference-types --enable-sign-ext --enable-simd \
    "$stage/advmoe-lab_bg.wasm" -o "$stage/advmoe-lab_bg.opt.wasm"
  mv "$stage/advmoe-lab_bg.opt.wasm" "$stage/advmoe-lab_bg.wasm"
else
  echo "web build: wasm-opt skipped (WEB_WASM_OPT=0)"
fi
# Every call from JavaScript into the module must not re-run the static constructors
# (web/check-exports.mjs); it reads the module with binaryen.js, installed with wasm-opt.
if [ -f web/tools/node_modules/binaryen/index.js ]; then
  node web/check-exports.mjs "$stage/advmoe-lab_bg.wasm"
else
  echo "web build: export check skipped (no binaryen.js in web/tools: WEB_WASM_OPT=0 installs none)"
fi
cp web/index.html web/style.css web/checks.js "$stage/"
mkdir -p "$stage/demo"
for demo in crates/advmoe-app/demo/*/; do
  mkdir -p "$stage/demo/$(basename "$demo")"
  cp "$demo"config.json "$demo"model.safetensors "$stage/demo/$(basename "$demo")/"
done
cp crates/advmoe-app/demo/compare.json "$stage/demo/"
# The service worker caches every file of the site under a version made from their contents.
files=$(cd "$stage" && find . -type f | sed 's|^\./||' | LC_ALL=C sort)
version=$(cd "$stage" && cat $files | sha256sum | cut -c1-16)
list=$(printf '"%s", ' $files)
sed -e "s|^const VERSION = .*|const VERSION = \"$version\";|" \
  -e "s|^const FILES = .*|const FILES = [${list%, }];|" web/sw.js > "$stage/sw.js"
rm -rf "$dist"
mv "$stage" "$dist"

wasm="$dist/advmoe-lab_bg.wasm"
printf 'web build: %s is %s bytes (%s gzipped)\n' "$wasm" "$(stat -c %s "$wasm")" \
  "$(gzip -9 -c "$wasm" | wc -c)"
