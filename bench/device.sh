#!/usr/bin/env bash
# The GPU figures on a machine lent by the workplace's `device` tool, in one call that builds
# nothing (bench/README.md, "A lent GPU machine"). Pack first, here: bench/device-pack.sh
# writes .device/ (the stripped release binaries, xz-compressed; CIFAR-10; the Vulkan loader),
# which the call carries. On the lent machine, from the repository root:
#
#   bash bench/device.sh perf       # bench/gpu.sh: sparse kernels, steps against PyTorch + cuDNN,
#                                   # and the same on Burn's conv2d, with Burn's autotune and
#                                   # with Burn's kernel fusion
#   bash bench/device.sh compare    # bench/gpu-compare.sh: the paper's comparison on CIFAR-10
#   bash bench/device.sh both       # perf (at most PERF_LIMIT seconds), then compare
#
# Everything it writes goes to $OUT (the tool's folder that comes back, at most 8 files):
# device.log; perf.tar.gz.NN and compare.tar.gz.NN (the scripts' whole output folders, split
# into 15 MB parts: `cat compare.tar.gz.* | tar xz` unpacks them); burn-conv.md, autotune.md,
# fusion.md and compare.md, to read at once. Each script runs under a deadline (DEADLINE seconds for the whole call) and
# is stopped with SIGTERM before it, which `advmoe compare` answers by checkpointing the model in
# training, so a cut comparison is finished by a second call that carries the returned parts
# back in .device/resume/ (compare.tar.gz.NN): they are unpacked before gpu-compare.sh runs
# again, which resumes from them. Settings of gpu.sh and gpu-compare.sh pass through
# (WIDTH, BUDGET, SEED, …); OUT is the tool's and is not passed on.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-both}
RESULTS=${OUT:?set OUT to the folder whose files come back}
unset OUT
PACK=${PACK:-.device}
DEADLINE=${DEADLINE:-570}     # seconds for this whole call (the tool allows at most 600)
PERF_LIMIT=${PERF_LIMIT:-240} # seconds for perf in `both`
WORK=${WORK:-/tmp/advmoe-device}
t0=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - t0) )); }
say() { echo "== $* ($(( $(date +%s) - t0 )) s)"; }
mkdir -p "$RESULTS" "$WORK"
exec > >(tee -a "$RESULTS/device.log") 2>&1
tee_pid=$!
# On any exit, let the log's writer finish before the tool collects RESULTS.
trap 'exec >&- 2>&-; wait "$tee_pid"' EXIT

case $MODE in perf|compare|both) ;; *) echo "usage: bench/device.sh perf|compare|both" >&2; exit 2 ;; esac
[ -f "$PACK/advmoe.xz" ] || { echo "no $PACK/advmoe.xz: run bench/device-pack.sh here and carry $PACK" >&2; exit 2; }
[ -f "$PACK/source" ] && echo "pack: $(head -n 1 "$PACK/source")"

say "setup"
# The Vulkan loader, and the GL vendor-neutral dispatch (libglvnd) that NVIDIA's Vulkan driver
# library (libGLX_nvidia) links against: the H200 lent on 2026-12-04 showed the product no
# adapter until both were unpacked.
if ! ldconfig -p | grep -q 'libvulkan\.so\.1' || ! ldconfig -p | grep -q 'libGLdispatch\.so\.0'; then
  for f in "$PACK"/gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
nvidia=/usr/local/nvidia/share
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nvidia/vulkan/icd.d/nvidia_icd.json" ]; then
  export VK_DRIVER_FILES=$nvidia/vulkan/icd.d/nvidia_icd.json
fi
if [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ] && [ -f "$nvidia/glvnd/egl_vendor.d/10_nvidia.json" ]; then
  export __EGL_VENDOR_LIBRARY_FILENAMES=$nvidia/glvnd/egl_vendor.d/10_nvidia.json
fi
echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-}; $(ldconfig -p | grep -c -E 'libvulkan|libGLdispatch|libGLX_nvidia') of the loader's libraries found"
command -v nvidia-smi > /dev/null && nvidia-smi -L
unxz() { python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2" && chmod +x "$2"; }
unxz "$PACK/advmoe.xz" "$WORK/advmoe" || exit 1
for feature in autotune fusion; do
  if [ -f "$PACK/advmoe-$feature.xz" ]; then unxz "$PACK/advmoe-$feature.xz" "$WORK/advmoe-$feature" || exit 1; fi
done
# The adapter the product's `--device gpu` picks: a software one would spend the lease on
# figures that mean nothing.
adapter=$(VK_LOADER_DEBUG=error,warn "$WORK/advmoe" bench sparse-conv --scale classroom --experts 1 --batch 4 --reps 1 --no-step --json |
  python3 -c 'import json, sys; print(json.loads(sys.stdin.read().splitlines()[0])["device"])')
say "the product's GPU adapter: ${adapter:-none}"
case ${adapter,,} in
  ""|*llvmpipe*|*swiftshader*|*lavapipe*)
    if [ "${ALLOW_SOFTWARE:-0}" != 1 ]; then
      [ -f "${VK_DRIVER_FILES:-}" ] && cat "$VK_DRIVER_FILES" &&
        ldd "$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["ICD"]["library_path"])' "$VK_DRIVER_FILES")" 2>&1 | grep -i -E "not found|nvidia"
      echo "no hardware adapter: check VK_DRIVER_FILES (NVIDIA's ICD file) or pick one with" \
        "CUBECL_WGPU_DEFAULT_DEVICE='DiscreteGpu(0)'; ALLOW_SOFTWARE=1 runs anyway, to test this script" >&2
      exit 1
    fi ;;
esac

# Pack a script's output folder into 15 MB parts in RESULTS (the tool's limit is 16 MB a file).
pack() {
  [ -d "$WORK/$1" ] || return 0
  rm -f "$RESULTS/$1".tar.gz.*
  # Without the benchmarks' initial checkpoints (model-*/: random weights for the reference's
  # parity check), which would take most of the parts.
  tar czf - -C "$WORK" --exclude='model-*' "$1" | split -b 15M -d - "$RESULTS/$1.tar.gz."
}
# Run a script with the time left, less a margin for packing. GNU timeout stops it with SIGTERM
# to its whole process group, which `advmoe` answers by checkpointing; then wait for that.
bounded() {
  local limit=$1; shift
  if [ "$limit" -le 30 ]; then echo "no time left for $*" >&2; return 1; fi
  local s=0
  timeout "$limit" "$@" || s=$?
  for _ in $(seq 40); do pgrep -f "$WORK/advmoe" > /dev/null || break; sleep 1; done
  return "$s"
}

status=0
export ADVMOE=$WORK/advmoe
if [ "$MODE" != compare ]; then
  limit=$(( $(left) - 30 ))
  [ "$MODE" = both ] && [ "$limit" -gt "$PERF_LIMIT" ] && limit=$PERF_LIMIT
  say "perf: bench/gpu.sh, at most $limit s"
  [ -x "$WORK/advmoe-autotune" ] && export ADVMOE_AUTOTUNE=$WORK/advmoe-autotune
  [ -x "$WORK/advmoe-fusion" ] && export ADVMOE_FUSION=$WORK/advmoe-fusion
  rm -rf "$WORK/perf"
  OUT=$WORK/perf bounded "$limit" bash bench/gpu.sh || status=$?
  pack perf
  for f in "$WORK"/perf/{burn-conv/burn-conv.md,autotune/autotune.md,fusion/fusion.md}; do [ -f "$f" ] && cp "$f" "$RESULTS/"; done
  say "perf ended ($status)"
fi
if [ "$MODE" != perf ]; then
  if compgen -G "$PACK/resume/compare.tar.gz.*" > /dev/null && [ ! -d "$WORK/compare" ]; then
    cat "$PACK"/resume/compare.tar.gz.* | tar xzf - -C "$WORK"
    say "resuming the comparison from $PACK/resume"
  fi
  # The comparison trains with the autotune binary where it was packed: on an H200 it made the
  # training steps 4-8 times faster (bench/README.md); COMPARE_AUTOTUNE=0 uses the release one.
  if [ -x "$WORK/advmoe-autotune" ] && [ "${COMPARE_AUTOTUNE:-1}" = 1 ]; then
    export ADVMOE=$WORK/advmoe-autotune
  fi
  limit=$(( $(left) - 45 ))
  # The comparison's own budget (training and evaluation) leaves room for its kernel check,
  # its probe (two short AdvMoE runs) and three reads of the data.
  budget=${BUDGET:-$(( limit - 150 ))}
  say "compare: bench/gpu-compare.sh with ${ADVMOE##*/}, at most $limit s (BUDGET $budget s)"
  s=0
  OUT=$WORK/compare DATA=$PACK/cifar10-jpg.tar.gz BUDGET=$budget \
    bounded "$limit" bash bench/gpu-compare.sh || s=$?
  [ "$s" -ne 0 ] && status=$s
  pack compare
  [ -f "$WORK/compare/compare.md" ] && cp "$WORK/compare/compare.md" "$RESULTS/"
  say "compare ended ($s)"
fi
ls -l "$RESULTS"
exit "$status"
