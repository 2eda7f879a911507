#!/usr/bin/env bash
# Packs into .device/ what bench/device.sh needs on a GPU machine lent by the workplace's
# `device` tool, which builds nothing there and reaches no network (bench/README.md, "A lent GPU
# machine"):
#   advmoe.xz           the release CLI, stripped and xz-compressed (x86-64)
#   advmoe-autotune.xz  the same built with `--features autotune` (AUTOTUNE=0 leaves it out)
#   advmoe-fusion.xz    the same built with `--features fusion` (FUSION=0 leaves it out)
#   cifar10-jpg.tar.gz  the data (DATA), for bench/gpu-compare.sh
#   gl/*.deb            the Vulkan loader (libvulkan1) and libglvnd, unpacked there when it lacks either
#   source              the commit and a digest of the files the binaries are built from
# .device/ is ignored by git; the call carries it (`carry: [".device"]`) with the working tree,
# 64 MiB in all, which this script checks. It leaves target/release/advmoe built without either
# feature. A pack outlives its session (it takes about 35 minutes on 2 cores):
# `bench/device-pack.sh check` says whether .device/ was packed from the sources checked out now,
# so that a later session lent a machine can spend none of its time packing again.
set -euo pipefail
cd "$(dirname "$0")/.."

PACK=.device
# What the release binaries are built from, and the digest of its tracked files as on disk.
SOURCES=(crates shaders Cargo.toml Cargo.lock rust-toolchain.toml .cargo)
digest() {
  git ls-files -z "${SOURCES[@]}" |
    LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}
if [ "${1:-}" = check ]; then
  [ -f "$PACK/source" ] || { echo "$PACK: no pack (or one from before packs were stamped)"; exit 1; }
  packed=$(sed -n 's/^digest //p' "$PACK/source")
  if [ "$packed" = "$(digest)" ]; then
    echo "$PACK is current: $(head -n 1 "$PACK/source")"
  else
    echo "$PACK is stale: packed from $(head -n 1 "$PACK/source"); the sources have changed since"
    exit 1
  fi
  exit 0
fi

DATA=${DATA:-../shared/data/cifar10-jpg.tar.gz}
AUTOTUNE=${AUTOTUNE:-1}
FUSION=${FUSION:-1}
mkdir -p "$PACK/gl"

[ "$(uname -m)" = x86_64 ] || { echo "the lent machine is x86-64: pack on an x86-64 machine" >&2; exit 2; }
[ -f "$DATA" ] || { echo "no $DATA: set DATA to CIFAR-10's image-folder archive" >&2; exit 2; }

binary() { # name, cargo flags…
  local name=$1; shift
  cargo build --release -p advmoe-cli "$@"
  strip -o "$PACK/$name" target/release/advmoe
  xz -T0 -6 -f "$PACK/$name"
  echo "$PACK/$name.xz: $(stat -c %s "$PACK/$name.xz") bytes"
}
for feature in autotune fusion; do
  flag=${feature^^}
  if [ "${!flag}" = 1 ]; then
    binary "advmoe-$feature" --features "$feature"
  else
    rm -f "$PACK/advmoe-$feature.xz"
  fi
done
binary advmoe   # last, so that target/release/advmoe is the product's again
printf 'commit %s%s, packed %s\ndigest %s\n' "$(git rev-parse --short HEAD)" \
  "$(git diff --quiet HEAD -- "${SOURCES[@]}" || echo ' (with changes not committed)')" \
  "$(date -u +%Y-%m-%dT%H:%MZ)" "$(digest)" > "$PACK/source"

cp "$DATA" "$PACK/cifar10-jpg.tar.gz"
rm -f "$PACK"/gl/*.deb
# libglvnd's libraries too: NVIDIA's Vulkan driver library links against libGLdispatch.
(cd "$PACK/gl" && apt-get download libvulkan1 libglvnd0 libegl1 libgl1 libglx0 libopengl0 libgles2 > /dev/null 2>&1) ||
  { echo "apt-get download of the Vulkan loader and libglvnd failed" >&2; exit 1; }

size=$(du -sb "$PACK" --exclude=resume | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2> /dev/null | tail -n 1 | cut -f1)
echo "$PACK: $size bytes; tracked files: $tree bytes"
# The tracked files are counted exactly; 2 MiB are left for untracked files and the transfer's
# own overhead (the pack and the tree came to 60.01 MiB on 2026-12-05).
if [ $(( size + tree )) -gt $(( 62 * 1024 * 1024 )) ]; then
  echo "over the 64 MiB a call may carry: AUTOTUNE=0 or FUSION=0 leaves a binary out" >&2
  exit 1
fi
cat <<'EOF'
Then, with the device tool (timeout_s 600; bench/device.sh stops itself at DEADLINE=570 s):
  run  command: bash bench/device.sh perf       carry: [".device"]
  run  command: bash bench/device.sh compare    carry: [".device"]
A cut comparison continues when its returned compare.tar.gz.* parts are copied into
.device/resume/ and the same command runs again.
EOF
