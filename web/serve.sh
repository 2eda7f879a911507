#!/usr/bin/env bash
# Builds and serves the web app at http://127.0.0.1:8080 (open it in a browser with WebGPU).
set -euo pipefail
cd "$(dirname "$0")/.."
web/setup.sh
export PATH="$PWD/web/tools/node_modules/.bin:$PATH"
exec trunk serve --release "$@"
