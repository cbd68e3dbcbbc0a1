"""Analytic multiply-accumulate count of one image through Anchor DETR, with the
conventions of :mod:`detr_jax.flops` (convolutions, fully connected layers and attention
matrix products count; norms, activations, softmax, masking and averages do not).

RCDA (:mod:`detr_jax.models.rcda`) with Q queries on an (h, w) map of width d:
projections ``linear(Q)`` for the row and column queries and the output, ``linear(w)`` and
``linear(h)`` for the averaged row and column keys (this implementation averages before
projecting; the official code projects all h*w tokens twice first), ``linear(h*w)`` for
the values; logits ``Q (w + h) d``; the weighted sum ``Q h w d`` for the longer side plus
``Q s d`` for the shorter side s. As for DETR, token-wise layers run on the padded grid
and the attention products count valid queries (in the encoder) and valid rows/columns.
Position MLPs run once per image (rows and columns) and once per query set.

An RCDA encoder with ENACT (:mod:`detr_jax.models.rcda_enact`) is counted by the spec's
``rcda_layer_flops`` from the pooled-token counts in the model's statistics.

With ``attention_type="nn.MultiheadAttention"`` the encoder and the cross-attention are
standard attention, counted as :func:`detr_jax.flops.count_flops` counts DETR's (the
encoder attention by its spec's ``layer_flops``, so ACT or K-means are counted with their
statistics), and ``adapt_pos2d`` runs on every feature position.
"""

from __future__ import annotations

from typing import Sequence

from detr_jax.flops import (GIGA, attention_product_macs, backbone_count, conv_macs,
                            encoder_attention_layers, linear_macs, mha_projection_macs)
from detr_jax.models.position import nearest_indices


def _valid(padded: int, valid: int, feature: int) -> int:
    return int((nearest_indices(padded, feature) < valid).sum())


def rcda_macs(queries: int, valid_queries: int, h: int, w: int, valid_h: int, valid_w: int,
              d: int) -> dict:
    """MACs of one RCDA call: ``projections`` (on the padded grid) and ``products``."""
    projections = (3 * linear_macs(queries, d, d) + linear_macs(w, d, d) + linear_macs(h, d, d)
                   + linear_macs(h * w, d, d))
    short, long_ = sorted((valid_h, valid_w))
    products = valid_queries * d * (valid_h + valid_w + short * long_ + short)
    return {"projections": float(projections), "products": float(products)}


def rcda_encoder_layers(spec, encoder_stats, *, layers: int, d_model: int, heads: int, h: int,
                        w: int, valid_h: int, valid_w: int) -> list[dict]:
    """Per RCDA encoder layer, the attention MACs per image that ``spec.rcda_layer_flops``
    reports (plain RCDA for exact attention); ``encoder_stats``: one entry per layer,
    required when ``spec.needs_stats`` (ENACT's pooled-token counts)."""
    if spec.needs_stats:
        if encoder_stats is None:
            raise ValueError(f"{spec.to_string()}: pooled-token counts depend on the data: pass "
                             "encoder_stats (the model's outputs['encoder_stats'], or "
                             "{'cluster_ratio': r} per layer)")
        if len(encoder_stats) != layers:
            raise ValueError(f"encoder_stats has {len(encoder_stats)} entries, the encoder "
                             f"{layers} layers")
    return [dict(spec.rcda_layer_flops(index, d_model=d_model, num_heads=heads, h=h, w=w,
                                       valid_h=valid_h, valid_w=valid_w,
                                       stats=None if encoder_stats is None
                                       else encoder_stats[index]))
            for index in range(layers)]


def anchor_detr_flops(config, image_hw: Sequence[int], valid_hw: Sequence[int] | None = None,
                      *, attention=None, encoder_stats: Sequence | None = None) -> dict:
    """MACs of one image of padded size ``image_hw`` (unpadded ``valid_hw``) through Anchor
    DETR; config: an ``anchor_detr_config`` or a model's ``config`` dict. For the
    standard-attention type, ``attention`` is the encoder attention (spec or string; the
    config's when None) and ``encoder_stats`` one image's per-layer statistics where the
    variant needs them (as :func:`detr_jax.flops.count_flops`; for the RCDA type, ENACT's
    pooled-token counts). Keys as
    :func:`detr_jax.flops.count_flops` where they apply (``backbone``, ``transformer``,
    ``total``, ``input_proj``, ``encoder_attention``, ``encoder_ffn``, ``decoder``,
    ``heads``, ``gflops_*``, geometry)."""
    get = config.__getitem__
    d, ffn = int(get("hidden_dim")), int(get("ffn_dim"))
    enc_layers, dec_layers = int(get("enc_layers")), int(get("dec_layers"))
    queries = int(get("num_query_position")) * int(get("num_query_pattern"))
    classes = int(get("num_classes"))
    image_hw = (int(image_hw[0]), int(image_hw[1]))
    valid_hw = image_hw if valid_hw is None else (int(valid_hw[0]), int(valid_hw[1]))
    bb = backbone_count(config, image_hw)
    h, w = bb["feature_hw"]
    vh, vw = _valid(image_hw[0], valid_hw[0], h), _valid(image_hw[1], valid_hw[1], w)
    tokens, valid_tokens = h * w, vh * vw

    input_proj = conv_macs((h, w), 1, bb["channels"], d, bias=True)
    enc_ffn = enc_layers * (linear_macs(tokens, d, ffn) + linear_macs(tokens, ffn, d))
    rcda = config.get("attention_type", "RCDA") == "RCDA"
    from detr_jax.attention import parse_attention
    spec = parse_attention(get("encoder_attention") if attention is None else attention)
    if rcda:
        positions = 2 * linear_macs(h + w, d, d)                    # adapt_pos1d, rows + cols
        layers = rcda_encoder_layers(spec, encoder_stats, layers=enc_layers, d_model=d,
                                     heads=int(get("num_heads")), h=h, w=w, valid_h=vh,
                                     valid_w=vw)
        enc = {key: sum(layer[key] for layer in layers) / enc_layers
               for key in ("projections", "products", "hashing_and_clustering")}
        query_positions = 2 * linear_macs(queries, d, d) + 2 * 2 * linear_macs(queries, d, d)
        cross = rcda_macs(queries, queries, h, w, vh, vw, d)
    else:
        layers = encoder_attention_layers(spec, encoder_stats, layers=enc_layers, d_model=d,
                                          heads=int(get("num_heads")), tokens=tokens,
                                          valid_tokens=valid_tokens)
        positions = 2 * linear_macs(tokens, d, d)                   # adapt_pos2d, every position
        enc = {"projections": sum(layer["projections"] for layer in layers) / enc_layers,
               "products": sum(layer["products"] for layer in layers) / enc_layers,
               "hashing_and_clustering": sum(layer["hashing_and_clustering"]
                                             for layer in layers) / enc_layers}
        query_positions = 2 * linear_macs(queries, d, d)
        cross = {"projections": float(mha_projection_macs(queries, tokens, d)),
                 "products": attention_product_macs(queries, valid_tokens, d)}
    encoder_attention = enc_layers * (enc["projections"] + enc["products"])
    dec_self = dec_layers * (mha_projection_macs(queries, queries, d)
                             + attention_product_macs(queries, queries, d))
    dec_cross = dec_layers * (cross["projections"] + cross["products"])
    dec_ffn = dec_layers * (linear_macs(queries, d, ffn) + linear_macs(queries, ffn, d))
    decoder = query_positions + dec_self + dec_cross + dec_ffn
    heads = dec_layers * (linear_macs(queries, d, classes) + 2 * linear_macs(queries, d, d)
                          + linear_macs(queries, d, 4))
    hashing = enc_layers * enc.get("hashing_and_clustering", 0.0)
    transformer = input_proj + positions + encoder_attention + hashing + enc_ffn + decoder + heads
    backbone = float(bb["total"])
    return {
        "attention": (("rcda" if spec.to_string() == "exact" else "rcda+" + spec.to_string())
                      if rcda else spec.to_string()), "image_hw": image_hw, "valid_hw": valid_hw,
        "feature_hw": (h, w),
        "tokens": tokens, "valid_tokens": valid_tokens,
        "backbone": backbone, "transformer": float(transformer),
        "total": backbone + float(transformer),
        "input_proj": float(input_proj), "position_embeddings": float(positions),
        "encoder_attention": float(encoder_attention),
        "encoder_attention_projections": float(enc_layers * enc["projections"]),
        "encoder_attention_products": float(enc_layers * enc["products"]),
        "encoder_ffn": float(enc_ffn), "hashing_and_clustering": float(hashing),
        "decoder": float(decoder), "decoder_self_attention": float(dec_self),
        "decoder_cross_attention": float(dec_cross), "decoder_ffn": float(dec_ffn),
        "heads": float(heads),
        "backbone_stages": {k: float(v) for k, v in bb["stages"].items()},
        "gflops_backbone": backbone / GIGA, "gflops_transformer": transformer / GIGA,
        "gflops_total": (backbone + transformer) / GIGA,
    }
