"""Analytic multiply-accumulate counter for the whole DETR detector, per image.

Convention (the ACT paper's rules, Zheng et al. 2021, Sec. 4.1: "only the FLOPs of
convolutional layers, fully connected layers, matrix operations in attention, E2LSH, and
clustering will be considered"; its figures come from ptflops, which counts
multiply-accumulates, so "GFLOPs" there means 1e9 MACs):

* Convolution: ``output elements x kernel_h x kernel_w x in_channels / groups`` MACs, plus
  one per output element for a bias (ptflops' rule). The ResNet convolutions have no bias;
  ``input_proj`` (1x1, 2048 -> d) has one.
* Fully connected layer: ``rows x in_features x out_features`` MACs plus ``rows x
  out_features`` bias additions (ptflops' rule; they are 0.1-0.3% of the linear cost here).
* Attention matrix products: ``Nq x Nk x Dh`` for ``Q K^T`` and ``Nq x Nk x Dh`` for the
  weighted sum of values, per head; with H heads of Dh = d / H that is ``2 Nq Nk d``.
  The q/k/v/out projections are fully connected layers (above).
* ACT (query clustering): ``C`` prototypes per head attend to all ``N`` keys:
  ``2 C N Dh`` per head instead of ``2 N N Dh``. E2LSH: ``N Dh L`` MACs per head for the
  ``L`` projections ``a . q`` plus ``N L`` for combining the rounds (``sum B^i h_i``).
  Clustering: ``N Dh`` additions per head to sum the members into prototypes plus ``C Dh``
  divisions for the means. Sorting hashes to find equal ones is comparisons, not
  arithmetic, and broadcasting prototype outputs back to the members is memory traffic:
  both count 0. The cluster counts are data dependent: pass the model's
  ``outputs["encoder_stats"]`` (per layer ``num_clusters`` (B, H)); the per-layer mean over
  heads (and over the images of the batch) is used. Key clustering (``group="K"``/
  ``"QK"``) is counted alike: hashing and means of keys *and* values, products
  ``2 Cq Ck Dh`` per head.
* K-means clustered attention (Vyas et al. 2020): ``bits`` hyperplane projections
  (``N Dh bits`` per head), Lloyd iterations in Hamming space (``N C bits`` per head per
  assignment step plus ``N bits`` per centroid update), prototype means (``N Dh + C Dh``),
  then ``2 C N Dh`` per head for the prototype attention.
* ENACT (Savathrakis et al.): with R regions per image, the entropy layer (``N x d``
  MACs on every token), Gaussian smoothing (``len(taps)`` per valid token) and the
  ``[-1, 2, -1]`` second derivative (3), pooling keys and values into regions (``2 N d``),
  k/v projections of the R pooled vectors only, and ``2 N R d`` attention products; the
  region softmax is a softmax (0). R is data dependent: ``encoder_stats`` as for ACT.
  Each variant's rule is its spec's ``layer_flops`` (``detr_jax.attention``); this module
  only sums what the spec reports.
* Not counted (the paper's rule): frozen BatchNorm, ReLU, max pooling, residual and
  position additions, LayerNorm, softmax, logit scaling, masking, the sigmoid of the box
  head. ``not_counted`` in the result sizes the biggest of them for reference (what a
  module-hook ptflops run would add: ReLU and max-pool elements in the backbone, softmax
  and query scaling in the attentions).

Split (the paper's Table 1): ``backbone`` is the ResNet body only (stem and the four
stages). ``transformer`` is everything else the detector computes per image:
``input_proj`` + encoder (attention projections, attention products, FFN) + E2LSH and
clustering + decoder (self-attention, cross-attention incl. the k/v projections of the
memory, FFN) + prediction heads (class and 3-layer box MLP, on all decoder layers, as the
official model computes them). ``transformer = input_proj + encoder_attention +
encoder_ffn + hashing_and_clustering + decoder + heads``.

Padding: ``image_hw`` is the (padded) model input. Convolutions and every token-wise
linear layer are counted on the padded grid (they run there); the attention products use
the valid tokens only (queries and keys of the unpadded image: ``valid_hw`` mapped to the
feature grid with the official nearest-index mask downsampling).

How close it gets: DETR-DC5 at 800x1199 gives 118.75 + 79.84 GMACs and at 800x1066
106.02 + 67.31. The paper's 110.7 + 73.4 is a mean over the first 100 COCO val images.
At the size whose backbone matches 110.7 (800x1114, 3500 tokens) the transformer comes
to 71.9, 2% under 73.4: the N^2 encoder term averaged over mixed image sizes exceeds its
value at the mean size, and ptflops' attention hook also counts the softmax (+0.6). No
constant is tuned to close the gap (docs/flops.md works through it).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import numpy as np

from detr_jax.attention.costs import (attention_product_macs, linear_macs,  # noqa: F401
                                      mha_projection_macs)

GIGA = 1e9


# --------------------------------------------------------------------------- helpers

def _field(config, *path):
    """config["a"]["b"] for ConfigDicts, plain dicts and attribute objects alike."""
    node = config
    for key in path:
        try:
            node = node[key]
        except (KeyError, TypeError):
            node = getattr(node, key)
    return node


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1) -> int:
    """Output length of a convolution or pooling along one axis (torch's formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_macs(out_hw: Sequence[int], kernel: int | Sequence[int], in_channels: int,
              out_channels: int, *, groups: int = 1, bias: bool = False) -> int:
    """MACs of one 2-D convolution: ``out elements x kh x kw x in/groups`` (+ bias adds)."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    positions = int(out_hw[0]) * int(out_hw[1])
    macs = positions * out_channels * kh * kw * (in_channels // groups)
    return macs + (positions * out_channels if bias else 0)


# --------------------------------------------------------------------------- backbone

def backbone_count(config, image_hw: Sequence[int]) -> dict:
    """Convolution MACs of the ResNet body (torchvision v1.5 bottlenecks, DC5 aware).

    Returns ``{"total", "stages": {"stem", "layer1", ...}, "feature_hw", "relu_elements",
    "maxpool_elements"}``; the last two are what ptflops' ReLU / max-pool hooks would add.
    """
    stages = tuple(int(s) for s in _field(config, "backbone", "stages"))
    width = int(_field(config, "backbone", "width"))
    dilation = bool(_field(config, "backbone", "dilation"))
    h, w = int(image_hw[0]), int(image_hw[1])
    per_stage: dict[str, int] = {}
    relu = 0
    h, w = conv_output_size(h, 7, 2, 3), conv_output_size(w, 7, 2, 3)
    per_stage["stem"] = conv_macs((h, w), 7, 3, width)
    relu += h * w * width
    maxpool = h * w * width  # ptflops counts the pool's input elements
    h, w = conv_output_size(h, 3, 2, 1), conv_output_size(w, 3, 2, 1)
    in_ch = width
    current_dilation = 1
    for index, blocks in enumerate(stages):
        planes = width * 2 ** index
        out_ch = planes * 4
        stride = 1 if index == 0 else 2
        previous_dilation = current_dilation
        if dilation and index == len(stages) - 1:
            current_dilation *= stride
            stride = 1
        macs = 0
        for block in range(blocks):
            s = stride if block == 0 else 1
            dil = previous_dilation if block == 0 else current_dilation
            macs += conv_macs((h, w), 1, in_ch, planes)                        # conv1 1x1
            h2 = conv_output_size(h, 3, s, dil, dil)
            w2 = conv_output_size(w, 3, s, dil, dil)
            macs += conv_macs((h2, w2), 3, planes, planes)                      # conv2 3x3
            macs += conv_macs((h2, w2), 1, planes, out_ch)                      # conv3 1x1
            if block == 0 and (s != 1 or in_ch != out_ch):
                macs += conv_macs((h2, w2), 1, in_ch, out_ch)                   # downsample
            relu += h * w * planes + h2 * w2 * (planes + out_ch)
            h, w, in_ch = h2, w2, out_ch
        per_stage[f"layer{index + 1}"] = macs
    return {"total": sum(per_stage.values()), "stages": per_stage, "feature_hw": (h, w),
            "channels": in_ch, "relu_elements": relu, "maxpool_elements": maxpool}


def _valid_feature_size(padded: int, valid: int, feature: int) -> int:
    """Feature rows kept by the official nearest-index mask downsampling."""
    from detr_jax.models.position import nearest_indices
    return int(np.sum(nearest_indices(padded, feature) < valid))


# --------------------------------------------------------------------------- encoder attention

def _spec(attention):
    from detr_jax.attention import parse_attention
    return parse_attention(attention)


def encoder_attention_layers(spec, encoder_stats, *, layers: int, d_model: int, heads: int,
                             tokens: int, valid_tokens: int) -> list[dict]:
    """Per encoder layer, the attention MACs per image that ``spec.layer_flops`` reports
    (with ``projections`` filled in as q/k/v/out on every token when the spec leaves it
    out). ``encoder_stats``: one entry per layer, required when ``spec.needs_stats``."""
    if spec.needs_stats:
        if encoder_stats is None:
            raise ValueError(f"{spec.to_string()}: cluster counts depend on the data: pass "
                             "encoder_stats (the model's outputs['encoder_stats'], or "
                             "{'cluster_ratio': r} per layer)")
        if len(encoder_stats) != layers:
            raise ValueError(f"encoder_stats has {len(encoder_stats)} entries, the encoder "
                             f"{layers} layers")
    result = []
    for index in range(layers):
        stats = encoder_stats[index] if encoder_stats is not None else None
        layer = dict(spec.layer_flops(index, d_model=d_model, num_heads=heads, tokens=tokens,
                                      valid_tokens=valid_tokens, stats=stats))
        # q/k/v/out on every token unless the layer pools its keys
        layer.setdefault("projections", float(mha_projection_macs(tokens, tokens, d_model)))
        result.append(layer)
    return result


# --------------------------------------------------------------------------- whole model

def count_flops(config, image_hw: Sequence[int], *, valid_hw: Sequence[int] | None = None,
                attention: Any = "exact", encoder_stats: Sequence | None = None) -> dict:
    """Multiply-accumulates of one image through DETR (see the module docstring).

    Args:
      config: model config (``model_config(...)`` ConfigDict or a model's ``config`` dict).
      image_hw: (H, W) of the model input (padded size when batched).
      valid_hw: unpadded (H, W); attention products use the valid tokens. None: no padding.
      attention: encoder attention (string such as ``"act:L=32"`` or a spec).
      encoder_stats: for variants whose cost depends on the data (``spec.needs_stats``:
        ACT, ENACT), one entry per encoder layer: the model's ``outputs["encoder_stats"]``
        (LayerStats: ``num_clusters`` (B, H), ``num_valid`` (B,)), or
        ``{"cluster_ratio": r}``, or a mean cluster count per head.
    Returns:
      A dict of MACs (not 2x): ``backbone``, ``transformer``, ``total``; breakdown
      ``input_proj``, ``encoder_attention`` (projections + products),
      ``encoder_attention_projections``, ``encoder_attention_products``, ``encoder_ffn``,
      ``hashing_and_clustering``, ``decoder`` (with ``decoder_self_attention``,
      ``decoder_cross_attention``, ``decoder_ffn``), ``heads``; ``backbone_stages``,
      ``encoder_layers`` (per layer), ``not_counted`` (reference only); ``gflops_*`` =
      MACs / 1e9; geometry (``feature_hw``, ``tokens``, ``valid_tokens``).
    """
    spec = _spec(attention)
    d = int(_field(config, "hidden_dim"))
    heads = int(_field(config, "num_heads"))
    enc_layers = int(_field(config, "enc_layers"))
    dec_layers = int(_field(config, "dec_layers"))
    ffn = int(_field(config, "ffn_dim"))
    queries = int(_field(config, "num_queries"))
    classes = int(_field(config, "num_classes")) + 1
    image_hw = (int(image_hw[0]), int(image_hw[1]))

    bb = backbone_count(config, image_hw)
    fh, fw = bb["feature_hw"]
    tokens = fh * fw
    if valid_hw is None:
        valid_tokens = tokens
    else:
        vh = _valid_feature_size(image_hw[0], int(valid_hw[0]), fh)
        vw = _valid_feature_size(image_hw[1], int(valid_hw[1]), fw)
        valid_tokens = vh * vw

    input_proj = conv_macs((fh, fw), 1, bb["channels"], d, bias=True)

    # encoder
    enc_ffn = enc_layers * (linear_macs(tokens, d, ffn) + linear_macs(tokens, ffn, d))
    layers = encoder_attention_layers(spec, encoder_stats, layers=enc_layers, d_model=d,
                                      heads=heads, tokens=tokens, valid_tokens=valid_tokens)
    projections = sum(layer["projections"] for layer in layers)
    products = sum(layer["products"] for layer in layers)
    hashing = sum(layer["hashing_and_clustering"] for layer in layers)

    # decoder: self-attention among the queries, cross-attention to the memory, FFN
    dec_self = dec_layers * (mha_projection_macs(queries, queries, d)
                             + attention_product_macs(queries, queries, d))
    dec_cross = dec_layers * (mha_projection_macs(queries, tokens, d)
                              + attention_product_macs(queries, valid_tokens, d))
    dec_ffn = dec_layers * (linear_macs(queries, d, ffn) + linear_macs(queries, ffn, d))
    decoder = dec_self + dec_cross + dec_ffn
    heads_macs = dec_layers * (linear_macs(queries, d, classes)
                               + 2 * linear_macs(queries, d, d) + linear_macs(queries, d, 4))

    encoder_attention = projections + products
    transformer = input_proj + encoder_attention + enc_ffn + hashing + decoder + heads_macs
    backbone = bb["total"]
    # what a ptflops run with its module hooks would add on top (reference only)
    softmax_and_scale = (heads * valid_tokens * sum(layer["mean_clusters"] for layer in layers)
                         + enc_layers * tokens * d
                         + dec_layers * (heads * queries * (queries + valid_tokens)
                                         + 2 * queries * d))
    return {
        "attention": spec.to_string(),
        "image_hw": image_hw,
        "valid_hw": tuple(valid_hw) if valid_hw is not None else image_hw,
        "feature_hw": (fh, fw),
        "tokens": tokens,
        "valid_tokens": valid_tokens,
        "backbone": float(backbone),
        "transformer": float(transformer),
        "total": float(backbone + transformer),
        "input_proj": float(input_proj),
        "encoder_attention": float(encoder_attention),
        "encoder_attention_projections": float(projections),
        "encoder_attention_products": float(products),
        "encoder_ffn": float(enc_ffn),
        "hashing_and_clustering": float(hashing),
        "decoder": float(decoder),
        "decoder_self_attention": float(dec_self),
        "decoder_cross_attention": float(dec_cross),
        "decoder_ffn": float(dec_ffn),
        "heads": float(heads_macs),
        "backbone_stages": {k: float(v) for k, v in bb["stages"].items()},
        "encoder_layers": layers,
        "not_counted": {
            "backbone_relu_and_maxpool": float(bb["relu_elements"] + bb["maxpool_elements"]),
            "attention_softmax_and_scaling": float(softmax_and_scale),
        },
        "gflops_backbone": backbone / GIGA,
        "gflops_transformer": transformer / GIGA,
        "gflops_total": (backbone + transformer) / GIGA,
    }


def encoder_matmul_macs(config, tokens: int, *, attention_tokens: int | None = None) -> float:
    """Matrix-product MACs of the exact encoder without bias additions (what XLA counts as
    2 flops each in its dot ops): ``layers x (4 N d^2 + 2 N^2 d + 2 N d ffn)``."""
    d = int(_field(config, "hidden_dim"))
    ffn = int(_field(config, "ffn_dim"))
    layers = int(_field(config, "enc_layers"))
    n_att = tokens if attention_tokens is None else attention_tokens
    return float(layers * (mha_projection_macs(tokens, tokens, d, bias=False)
                           + attention_product_macs(n_att, n_att, d)
                           + linear_macs(tokens, d, ffn, bias=False)
                           + linear_macs(tokens, ffn, d, bias=False)))


# --------------------------------------------------------------------------- XLA cross-check

def _config_dict(config):
    """A ConfigDict for building a model from a ConfigDict or a model's plain config dict."""
    from detr_jax.models.config import model_config
    if hasattr(config, "to_dict"):
        return config
    cfg = model_config()
    cfg.update(dict(config))
    cfg.backbone.stages = tuple(cfg.backbone.stages)
    return cfg


def _batched_attention(config):
    """The config built on the batched XLA attention (backend ``xla``): XLA's cost analysis
    counts a loop's body once, so the CPU default ``xla_map`` (a ``lax.map`` over images
    and heads) would hide most of the attention's flops."""
    cfg = _config_dict(config)
    cfg = cfg.copy_and_resolve_references() if hasattr(cfg, "copy_and_resolve_references") else cfg
    cfg.attention_backend = "xla"
    return cfg


def _cost_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost["flops"])


def xla_encoder_flops(config, tokens: int, *, batch: int = 1) -> float:
    """XLA's ``cost_analysis()["flops"]`` of the jitted exact encoder on (batch, tokens, d)
    inputs (no padding), per image. Compiles only; nothing runs. XLA counts 2 flops per
    multiply-accumulate of a dot plus 1 per elementwise op (softmax, LayerNorm, bias, ...)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from detr_jax.attention import parse_attention
    from detr_jax.models.transformer import Encoder

    cfg = _batched_attention(config)
    encoder = nnx.eval_shape(lambda: Encoder(cfg, parse_attention("exact"), None, nnx.Rngs(0)))
    graphdef, state = nnx.split(encoder)
    d = int(cfg.hidden_dim)

    def run(state, src, pos, mask):
        return nnx.merge(graphdef, state)(src, pos, mask)[0]

    seq = jax.ShapeDtypeStruct((batch, tokens, d), jnp.float32)
    mask = jax.ShapeDtypeStruct((batch, tokens), jnp.bool_)
    return _cost_flops(jax.jit(run).lower(state, seq, seq, mask).compile()) / batch


def xla_model_flops(config, image_hw: Sequence[int]) -> float:
    """XLA's flops of the whole jitted DETR forward (exact attention) for one image."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from detr_jax.models.detr import DETR

    cfg = _batched_attention(config)
    model = nnx.eval_shape(lambda: DETR(cfg, encoder_attention="exact", rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)

    def run(state, pixels, mask):
        out = nnx.merge(graphdef, state)(pixels, mask)
        return out["pred_logits"], out["pred_boxes"]

    h, w = int(image_hw[0]), int(image_hw[1])
    pixels = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, h, w), jnp.bool_)
    return _cost_flops(jax.jit(run).lower(state, pixels, mask).compile())


# --------------------------------------------------------------------------- CLI

def _parse_ratios(text: str, layers: int) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if len(values) == 1:
        values = values * layers
    if len(values) != layers:
        raise argparse.ArgumentTypeError(f"--cluster-ratio {text!r}: give 1 or {layers} values")
    return values


def _table(rows: list[tuple[str, dict]]) -> str:
    columns = [("backbone", "backbone"), ("input_proj", "in_proj"),
               ("encoder_attention_projections", "enc_qkvo"),
               ("encoder_attention_products", "enc_attn"), ("encoder_ffn", "enc_ffn"),
               ("hashing_and_clustering", "hash+clu"), ("decoder", "decoder"),
               ("heads", "heads"), ("transformer", "transf."), ("total", "total")]
    width = max(len(label) for label, _ in rows) + 2
    lines = ["GMACs per image (multiply-accumulates / 1e9; the ACT paper's 'GFLOPs')",
             "attention".ljust(width) + "".join(f"{short:>10}" for _, short in columns)]
    for label, result in rows:
        lines.append(label.ljust(width)
                     + "".join(f"{result[key] / GIGA:10.3f}" for key, _ in columns))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m detr_jax.flops",
        description="Analytic MAC count of DETR per image (ACT paper convention).")
    parser.add_argument("--config", required=True, help="config file (configs/*.py)")
    parser.add_argument("--size", nargs=2, type=int, action="append", metavar=("H", "W"),
                        help="model input size; repeat for several (default 800 1199)")
    parser.add_argument("--valid-size", nargs=2, type=int, metavar=("H", "W"),
                        help="unpadded size when the input is padded")
    parser.add_argument("--attention", nargs="+", default=["exact"],
                        help="encoder attentions (exact, act:L=32, kmeans:C=100, ...)")
    parser.add_argument("--cluster-ratio", action="append", default=None,
                        help="ACT clusters / valid tokens: one value or one per encoder layer "
                             "(comma separated); repeat for several rows "
                             "(default 1.0, 0.75, 0.5, 0.25)")
    parser.add_argument("--xla", action="store_true",
                        help="also print XLA's cost analysis of the jitted exact encoder "
                             "(and whole model) for comparison (compiles, a minute on CPU)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    from detr_jax.config_cli import load_config_file
    config = load_config_file(args.config).model
    layers = int(config.enc_layers)
    ratio_texts = args.cluster_ratio or ["1.0", "0.75", "0.5", "0.25"]
    sizes = args.size or [[800, 1199]]
    report = []
    for size in sizes:
        rows = []
        for attention in args.attention:
            spec = _spec(attention)
            if spec.needs_stats:
                for text in ratio_texts:
                    ratios = _parse_ratios(text, layers)
                    stats = [{"cluster_ratio": r} for r in ratios]
                    result = count_flops(config, size, valid_hw=args.valid_size,
                                         attention=spec, encoder_stats=stats)
                    mean = sum(ratios) / len(ratios)
                    rows.append((f"{spec.to_string()} C/N={mean:.3g}", result))
            else:
                rows.append((spec.to_string(), count_flops(config, size, valid_hw=args.valid_size,
                                                           attention=spec)))
        xla = None
        if args.xla:
            exact = count_flops(config, size)
            matmul = encoder_matmul_macs(config, exact["tokens"])
            enc_flops = xla_encoder_flops(config, exact["tokens"])
            model_flops = xla_model_flops(config, size)
            xla = {"encoder_xla_flops": enc_flops, "encoder_matmul_macs": matmul,
                   "encoder_ratio": enc_flops / (2 * matmul),
                   "model_xla_flops": model_flops, "model_counted_macs": exact["total"],
                   "model_ratio": model_flops / (2 * exact["total"])}
        report.append((size, rows, xla))
    if args.json:
        print(json.dumps([{"size": size, "rows": {label: r for label, r in rows}, "xla": xla}
                          for size, rows, xla in report], indent=1, default=str))
        return 0
    for size, rows, xla in report:
        first = rows[0][1]
        fh, fw = first["feature_hw"]
        print(f"\n{args.config}  input {size[0]}x{size[1]}  features {fh}x{fw} = "
              f"{first['tokens']} tokens ({first['valid_tokens']} valid)")
        print(_table(rows))
        if xla:
            print(f"XLA cost analysis (flops = 2 per MAC + elementwise): encoder "
                  f"{xla['encoder_xla_flops'] / GIGA:.2f} GFLOP vs 2 x matmul MACs "
                  f"{2 * xla['encoder_matmul_macs'] / GIGA:.2f} "
                  f"(ratio {xla['encoder_ratio']:.4f}); "
                  f"whole model {xla['model_xla_flops'] / GIGA:.2f} vs 2 x counted "
                  f"{2 * xla['model_counted_macs'] / GIGA:.2f} (ratio {xla['model_ratio']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
