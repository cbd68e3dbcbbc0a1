"""Encoder self-attention variants behind one interface (see ``base``)."""

from detr_jax.attention.backend import AttentionBackend, resolve_backend
from detr_jax.attention.base import AttentionSpec, EncoderAttention, MultiHeadAttention
from detr_jax.attention.softmax import masked_softmax_attention
from detr_jax.attention.stats import LayerStats
from detr_jax.attention.exact import Exact, ExactAttention
from detr_jax.attention.act import ACT, ACTAttention
from detr_jax.attention.kmeans import KMeans, KMeansAttention
from detr_jax.attention.enact import ENACT, ENACTAttention
from detr_jax.attention.registry import parse_attention, register_attention, valid_forms

__all__ = [
    "ACT", "ACTAttention", "AttentionBackend", "AttentionSpec", "ENACT", "ENACTAttention",
    "EncoderAttention", "Exact", "ExactAttention", "KMeans", "KMeansAttention", "LayerStats",
    "MultiHeadAttention", "masked_softmax_attention", "parse_attention", "register_attention",
    "resolve_backend", "valid_forms",
]
