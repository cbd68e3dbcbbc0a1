"""``train.py``: train or fine-tune DETR from a config on one or many devices and hosts."""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train DETR. Resumes from the newest checkpoint in --workdir.",
        epilog="Any config field can be overridden as --config.path.to.field=value "
               "(e.g. --config.train.global_batch=16).")
    parser.add_argument("--config", required=True, help="config file, e.g. configs/synthetic_demo.py")
    parser.add_argument("--workdir", required=True,
                        help="checkpoints, logs, TensorBoard, final model: a path or a URL "
                             "(gs://bucket/run, file:///abs/run)")
    parser.add_argument("--no-progress", action="store_true", help="print log lines instead of a progress bar")
    parser.add_argument("--matmul-precision", default=None, choices=("default", "high", "highest"),
                        help="precision of float32 matrix products and convolutions (sets "
                             "model.matmul_precision; default: the config's, 'default'): default "
                             "= TF32 on GPUs, one bf16 pass on TPUs; high = TF32 / three bf16 "
                             "passes; highest = fp32 / six passes")
    from detr_jax.distributed import add_flags
    add_flags(parser)
    return parser


def build_model_from_config(cfg):
    """The model training starts from: ``train.init_checkpoint`` (a whole model, e.g. for
    fine-tuning), else ``cfg.model`` freshly initialized from ``train.seed``, with the
    backbone of ``train.init_backbone`` if set (e.g. from ``backbone_pretrain``)."""
    from flax import nnx

    from detr_jax.checkpoint import load_model, load_model_for_finetuning, read_config
    from detr_jax.convert.errors import CheckpointError
    from detr_jax.models.build import build_model
    if cfg.train.init_checkpoint:
        path = cfg.train.init_checkpoint
        wanted = cfg.model.get("encoder_attention", "exact")
        if wanted == read_config(path).get("encoder_attention", "exact"):
            return _with_matmul_precision(load_model(path), cfg)
        # e.g. ENACT fine-tuned from an exact model: its entropy layers start fresh
        model, new = load_model_for_finetuning(path, wanted, seed=cfg.train.seed)
        logging.info("%s with encoder attention %s: %d new variables (%s)", path, wanted,
                     len(new), ", ".join("/".join(map(str, p)) for p in new[:4]))
        return _with_matmul_precision(model, cfg)
    model = build_model(cfg.model, seed=cfg.train.seed)
    if cfg.train.get("init_backbone"):
        path = cfg.train.init_backbone
        theirs = dict(read_config(path).backbone)
        ours = dict(cfg.model.backbone)
        if theirs != ours:
            raise CheckpointError(f"{path}: its backbone {theirs} differs from the config's "
                                  f"model.backbone {ours}")
        nnx.update(model.backbone, nnx.state(load_model(path).backbone))
    return model


def _with_matmul_precision(model, cfg):
    """A loaded model under the config's ``model.matmul_precision`` (the checkpoint's own
    value is replaced: it is a run setting, not a property of the parameters)."""
    from detr_jax.models.build import with_config
    wanted = cfg.model.get("matmul_precision", "default")
    if model.config.get("matmul_precision", "default") == wanted:
        return model
    return with_config(model, matmul_precision=wanted)


def training_source(data):
    """The training split of a config's ``data`` section: TFDS ``coco/2017`` (array_record,
    ``tfds.data_source``; local or bucket directory) when ``train_tfds_dir`` is set, else the
    COCO annotation file and image directory (``train_annotations``, ``train_images``)."""
    tfds_dir = data.get("train_tfds_dir", "")
    if tfds_dir:
        from detr_jax.data.tfds_source import TfdsCocoSource
        return TfdsCocoSource(tfds_dir, name=data.get("tfds_name", "coco/2017"),
                              split=data.get("train_tfds_split", "train"))
    from detr_jax.data.coco import CocoSource
    return CocoSource(data.train_annotations, data.train_images)


def make_eval_fn(cfg, settings=("exact",)):
    """``eval_fn(model, step) -> metrics`` for periodic evaluation on the config's
    validation split under the attention ``settings`` (the model's own; with MTKD also the student),
    or None when ``train.eval_every`` is 0 or there is no validation split.
    ``train.eval_images`` > 0 limits it to the first N images (metric names then end in
    ``_firstN``); with several settings the names start with the setting."""
    if not cfg.train.get("eval_every", 0):
        return None
    annotations, images = cfg.data.get("val_annotations", ""), cfg.data.get("val_images", "")
    from detr_jax import paths
    if not annotations or not paths.exists(annotations):
        logging.warning("train.eval_every is set but data.val_annotations (%r) does not exist: "
                        "no periodic evaluation", annotations)
        return None
    from detr_jax.data.coco import CocoSource
    from detr_jax.evaluation.coco_eval import METRIC_NAMES, coco_metrics, evaluate
    source = CocoSource(annotations, images)
    limit = int(cfg.train.get("eval_images", 0))
    partial = 0 < limit < len(source)

    def eval_fn(model, step):
        result = evaluate(model, source, list(settings), batch_size=cfg.eval.batch_size,
                          granularity=cfg.data.granularity, size=cfg.data.size,
                          max_size=cfg.data.max_size, seed=cfg.eval.seed, max_images=limit,
                          flops_images=0, progress=False)
        suffix = f"_first{limit}" if partial else ""
        out = {}
        for setting in settings:
            metrics = coco_metrics(source.coco, result.results_json(setting), result.image_ids)
            prefix = f"{setting}/" if len(settings) > 1 else ""
            out.update({prefix + name + suffix: metrics[name] for name in METRIC_NAMES})
        return out

    return eval_fn


def main(argv=None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    from detr_jax.config_cli import config_for_parser
    cfg = config_for_parser(parser, args.config, rest)
    from detr_jax.precision import check_matmul_precision
    if args.matmul_precision:
        cfg.model.matmul_precision = args.matmul_precision
    try:
        check_matmul_precision(cfg.model.get("matmul_precision", "default"),
                               f"{args.config}: model.matmul_precision")
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from detr_jax.distributed import DistributedSetupError, initialize_from_args
    try:
        initialize_from_args(args)
    except DistributedSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    import jax
    from detr_jax import paths
    from detr_jax.checkpoint import save_model
    from detr_jax.data.augment import AugmentConfig
    from detr_jax.training.grain_data import make_train_loader
    from detr_jax.training.mtkd import MTKDConfig, mtkd_loss_fn
    from detr_jax.training.trainer import NonFiniteLoss, Trainer, train
    from detr_jax.compile_cache import enable_compilation_cache
    from detr_jax.locks import DirectoryLocked
    from detr_jax.training.checkpoints import NoUsableCheckpoint

    enable_compilation_cache(cfg.train.get("compilation_cache"))
    try:
        source = training_source(cfg.data)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    augment = AugmentConfig.from_data_config(cfg.data)
    from detr_jax.training.defaults import resolve_global_batch, training_granularity
    resolve_global_batch(cfg.train, jax.device_count())
    # data.pipeline: "grain" (the default when installed), "threads" or "auto"
    loader = make_train_loader(source, pipeline=cfg.data.get("pipeline", "auto"),
                               global_batch=cfg.train.global_batch, seed=cfg.train.seed,
                               augment=augment, granularity=training_granularity(cfg),
                               max_targets=cfg.train.max_targets,
                               process_index=jax.process_index(),
                               process_count=jax.process_count(),
                               num_workers=cfg.train.num_workers, prefetch=cfg.train.prefetch,
                               workers=cfg.train.get("workers", "process"),
                               pad_to=tuple(cfg.train.get("pad_to", ())) or None)
    steps_per_epoch = loader.steps_per_epoch()
    num_steps = cfg.train.num_steps or cfg.train.epochs * steps_per_epoch
    model = build_model_from_config(cfg)
    mtkd = MTKDConfig.from_config(cfg.get("mtkd"))
    # the detector's own recipe (DETR: cross-entropy; Conditional/Anchor DETR: focal)
    loss_fn = (model.default_loss(cfg.loss) if mtkd is None
               else mtkd_loss_fn(model, mtkd, model.default_criterion(cfg.loss)))
    trainer = Trainer(model, cfg.train, steps_per_epoch=steps_per_epoch, loss_fn=loss_fn)
    if mtkd is not None:
        print(f"MTKD: exact branch + {mtkd.act} branch, box distillation weight {mtkd.kd_weight}")
    print(f"training {num_steps} steps ({steps_per_epoch} per epoch) on {jax.device_count()} "
          f"devices in {jax.process_count()} processes, global batch {cfg.train.global_batch}, "
          f"{loader.pipeline} input pipeline")
    # periodic evaluation runs the model as it trains (exact, ENACT, ...), plus MTKD's student
    own_attention = model.config.get("encoder_attention") or "exact"
    try:
        summary = train(trainer, loader, workdir=args.workdir, num_steps=num_steps,
                        eval_fn=make_eval_fn(cfg, (own_attention,) + ((mtkd.act,) if mtkd else ())),
                        progress=None if args.no_progress else True)
    except NonFiniteLoss as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (DirectoryLocked, NoUsableCheckpoint) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the loop's handlers are installed (a second Ctrl-C
        # inside the loop ends the process from its handler)
        print("interrupted (the last saved checkpoint is kept)", file=sys.stderr)
        return 130
    except OSError as err:
        print(f"error: cannot write to {args.workdir}: {err}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        try:
            path = save_model(trainer.model(), paths.join(args.workdir, "model"), overwrite=True,
                              metadata={"step": summary["final_step"], "config": args.config})
        except OSError as err:
            print(f"error: cannot write the model to {args.workdir}: {err}", file=sys.stderr)
            return 2
        print(f"model at step {summary['final_step']} -> {path}"
              + (f" (stopped early by {summary['stopped_by']}; run again to resume)"
                 if summary["stopped_early"] else ""))
    return 0
