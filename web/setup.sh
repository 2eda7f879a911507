#!/usr/bin/env bash
# Installs what the web build needs, skipping what is already there: the wasm32 target, the
# wasm-bindgen CLI at exactly the version Cargo.lock pins, and binaryen's wasm-opt at the version
# web/tools/package-lock.json pins (from npm; needs Node.js, which web/serve.sh and the browser
# test also run on). Nothing is downloaded at build time afterwards.
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

# binaryen 132 from npm (a JavaScript/wasm build, so it runs wherever Node.js does); build.sh runs
# it from web/tools/node_modules/.bin, unless WEB_WASM_OPT=0.
if [ "${WEB_WASM_OPT:-1}" != 0 ] && ! web/tools/node_modules/.bin/wasm-opt --version 2>/dev/null | grep -q '(version_132)'; then
  if ! command -v npm >/dev/null; then
    echo "web/setup.sh: the web build needs Node.js and npm to install binaryen's wasm-opt (Debian: apt-get install nodejs npm)" >&2
    exit 1
  fi
  echo "installing binaryen 132 (wasm-opt) into web/tools"
  npm ci --prefix web/tools --no-audit --no-fund
fi
