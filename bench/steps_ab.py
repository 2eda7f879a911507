"""Two runs of `advmoe bench steps` on the same device and model, side by side: prints a markdown
table of each step kind's time in run A and in run B, and B's speed-up (A's time ÷ B's; above 1:
B is faster).
bench/gpu.sh uses it for the release binary against the same built with Burn's autotune
(`--features autotune`), and for the sparse kernels with one expert against Burn's conv2d
(`--gpu-conv burn`). Given the two runs' `bench sparse-conv --json` records too, it adds the
geometric mean of the N = 1 sparse kernel's time over Burn's conv2d in each. With `--parity`
it first checks that the two builds compute the same thing: each model's parity record
(`parity.safetensors`: logits, router scores and the TRADES loss of the initial model, the
logits after one and two SGD steps) in A's folder against B's, and fails above `--tolerance`
(bench/gpu.sh uses this for the build with Burn's kernel fusion, `--features fusion`).

    python3 bench/steps_ab.py A/product.json B/product.json [A.jsonl B.jsonl] \\
        [--labels "without autotune" "with autotune"] [--parity] [--tolerance 1e-3]
"""

import argparse
import array
import json
import math
import os
import struct
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


def read_f32(path):
    """The F32 tensors of a safetensors file, flat, by name."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        values = array.array("f")
        values.frombytes(body[start:end])
        if sys.byteorder != "little":
            values.byteswap()
        out[name] = values
    return out


def parity(dir_a, dir_b, tolerance):
    """Each model's parity record in A against B: the largest difference of each tensor,
    relative to the largest magnitude in A's. Returns the lines to print, and whether every
    tensor agreed within `tolerance`."""
    lines, ok = [], True
    for model in sorted(os.listdir(dir_a)):
        a_path = os.path.join(dir_a, model, "parity.safetensors")
        b_path = os.path.join(dir_b, model, "parity.safetensors")
        if not (os.path.isfile(a_path) and os.path.isfile(b_path)):
            continue
        a, b = read_f32(a_path), read_f32(b_path)
        if a.keys() != b.keys():
            return [f"{model}: the records hold different tensors"], False
        worst, worst_name = 0.0, ""
        for name, x in a.items():
            y = b[name]
            if len(x) != len(y):
                return [f"{model}: {name} has {len(x)} values in A and {len(y)} in B"], False
            scale = max((abs(v) for v in x), default=0.0) or 1.0
            diff = max((abs(u - v) for u, v in zip(x, y)), default=0.0) / scale
            if math.isnan(diff) or diff > worst:
                worst, worst_name = diff, name
        agrees = worst <= tolerance
        ok = ok and agrees
        lines.append(f"{model}: {len(a)} tensors, largest relative difference {worst:.1e} "
                     f"({worst_name or '-'}){'' if agrees else f', above {tolerance:g}'}")
    if not lines:
        return ["no parity record found in both folders"], False
    return lines, ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("records", nargs="*", help="A.jsonl B.jsonl (bench sparse-conv --json)")
    parser.add_argument("--labels", nargs=2, default=["A", "B"])
    parser.add_argument("--parity", action="store_true",
                        help="check the parity records beside the two product.json first")
    parser.add_argument("--tolerance", type=float, default=1e-3)
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
    if args.parity:
        lines, ok = parity(os.path.dirname(args.a) or ".", os.path.dirname(args.b) or ".",
                           args.tolerance)
        print(f"Same results ({lb} against {la}, parity records):\n")
        for line in lines:
            print(f"- {line}")
        print()
        if not ok:
            sys.exit(f"{lb} does not compute what {la} computes: not comparing its times")
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
