"""DETR-DC5 R50 inference: Hugging Face transformers' ``DetrForObjectDetection`` beside
detr_jax, on one GPU in one call, one table of ms per image and the ratios.

    python benchmarks/peers.py --batch 8 --precision tf32 bf16 --json peers.json

The peer is ``DetrForObjectDetection`` with its default DC5 set-up (timm ResNet-50,
``output_stride`` 16, 100 queries, 91 classes), random weights (nothing is downloaded),
eager and ``torch.compile``, with TF32 matrix products and convolutions on in every row;
``bf16`` adds autocast to bfloat16. detr_jax runs first, in its own processes
(``python -m detr_jax.benchmark`` with ``configs/detr_r50_dc5.py``, exact attention,
precision ``default`` for TF32 and ``bf16``), so JAX's and PyTorch's allocators never hold
the GPU at the same time. Both sides get random images of ``--size`` with no padding and the
same batch; each row is the median ms per image of ``--repeats`` calls after ``--warmup``
(compilation happens in the first call), and its peak device memory after the first call.

The ratio column is the fastest Hugging Face runner's ms per image over detr_jax's.
torch, transformers and timm are needed by this script only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # official_peers beside this file
from official_peers import synced_times_ms  # noqa: E402
OURS_PRECISION = {"tf32": "default", "bf16": "bf16"}


def build_hf_detr_dc5():
    """``DetrForObjectDetection`` DETR-DC5 R50 with random weights, on the GPU, in eval mode."""
    import torch
    from transformers import DetrConfig, DetrForObjectDetection

    config = DetrConfig(dilation=True, num_labels=91, use_pretrained_backbone=False)
    model = DetrForObjectDetection(config).eval().cuda()
    seen = []  # the encoder must see 1/16 of the input (DC5): the input projection's input
    hook = model.model.input_projection.register_forward_hook(
        lambda module, inputs, output: seen.append(tuple(inputs[0].shape[-2:])))
    with torch.no_grad():
        model(pixel_values=torch.zeros(1, 3, 64, 96, device="cuda"),
              pixel_mask=torch.ones(1, 64, 96, dtype=torch.long, device="cuda"))
    hook.remove()
    if seen != [(4, 6)]:
        raise RuntimeError(f"DetrConfig(dilation=True): the encoder's feature map is {seen} for a "
                           "64x96 input, not [(4, 6)] (DC5)")
    return model


def time_hf(model, batch: int, size: tuple[int, int], precision: str, compiled: bool,
            warmup: int, repeats: int, seed: int) -> dict:
    """One Hugging Face row: first-call seconds, median ms per image, peak MiB."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(seed)
    pixels = torch.randn(batch, 3, *size, device="cuda", generator=gen)
    mask = torch.ones(batch, *size, dtype=torch.long, device="cuda")
    run = torch.compile(model) if compiled else model

    def call():
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16"):
            return run(pixel_values=pixels, pixel_mask=mask)

    start = time.perf_counter()
    call()
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    times = synced_times_ms(call, warmup, repeats)
    return {"first_call_s": round(first, 2), "ms_per_image": statistics.median(times) / batch,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20}


def run_ours(args) -> list[dict]:
    """detr_jax's rows from ``python -m detr_jax.benchmark`` (one process per setting)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ours.json")
        cmd = [sys.executable, "-m", "detr_jax.benchmark", "--config", args.config,
               "--mode", "infer", "--attention", "exact", "--batch", *map(str, args.batch),
               "--precision", *[OURS_PRECISION[p] for p in args.precision],
               "--size", args.size, "--warmup", str(args.warmup), "--repeats", str(args.repeats),
               "--seed", str(args.seed), "--json", path]
        done = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
        if done.returncode != 0 or not os.path.exists(path):
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        with open(path) as f:
            return json.load(f)


def table(rows: list[dict], precisions, batches, runners) -> str:
    """The markdown table: ms per image of each runner, and fastest peer / detr_jax."""
    def ms(runner, precision, batch):
        for r in rows:
            if (r["runner"], r["precision"], r["batch"]) == (runner, precision, batch) and "ms_per_image" in r:
                return r["ms_per_image"]
        return None

    peers = [f"hf_{r}" for r in runners]
    head = ["precision", "batch", "detr_jax"] + [f"HF {r}" for r in runners] + ["fastest HF / detr_jax"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for precision in precisions:
        for batch in batches:
            ours = ms("detr_jax", precision, batch)
            theirs = [ms(p, precision, batch) for p in peers]
            known = [t for t in theirs if t is not None]
            ratio = f"{min(known) / ours:.2f}x" if known and ours else "n/a"
            cells = [precision, str(batch)] + [f"{v:.2f}" if v is not None else "failed"
                                               for v in [ours, *theirs]] + [ratio]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/detr_r50_dc5.py", help="detr_jax's config")
    parser.add_argument("--batch", type=int, nargs="+", default=[8])
    parser.add_argument("--precision", nargs="+", default=["tf32", "bf16"], choices=["tf32", "bf16"])
    parser.add_argument("--runners", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    parser.add_argument("--size", default="800x1216")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-ours", action="store_true", help="the Hugging Face rows only")
    parser.add_argument("--json", help="write every row here (rewritten after each row)")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    rows: list[dict] = []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            tmp = args.json + ".tmp"
            with open(tmp, "w") as f:
                json.dump(rows, f, indent=1)
            os.replace(tmp, args.json)

    if not args.skip_ours:
        by_name = {v: k for k, v in OURS_PRECISION.items()}
        for r in run_ours(args):
            emit({"runner": "detr_jax", "precision": by_name[r["precision"]], "batch": r["batch"],
                  "size": args.size, "ms_per_image": r["ms_per_image"],
                  "peak_mib": r.get("peak_memory_mib"), "first_call_s": r.get("compile_s")})

    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    model = build_hf_detr_dc5()
    for runner in args.runners:
        for precision in args.precision:
            for batch in args.batch:
                torch._dynamo.reset()
                row = {"runner": f"hf_{runner}", "precision": precision, "batch": batch,
                       "size": args.size}
                try:
                    row.update(time_hf(model, batch, size, precision, runner == "compile",
                                       args.warmup, args.repeats, args.seed))
                except Exception as err:  # noqa: BLE001 - a failed row is reported, not fatal
                    row["error"] = f"{type(err).__name__}: {err}"[:300]
                emit(row)
                torch.cuda.empty_cache()
    print(table(rows, args.precision, args.batch, args.runners))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
