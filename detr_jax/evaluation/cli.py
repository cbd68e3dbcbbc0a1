"""``eval.py``: run a detr_jax checkpoint with one or more encoder-attention settings."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate a detr_jax checkpoint. With --images: detections on your own "
                    "images (JSON + drawn PNG per image and attention setting).",
        epilog="Any config field can be overridden as --config.path.to.field=value.")
    parser.add_argument("--checkpoint", required=True,
                        help="detr_jax checkpoint directory (from convert_torch_weights.py or train.py)")
    parser.add_argument("--config", default=None,
                        help="config file (configs/*.py); default: configs/detr_r50_dc5.py values")
    parser.add_argument("--images", nargs="+", help="image files to run on")
    parser.add_argument("--output-dir", default="eval_out", help="where results are written")
    parser.add_argument("--attention", nargs="+", default=None,
                        help="encoder-attention settings, e.g. exact act:L=32 (default: config)")
    parser.add_argument("--threshold", type=float, default=None, help="score threshold for drawing")
    return parser


def default_config():
    import ml_collections
    cfg = ml_collections.ConfigDict()
    cfg.data = ml_collections.ConfigDict(dict(size=800, max_size=1333, granularity=0))
    cfg.eval = ml_collections.ConfigDict(dict(batch_size=1, attention=("exact",),
                                              score_threshold=0.7, seed=0))
    return cfg


def main(argv=None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    from detr_jax.attention import parse_attention, valid_forms
    from detr_jax.checkpoint import load_model
    from detr_jax.config_cli import apply_overrides, load_config_file
    from detr_jax.convert.errors import CheckpointError
    from detr_jax.evaluation.predict import predict_images
    from detr_jax.models.build import with_encoder_attention

    try:
        cfg = load_config_file(args.config) if args.config else default_config()
        apply_overrides(cfg, rest)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    settings = list(args.attention or cfg.eval.attention)
    try:
        specs = [parse_attention(s) for s in settings]
    except ValueError as err:
        parser.error(f"{err}")
    if not args.images:
        parser.error("nothing to evaluate: give --images (COCO evaluation arrives with --coco-dir)")
    try:
        base = load_model(args.checkpoint)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    threshold = cfg.eval.score_threshold if args.threshold is None else args.threshold
    for setting, spec in zip(settings, specs):
        model = base if setting == "exact" else with_encoder_attention(base, spec)
        try:
            summary = predict_images(model, args.images, args.output_dir, setting=setting,
                                     threshold=threshold, size=cfg.data.size,
                                     max_size=cfg.data.max_size, seed=cfg.eval.seed)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for item in summary["images"]:
            print(f"[{setting}] {item['image']}: {item['detections']} detections "
                  f"(>= {threshold}) in {item['seconds'] * 1e3:.0f} ms -> {item['json']}")
        print(f"[{setting}] compiled shapes: {summary['compiles']}")
    return 0
