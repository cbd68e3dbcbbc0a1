"""``convert_torch_weights.py``: official PyTorch / Hugging Face DETR weights -> detr_jax checkpoint."""

from __future__ import annotations

import argparse
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert an official DETR checkpoint (facebookresearch/detr .pth, or a "
                    "Hugging Face DETR pytorch_model.bin / model.safetensors / directory) "
                    "into a detr_jax checkpoint directory (Orbax state + config.json).")
    parser.add_argument("--checkpoint", required=True, help="input checkpoint file or directory")
    parser.add_argument("--output", required=True, help="output checkpoint directory")
    dc5 = parser.add_mutually_exclusive_group()
    dc5.add_argument("--dilation", dest="dilation", action="store_true", default=None,
                     help="DC5 model (dilated last stage); default: 'dc5' in the file name")
    dc5.add_argument("--no-dilation", dest="dilation", action="store_false",
                     help="plain model (undilated last stage), whatever the file name says")
    parser.add_argument("--num-heads", type=int, default=8,
                        help="attention heads (not visible in the shapes; 8 for official models)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import numpy as np
    from detr_jax.checkpoint import save_model
    from detr_jax.convert.errors import CheckpointError
    from detr_jax.convert.load import load_torch_checkpoint
    from flax import nnx

    start = time.perf_counter()
    try:
        model = load_torch_checkpoint(args.checkpoint, dilation=args.dilation,
                                      num_heads=args.num_heads)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = model.config
    params = sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    try:
        path = save_model(model, args.output, overwrite=args.overwrite,
                          metadata={"source": str(args.checkpoint)})
    except (FileExistsError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write {args.output}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"converted {args.checkpoint} -> {path}")
    print(f"  inferred from the weights: {describe_inferred(cfg, model)}, "
          f"{params / 1e6:.2f} M parameters ({time.perf_counter() - start:.1f} s)")
    if (cfg["enc_layers"], cfg["dec_layers"]) != OFFICIAL_LAYERS:
        print(f"  note: the official DETR models have {OFFICIAL_LAYERS[0]} encoder + "
              f"{OFFICIAL_LAYERS[1]} decoder layers; this checkpoint has {cfg['enc_layers']} + "
              f"{cfg['dec_layers']}: check that it is complete")
    return 0


OFFICIAL_LAYERS = (6, 6)


def describe_inferred(cfg, model) -> str:
    """One line of the architecture read from a checkpoint's shapes, e.g. "backbone
    ResNet-50 DC5, 6 encoder + 6 decoder layers, d=256, 100 queries, 92 class outputs"."""
    stages = tuple(cfg["backbone"]["stages"])
    depth = {(3, 4, 6, 3): "ResNet-50", (3, 4, 23, 3): "ResNet-101"}.get(stages, f"ResNet{stages}")
    return (f"backbone {depth}{' DC5' if cfg['backbone']['dilation'] else ''}, "
            f"{cfg['enc_layers']} encoder + {cfg['dec_layers']} decoder layers, "
            f"d={cfg['hidden_dim']}, "
            f"{getattr(model, 'num_queries', None) or cfg['num_queries']} queries, "
            f"{class_outputs(model)} class outputs")


def class_outputs(model) -> int:
    """Outputs of the class head (DETR: classes + no-object; the sigmoid detectors: classes)."""
    from flax import nnx
    return next(v.get_value().shape[-1] for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
                if "class_embed" in p and p[-1] == "kernel")
