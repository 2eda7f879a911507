#!/usr/bin/env bash
# Builds the web app into target/web/dist (release: the `web` cargo profile, wasm-bindgen, then
# binaryen's wasm-opt -Oz), and prints the bundle's sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
web/setup.sh
export PATH="$PWD/web/tools/node_modules/.bin:$PATH"
trunk build --release "$@"
wasm=$(ls target/web/dist/*.wasm)
printf 'web build: %s is %s bytes (%s gzipped)\n' "$wasm" "$(stat -c %s "$wasm")" \
  "$(gzip -9 -c "$wasm" | wc -c)"
