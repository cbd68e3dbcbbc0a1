"""Plot and tabulate exact against ACT across input sizes from the JSON rows of
``benchmarks/device/act_resolution.sh`` (one file per size):

    python benchmarks/act_resolution_plot.py act_res_*.json --output act_resolution.png

The x axis is the encoder's tokens per image (DC5: stride 16); the y axis ACT's time per
image over exact's at the same size and batch (below 1: ACT is faster).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_rows(paths: list[str]) -> list[dict]:
    """(size, tokens, batch, exact ms/img, ACT ms/img, ratio) for every size and batch
    with both settings measured."""
    out = []
    for path in paths:
        rows = json.load(open(path))
        by = {}
        for r in rows:
            kind = "exact" if r["attention"] == "exact" else "act"
            by.setdefault(int(r["batch"]), {})[kind] = float(r["ms_per_image"])
            size = r["size"]
        h, w = (int(v) for v in size.split("x"))
        tokens = math.ceil(h / 16) * math.ceil(w / 16)
        for batch, t in sorted(by.items()):
            if "exact" in t and "act" in t:
                out.append(dict(size=size, tokens=tokens, batch=batch, exact=t["exact"],
                                act=t["act"], ratio=t["act"] / t["exact"]))
    return sorted(out, key=lambda r: (r["batch"], r["tokens"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", nargs="+")
    parser.add_argument("--output", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    rows = load_rows(args.json)
    print("| input | tokens | batch | exact ms/img | ACT ms/img | ACT / exact |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['size']} | {r['tokens']} | {r['batch']} | {r['exact']:.2f} | "
              f"{r['act']:.2f} | {r['ratio']:.2f} |")
    from detr_jax.evaluation.plots import _pyplot, _save
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for batch in sorted({r["batch"] for r in rows}):
        sel = [r for r in rows if r["batch"] == batch]
        ax.plot([r["tokens"] for r in sel], [r["ratio"] for r in sel], marker="o",
                label=f"batch {batch}")
        for r in sel:
            ax.annotate(r["size"], (r["tokens"], r["ratio"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="exact")
    ax.set(xlabel="encoder tokens per image (DC5)", ylabel="ACT time / exact time",
           title="DETR-DC5 inference, ACT at trained prototype ratios")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    _save(fig, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
