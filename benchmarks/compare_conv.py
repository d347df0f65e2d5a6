"""Two bench_conv2d records side by side: what a change did to each layer and direction.

    python benchmarks/compare_conv.py NEW.json                 # against the newest older record of its GPU
    python benchmarks/compare_conv.py NEW.json --against OLD.json
    python benchmarks/compare_conv.py NEW.json --other-gpu-ok  # the newest of another GPU where its own has none
    python benchmarks/compare_conv.py NEW.json --variants      # every variant, not only each cell's fastest
    python benchmarks/compare_conv.py NEW.json --json

A cell is (precision, direction, layer, batch, layout). For each cell in both records: the fastest
variant's milliseconds in the old record and in the new (its variant named when it changed), the speedup
(old / new), and the new one against cuDNN (PyTorch, timed in the same run). Then per precision
and direction the geometric mean of the speedups, and how many cells reach 0.8x cuDNN, the
target of the tensor-core work. Timings of different GPUs are not compared: the default old
record is the newest one of the same device (``environment.device``) timed before the new one
that shares cells with it; --against names another, --other-gpu-ok falls back to the newest of another
GPU where there is none (a warning says when its device differs: the speedups then compare two GPUs,
while the columns against cuDNN, each timed on its own GPU, still compare).
The battery (run_gpu.sh) prints this after its conv stage.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402

TARGET = 0.8  # the goal per direction: >= 0.8x cuDNN


def load(path) -> dict:
    record = json.loads(pathlib.Path(path).read_text())
    if record.get("benchmark") != "conv2d":
        raise SystemExit(f"{path}: not a bench_conv2d record (benchmark={record.get('benchmark')!r})")
    return record


def cells(record) -> dict:
    """{(precision, direction, layer, batch, layout): {variant: row}} of the rows that were timed (a
    layer timed at another batch or layout is another cell)."""
    out = {}
    for row in record["results"]:
        if row.get("ms") is None:
            continue
        key = (row["precision"], row["direction"], row["layer"], row.get("batch"), row.get("layout"))
        out.setdefault(key, {})[row["variant"]] = row
    return out


def fastest(variants: dict) -> dict:
    return min(variants.values(), key=lambda r: r["ms"])


def previous_record(new_path, results_dir=None, other_gpu_ok=False):
    """The newest conv2d record of the same device as ``new_path``'s, timed before it, that
    shares at least one cell with it (None if there is none); with ``other_gpu_ok``, where the
    device has none, the newest such record of any other device."""
    new_path = pathlib.Path(new_path)
    new = load(new_path)
    new_cells = set(cells(new))
    device, date = new["environment"]["device"], new["environment"]["date"]
    found = []
    for path in pathlib.Path(results_dir or common.results_dir()).glob("conv2d-*.json"):
        if path.resolve() == new_path.resolve():
            continue
        try:
            old = load(path)
        except (ValueError, SystemExit):
            continue
        env = old.get("environment", {})
        if env.get("date", "") < date and new_cells & set(cells(old)):
            found.append((env.get("device") == device, env["date"], path))
    if not other_gpu_ok:
        found = [f for f in found if f[0]]
    return max(found)[2] if found else None  # the same device's first


def compare(new: dict, old: dict, per_variant: bool = False) -> list:
    """Rows of the comparison, one per common cell (per common variant with ``per_variant``)."""
    rows = []
    new_cells, old_cells = cells(new), cells(old)
    for key in [k for k in new_cells if k in old_cells]:  # the new record's order
        precision, direction, layer = key[:3]
        pairs = ([(v, new_cells[key][v], old_cells[key][v]) for v in sorted(set(new_cells[key]) & set(old_cells[key]))]
                 if per_variant else [(None, fastest(new_cells[key]), fastest(old_cells[key]))])
        for variant, n, o in pairs:
            rows.append({"precision": precision, "direction": direction, "layer": layer,
                         "variant": n["variant"], "old_variant": o["variant"], "ms": n["ms"], "old_ms": o["ms"],
                         "speedup": o["ms"] / n["ms"], "tflops": n.get("tflops"),
                         "vs_cudnn": n.get("speed_vs_torch"), "old_vs_cudnn": o.get("speed_vs_torch")})
    return rows


def summary(rows: list) -> list:
    """Per (precision, direction): the geometric mean speedup and the cells at the target."""
    groups = {}
    for r in rows:
        groups.setdefault((r["precision"], r["direction"]), []).append(r)
    out = []
    for (precision, direction), rs in sorted(groups.items()):
        ratios = [r["vs_cudnn"] for r in rs if r["vs_cudnn"] is not None]
        out.append({"precision": precision, "direction": direction, "cells": len(rs),
                    "geomean_speedup": math.exp(sum(math.log(r["speedup"]) for r in rs) / len(rs)),
                    "at_target": sum(x >= TARGET for x in ratios), "with_cudnn": len(ratios),
                    "worst_vs_cudnn": min(ratios) if ratios else None})
    return out


def _ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def main(argv=None):
    p = argparse.ArgumentParser(description=common.description(__doc__))
    p.add_argument("new", help="a bench_conv2d record (benchmarks/results/conv2d-*.json)")
    p.add_argument("--against", default=None,
                   help="the older record (default: the newest earlier record of the same GPU sharing cells)")
    p.add_argument("--other-gpu-ok", action="store_true",
                   help="where no earlier record of the same GPU shares a cell, the newest of another GPU (with a "
                        "warning: its speedups compare two GPUs; the columns against cuDNN, each timed on its own "
                        "GPU, still compare)")
    p.add_argument("--variants", action="store_true", help="compare every variant timed in both, not the fastest")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    new = load(args.new)
    old_path = args.against or previous_record(args.new, other_gpu_ok=args.other_gpu_ok)
    if old_path is None:
        print(f"compare_conv: no earlier conv2d record of {new['environment']['device']} "
              f"{'or of another GPU ' if args.other_gpu_ok else ''}shares a cell with {args.new}; name one "
              f"with --against{'' if args.other_gpu_ok else ' (or allow another GPU with --other-gpu-ok)'}",
              file=sys.stderr)
        return 2
    old = load(old_path)
    if old["environment"].get("device") != new["environment"].get("device"):
        print(f"warning: {old_path} was timed on {old['environment'].get('device')}, {args.new} on "
              f"{new['environment'].get('device')}: the speedups compare two GPUs", file=sys.stderr)
    rows = compare(new, old, per_variant=args.variants)
    if not rows:
        print(f"compare_conv: {args.new} and {old_path} share no timed cell", file=sys.stderr)
        return 2
    totals = summary(rows)
    if args.json:
        print(json.dumps({"new": str(args.new), "old": str(old_path), "rows": rows, "summary": totals}, indent=2))
        return 0
    print(f"{args.new} ({new['environment'].get('git_commit', '?')}) against {old_path} "
          f"({old['environment'].get('git_commit', '?')}), {new['environment'].get('device')}")
    table = [{**r, "was": r["old_variant"] if r["old_variant"] != r["variant"] else "",
              "vs": _ratio(r["vs_cudnn"]), "old_vs": _ratio(r["old_vs_cudnn"])} for r in rows]
    common.print_table(table, [("precision", "precision", ""), ("direction", "direction", ""), ("layer", "layer", ""),
                               ("variant", "variant", ""), ("was", "was", ""), ("old_ms", "old ms", ".3f"),
                               ("ms", "ms", ".3f"), ("speedup", "speedup", ".2f"), ("old_vs", "old vs cuDNN", ""),
                               ("vs", "vs cuDNN", "")])
    for t in totals:
        worst = "" if t["worst_vs_cudnn"] is None else f", worst {t['worst_vs_cudnn']:.2f}x"
        print(f"{t['precision']:5s} {t['direction']:16s} {t['cells']} cells: {t['geomean_speedup']:.2f}x the old "
              f"(geometric mean); {t['at_target']}/{t['with_cudnn']} at >= {TARGET}x cuDNN{worst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
