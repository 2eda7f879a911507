"""Burn's autotune against the product as built: prints a markdown table from two runs of
`advmoe bench steps` on the same device, one by the release binary (autotune off) and one by the
same sources built with `--features autotune` (bench/gpu.sh runs both). Given the two runs'
`bench sparse-conv --json` records too, it adds the geometric mean of the N = 1 sparse kernel's
time over Burn's conv2d, which autotune changes on Burn's side only.

    python3 bench/autotune.py WITHOUT/product.json WITH/product.json [WITHOUT.jsonl WITH.jsonl]
"""

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


def main(argv):
    if len(argv) not in (2, 4):
        sys.exit(__doc__)
    without, a = rows(argv[0])
    with_, b = rows(argv[1])
    if without["device"] != with_["device"] or without["model"] != with_["model"]:
        sys.exit("the two runs differ in device or model: "
                 f"{without['device']!r} / {with_['device']!r}")
    print(f"Burn's autotune on {without['device']}, batch {without['batch']}, "
          f"width {without['model']['width']}\n")
    print("| step | without: ms (first call) | with autotune: ms (first call) | speed-up |")
    print("|---|---|---|---|")
    for kind, r in a.items():
        if kind not in b:
            continue
        s = b[kind]
        print(f"| {kind} | {r['median_ms']:.1f} ({r['first_ms']:.0f}) | "
              f"{s['median_ms']:.1f} ({s['first_ms']:.0f}) | "
              f"{r['median_ms'] / s['median_ms']:.2f} |")
    print(f"\nPeak resident memory: {without['peak_rss_mib']:.0f} MiB without, "
          f"{with_['peak_rss_mib']:.0f} MiB with autotune.")
    if len(argv) == 4:
        x, y = n1_over_burn(argv[2]), n1_over_burn(argv[3])
        for p in sorted(set(x) & set(y)):
            print(f"Sparse kernel at N = 1 ÷ Burn's conv2d, {p} (geometric mean): "
                  f"{x[p]:.2f} against Burn without autotune, {y[p]:.2f} with it.")


if __name__ == "__main__":
    main(sys.argv[1:])
