"""ACT with prototype counts forced to given ratios: for timing ACT at a trained model's
cluster counts on random weights (``act_forced:ratios=0.5/0.5/0.49/0.45/0.5/0.44``).

Timing only, so it lives with the benchmarks: ``register()`` adds the ``act_forced``
setting to the attention registry, and running this file runs ``detr_jax.benchmark``
with it registered::

    python benchmarks/forced_act.py --config configs/detr_r50_dc5.py --mode infer \
        --attention act_forced:L=32,r=8,ratios=0.5/0.498/0.488/0.455/0.502/0.438

Random weights cluster very differently from trained ones (docs/performance.md), so an end-
to-end timing of ACT on random weights says little about a trained model. This variant runs
every piece of ACT as usual (E2LSH projection and 64-bit combination, the cluster
numbering, the prototype means, the prototype attention, the broadcast back) except that
the numbering groups synthetic hash words instead of the real ones: each (image, head) of
layer ``l`` gets ``floor((V - 1) * ratios[l]) + 1`` clusters of its V valid tokens (about
``ratios[l] * V``), with members spread over the image. The real hashes are still computed
and kept alive (behind an optimization barrier), so their cost is counted. Not for
accuracy: the clusters ignore the queries.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detr_jax.attention.act import ACT, ACTAttention, head_hash_words  # noqa: E402
from detr_jax.attention.backend import AttentionBackend  # noqa: E402
from detr_jax.attention.base import EncoderAttention  # noqa: E402
from detr_jax.attention.clustering import row_valid  # noqa: E402
from detr_jax.attention.registry import register_attention  # noqa: E402

# Multiplier of the spreading map rank -> (rank * SPREAD) mod V. SPREAD is prime, so the map
# is a permutation of 0..V-1 whenever V is not a multiple of it; rank * SPREAD stays in
# uint32 for rows of up to 542,000 tokens.
SPREAD = 7919


def parse_ratios(value: Any) -> tuple[float, ...]:
    """Per-layer ratios from ``"0.5/0.45"``, one number or a sequence; each in (0, 1]."""
    try:
        if isinstance(value, str):
            ratios = tuple(float(part) for part in value.split("/") if part.strip())
        elif isinstance(value, (int, float)):
            ratios = (float(value),)
        else:
            ratios = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"act_forced: ratios {value!r}: expected numbers such as 0.5/0.45") from None
    if not ratios or not all(0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f"act_forced: ratios {value!r}: each must be in (0, 1]")
    return ratios


def forced_words(valid: jax.Array, ratio: float) -> tuple[jax.Array, jax.Array]:
    """Synthetic 64-bit hash words (hi, lo), each (R, N) uint32, giving each row
    ``floor((V - 1) * ratio) + 1`` distinct values over its V valid tokens (``valid`` (R, N)
    bool), spread over the row by the permutation ``rank * SPREAD mod V``. The mask is read
    through an optimization barrier (as ``base.count_valid``): otherwise XLA fuses these
    reductions with the position embedding's fusion of the same mask and runs that as a
    reduction kernel (0.19 ms per DC5 forward at batch 1 on an H100), a cost ACT itself
    does not have."""
    valid = jax.lax.optimization_barrier(valid)
    rank = (jnp.cumsum(valid, axis=-1, dtype=jnp.int32) - 1).astype(jnp.uint32)
    count = jnp.maximum(valid.sum(axis=-1, keepdims=True, dtype=jnp.int32), 1).astype(jnp.uint32)
    spread = (rank * jnp.uint32(SPREAD)) % count
    lo = jnp.floor(spread.astype(jnp.float32) * ratio).astype(jnp.uint32)
    return jnp.zeros_like(lo), lo


@dataclasses.dataclass(frozen=True, eq=False)
class ForcedACT(ACT):
    """Spec of ACT with forced prototype ratios per layer (the last ratio repeats)."""

    name = "act_forced"
    ratios: Any = (0.5,)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "ratios", parse_ratios(self.ratios))
        if self.group != "Q":
            raise ValueError("act_forced: only group=Q (query clustering) is supported")

    def build(self, d_model: int, num_heads: int, *, layer_index: int, num_layers: int,
              dtype: Any = None, backend: AttentionBackend | None = None,
              rngs) -> EncoderAttention:
        return ForcedACTAttention(d_model, num_heads, spec=self, layer_index=layer_index,
                                  dtype=dtype, backend=backend, rngs=rngs)

    def to_string(self) -> str:
        base = super().to_string().split(":", 1)[1]
        return f"act_forced:{base},ratios=" + "/".join(f"{r:g}" for r in self.ratios)


class ForcedACTAttention(ACTAttention):
    """ACT whose cluster numbering groups synthetic words (see the module docstring)."""

    def clusters(self, x: jax.Array, key_padding_mask: jax.Array | None, rng, side: str):
        weights, biases = self.hash_params(rng, side)
        with jax.named_scope("act_hash"):
            real = head_hash_words(x, weights, biases, self.spec.bucket_width)
        batch, n, heads, _ = x.shape
        valid_rows = row_valid(key_padding_mask, batch, heads, n)
        ratios = self.spec.ratios
        forced = forced_words(valid_rows, ratios[min(self.layer_index, len(ratios) - 1)])
        forced, _ = jax.lax.optimization_barrier((forced, real))  # keep the hashing's cost
        return self.number(*forced, key_padding_mask, heads=heads)


def _from_string(ratios="0.5", L=32, r=8.0, seed=0, ladder=None, ids="auto") -> ForcedACT:
    kwargs = {} if ladder is None else {"ladder": ladder}
    try:
        return ForcedACT(ratios=ratios, rounds=L, bucket_width=r, seed=seed, numbering=ids,
                         **kwargs)
    except ValueError as err:
        raise ValueError(f"{err}; form: {USAGE}") from None


USAGE = "act_forced[:ratios=<per-layer prototype ratios, e.g. 0.5/0.45>,L=..,r=..,ids=auto|sort|table]"


def register() -> None:
    """Make ``act_forced:...`` a valid attention setting (``parse_attention``)."""
    register_attention("act_forced", _from_string, USAGE)


if __name__ == "__main__":
    register()
    from detr_jax.benchmark import main
    sys.exit(main(command=[sys.executable, os.path.abspath(__file__)]))
