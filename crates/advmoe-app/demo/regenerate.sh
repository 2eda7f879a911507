#!/usr/bin/env bash
# Regenerate the bundled demo models (see README.md in this folder). About 25 minutes on a
# 2-core CPU; the app embeds whatever this folder holds when it is built.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=crates/advmoe-app/demo
cargo run --release -p advmoe-cli -- compare \
  --models dense-full-trades,moe-at,advmoe --router per-layer --balance-weight 0 \
  --train-steps 800 --eval-size 300 --eps-sweep 2/255,4/255,8/255,16/255 \
  --worst-case --per-image --seed 0 --device cpu --out "$out"
# Keep only what the app embeds.
rm -f "$out/compare.md" "$out"/*/row.json
