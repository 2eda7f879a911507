#!/usr/bin/env bash
# Installs what the web build needs, skipping what is already there: the wasm32 target, the
# wasm-bindgen CLI at exactly the version Cargo.lock pins, and trunk. Nothing is downloaded at
# build time afterwards (Trunk.toml sets offline; index.html turns wasm-opt off).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || rustup target add wasm32-unknown-unknown

want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$have" != "$want" ]; then
  echo "installing wasm-bindgen-cli $want (Cargo.lock's wasm-bindgen)"
  # Not --locked: its lock file pins a webpki-roots release some registry mirrors lack.
  cargo install wasm-bindgen-cli --version "$want"
fi

# trunk 0.22 needs a newer rustc than this project's 1.95.
if ! trunk --version 2>/dev/null | grep -q '^trunk 0\.21\.'; then
  echo "installing trunk 0.21.14"
  cargo install trunk --version 0.21.14 --locked
fi
