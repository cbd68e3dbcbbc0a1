"""Time inference and training steps of a DETR config on random inputs.

    python -m detr_jax.benchmark --config configs/detr_r50_dc5.py --mode infer train \\
        --attention exact act:L=32 --batch 1 8 --size 800x1216 --precision default bf16 \\
        --json runs/bench.json

Every combination of mode, attention, batch and precision is one *setting*. Each setting
runs in its own process (so the device's peak-memory statistic belongs to it alone),
compiles once (timed), runs ``--warmup`` calls and then ``--repeats`` timed calls, each
waited for with ``block_until_ready``; the table gives the median and the 10th/90th
percentiles. Training steps use random boxes (``--boxes`` per image, the official
anchors used 7; padded to ``--max-targets`` as train.py pads to ``train.max_targets``),
the full loss with Hungarian matching and the optimizer update.
Weights are random: inference time of exact attention does not depend on them, but
clustered attention does (cluster counts), so ``--checkpoint`` loads trained weights.
Timing belongs here, never in tests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import time

PRECISIONS = ("default", "highest", "bf16")


def _dtype_and_matmul(precision: str, matmul: str) -> tuple[str, str]:
    """The model ``dtype`` and ``matmul_precision`` of a ``--precision`` value: ``default``
    float32, ``bf16`` bfloat16 (both with ``matmul``, from ``--matmul-precision``);
    ``highest`` float32 with full-precision products (``matmul_precision="highest"``)."""
    if precision == "highest":
        return "float32", "highest"
    return ("bfloat16" if precision == "bf16" else "float32"), matmul


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size expects HxW (e.g. 800x1216), got {text!r}") from None
    return h, w


def _peak_memory_mib():
    import jax
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def _xla_memory_mib(compiled):
    """Arguments + outputs + temporaries - aliased, from XLA's memory analysis (MiB): the
    step's own footprint, unlike the device peak, which also counts compile-time
    autotuning scratch buffers."""
    try:
        m = compiled.memory_analysis()
        return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                - m.alias_size_in_bytes) / 2**20
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def _timed(fn, warmup: int, repeats: int) -> list[float]:
    import jax
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def _model_config(cfg, attention: str, precision: str, backend: str = "auto",
                  key_splits: str = "auto", matmul: str | None = None):
    model_cfg = cfg.model.copy_and_resolve_references()
    model_cfg.encoder_attention = attention
    model_cfg.attention_backend = backend
    model_cfg.attention_key_splits = key_splits
    model_cfg.dtype, model_cfg.matmul_precision = _dtype_and_matmul(
        precision, matmul or model_cfg.get("matmul_precision", "default"))
    return model_cfg


def _inputs(batch: int, size: tuple[int, int], seed: int):
    import numpy as np
    rng = np.random.default_rng(seed)
    pixels = rng.normal(size=(batch, *size, 3)).astype(np.float32)
    return pixels, np.zeros((batch, *size), bool)


def bench_infer(cfg, args, attention: str, batch: int, precision: str) -> dict:
    import jax
    from detr_jax.attention.registry import parse_attention
    from detr_jax.checkpoint import load_model
    from detr_jax.models.build import build_model, with_encoder_attention
    from detr_jax.models.inference import Forward
    if args.checkpoint:
        loaded = load_model(args.checkpoint)
        _, matmul = _dtype_and_matmul(precision, args.matmul_precision
                                      or loaded.config.get("matmul_precision", "default"))
        loaded.config.update(attention_backend=args.attention_kernel,
                             attention_key_splits=args.key_splits, matmul_precision=matmul)
        model = with_encoder_attention(loaded, parse_attention(attention))
    else:
        model = build_model(_model_config(cfg, attention, precision, args.attention_kernel,
                                          args.key_splits, args.matmul_precision), seed=args.seed)
    forward = Forward(model, return_intermediates=False)
    pixels, mask = (jax.device_put(a) for a in _inputs(batch, args.size, args.seed))
    rng = jax.random.PRNGKey(args.seed)
    start = time.perf_counter()
    compiled = forward._run.lower(forward.state, pixels, mask, rng).compile()
    compile_s = time.perf_counter() - start
    times = _timed(lambda: compiled(forward.state, pixels, mask, rng), args.warmup, args.repeats)
    ratios = cluster_ratios(compiled(forward.state, pixels, mask, rng))
    return {"compile_s": compile_s, "times_s": times, "xla_memory_mib": _xla_memory_mib(compiled),
            **({"cluster_ratio": ratios} if ratios else {})}


def cluster_ratios(out) -> list[float]:
    """Per encoder layer, clusters (ACT prototypes, ENACT regions, ...) over valid tokens,
    averaged over images and heads (the ACT paper's Figure 7); [] for exact attention."""
    import numpy as np
    ratios = []
    for stats in out.get("encoder_stats") or []:
        if stats is None or stats.num_clusters is None:
            return []
        clusters = np.asarray(stats.num_clusters, np.float64)  # (B, H) or (B,)
        valid = np.asarray(stats.num_valid, np.float64).reshape(clusters.shape[0], -1)
        ratios.append(round(float((clusters.reshape(clusters.shape[0], -1) / valid).mean()), 4))
    return ratios


def _max_targets(args) -> int:
    """Targets per image of a training step: ``--max-targets`` (default ``--boxes``), as
    train.py pads them to ``train.max_targets`` (COCO: 100); the matcher solves every
    padded row."""
    return max(args.max_targets or args.boxes, args.boxes, 1)


def train_step_call(cfg, args, attention: str, batch: int, precision: str):
    """One training step of the config's detector on random inputs, compiled ahead as
    train.py's loop does: (``call()`` -> the step's loss, the compiled step, compile
    seconds). ``args``: this module's parsed arguments (kernel, key splits, matmul
    precision, size, boxes, targets, seed)."""
    import numpy as np
    from detr_jax.training.defaults import loss_config, train_config
    from detr_jax.training.trainer import Trainer
    from detr_jax.models.build import build_model
    train_cfg = train_config(**(cfg.train.to_dict() if "train" in cfg else {}))
    train_cfg.max_targets = _max_targets(args)
    loss_cfg = cfg.loss if "loss" in cfg else loss_config()
    model = build_model(_model_config(cfg, attention, precision, args.attention_kernel,
                                      args.key_splits, args.matmul_precision), seed=args.seed)
    # the detector's own recipe (DETR: cross-entropy; Conditional/Anchor DETR: focal)
    trainer = Trainer(model, train_cfg, loss_fn=model.default_loss(loss_cfg))
    rng = np.random.default_rng(args.seed)
    pixels, mask = _inputs(batch, args.size, args.seed)
    centres = rng.uniform(0.2, 0.8, (batch, train_cfg.max_targets, 2))
    sizes = rng.uniform(0.05, 0.3, (batch, train_cfg.max_targets, 2))
    local = {"pixel_values": pixels, "padding_mask": mask,
             "labels": rng.integers(1, model.config["num_classes"], (batch, train_cfg.max_targets)).astype(np.int32),
             "boxes": np.concatenate([centres, sizes], -1).astype(np.float32),
             "valid": np.arange(train_cfg.max_targets)[None].repeat(batch, 0) < args.boxes,
             "padded_shape": pixels.shape[1:3]}  # every process pads alike
    global_batch = trainer.global_batch(local)
    start = time.perf_counter()
    step = trainer.executable(global_batch)  # compiled ahead, as train.py's loop does
    compile_s = time.perf_counter() - start

    def one():  # the training loop's call: flat state leaves in, new leaves out
        return trainer.step_global(global_batch)["loss"]

    return one, step, compile_s


def bench_train(cfg, args, attention: str, batch: int, precision: str) -> dict:
    one, step, compile_s = train_step_call(cfg, args, attention, batch, precision)
    times = _timed(one, args.warmup, args.repeats)
    return {"compile_s": compile_s, "times_s": times, "xla_memory_mib": _xla_memory_mib(step)}


def run_one(cfg, args, mode: str, attention: str, batch: int, precision: str) -> dict:
    import jax
    from detr_jax.attention.backend import resolve_backend
    # the products' precision is the model config's matmul_precision, set by _model_config
    result = (bench_infer if mode == "infer" else bench_train)(cfg, args, attention, batch, precision)
    _, matmul = _dtype_and_matmul(precision, args.matmul_precision
                                  or cfg.model.get("matmul_precision", "default"))
    times = sorted(result.pop("times_s"))
    median = statistics.median(times)
    pct = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    return dict(mode=mode, attention=attention, batch=batch, precision=precision,
                matmul_precision=matmul, kernel=resolve_backend(args.attention_kernel).kernel, size=f"{args.size[0]}x{args.size[1]}", device=jax.devices()[0].device_kind,
                devices=jax.device_count(), median_ms=median * 1e3,
                p10_ms=pct(0.1) * 1e3, p90_ms=pct(0.9) * 1e3, ms_per_image=median * 1e3 / batch,
                images_per_s=batch / median, peak_memory_mib=_peak_memory_mib(),
                xla_memory_mib=result.get("xla_memory_mib"),
                compile_s=result["compile_s"], repeats=len(times),
                **({"boxes": args.boxes, "max_targets": _max_targets(args)}
                   if mode == "train" else {}),
                **({"cluster_ratio": result["cluster_ratio"]} if "cluster_ratio" in result else {}))


def _precision_cell(row: dict) -> str:
    """``--precision``, with the matmul precision when it is not the one it implies."""
    matmul = row.get("matmul_precision", "default")
    if row["precision"] == "highest" or matmul == "default":
        return row["precision"]
    return f"{row['precision']}, matmul {matmul}"


def format_table(rows: list[dict]) -> str:
    header = ("| mode | attention | batch | precision | median ms | ms/image | images/s | "
              "p10-p90 ms | device peak MiB | XLA MiB | compile s |")
    lines = [header, "|" + " --- |" * 11]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['attention']} | {r['batch']} | {r['precision']} | "
                         f"failed: {r['error']} | | | | | | |")
            continue
        peak = "n/a" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        xla = "n/a" if r.get("xla_memory_mib") is None else f"{r['xla_memory_mib']:.0f}"
        lines.append(f"| {r['mode']} | {r['attention']} | {r['batch']} | {_precision_cell(r)} | "
                     f"{r['median_ms']:.2f} | {r['ms_per_image']:.2f} | {r['images_per_s']:.1f} | "
                     f"{r['p10_ms']:.2f}-{r['p90_ms']:.2f} | {peak} | {xla} | {r['compile_s']:.1f} |"
                     + (f" clusters/tokens per layer: {' '.join(f'{v:.2f}' for v in r['cluster_ratio'])}"
                        if r.get("cluster_ratio") else ""))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detr_jax.benchmark", description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Config fields can be overridden as --config.path.to.field=value.")
    parser.add_argument("--config", required=True, help="config file (its model section; train section if any)")
    parser.add_argument("--checkpoint", default="", help="trained model (inference only); default random weights")
    parser.add_argument("--mode", nargs="+", choices=("infer", "train"), default=["infer"],
                        help="what to time: forward pass (infer) and/or training step (train); "
                             "default infer")
    parser.add_argument("--attention", nargs="+", default=["exact"], help="e.g. exact act:L=32 kmeans:C=100")
    parser.add_argument("--batch", nargs="+", type=int, default=[1],
                        help="batch sizes to time (default 1)")
    parser.add_argument("--size", type=parse_size, default=(800, 1216), help="input HxW (default 800x1216)")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["default"],
                        help="default: float32 compute; bf16: bfloat16 compute; highest: "
                             "float32 compute with --matmul-precision highest")
    parser.add_argument("--matmul-precision", default=None, choices=("default", "high", "highest"),
                        help="precision of float32 matrix products and convolutions, the model "
                             "config's matmul_precision (default: the config's, 'default'): "
                             "default = TF32 on GPUs, one bf16 pass on TPUs; high = TF32 / "
                             "three bf16 passes; highest = fp32 / six passes")
    parser.add_argument("--attention-kernel", default="auto",
                        choices=("auto", "xla", "xla_map", "flash", "cudnn", "tpu_flash"),
                        help="softmax attention implementation, the model config's "
                             "attention_backend (auto: the fused kernel on GPUs, tpu_flash "
                             "(the Pallas TPU flash-attention kernel) on TPUs, xla_map on "
                             "CPUs)")
    parser.add_argument("--key-splits", default="auto",
                        help="key ranges per row of the fused kernel: auto or a positive "
                             "integer (the model config's attention_key_splits)")
    parser.add_argument("--boxes", type=int, default=7, help="target boxes per image (training)")
    parser.add_argument("--max-targets", type=int, default=0,
                        help="training targets padded to this count per image, as train.py pads "
                             "to train.max_targets (100 for COCO); default: --boxes")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed calls after compiling (default 3)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls (default 20)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights, inputs and PRNG key (default 0)")
    parser.add_argument("--json", default="", help="write the rows here as JSON")
    parser.add_argument("--in-process", action="store_true",
                        help="run every setting in this process (peak memory then accumulates)")
    parser.add_argument("--_one", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv=None, *, command=None) -> int:
    """Run the benchmark CLI; ``command``: how to start this CLI in a child process (one
    per setting), by default ``python -m detr_jax.benchmark``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = command or [sys.executable, "-m", "detr_jax.benchmark"]
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    from detr_jax.config_cli import config_for_parser
    cfg = config_for_parser(parser, args.config, rest)
    if args.checkpoint and "train" in args.mode:
        parser.error("--checkpoint applies to --mode infer only")
    settings = list(itertools.product(args.mode, args.attention, args.batch, args.precision))
    rows = []
    for mode, attention, batch, precision in settings:
        if args._one or args.in_process or len(settings) == 1:
            try:
                row = run_one(cfg, args, mode, attention, batch, precision)
            except Exception as err:  # e.g. out of memory: report it, keep the other rows
                if args._one or len(settings) == 1:
                    raise
                row = dict(mode=mode, attention=attention, batch=batch, precision=precision,
                           error=f"{type(err).__name__}: {str(err).splitlines()[0][:120]}")
        else:
            row = _run_isolated(command, argv, mode, attention, batch, precision)
        rows.append(row)
        if args._one:
            print("BENCH_ROW " + json.dumps(row), flush=True)
        else:
            print(format_table([row]).splitlines()[-1], flush=True)
    if not args._one:
        print(format_table(rows))
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    return 0


def _run_isolated(command, argv, mode, attention, batch, precision) -> dict:
    """One setting in a child process (its own device memory statistics)."""
    keep, skip = [], False
    for item in argv:  # drop the multi-valued setting flags and --json
        if item in ("--mode", "--attention", "--batch", "--precision", "--json"):
            skip = True
            continue
        if item.startswith("--") and skip:
            skip = False
        if not skip:
            keep.append(item)
    cmd = [*command, *keep, "--_one", "--mode", mode,
           "--attention", attention, "--batch", str(batch), "--precision", precision]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_ROW "):
            return json.loads(line[len("BENCH_ROW "):])
    return dict(mode=mode, attention=attention, batch=batch, precision=precision,
                error=error_line(proc.stderr)[:300])


def error_line(stderr: str) -> str:
    """The line of a child's stderr that names its error: the last ``SomeError: ...`` line
    (JAX appends a note on traceback filtering after it), else the last line."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b", line):
            return line
    return lines[-1] if lines else "no output"


if __name__ == "__main__":
    sys.exit(main())
