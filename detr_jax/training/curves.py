"""Training curves of one or more runs: evaluation AP and training loss against the step,
read from each work directory's ``metrics.jsonl``.

    python -m detr_jax.training.curves runs/detr runs/conditional --output curves.png

A run is named after its work directory unless given as ``NAME=DIR``. The figure has two
panels (AP of the periodic evaluations, loss as logged) with one line per run.
"""

from __future__ import annotations

import argparse
import json
import sys

from detr_jax import paths


def read_curves(workdir: str) -> dict:
    """{"eval": [(step, AP in percent)], "loss": [(step, loss)]} from ``workdir/metrics.jsonl``.

    Raises FileNotFoundError naming the file when it is missing, ValueError naming the
    file and line when a line is not JSON.
    """
    path = paths.join(workdir, "metrics.jsonl")
    if not paths.exists(path):
        raise FileNotFoundError(f"no metrics.jsonl in {workdir} (is it a train.py work directory?)")
    curves = {"eval": [], "loss": []}
    for number, line in enumerate(paths.read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not JSON ({err})") from None
        step = row.get("step")
        if step is None:
            continue
        if isinstance(row.get("eval"), dict) and "AP" in row["eval"]:
            curves["eval"].append((int(step), 100.0 * float(row["eval"]["AP"])))
        if "loss" in row:
            curves["loss"].append((int(step), float(row["loss"])))
    return curves


def plot_curves(runs: dict, path: str, *, title: str = "") -> str:
    """Plot {name: curves of :func:`read_curves`} to ``path`` (PNG, written atomically)."""
    from detr_jax.evaluation.plots import _pyplot, _save
    plt = _pyplot()
    fig, (ap_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, curves in runs.items():
        if curves["eval"]:
            steps, ap = zip(*curves["eval"])
            ap_ax.plot(steps, ap, marker="o", markersize=3, label=name)
        if curves["loss"]:
            steps, loss = zip(*curves["loss"])
            loss_ax.plot(steps, loss, linewidth=1, label=name)
    ap_ax.set(xlabel="training step", ylabel="AP (%)", title="evaluation AP")
    loss_ax.set(xlabel="training step", ylabel="loss", title="training loss (as logged)")
    for ax in (ap_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="work directories of train.py, or NAME=DIR")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, sep, workdir = item.partition("=")
        if not sep:
            name, workdir = paths.basename(item), item
        try:
            runs[name] = read_curves(workdir)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    print(f"wrote {plot_curves(runs, args.output, title=args.title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
