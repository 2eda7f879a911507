#!/usr/bin/env bash
# Builds the web app (web/build.sh) and serves it at http://127.0.0.1:8080 (open it in a browser
# with WebGPU). `PORT=9000 web/serve.sh` picks another port; extra arguments go to cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
web/build.sh "$@"
exec node web/static.mjs target/web/dist "${PORT:-8080}"
