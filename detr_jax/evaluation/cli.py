"""``eval.py``: run a detr_jax checkpoint with one or more encoder-attention settings.

Two jobs:

* COCO evaluation (the ACT paper's Table 1 in one command)::

      python eval.py --checkpoint ckpt/detr-r50-dc5 --coco-dir /data/coco \\
          --attention exact act:L=32 act:L=24 kmeans:C=100 --output-dir out/

  or ``--annotations FILE --image-root DIR`` for any COCO-format dataset, or
  ``--data-dir DIR`` for TFDS ``coco/2017`` (array_record). Writes COCO results JSON per
  setting, ``report.md`` / ``report.csv`` / ``report.json`` and PNG plots.
* Detections on your own images: ``--images a.jpg b.png`` (JSON + drawn PNG each).
"""

from __future__ import annotations

import argparse
import sys

from detr_jax.evaluation.defaults import DATA_DEFAULTS, EVAL_DEFAULTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate a detr_jax checkpoint: COCO metrics, GFLOPs, time and memory "
                    "per encoder-attention setting (--coco-dir, --annotations/--image-root or "
                    "--data-dir), or detections on your own images (--images).",
        epilog="Any config field can be overridden as --config.path.to.field=value, e.g. "
               "--config.data.granularity=64 --config.eval.batch_size=8.")
    parser.add_argument("--checkpoint", required=True,
                        help="detr_jax checkpoint directory (from convert_torch_weights.py or train.py)")
    parser.add_argument("--config", default=None,
                        help="config file (configs/*.py); default: configs/detr_r50_dc5.py values")
    parser.add_argument("--images", nargs="+", help="image files to run on")
    parser.add_argument("--output-dir", default="eval_out", help="where results are written")
    parser.add_argument("--attention", nargs="+", default=None,
                        help="encoder-attention settings, e.g. exact act:L=32 kmeans:C=100 "
                             "(default: config eval.attention)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="score threshold of the detections drawn and listed for --images "
                             f"(default: config eval.score_threshold, "
                             f"{EVAL_DEFAULTS['score_threshold']}); COCO evaluation keeps all")
    parser.add_argument("--hash-seeds", type=int, default=None,
                        help="hash draws per setting that draws random hash parameters (ACT, "
                             "K-means): each draw a different key derived from the seed, the "
                             "report gives the mean and standard deviation over the draws "
                             "(default: config eval.hash_seeds, 1)")
    parser.add_argument("--attention-kernel", default=None,
                        choices=("auto", "xla", "xla_map", "flash", "cudnn", "flash_interpret",
                                 "tpu_flash", "tpu_flash_interpret"),
                        help="softmax attention implementation, set as the model config's "
                             "attention_backend (default: the checkpoint's; auto: the fused "
                             "Pallas kernel on GPUs, tpu_flash (the Pallas TPU flash-attention "
                             "kernel) on TPUs, xla_map (one image and head at a time) on "
                             "CPUs, XLA elsewhere; *_interpret: a Pallas kernel run by the "
                             "interpreter, for tests)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="compute dtype (default fp32; bf16: computations in bfloat16 "
                             "with fp32 parameters and softmax, as the benchmark's bf16)")
    parser.add_argument("--matmul-precision", default=None, choices=("default", "high", "highest"),
                        help="precision of float32 matrix products and convolutions, set as "
                             "the model config's matmul_precision (default: config "
                             "eval.matmul_precision, 'default'): default = TF32 on GPUs, one "
                             "bf16 pass on TPUs; high = TF32 / three bf16 passes; highest = "
                             "fp32 / six passes")
    data = parser.add_argument_group("COCO evaluation")
    data.add_argument("--coco-dir", help="COCO directory: annotations/instances_<split>.json "
                                         "and <split>/")
    data.add_argument("--split", default=None, help="COCO split name (default val2017)")
    data.add_argument("--annotations", help="COCO-format annotation JSON (overrides --coco-dir's)")
    data.add_argument("--image-root", help="image directory (overrides --coco-dir's)")
    data.add_argument("--data-dir", help="TFDS data directory holding coco/2017 as array_record")
    data.add_argument("--tfds-name", default=None, help="TFDS dataset (default coco/2017)")
    data.add_argument("--tfds-split", default=None, help="TFDS split (default validation)")
    data.add_argument("--max-images", type=int, default=None,
                      help="evaluate only the first N images (reported as partial)")
    data.add_argument("--skip-bad-images", action="store_true", default=None,
                      help="skip undecodable images (counted in the report) instead of stopping")
    data.add_argument("--batch-size", type=int, default=None, help="global batch size")
    data.add_argument("--num-workers", type=int, default=None, help="image decoding threads")
    data.add_argument("--compilation-cache", default=None,
                      help="JAX persistent compilation cache directory, or 'none' "
                           "(default: config eval.compilation_cache)")
    data.add_argument("--no-progress", action="store_true", help="no progress bar")
    from detr_jax.distributed import add_flags
    add_flags(parser)
    return parser


def default_config():
    import ml_collections
    cfg = ml_collections.ConfigDict()
    cfg.data = ml_collections.ConfigDict(dict(DATA_DEFAULTS))
    cfg.eval = ml_collections.ConfigDict(dict(EVAL_DEFAULTS))
    return cfg


def complete_config(cfg):
    """Add the data / eval fields a config file does not set (older configs keep working)."""
    import ml_collections
    for name, defaults in (("data", DATA_DEFAULTS), ("eval", EVAL_DEFAULTS)):
        if name not in cfg:
            cfg[name] = ml_collections.ConfigDict()
        for key, value in defaults.items():
            if key not in cfg[name]:
                cfg[name][key] = value
    return cfg


def _open_source(args, cfg):
    """The dataset named by the flags (or config), or None when none is named."""
    from detr_jax.data.coco import CocoSource, resolve_paths
    coco_dir = args.coco_dir or cfg.data.coco_dir
    annotations = args.annotations or cfg.data.annotations
    image_root = args.image_root or cfg.data.image_root
    data_dir = args.data_dir or cfg.data.tfds_data_dir
    if data_dir:
        from detr_jax.data.tfds_source import TfdsCocoSource
        return TfdsCocoSource(data_dir, name=args.tfds_name or cfg.data.tfds_name,
                              split=args.tfds_split or cfg.data.tfds_split,
                              annotations=annotations or None)
    if coco_dir or annotations or image_root:
        return CocoSource(*resolve_paths(coco_dir or None, annotations or None,
                                         image_root or None, args.split or cfg.data.split))
    return None


_OUTPUT_LOCK = []


def main(argv=None) -> int:
    from detr_jax.distributed import DistributedSetupError
    from detr_jax.locks import DirectoryLocked
    try:
        return _main(argv)
    except (DirectoryLocked, DistributedSetupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. an unwritable or full output disk
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    finally:
        while _OUTPUT_LOCK:
            _OUTPUT_LOCK.pop().release()


def _lock_output(args):
    """Lock --output-dir against a second evaluation writing into it (process 0 only)."""
    import jax
    from detr_jax.locks import DirectoryLock
    if jax.process_index() == 0:
        _OUTPUT_LOCK.append(DirectoryLock(args.output_dir, "evaluation").acquire())


def _check_settings(base, settings, specs, checkpoint):
    """None, or a one-line error for a setting the checkpoint cannot run (e.g. ENACT on a
    checkpoint without its entropy parameters)."""
    from detr_jax.models.build import with_encoder_attention
    for setting, spec in zip(settings, specs):
        try:
            with_encoder_attention(base, spec)
        except ValueError:
            return (f"--attention {setting} needs parameters that {checkpoint} does not hold "
                    f"(its encoder attention is {base.config.get('encoder_attention', 'exact')}); "
                    "fine-tune it into that variant with train.py (train.init_checkpoint) first")
    return None


def _main(argv=None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    from detr_jax.attention import parse_attention
    from detr_jax.config_cli import apply_overrides, load_config_file
    from detr_jax.precision import check_matmul_precision

    try:
        cfg = load_config_file(args.config) if args.config else default_config()
        complete_config(cfg)
        apply_overrides(cfg, rest)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    settings = list(args.attention or cfg.eval.attention)
    try:
        specs = [parse_attention(s) for s in settings]
    except ValueError as err:
        parser.error(f"{err}")
    for flag, field in (("max_images", "max_images"), ("batch_size", "batch_size"),
                        ("num_workers", "num_workers"), ("skip_bad_images", "skip_bad_images"),
                        ("compilation_cache", "compilation_cache"),
                        ("hash_seeds", "hash_seeds"), ("matmul_precision", "matmul_precision")):
        value = getattr(args, flag)
        if value is not None:
            cfg.eval[field] = value
    try:
        check_matmul_precision(cfg.eval.matmul_precision, "eval.matmul_precision")
    except ValueError as err:
        parser.error(str(err))
    if args.images:
        return _predict(args, cfg, settings, specs)
    try:
        source = _open_source(args, cfg)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if source is None:
        parser.error("nothing to evaluate: give --coco-dir, --annotations with --image-root, "
                     "--data-dir (TFDS), or --images")
    return _evaluate(args, cfg, settings, source)


def _setup_jax(args, cfg):
    from detr_jax.distributed import initialize_from_args
    initialize_from_args(args)
    _lock_output(args)
    from detr_jax.compile_cache import enable_compilation_cache
    return enable_compilation_cache(cfg.eval.compilation_cache)


def _load_model(args, cfg):
    """The checkpoint's model with ``--precision``, ``--attention-kernel`` and the matmul
    precision (``--matmul-precision`` / ``eval.matmul_precision``) applied to its config
    before it is built (the kernel as the config field ``attention_backend``)."""
    from detr_jax.checkpoint import load_model
    model = load_model(args.checkpoint, dtype=_dtype(args))
    fields = {"matmul_precision": cfg.eval.matmul_precision}
    if args.attention_kernel:
        fields["attention_backend"] = args.attention_kernel
    if any(model.config.get(k) != v for k, v in fields.items()):
        model = with_config(model, **fields)
    return model


def with_config(model, **fields):
    """``detr_jax.models.build.with_config`` (imported when called: the parser stays light)."""
    from detr_jax.models.build import with_config as build_with_config
    return build_with_config(model, **fields)


def _dtype(args):
    """The model dtype for ``--precision`` (None keeps the checkpoint's)."""
    return "bfloat16" if args.precision == "bf16" else None


def _predict(args, cfg, settings, specs) -> int:
    from detr_jax.convert.errors import CheckpointError
    from detr_jax.evaluation.predict import predict_images
    from detr_jax.models.build import with_encoder_attention

    _setup_jax(args, cfg)
    try:
        base = _load_model(args, cfg)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problem = _check_settings(base, settings, specs, args.checkpoint)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    threshold = cfg.eval.score_threshold if args.threshold is None else args.threshold
    for setting, spec in zip(settings, specs):
        model = base if setting == "exact" else with_encoder_attention(base, spec)
        try:
            summary = predict_images(model, args.images, args.output_dir, setting=setting,
                                     threshold=threshold, size=cfg.data.size,
                                     max_size=cfg.data.max_size, seed=cfg.eval.seed,
                                     skip_bad_images=bool(cfg.eval.skip_bad_images))
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for index, item in enumerate(summary["images"]):
            note = " (first call: includes compiling)" if index == 0 else ""
            print(f"[{setting}] {item['image']}: {item['detections']} detections "
                  f"(>= {threshold}) in {item['seconds'] * 1e3:.0f} ms{note} -> {item['json']}")
        for item in summary["skipped"]:
            print(f"[{setting}] skipped: {item['reason']}")
        print(f"[{setting}] compiled shapes: {summary['compiles']}")
    return 0


def _evaluate(args, cfg, settings, source) -> int:
    import jax

    from detr_jax.convert.errors import CheckpointError
    from detr_jax.data.coco import BadImageError
    from detr_jax.evaluation.coco_eval import evaluate
    from detr_jax.evaluation.report import write_report
    from detr_jax.attention import parse_attention

    cache = _setup_jax(args, cfg)
    try:
        model = _load_model(args, cfg)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problem = _check_settings(model, settings, [parse_attention(s) for s in settings],
                              args.checkpoint)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    e = cfg.eval
    try:
        result = evaluate(model, source, settings, batch_size=e.batch_size,
                          granularity=cfg.data.granularity, size=cfg.data.size,
                          max_size=cfg.data.max_size, seed=e.seed, num_workers=e.num_workers,
                          prefetch=e.prefetch, max_images=e.max_images,
                          skip_bad_images=e.skip_bad_images, flops_images=e.flops_images,
                          warmup_rounds=e.warmup_batches, progress=not args.no_progress,
                          hash_seeds=int(e.get("hash_seeds", 1)))
    except BadImageError as err:
        print(f"error: {err} (pass --skip-bad-images to skip such images)", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if jax.process_index() != 0:
        return 0
    details = {"attention settings": ", ".join(settings),
               "hash draws": int(e.get("hash_seeds", 1)),
               "input": f"shortest side {cfg.data.size}, longest at most {cfg.data.max_size}",
               "precision": args.precision,
               "matmul precision": cfg.eval.matmul_precision,
               "compilation cache": cache or "off", "jax": jax.__version__,
               "backend": jax.default_backend()}
    out = write_report(args.output_dir, result, source.coco, model=model, source=source,
                       meta={"dataset": source.describe(), "checkpoint": args.checkpoint,
                             "details": details},
                       plots=e.plots, cluster_map_images=e.cluster_map_images,
                       cluster_map_head=e.cluster_map_head, size=cfg.data.size,
                       max_size=cfg.data.max_size, seed=e.seed,
                       progress=not args.no_progress)
    _print_summary(out["rows"], result)
    for path in out["files"]:
        print(f"wrote {path}")
    return 0


def _print_summary(rows, result) -> None:
    from detr_jax.evaluation.report import status_line
    print(status_line(result))
    header = f"{'attention':<28} {'AP':>6} {'AP50':>6} {'AP75':>6} {'AP_S':>6} {'AP_M':>6} {'AP_L':>6}"
    if rows and "gflops_total" in rows[0]:
        header += f" {'GFLOPs':>8}"
    header += f" {'ms/img':>8} {'prototypes / tokens':>19}"
    print(header)
    for row in rows:
        cells = [f"{row['attention']:<28}"]
        cells += [f"{row[n]:6.1f}" if row[n] is not None else f"{'n/a':>6}"
                  for n in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")]
        if "gflops_total" in row:
            cells.append(f"{row['gflops_total']:8.1f}" if row["gflops_total"] is not None
                         else f"{'n/a':>8}")
        cells.append(f"{row['ms_per_image']:8.2f}" if row["ms_per_image"] is not None
                     else f"{'n/a':>8}")
        # min-max over encoder layers of clusters / valid tokens (1.0: exact keeps all)
        ratios = row.get("prototype_ratio") or []
        if not ratios:
            text = "n/a"
        elif min(ratios) == 1.0:
            text = "1.0"
        else:
            low, high = f"{min(ratios):.2f}", f"{max(ratios):.2f}"
            text = low if low == high else f"{low}-{high}"
        cells.append(f"{text:>19}")
        print(" ".join(cells))
        if row.get("draws", 1) > 1:  # several hash draws: the row holds their means
            stds = [f"{row[n + '_std']:6.1f}" if row.get(n + "_std") is not None else f"{'n/a':>6}"
                    for n in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")]
            print(f"{'  std over ' + str(row['draws']) + ' draws':<28} " + " ".join(stds))
