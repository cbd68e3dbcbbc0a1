"""Multiply-accumulates of Conditional DETR, per image, under the rules of
:mod:`detr_jax.flops` (fully connected layers with their bias additions, ``Nq Nk Dh``
per head for each attention product, norms/softmax/activations not counted).

The backbone, ``input_proj`` and encoder are DETR's and are counted by
:func:`detr_jax.flops.count_flops`. The decoder differs, per layer with Q queries, N
tokens (Nv valid) and width d:

* self-attention: five Q x d x d projections (q/k content and position, v) and
  ``out_proj``, products ``2 Q Q d``;
* cross-attention: ``ca_qcontent_proj`` and ``ca_qpos_sine_proj`` on the queries,
  ``ca_kcontent_proj``, ``ca_kpos_proj`` and ``ca_v_proj`` on all N memory tokens,
  ``out_proj``, plus ``ca_qpos_proj`` in layer 0 only; products ``Q Nv 2d`` for the
  logits (each head is 2 d / H wide) and ``Q Nv d`` for the values;
* conditioning (``decoder_conditioning``): ``ref_point_head`` (d -> d -> 2) once and
  ``query_scale`` (d -> d -> d) in layers 1..L-1;
* FFN as DETR; heads: class (d -> num_classes, sigmoid, no no-object column) and the
  3-layer box MLP on every decoder layer.
"""

from __future__ import annotations

from typing import Any, Sequence

from detr_jax.attention.costs import attention_product_macs, linear_macs
from detr_jax.flops import GIGA, count_flops


def _plain(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def count_conditional_flops(config, image_hw: Sequence[int], *,
                            valid_hw: Sequence[int] | None = None, attention: Any = "exact",
                            encoder_stats: Sequence | None = None) -> dict:
    """Conditional DETR's MACs for one image of padded size ``image_hw``; arguments and
    keys as :func:`detr_jax.flops.count_flops`, with the decoder and heads replaced by
    Conditional DETR's and a ``decoder_conditioning`` entry added."""
    cfg = _plain(config)
    classes = int(cfg["num_classes"])
    # count_flops adds DETR's no-object class to num_classes
    base = count_flops(dict(cfg, num_classes=classes - 1), image_hw, valid_hw=valid_hw,
                       attention=attention, encoder_stats=encoder_stats)
    d, layers = int(cfg["hidden_dim"]), int(cfg["dec_layers"])
    q, ffn = int(cfg["num_queries"]), int(cfg["ffn_dim"])
    tokens, valid = base["tokens"], base["valid_tokens"]
    qdd = linear_macs(q, d, d)
    dec_self = layers * (6 * qdd + attention_product_macs(q, q, d))
    dec_cross = (layers * (3 * qdd + 3 * linear_macs(tokens, d, d) + 3.0 * q * valid * d)
                 + qdd)
    conditioning = qdd + linear_macs(q, d, 2) + (layers - 1) * 2 * qdd
    dec_ffn = layers * (linear_macs(q, d, ffn) + linear_macs(q, ffn, d))
    decoder = dec_self + dec_cross + dec_ffn + conditioning
    heads = layers * (linear_macs(q, d, classes) + 2 * qdd + linear_macs(q, d, 4))
    transformer = base["transformer"] - base["decoder"] - base["heads"] + decoder + heads
    total = base["backbone"] + transformer
    base.update(
        decoder=float(decoder), decoder_self_attention=float(dec_self),
        decoder_cross_attention=float(dec_cross), decoder_ffn=float(dec_ffn),
        decoder_conditioning=float(conditioning), heads=float(heads),
        transformer=float(transformer), total=float(total),
        gflops_transformer=transformer / GIGA, gflops_total=total / GIGA)
    return base
