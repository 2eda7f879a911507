#!/usr/bin/env bash
# The AdvMoE paper's comparison on CIFAR-10 on one GPU, in one call of bounded time.
#
#   bench/gpu-compare.sh                 # uses target/release/advmoe and ../shared/data
#   ADVMOE=path/to/advmoe DATA=cifar10-jpg.tar.gz OUT=runs/gpu-compare BUDGET=480 bench/gpu-compare.sh
#
# It builds nothing. Steps:
#  1. the sparse kernels' parity check and timings on this device (`advmoe bench sparse-conv`,
#     which refuses to time a kernel that disagrees with the reference);
#  2. a probe: two short AdvMoE runs (PROBE_SHORT and PROBE_LONG steps) give the seconds per
#     AdvMoE step on this device, first-step shader compilation excluded;
#  3. `advmoe compare --preset paper` with every model at the same number of steps, the largest
#     that fits BUDGET seconds (at most STEPS), evaluated under PGD-EVAL_STEPS, router and expert
#     attacks on the first EVAL_SIZE test images (class-interleaved: EVAL_SIZE/10 per class),
#     and the headline robust accuracy as the per-image worst case over PGD and AutoAttack's
#     white-box pair (APGD-CE and APGD-T on the DLR loss against 9 target classes) of
#     WORST_STEPS iterations each (WORST_STEPS=0 leaves it out). At each of the 10 curve points
#     it also measures robust accuracy and router robustness on CURVE_ROBUST test images (the
#     robust training curves: RA and expert load over steps; 0 leaves them out);
#     Every model is also measured under the paper's released evaluation attack (PGD-EVAL_STEPS
#     through the gates plus 6 times the router's partition cross-entropy: `--released-eval`),
#     its own column in compare.md, never the headline RA. Each image's outcomes are kept
#     (--per-image), so compare.md tests AdvMoE's gaps to the other models image by image.
# Another seed: SEED=1 OUT=runs/gpu-compare-seed1 SAME_AS=runs/gpu-compare takes the first call's
# step count and ends with `advmoe seeds` over both (OUT/seeds/seeds.md).
# Resumable: models already finished in OUT with the same settings are not trained again and
# the model in progress continues from its checkpoint (written every 5 minutes of training and
# of evaluation, and between the two), so a cut call loses at most 5 minutes; rerun to finish (the chosen
# step count is kept in OUT/steps).
set -euo pipefail
cd "$(dirname "$0")/.."

ADVMOE=${ADVMOE:-target/release/advmoe}
DATA=${DATA:-../shared/data/cifar10-jpg.tar.gz}
OUT=${OUT:-runs/gpu-compare}
DEVICE=${DEVICE:-gpu}
BUDGET=${BUDGET:-480}          # seconds for training and evaluating all models
STEPS=${STEPS:-3000}           # upper bound of the steps per model (3,000 = 7.7 epochs at 128)
WIDTH=${WIDTH:-32}             # base width b of the ResNet-10 (the reference's)
EVAL_SIZE=${EVAL_SIZE:-2000}   # test images every model is evaluated on
EVAL_STEPS=${EVAL_STEPS:-20}   # PGD steps of the evaluation attacks (step 2/255, ε 8/255)
EVAL_EVERY=${EVAL_EVERY:-0}    # curve points: 0 picks 10 per run
WORST_STEPS=${WORST_STEPS:-20} # iterations of each worst-case attack (0: no worst case)
CURVE_ROBUST=${CURVE_ROBUST:-200} # test images attacked at each curve point (0: clean curves only)
PROBE_SHORT=${PROBE_SHORT:-5}
PROBE_LONG=${PROBE_LONG:-25}
MODELS=${MODELS:-advmoe,moe-at,dense-same-cost-trades,moe-at-balanced,dense-full-trades}
SEED=${SEED:-0}                # training and evaluation seed: a second seed measures training noise
SAME_AS=${SAME_AS:-}           # OUT of an earlier seed: take its steps, then summarise both seeds

mkdir -p "$OUT"
t0=$(date +%s)
say() { echo "== $* ($(( $(date +%s) - t0 )) s)"; }

say "device check: sparse kernels against the reference"
"$ADVMOE" bench sparse-conv --scale classroom --experts 2 --batch 32 --reps 3 --no-step

model_flags=(--width "$WIDTH" --depth 1 --experts 2 --ratio 0.5 --router image)
if [ -n "$SAME_AS" ] && [ ! -f "$OUT/steps" ]; then
  # Another seed of an earlier call: the same steps, so that `advmoe seeds` can compare them.
  [ -f "$SAME_AS/steps" ] || { echo "SAME_AS=$SAME_AS has no steps file: run that seed first" >&2; exit 1; }
  cp "$SAME_AS/steps" "$OUT/steps"
fi
if [ -f "$OUT/steps" ]; then
  steps=$(cat "$OUT/steps")
  say "resuming with $steps steps per model (from $OUT/steps)"
else
  probe() {
    "$ADVMOE" train --data "$DATA" "${model_flags[@]}" --method advmoe \
      --router-objective class-partition --lr 0.1 --batch-size 128 --steps "$1" \
      --eval-every 100000 --eval-size 100 --device "$DEVICE" --out "$OUT/probe" 2>&1 |
      tee "$OUT/probe.log" | sed -n 's/^done: \([0-9]*\) steps in \([0-9.]*\) s.*/\2/p'
  }
  say "probe: AdvMoE steps on $DEVICE"
  short=$(probe "$PROBE_SHORT")
  long=$(probe "$PROBE_LONG")
  rm -rf "$OUT/probe"
  steps=$(python3 - "$short" "$long" "$BUDGET" "$STEPS" "$EVAL_SIZE" "$EVAL_STEPS" "$PROBE_SHORT" "$PROBE_LONG" "$WORST_STEPS" "$CURVE_ROBUST" <<'EOF'
import sys
short, long_, budget, cap, eval_size, eval_steps, n_short, n_long, worst_steps, curve = map(float, sys.argv[1:])
per_step = max((long_ - short) / (n_long - n_short), 1e-4)
# One AdvMoE step is two inner attacks of 2 steps and two training passes (about 10 forward and
# backward passes of a batch of 128); the other four models take about 2.5 AdvMoE steps per step
# together. Evaluation: three attacks (full, expert, the released evaluation's) of eval_steps on
# eval_size images, the router
# attack (PGD-20 from 2 starts: 40 passes through the image router alone, 2.8 MMACs against
# about 23 for router and pathway at width 32, 8 at width 16: counted as a quarter pass each),
# and the worst case's 1 + 9 attacks of worst_steps. Each of the 10 curve points attacks `curve`
# images with PGD-10 on the full and the expert targets and a 5-step router attack.
eval_equiv = (3 * eval_steps + 40 / 4 + 10 * worst_steps) * (eval_size / 128) / 10
curve_equiv = 10 * (2 * 10 + 5 / 4) * (curve / 128) / 10
train_budget = budget - 5 * (eval_equiv + curve_equiv) * per_step - 30
steps = int(min(cap, max(20, train_budget / (3.5 * per_step))))
print(steps)
print(f"{per_step:.3f} s per AdvMoE step; {steps} steps per model", file=sys.stderr)
EOF
)
  echo "$steps" > "$OUT/steps"
fi
every=$EVAL_EVERY
[ "$every" -gt 0 ] || every=$(( (steps + 9) / 10 ))

worst_flags=()
[ "$WORST_STEPS" -gt 0 ] && worst_flags=(--worst-case --worst-case-steps "$WORST_STEPS")

say "compare: $steps steps per model, evaluation on $EVAL_SIZE test images"
"$ADVMOE" compare --preset paper --data "$DATA" "${model_flags[@]}" \
  --train-steps "$steps" --eval-every "$every" --eval-size "$EVAL_SIZE" --curve-robust "$CURVE_ROBUST" \
  --attack pgd --steps "$EVAL_STEPS" "${worst_flags[@]}" --released-eval --per-image --models "$MODELS" --seed "$SEED" \
  --device "$DEVICE" --out "$OUT"
say "done: $OUT/compare.md, $OUT/compare.json and one folder per model"
if [ -n "$SAME_AS" ]; then
  "$ADVMOE" seeds "$SAME_AS" "$OUT" --out "$OUT/seeds" > /dev/null
  say "over the seeds: $OUT/seeds/seeds.md"
fi
