"""Two runs of `advmoe bench steps` on the same device and model, side by side: prints a markdown
table of each step kind's time in run A and in run B, and B's speed-up (A's time ÷ B's; above 1:
B is faster).
bench/gpu.sh uses it for the release binary against the same built with Burn's autotune
(`--features autotune`), and for Burn's conv2d against the sparse kernels with one expert
(`--gpu-conv own`). Given the two runs' `bench sparse-conv --json` records too, it adds the
geometric mean of the N = 1 sparse kernel's time over Burn's conv2d in each.

    python3 bench/steps_ab.py A/product.json B/product.json [A.jsonl B.jsonl] \\
        [--labels "without autotune" "with autotune"]
"""

import argparse
import json
import math
import sys


def rows(path):
    with open(path) as f:
        report = json.load(f)
    return report, {row["kind"]: row for row in report["rows"]}


def n1_over_burn(path):
    """Geometric means of sparse ÷ Burn conv2d at N = 1, by pass."""
    by_pass = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if row.get("kind") == "conv" and row["experts"] == 1 and row.get("sparse_over_dense"):
                by_pass.setdefault(row["pass"], []).append(math.log(row["sparse_over_dense"]))
    return {p: math.exp(sum(v) / len(v)) for p, v in by_pass.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("records", nargs="*", help="A.jsonl B.jsonl (bench sparse-conv --json)")
    parser.add_argument("--labels", nargs=2, default=["A", "B"])
    args = parser.parse_args()
    if len(args.records) not in (0, 2):
        sys.exit("give both runs' sparse-conv records, or neither")
    la, lb = args.labels
    run_a, a = rows(args.a)
    run_b, b = rows(args.b)
    if run_a["device"] != run_b["device"] or run_a["model"] != run_b["model"]:
        sys.exit(f"the two runs differ in device or model: {run_a['device']!r} / {run_b['device']!r}")
    print(f"{la} against {lb} on {run_a['device']}, batch {run_a['batch']}, "
          f"width {run_a['model']['width']}\n")
    print(f"| step | {la}: ms (first call) | {lb}: ms (first call) | speed-up of {lb} |")
    print("|---|---|---|---|")
    for kind, r in a.items():
        if kind not in b:
            continue
        s = b[kind]
        print(f"| {kind} | {r['median_ms']:.1f} ({r['first_ms']:.0f}) | "
              f"{s['median_ms']:.1f} ({s['first_ms']:.0f}) | "
              f"{r['median_ms'] / s['median_ms']:.2f} |")
    print(f"\nPeak resident memory: {run_a['peak_rss_mib']:.0f} MiB ({la}), "
          f"{run_b['peak_rss_mib']:.0f} MiB ({lb}).")
    if args.records:
        x, y = n1_over_burn(args.records[0]), n1_over_burn(args.records[1])
        for p in sorted(set(x) & set(y)):
            print(f"Sparse kernel at N = 1 ÷ Burn's conv2d, {p} (geometric mean): "
                  f"{x[p]:.2f} ({la}), {y[p]:.2f} ({lb}).")


if __name__ == "__main__":
    main()
