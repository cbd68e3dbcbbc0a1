"""A padded batch gives each image's valid tokens the output of that image alone (ACT, K-means)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import detr_jax
from detr_jax.attention.capacity import ladder_capacities
from detr_jax.models.position import sine_position_embedding
from tests.attention.clustered_cases import build_attention, grid_valid, padded_case, relative_error

SPECS = {
    "act_Q": detr_jax.ACT(rounds=16, bucket_width=0.5),
    "act_K": detr_jax.ACT(rounds=16, bucket_width=0.5, group="K", key_rounds=4),
    "act_QK": detr_jax.ACT(rounds=16, bucket_width=0.5, group="QK", key_rounds=4),
    "kmeans": detr_jax.KMeans(clusters=8, iterations=5, bits=16),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_attend_padded_batch_equals_single_images(name):
    q, k, v, mask, parts = padded_case()
    module = build_attention(SPECS[name])
    rng = jax.random.key(4)
    out, stats = module.attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                               jnp.asarray(mask), rng)
    assert np.all(np.isfinite(out))
    needed, single_capacity = 0, []
    for i, (qi, ki, vi) in enumerate(parts):
        single, single_stats = module.attend(*(jnp.asarray(x[None]) for x in (qi, ki, vi)),
                                             None, rng)
        assert relative_error(out[i][~mask[i]], single[0]) < 1e-5
        for stat in ("num_clusters", "num_key_clusters"):
            if getattr(stats, stat) is not None:
                np.testing.assert_array_equal(getattr(stats, stat)[i],
                                              getattr(single_stats, stat)[0])
                needed = max(needed, int(np.max(getattr(single_stats, stat))))
        assert int(stats.num_valid[i]) == len(qi)
        single_capacity.append(int(single_stats.capacity))
    if name.startswith("act"):
        # Padding uses no capacity: the padded batch runs at the rung its most clustered
        # image needs (the garbage in its padding would need far more).
        assert needed < 10
        assert int(stats.capacity) == min(c for c in ladder_capacities(q.shape[1])
                                              if c >= needed)
        # image 0 fills the padded shape and has the most clusters: same ladder, same rung
        assert int(stats.capacity) == single_capacity[0]
    else:
        assert int(stats.capacity) == 8


@pytest.fixture(scope="module")
def encoder_case():
    """Two images of 4x5 and 3x3 tokens padded to 4x5, with the sine position embedding."""
    cfg = detr_jax.tiny_model_config()
    sizes, (height, width), d = [(4, 5), (3, 3)], (4, 5), cfg.hidden_dim
    rng = np.random.default_rng(0)
    valid = grid_valid(sizes, height, width)
    src = rng.normal(0, 5.0, (2, height * width, d)).astype(np.float32)  # garbage in padding
    singles = []
    for i, (h, w) in enumerate(sizes):
        src_i = rng.normal(0, 1, (h * w, d)).astype(np.float32)
        src[i, valid[i]] = src_i
        pos_i = sine_position_embedding(jnp.zeros((1, h, w), bool), d // 2).reshape(1, h * w, d)
        singles.append((jnp.asarray(src_i[None]), pos_i, jnp.zeros((1, h * w), bool)))
    mask = jnp.asarray(~valid)
    pos = sine_position_embedding(mask.reshape(2, height, width), d // 2).reshape(2, -1, d)
    return cfg, (jnp.asarray(src), pos, mask), singles, valid


@pytest.mark.parametrize("name", ["act_Q", "act_K", "act_QK", "kmeans"])
def test_encoder_padded_batch_equals_single_images(name, encoder_case):
    cfg, batch, singles, valid = encoder_case
    spec = SPECS[name]
    if name.startswith("act"):
        spec = detr_jax.ACT(rounds=16, bucket_width=4.0, group=spec.group, key_rounds=4)
    encoder = detr_jax.build_model(cfg, encoder_attention=spec).transformer.encoder
    rng = jax.random.key(9)
    memory, stats = encoder(*batch, rng=rng)
    for i, single in enumerate(singles):
        memory_i, stats_i = encoder(*single, rng=rng)
        assert relative_error(memory[i][valid[i]], memory_i[0]) < 1e-5
        for layer, layer_i in zip(stats, stats_i):
            np.testing.assert_array_equal(layer.num_clusters[i], layer_i.num_clusters[0])
    assert np.all(np.isfinite(memory))
    # clustering really happens (fewer clusters than tokens somewhere)
    assert any(int(np.min(s.num_clusters[0])) < valid[0].sum() for s in stats)
