#!/usr/bin/env bash
# The product against its PyTorch reference, side by side in one run (bench/README.md): for
# each setting, `advmoe bench steps` times the training steps and the evaluation attack and
# writes each model's initial checkpoint and a parity record; bench/reference/advmoe_ref.py
# checks that it computes the same on the same weights and batch, then times the same steps;
# the table of ratios is printed and written to <folder>/compare.json. Builds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

ADVMOE=${ADVMOE:-target/release/advmoe}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-runs/bench-compare}
DEVICE=${DEVICE:-cpu}             # cpu; or gpu: the reference runs on REF_DEVICE, fp32, TF32, then
                                  # fp32 with every expert on every sample (--moe-conv dense)
REF_DEVICE=${REF_DEVICE:-cuda}    # with DEVICE=gpu: cuda (or cpu, to try the script without CUDA)
THREADS=${THREADS:-"1 $(nproc)"}  # CPU thread counts, the same on both sides
BATCH=${BATCH:-64}
REPS=${REPS:-5}
WIDTH=${WIDTH:-16}
ROUTER=${ROUTER:-image}
# STEP_TOLERANCE, when set, widens the parity check on the logits after two SGD steps
# (advmoe_ref.py --step-tolerance; its default is 1e-2).
step_tolerance=(${STEP_TOLERANCE:+--step-tolerance "$STEP_TOLERANCE"})

[ -x "$ADVMOE" ] || { echo "no $ADVMOE: run cargo build --release -p advmoe-cli, or set ADVMOE" >&2; exit 2; }
"$PYTHON" -c "import torch" 2>/dev/null || { echo "$PYTHON cannot import torch: pip install torch, or set PYTHON" >&2; exit 2; }

compare() { # folder, threads
  local dir=$1 threads=$2
  echo "== $dir" >&2
  RAYON_NUM_THREADS=$threads "$ADVMOE" bench steps --out "$dir" --batch "$BATCH" --reps "$REPS" \
    --width "$WIDTH" --router "$ROUTER" --device "$DEVICE" > /dev/null
  if [ "$DEVICE" = gpu ]; then
    "$PYTHON" bench/reference/advmoe_ref.py "$dir" --device "$REF_DEVICE" --threads "$threads" --reps "$REPS" "${step_tolerance[@]}" > "$dir/reference.json"
    if [ "$REF_DEVICE" = cuda ]; then
      "$PYTHON" bench/reference/advmoe_ref.py "$dir" --device cuda --reps "$REPS" --tf32 "${step_tolerance[@]}" > "$dir/reference-tf32.json"
    fi
    "$PYTHON" bench/reference/advmoe_ref.py "$dir" --device "$REF_DEVICE" --threads "$threads" --reps "$REPS" --moe-conv dense \
      "${step_tolerance[@]}" > "$dir/reference-dense.json" \
      || { echo "== the reference with --moe-conv dense failed (above)" >&2; rm -f "$dir/reference-dense.json"; }
  else
    "$PYTHON" bench/reference/advmoe_ref.py "$dir" --threads "$threads" --reps "$REPS" "${step_tolerance[@]}" > "$dir/reference.json"
  fi
  "$PYTHON" bench/reference/advmoe_ref.py "$dir" --report
}

if [ "$DEVICE" = gpu ]; then
  compare "$OUT/gpu" "$(nproc)"
else
  for threads in $THREADS; do
    compare "$OUT/cpu-$threads-threads" "$threads"
  done
fi
