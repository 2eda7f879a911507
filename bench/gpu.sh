#!/usr/bin/env bash
# The performance comparison on a GPU machine in one call (bench/README.md), building nothing:
# the release binary and this repository's reference are all it needs, plus python3 with torch
# (CUDA) for the reference. It writes into OUT:
#   sparse-conv.jsonl  the sparse MoE conv kernels against the all-experts reference and Burn's
#                      conv2d, forward and forward+backward, N = 1, 2, 4 (`advmoe bench sparse-conv`)
#   steps/gpu/         the training steps and evaluation attacks against PyTorch + cuDNN, fp32,
#                      TF32, and fp32 with every expert on every sample (bench/compare.sh with
#                      DEVICE=gpu): product.json, reference.json, reference-tf32.json,
#                      reference-dense.json, compare.json
#   burn-conv/         the same steps with the models' plain convolutions on Burn's conv2d
#                      (`bench steps --gpu-conv burn`) instead of the sparse kernels with one
#                      expert, and burn-conv.md, each step kind's time on ours against on Burn's
#   burn-bn/           the same steps with the batch norms on Burn's batch_norm_train and
#                      batch_norm (`bench steps --batch-norm burn`), and burn-bn.md, each step
#                      kind's time with the product's fused batch-norm kernels against with Burn's
#   wide-bn/           the same with the train-mode statistics out of tensor operations summed per
#                      image, then over the batch (`--batch-norm wide`, the default before the
#                      fused kernels), and wide-bn.md
#   burn-elementwise/  the same with the element-wise updates (each parameter's optimiser step,
#                      the running statistics, each L-inf attack step, the residual ReLU) as Burn's
#                      tensor operations (`--elementwise burn`) instead of one kernel of ours each,
#                      and burn-elementwise.md
#   profile/           CubeCL's kernel profile of two calls of each of PROFILE_KINDS (default
#                      advmoe,trades,pgd10-eval): <kind>/profile.log (every launch timed) and
#                      profile.md (bench/profile.py: the time by kernel family and the top kernels)
#   autotune/          with ADVMOE_AUTOTUNE (a binary built with `--features autotune`): the same
#                      steps and the N = 1 sparse conv against Burn's conv2d with Burn's autotune
#                      on, and autotune.md, each step kind's time without it against with it
#   fusion/            with ADVMOE_FUSION (a binary built with `--features fusion`): the same steps
#                      with Burn's kernel fusion, and fusion.md: first whether both builds compute
#                      the same (their parity records), then each step kind's time
# Ended inside 9 minutes on an H200 (191 s there, 2026-12-04, before the dense reference, burn-bn/
# and profile/ were added: a few more runs of seconds each there); on a software adapter
# (lavapipe) use tiny settings, e.g. WIDTH=8 BATCH=8 REPS=1 SCALE=classroom REF_DEVICE=cpu.
set -euo pipefail
cd "$(dirname "$0")/.."

export ADVMOE=${ADVMOE:-target/release/advmoe}
OUT=${OUT:-runs/gpu}
export WIDTH=${WIDTH:-32} BATCH=${BATCH:-128} REPS=${REPS:-5}
SCALE=${SCALE:-all}           # the sparse-conv shapes: classroom, paper or all
mkdir -p "$OUT"

echo "== sparse conv kernels" >&2
"$ADVMOE" bench sparse-conv --scale "$SCALE" --experts 1,2,4 --batch "$BATCH" --reps "$REPS" --json \
  > "$OUT/sparse-conv.jsonl"
echo "== training steps against PyTorch" >&2
# The product's side (steps/gpu/product.json) is written before the reference checks and times
# its own: the comparisons below need only that, so a failed check stops none of them.
DEVICE=gpu OUT="$OUT/steps" bench/compare.sh || echo "== the reference's check or timing failed (above)" >&2
# The step kinds again, as compare.sh times them on the product's side: binary, folder, flags.
steps() {
  local binary=$1 out=$2; shift 2
  "$binary" bench steps --out "$out" --batch "$BATCH" --reps "$REPS" --width "$WIDTH" \
    --router "${ROUTER:-image}" --device gpu "$@" > /dev/null
}
# The step kinds again with one of the product's paths swapped for an alternative, and the table
# of the two: folder name (NAME/NAME.md), the product path's label, the alternative's, its flags.
alternative() {
  local name=$1 ours=$2 theirs=$3; shift 3
  echo "== the same steps with $theirs" >&2
  steps "$ADVMOE" "$OUT/$name/steps" "$@"
  python3 bench/steps_ab.py "$OUT/steps/gpu/product.json" "$OUT/$name/steps/product.json" \
    --labels "$ours" "$theirs" | tee "$OUT/$name/$name.md"
}
alternative burn-conv "own kernels" "Burn's conv2d" --gpu-conv burn
alternative burn-bn "fused kernels" "Burn's batch norm" --batch-norm burn
alternative wide-bn "fused kernels" "wide reductions" --batch-norm wide
alternative burn-elementwise "element-wise kernels" "Burn's element-wise operations" --elementwise burn
echo "== CubeCL's kernel profile of the steps" >&2
# Timing every launch slows a run down, so the times above come from runs without it.
mkdir -p "$OUT/profile"
rm -f "$OUT/profile/profile.md"
for kind in $(echo "${PROFILE_KINDS:-advmoe,trades,pgd10-eval}" | tr , ' '); do
  bench/profile-steps.sh "$ADVMOE" "$OUT/profile/$kind" --kinds "$kind" --batch "$BATCH" --width "$WIDTH" \
    --router "${ROUTER:-image}" -- --title "$kind: two calls (the first and one more)" | tee -a "$OUT/profile/profile.md"
  echo >> "$OUT/profile/profile.md"
done
if [ -n "${ADVMOE_AUTOTUNE:-}" ]; then
  # The same binary built with Burn's autotune (off in the product: on lavapipe it gained
  # nothing and cost seconds of tuning at each new shape; bench/README.md).
  echo "== the same steps with Burn's autotune" >&2
  mkdir -p "$OUT/autotune"
  "$ADVMOE_AUTOTUNE" bench sparse-conv --scale "$SCALE" --experts 1 --batch "$BATCH" --reps "$REPS" \
    --no-step --json > "$OUT/autotune/sparse-conv.jsonl"
  steps "$ADVMOE_AUTOTUNE" "$OUT/autotune/steps"
  python3 bench/steps_ab.py "$OUT/steps/gpu/product.json" "$OUT/autotune/steps/product.json" \
    "$OUT/sparse-conv.jsonl" "$OUT/autotune/sparse-conv.jsonl" --labels release autotune \
    | tee "$OUT/autotune/autotune.md"
fi
if [ -n "${ADVMOE_FUSION:-}" ]; then
  # The same binary built with Burn's kernel fusion (off in the product; bench/README.md). Its
  # times are compared only if its parity records match the release binary's.
  echo "== the same steps with Burn's kernel fusion" >&2
  mkdir -p "$OUT/fusion"
  steps "$ADVMOE_FUSION" "$OUT/fusion/steps"
  python3 bench/steps_ab.py "$OUT/steps/gpu/product.json" "$OUT/fusion/steps/product.json" \
    --labels release fusion --parity | tee "$OUT/fusion/fusion.md"
fi
