"""Typed per-layer statistics of an encoder-attention layer."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class LayerStats:
    """What one encoder-attention layer reports about a batch (a pytree: passes through jit).

    Attributes:
      num_valid: (B,) int32 valid (unpadded) tokens per image.
      num_clusters: (B, H) int32 query prototypes per image and head (ACT, K-means), or
        key regions (ENACT); None when the layer does not cluster.
      num_key_clusters: (B, H) int32 key clusters (ACT with ``group=QK``), else None.
      capacity: () int32 the static capacity (cluster slots) the layer ran at, or None.
    Exact attention reports no statistics (None instead of a LayerStats).
    """

    num_valid: jax.Array
    num_clusters: jax.Array | None = None
    num_key_clusters: jax.Array | None = None
    capacity: jax.Array | None = None

    def prototype_ratio(self) -> jax.Array:
        """(B,) mean over heads of ``num_clusters / max(num_valid, 1)`` (float32)."""
        clusters = jnp.asarray(self.num_clusters, jnp.float32)
        clusters = clusters.reshape(clusters.shape[0], -1)
        valid = jnp.maximum(jnp.asarray(self.num_valid, jnp.float32), 1.0).reshape(-1, 1)
        return jnp.mean(clusters / valid, axis=1)
