#!/usr/bin/env bash
# Installs what the web build needs, skipping what is already there: the wasm32 target, the
# wasm-bindgen CLI at exactly the version Cargo.lock pins, trunk, and binaryen's wasm-opt at the
# version web/tools/package-lock.json pins (from npm; needs Node.js). Nothing is downloaded at
# build time afterwards (Trunk.toml sets offline and the wasm-opt version).
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

# binaryen 132 from npm (a JavaScript/wasm build, so it runs wherever Node.js does); trunk runs
# it from web/tools/node_modules/.bin, which build.sh and serve.sh put first on PATH.
if ! web/tools/node_modules/.bin/wasm-opt --version 2>/dev/null | grep -q '(version_132)'; then
  if ! command -v npm >/dev/null; then
    echo "web/setup.sh: the web build needs Node.js and npm to install binaryen's wasm-opt (Debian: apt-get install nodejs npm)" >&2
    exit 1
  fi
  echo "installing binaryen 132 (wasm-opt) into web/tools"
  npm ci --prefix web/tools --no-audit --no-fund
fi
