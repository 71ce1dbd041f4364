#!/usr/bin/env python3
"""Figures of models/fashion-mnist/MODEL_CARD.md, from the training runs' metrics and from
samples the running service draws (tooling; needs Debian's python3-matplotlib and python3-pil).

  /usr/bin/python3 scripts/model-card-figures.py --runs runs --out models/fashion-mnist/figures \
      [--grids DIR_WITH_scale_S.png]

Writes loss.png (the diffusion model's training loss), classifier_accuracy.png (held-out accuracy
by noise level) and, given --grids, samples_by_scale.png (the per-scale grids side by side).
"""
import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402


def read_metrics(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def smooth(values, k=5):
    out = []
    for i in range(len(values)):
        window = values[max(0, i - k + 1): i + 1]
        out.append(sum(window) / len(window))
    return out


def loss_figure(metrics, out):
    steps = [m["step"] for m in metrics]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("loss", "loss (mse + vb)"), ("mse", "mse (eps)"), ("vb", "vb (variance)")):
        axes[0].plot(steps, smooth([m[key] for m in metrics]), label=label)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step (batch 32)")
    axes[0].set_title("diffusion training loss")
    axes[0].legend()
    names = ["t in [0, 250)", "[250, 500)", "[500, 750)", "[750, 1000)"]
    for q in range(4):
        key = f"mse_q{q}"
        pts = [(m["step"], m[key]) for m in metrics if key in m]
        axes[1].plot([p[0] for p in pts], smooth([p[1] for p in pts]), label=names[q])
    axes[1].set_yscale("log")
    axes[1].set_xlabel("step")
    axes[1].set_title("eps MSE by quarter of the timestep range")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def classifier_figure(metrics, out):
    evals = [m for m in metrics if "eval_acc@1" in m]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = ["t in [0, 250)", "[250, 500)", "[500, 750)", "[750, 1000)"]
    for q in range(4):
        key = f"eval_acc@1_q{q}"
        pts = [(m["step"], m[key]) for m in evals if key in m]
        axes[0].plot([p[0] for p in pts], smooth([p[1] for p in pts], 3), label=names[q])
    axes[0].set_xlabel("step (batch 64)")
    axes[0].set_ylabel("held-out top-1 accuracy")
    axes[0].set_title("noisy classifier, by noise level")
    axes[0].legend()
    last = evals[-5:]
    accs = []
    for q in range(4):
        vals = [m[f"eval_acc@1_q{q}"] for m in last if f"eval_acc@1_q{q}" in m]
        accs.append(sum(vals) / len(vals) if vals else 0)
    axes[1].bar(range(4), accs, tick_label=names)
    for i, a in enumerate(accs):
        axes[1].text(i, a + 0.01, f"{a:.2f}", ha="center")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("final held-out accuracy (last 5 evaluations)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return accs


def grids_figure(grid_dir, scales, out):
    grids = [Image.open(grid_dir / f"scale_{s}.png").convert("L") for s in scales]
    label_h = 24
    width = sum(g.width for g in grids) + 16 * (len(grids) - 1)
    height = max(g.height for g in grids) + label_h
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for s, g in zip(scales, grids):
        canvas.paste(g, (x, label_h))
        draw.text((x + 4, 4), f"classifier scale {s}", fill=0)
        x += g.width + 16
    canvas = canvas.resize((canvas.width * 2, canvas.height * 2), Image.NEAREST)
    canvas.save(out, optimize=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--out", default="models/fashion-mnist/figures")
    parser.add_argument("--grids", help="folder with scale_0.png, scale_1.png, ...")
    parser.add_argument("--scales", default="0,1,3,10")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = pathlib.Path(args.runs)
    # A run folder trained in another checkout is absent here: its figure stays as committed.
    diffusion = runs / "fashion-mnist-diffusion/metrics.jsonl"
    classifier = runs / "fashion-mnist-classifier/metrics.jsonl"
    if diffusion.exists():
        loss_figure(read_metrics(diffusion), out / "loss.png")
    else:
        print(f"no {diffusion}: loss.png kept as it is")
    if classifier.exists():
        accs = classifier_figure(read_metrics(classifier), out / "classifier_accuracy.png")
        print("held-out accuracy by quarter of t:", ", ".join(f"{a:.3f}" for a in accs))
    else:
        print(f"no {classifier}: classifier_accuracy.png kept as it is")
    if args.grids:
        grids_figure(pathlib.Path(args.grids), args.scales.split(","), out / "samples_by_scale.png")
    print("wrote figures to", out)


if __name__ == "__main__":
    main()
