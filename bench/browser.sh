#!/usr/bin/env bash
# Browser steps/s ÷ native steps/s on this machine (bench/README.md): the built page in headless
# Chromium and the release CLI train the same run on the same adapter (SwiftShader's Vulkan
# device for WebGPU; one CPU thread for the CPU backends), and web/e2e/speed.mjs prints the
# ratios and writes OUT/browser.json. Builds nothing: run `web/build.sh` (with wasm-opt, as
# shipped) and `cargo build --release -p advmoe-cli` first. Needs Debian's chromium (for the
# browser and its SwiftShader ICD) and web/e2e's node modules (`npm ci` there).
set -euo pipefail
cd "$(dirname "$0")/.."
export ADVMOE=${ADVMOE:-target/release/advmoe}
[ -x "$ADVMOE" ] || { echo "bench/browser.sh: no CLI at $ADVMOE (cargo build --release -p advmoe-cli)" >&2; exit 1; }
[ -f target/web/dist/advmoe-lab_bg.wasm ] || { echo "bench/browser.sh: no web build (web/build.sh)" >&2; exit 1; }
[ -d web/e2e/node_modules ] || (cd web/e2e && npm ci --no-audit --no-fund)
# wgpu natively wants a runtime folder on Linux; a headless shell may have none.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
exec node web/e2e/speed.mjs
