"""Summarise CubeCL's kernel profile of a run: where a GPU step's time goes, by kernel.

With `[profiling.logger] level = "basic"` and a `file` in a `cubecl.toml` in the working
directory, CubeCL times every kernel it launches and writes one line per launch,
`| <duration> | <kernel>`, plus a summary at each synchronisation (bench/gpu.sh does this for
`advmoe bench steps`). This reads the per-launch lines of one such log and prints markdown: the
time of each kernel family (the kernel's name without its hash; `WgslKernel` is the product's
own sparse convolution kernels, `ReduceKernel` Burn's reductions, `KernelBinop` and the like its
element-wise operations, `MatmulEntry` its matrix products, `Conv`/`Im2col` its convolutions),
then the TOP kernels. Launches whose duration CubeCL could not measure are counted apart.

    python3 bench/profile.py profile.log [--top 15] [--title "advmoe step"]
"""

import argparse
import re
from collections import defaultdict

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
LAUNCH = re.compile(r"^\| (\d+(?:\.\d+)?)(ns|µs|us|ms|s)\s*\| (.+)$")
UNMEASURED = re.compile(r"^\| not measured\s*\| (.+)$")


def family(name):
    """The kernel's family: its name up to the first ` | ` or the trailing `_<hash>`."""
    head = name.split(" | ")[0]
    return re.sub(r"_[0-9a-f]{8}$", "", head)


def cell(name):
    """A name as one markdown table cell (CubeCL joins a kernel's parts with ` | `)."""
    name = name.replace(" | ", " · ")
    return name if len(name) <= 90 else name[:87] + "..."


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    kernels = defaultdict(lambda: [0.0, 0])
    unmeasured = 0
    with open(args.log, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = LAUNCH.match(line)
            if m:
                k = kernels[m.group(3).strip()]
                k[0] += float(m.group(1)) * UNITS[m.group(2)]
                k[1] += 1
            elif UNMEASURED.match(line):
                unmeasured += 1
    if not kernels:
        raise SystemExit(f"{args.log}: no timed kernel launches (is CubeCL's profiling on?)")
    total = sum(ms for ms, _ in kernels.values())
    launches = sum(n for _, n in kernels.values())
    families = defaultdict(lambda: [0.0, 0])
    for name, (ms, n) in kernels.items():
        f = families[family(name)]
        f[0] += ms
        f[1] += n
    if args.title:
        print(f"### {args.title}\n")
    print(f"{launches} kernel launches timed, {total:.1f} ms in all"
          + (f"; {unmeasured} more not measured" if unmeasured else "") + ".\n")
    print("| kernel family | ms | launches | share |")
    print("|---|---|---|---|")
    for name, (ms, n) in sorted(families.items(), key=lambda kv: -kv[1][0]):
        print(f"| {cell(name)} | {ms:.1f} | {n} | {100 * ms / total:.1f}% |")
    print(f"\nThe {args.top} kernels that took longest:\n")
    print("| kernel | ms | launches | ms per launch | share |")
    print("|---|---|---|---|---|")
    for name, (ms, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"| {cell(name)} | {ms:.1f} | {n} | {ms / n:.3f} | {100 * ms / total:.1f}% |")


if __name__ == "__main__":
    main()
