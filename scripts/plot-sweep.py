#!/usr/bin/env python3
"""Plots a gd-eval sweep: FID, precision, recall, IS and label agreement against the classifier
scale, one line per sampler setting, the real-data row (when present) as a dashed line.

Usage (Debian's Python with matplotlib: apt-get install python3-matplotlib):
  /usr/bin/python3 scripts/plot-sweep.py runs/sweep/sweep.csv [-o runs/sweep/sweep.png]
  /usr/bin/python3 scripts/plot-sweep.py a/sweep.csv b/sweep.csv -o both.png   # sweeps together
Several CSVs are drawn in one figure (a sampler setting found in two is drawn from both); they
must have the same samples per point and the same reference batch to be comparable.
"""
import argparse
import csv
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = [
    ("fid", "FID (lower is better)"),
    ("precision", "precision (fidelity)"),
    ("recall", "recall (diversity)"),
    ("inception_score", "IS"),
    ("agreement", "label agreement"),
    ("speckled", "speckled fraction (lower is better)"),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("csv", nargs="+", help="sweep.csv files written by gd-eval sweep")
    parser.add_argument("-o", "--out", help="PNG to write (default: beside the first CSV)")
    args = parser.parse_args()
    out = args.out or os.path.splitext(args.csv[0])[0] + ".png"

    series = defaultdict(list)
    real = None
    for path in args.csv:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row["sampler"] == "real":
                    real = real or row
                else:
                    series[f'{row["sampler"]} {row["steps"]}'].append(row)

    fig, grid = plt.subplots(2, 3, figsize=(12, 7))
    axes = grid.flatten()
    densest = max((len(rows) for rows in series.values()), default=0)
    for ax, (key, title) in zip(axes, METRICS):
        for name, rows in sorted(series.items()):
            points = [(float(r["classifier_scale"]), float(r[key])) for r in rows if r.get(key)]
            points.sort()
            # A setting measured at fewer scales is dotted: its lines span unmeasured scales.
            sparse = len(rows) < densest
            if points:
                ax.plot(*zip(*points), marker="o", linestyle=":" if sparse else "-",
                        label=f"{name} ({len(rows)} scales)" if sparse else name)
        if real is not None and real.get(key):
            ax.axhline(float(real[key]), color="grey", linestyle="--", label="real images")
        ax.set_title(title)
        ax.set_xlabel("classifier scale")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    num_samples = next(iter(series.values()))[0]["num_samples"] if series else "?"
    fig.suptitle(f"gd-eval sweep, {num_samples} samples per point "
                 "(evaluator feature space; not comparable with ImageNet numbers)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
