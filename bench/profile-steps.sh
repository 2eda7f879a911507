#!/usr/bin/env bash
# CubeCL's kernel profile of `advmoe bench steps` on the GPU, summarised (bench/README.md,
# "Kernel profiles"): DIR gets a cubecl.toml asking CubeCL to time every launch, the binary runs
# there (CubeCL reads its configuration from the working directory) without parity records, so
# DIR/profile.log holds the timed calls, and bench/profile.py prints the summary. Extra arguments
# go to `bench steps` (--kinds, --width, --batch, ...). bench/gpu.sh and CI run it.
#
#   bench/profile-steps.sh BINARY DIR [bench steps arguments] [-- profile.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(realpath "$1") dir=$2
shift 2
steps_args=() summary_args=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do steps_args+=("$1"); shift; done
[ $# -gt 0 ] && shift && summary_args=("$@")
mkdir -p "$dir"
printf '[profiling.logger]\nlevel = "basic"\nfile = "profile.log"\n' > "$dir/cubecl.toml"
(cd "$dir" && rm -f profile.log && "$binary" bench steps --out steps --reps 1 --no-parity --device gpu \
  "${steps_args[@]}" > /dev/null)
python3 bench/profile.py "$dir/profile.log" "${summary_args[@]}"
