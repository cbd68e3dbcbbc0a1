"""Encoder self-attention variants behind one interface (see ``base``)."""

from detr_jax.attention.base import (AttentionSpec, EncoderAttention, MultiHeadAttention,
                                     masked_softmax_attention)
from detr_jax.attention.exact import Exact, ExactAttention
from detr_jax.attention.registry import parse_attention, register_attention, valid_forms
from detr_jax.attention.act import ACT, ACTAttention
from detr_jax.attention.act_forced import ForcedACT
from detr_jax.attention.kmeans import KMeans, KMeansAttention
from detr_jax.attention.enact import ENACT, ENACTAttention

__all__ = [
    "ACT", "ACTAttention", "AttentionSpec", "ENACT", "ENACTAttention", "EncoderAttention", "MultiHeadAttention",
    "masked_softmax_attention", "Exact", "ExactAttention", "ForcedACT", "KMeans", "KMeansAttention",
    "parse_attention", "register_attention", "valid_forms",
]
