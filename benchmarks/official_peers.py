"""Time an official PyTorch detector (Conditional DETR or Anchor DETR) from its own repository,
eager and ``torch.compile``, the same way ``python -m detr_jax.benchmark`` times ours.

    python benchmarks/official_peers.py --repo path/to/ConditionalDETR --detector conditional \\
        --batch 1 8 --precision tf32 bf16 --train-batch 4 --json peers.json

The repository is imported from ``--repo`` (its ``main.get_args_parser`` and
``models.build_model``, default arguments; ``--dilation`` turns DC5 on where the default is
C5). Weights are random: the
torchvision ResNet is built without downloading anything. Inputs are random 800x1216 images
with no padding; a training step is AdamW (backbone lr 1e-5, others 1e-4, weight decay
1e-4), the official criterion with auxiliary losses, ``--boxes`` random boxes per image and
gradient clipping at 0.1. TF32 is on for matrix products and convolutions in every row;
``bf16`` adds autocast to bfloat16. Each row: median ms per image of ``--repeats`` calls
after ``--warmup`` (compilation happens in the first call), and the peak CUDA memory of
the calls after the first (the steady state: cuDNN's benchmark-mode trials are excluded).

Two of the official repositories' version checks break on torch 2.x; the harness aliases the
names they look for (``torch._overrides``, ``_LinearWithBias``) before importing them.
torch, torchvision and the repository are needed by this script only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _patch_torch_for_official_code():
    import torch
    import torch.nn.modules.linear as linear
    import torch.overrides
    import torchvision

    sys.modules.setdefault("torch._overrides", torch.overrides)
    if not hasattr(linear, "_LinearWithBias"):
        linear._LinearWithBias = linear.NonDynamicallyQuantizableLinear
    for name in ("resnet50", "resnet101"):  # random weights: never download
        build = getattr(torchvision.models, name)

        def no_download(*args, _build=build, pretrained=False, **kwargs):
            return _build(*args, weights=None, **kwargs)

        setattr(torchvision.models, name, no_download)


def build_official(repo: str, dilation: bool):
    """(model, criterion) of the repository at ``repo`` with its default arguments."""
    sys.path.insert(0, repo)
    _patch_torch_for_official_code()
    import main as official_main
    from models import build_model

    args = official_main.get_args_parser().parse_args([])
    if dilation:  # set after parsing: the repositories declare the flag differently
        args.dilation = True
    model, criterion, _ = build_model(args)
    return model.cuda(), criterion.cuda(), args


def synced_times_ms(fn, warmup: int, repeats: int) -> list[float]:
    """Wall-clock ms of ``repeats`` calls of ``fn`` after ``warmup``, each synchronized
    with the GPU (shared with ``benchmarks/peers.py``)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _inputs(batch: int, size: tuple[int, int], seed: int):
    import torch
    from util.misc import NestedTensor

    gen = torch.Generator(device="cuda").manual_seed(seed)
    pixels = torch.randn(batch, 3, *size, device="cuda", generator=gen)
    mask = torch.zeros(batch, *size, dtype=torch.bool, device="cuda")
    return NestedTensor(pixels, mask)


def _targets(batch: int, boxes: int, seed: int):
    import torch

    gen = torch.Generator(device="cuda").manual_seed(seed + 1)
    out = []
    for _ in range(batch):
        centre = torch.rand(boxes, 2, device="cuda", generator=gen) * 0.6 + 0.2
        wh = torch.rand(boxes, 2, device="cuda", generator=gen) * 0.3 + 0.05
        labels = torch.randint(1, 91, (boxes,), device="cuda", generator=gen)
        out.append({"boxes": torch.cat([centre, wh], -1), "labels": labels})
    return out


def time_inference(model, batch, size, precision, compiled, args):
    import torch

    model.eval()
    samples = _inputs(batch, size, args.seed)
    run_model = torch.compile(model) if compiled else model

    def call():
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16"):
            out = run_model(samples)
        return out

    start = time.perf_counter()
    call()  # compiles; cuDNN benchmark mode tries algorithms (and their workspaces) here
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    times = synced_times_ms(call, args.warmup, args.repeats)
    return {"first_call_s": round(first, 2), "ms_per_image": statistics.median(times) / batch,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20}


def time_training(model, criterion, batch, size, precision, compiled, args):
    import torch

    model.train()
    backbone = [p for n, p in model.named_parameters() if "backbone" in n and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if "backbone" not in n and p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": rest}, {"params": backbone, "lr": 1e-5}],
                                  lr=1e-4, weight_decay=1e-4)
    samples = _inputs(batch, size, args.seed)
    targets = _targets(batch, args.boxes, args.seed)
    run_model = torch.compile(model) if compiled else model
    weights = criterion.weight_dict

    def step():
        with torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16"):
            outputs = run_model(samples)
        losses = criterion(outputs, targets)
        loss = sum(losses[k] * weights[k] for k in losses if k in weights)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()

    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    times = synced_times_ms(step, args.warmup, args.repeats)
    ms = statistics.median(times)
    return {"first_call_s": round(first, 2), "ms_per_step": ms, "images_per_s": batch * 1e3 / ms,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", required=True, help="checkout of the official repository")
    parser.add_argument("--detector", required=True, help="a name for the rows (e.g. conditional)")
    parser.add_argument("--dilation", action="store_true", help="DC5 (Anchor DETR's default is DC5)")
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 8],
                        help="inference batch sizes (none: no inference rows)")
    parser.add_argument("--precision", nargs="+", default=["tf32", "bf16"], choices=["tf32", "bf16"])
    parser.add_argument("--runners", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    parser.add_argument("--train-batch", type=int, default=4, help="0: no training rows")
    parser.add_argument("--train-precision", nargs="+", default=["tf32"], choices=["tf32", "bf16"])
    parser.add_argument("--size", default="800x1216")
    parser.add_argument("--boxes", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))

    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    model, criterion, _ = build_official(args.repo, args.dilation)
    rows = []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)

    for runner in args.runners:
        for precision in args.precision:
            for batch in args.batch:
                torch._dynamo.reset()
                row = {"detector": args.detector, "runner": runner, "mode": "infer",
                       "precision": precision, "batch": batch, "size": args.size}
                try:
                    row.update(time_inference(model, batch, size, precision, runner == "compile", args))
                except Exception as err:  # noqa: BLE001 - a failed row is reported, not fatal
                    row["error"] = f"{type(err).__name__}: {err}"[:300]
                emit(row)
                torch.cuda.empty_cache()
        if args.train_batch:
            for precision in args.train_precision:
                torch._dynamo.reset()
                row = {"detector": args.detector, "runner": runner, "mode": "train",
                       "precision": precision, "batch": args.train_batch, "size": args.size}
                try:
                    row.update(time_training(model, criterion, args.train_batch, size, precision,
                                             runner == "compile", args))
                except Exception as err:  # noqa: BLE001
                    row["error"] = f"{type(err).__name__}: {err}"[:300]
                emit(row)
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
