"""ENACT: hand-worked regions and weights, padding invariance, gradients, no padding in slots."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import detr_jax
from detr_jax.attention.enact import (ENACT, gaussian_taps, pool_regions, region_weights, regions,
                                      released_chunks, released_information, released_taps,
                                      step_straight_through)
from detr_jax.models.transformer import Encoder
from tests.attention.clustered_cases import grid_valid, relative_error


def test_gaussian_taps_follow_the_paper():
    taps = gaussian_taps(1.0)
    assert len(taps) == 7  # integer offsets -3 sigma .. 3 sigma
    np.testing.assert_allclose(taps[3], 1 / np.sqrt(2 * np.pi), rtol=1e-6)
    np.testing.assert_allclose(taps[2], np.exp(-0.5) / np.sqrt(2 * np.pi), rtol=1e-6)


def test_regions_and_weights_of_a_hand_worked_signal():
    """sigma tiny (smoothing = multiplication by c = 1/sqrt(2 pi sigma^2)) so that the second
    derivative is hand-checkable. Signal s = [0, 1, 0, 0, 2, 3, 0] (8th pixel: padding).
    [-1, 2, -1] with zeros beyond the ends: [-1, 2, -1, -2, 1, 4, -3] * c
    -> step [0, 1, 0, 0, 1, 1, 0] -> runs [0] [1] [2, 3] [4, 5] [6]: 5 regions.
    """
    sigma = 0.2  # 3 sigma < 1: a single tap
    c = float(gaussian_taps(sigma)[0])
    signal = jnp.array([[0, 1, 0, 0, 2, 3, 0, 9.0]])
    valid = jnp.array([[True] * 7 + [False]])
    ids, counts, smoothed = regions(signal, valid, sigma)
    np.testing.assert_array_equal(ids, [[0, 1, 2, 2, 3, 3, 4, -1]])
    assert int(counts[0]) == 5
    np.testing.assert_allclose(smoothed, [[0, c, 0, 0, 2 * c, 3 * c, 0, 0]], rtol=1e-6)
    w = np.asarray(region_weights(smoothed, ids, 8))[0]
    # singletons weigh 1; region [2, 3] = softmax(0, 0); region [4, 5] = softmax(2c, 3c)
    a, b = 1 / (1 + np.exp(c)), np.exp(c) / (1 + np.exp(c))
    np.testing.assert_allclose(w, [1, 1, 0.5, 0.5, a, b, 1, 0], rtol=1e-6)
    x = jnp.arange(8, dtype=jnp.float32).reshape(1, 8, 1)
    pooled = np.asarray(pool_regions(x, ids, jnp.asarray(w)[None], 6))[0, :, 0]
    np.testing.assert_allclose(pooled, [0, 1, 2.5, 4 * a + 5 * b, 6, 0], rtol=1e-6)


def test_step_is_straight_through():
    x = jnp.array([-1.0, 0.5, 2.0])
    np.testing.assert_array_equal(step_straight_through(x), [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(jax.grad(lambda x: step_straight_through(x).sum())(x), [1, 1, 1])


def build(spec=ENACT(), d=16, heads=2):
    return spec.build(d, heads, layer_index=0, num_layers=1, rngs=nnx.Rngs(0))


def padded_batch(seed=0, sizes=((5, 6), (4, 3)), d=16):
    rng = np.random.default_rng(seed)
    height, width = 5, 6
    valid = grid_valid(sizes, height, width)
    src = rng.normal(0, 1, (2, height * width, d)).astype(np.float32)
    src[~valid] = rng.normal(0, 50, (int((~valid).sum()), d))  # garbage in padding
    pos = rng.normal(0, 1, (2, height * width, d)).astype(np.float32)
    return src, pos, valid


def test_padded_batch_equals_each_image_alone():
    module = build(ENACT(sigma=1.0))
    src, pos, valid = padded_batch()
    mask = jnp.asarray(~valid)
    out, stats = module(jnp.asarray(src + pos), jnp.asarray(src + pos), jnp.asarray(src), mask)
    for i in range(2):
        keep = valid[i]
        x, p = src[i][keep][None], pos[i][keep][None]
        single, single_stats = module(jnp.asarray(x + p), jnp.asarray(x + p), jnp.asarray(x), None)
        assert relative_error(np.asarray(out[i])[keep], np.asarray(single[0])) < 1e-5
        np.testing.assert_array_equal(stats.num_clusters[i], single_stats.num_clusters[0])
        assert int(stats.num_valid[i]) == keep.sum()


def test_no_cluster_slot_holds_padding():
    module = build(ENACT(sigma=1.0))
    src, pos, valid = padded_batch(seed=1)
    order, ids, counts, _ = module.cluster(jnp.asarray(src + pos), jnp.asarray(~valid))
    pixels = np.take_along_axis(valid, np.asarray(order), axis=1)
    ids = np.asarray(ids)
    assert (ids[~pixels] == -1).all() and (ids[pixels] >= 0).all()
    for i in range(2):  # every slot below the count holds at least one valid pixel
        assert set(ids[i][pixels[i]].tolist()) == set(range(int(counts[i])))


def test_entropy_layer_gets_finite_nonzero_gradients():
    module = build(ENACT(sigma=1.0))
    src, pos, valid = padded_batch(seed=2)
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(params):
        m = nnx.merge(graphdef, params, rest)
        out, _ = m(jnp.asarray(src + pos), jnp.asarray(src + pos), jnp.asarray(src),
                   jnp.asarray(~valid))
        return (out[jnp.asarray(valid)] ** 2).sum()

    grads = jax.grad(loss)(params)
    for name in ("kernel", "bias"):
        g = np.asarray(getattr(grads["entropy"], name)[...])
        assert np.isfinite(g).all() and np.abs(g).max() > 0, name


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_encoder_runs_with_each_variant_and_fewer_keys(variant):
    cfg = detr_jax.tiny_model_config()
    spec = ENACT(sigma=1.0, variant=variant)
    encoder = Encoder(cfg, spec, jnp.float32, nnx.Rngs(0))
    src = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, cfg.hidden_dim)), jnp.float32)
    memory, stats = encoder(src, jnp.zeros_like(src), None)
    assert memory.shape == src.shape and np.isfinite(np.asarray(memory)).all()
    counts = np.asarray(stats[0].num_clusters)
    assert (counts >= 1).all() and (counts < 64).all()
    if variant == "released":  # one chunk count for the whole batch
        assert len(set(counts.reshape(-1).tolist())) == 1


def test_spec_strings_round_trip_and_errors():
    spec = detr_jax.parse_attention("enact:sigma=5,variant=released")
    assert spec == ENACT(sigma=5.0, variant="released")
    assert detr_jax.parse_attention(spec.to_string()) == spec
    with pytest.raises(ValueError, match="variant"):
        detr_jax.parse_attention("enact:variant=fast")


def test_layers_option_keeps_exact_attention_elsewhere():
    cfg = detr_jax.tiny_model_config()
    spec = detr_jax.parse_attention("enact:sigma=1,layers=1")
    assert spec == ENACT(sigma=1.0, layers=(1,)) and spec.layers == (1,)
    assert detr_jax.parse_attention(spec.to_string()) == spec
    rng = np.random.default_rng(0)
    src = jnp.asarray(rng.normal(size=(2, 64, cfg.hidden_dim)), jnp.float32)
    pos = jnp.asarray(rng.normal(size=src.shape), jnp.float32)
    mask = jnp.asarray(np.arange(64)[None, :] >= np.array([[64], [40]]))
    partial = Encoder(cfg, spec, jnp.float32, nnx.Rngs(0))
    exact = Encoder(cfg, detr_jax.parse_attention("exact"), jnp.float32, nnx.Rngs(0))
    assert not hasattr(partial.layers[0].self_attn, "entropy")
    assert hasattr(partial.layers[1].self_attn, "entropy")
    nnx.update(exact.layers[0], nnx.state(partial.layers[0]))  # same weights in layer 0
    first_partial = partial.layers[0](src, pos, mask)
    first_exact = exact.layers[0](src, pos, mask)
    np.testing.assert_allclose(np.asarray(first_partial[0]), np.asarray(first_exact[0]), atol=1e-6)
    _, stats = partial(src, pos, mask)
    assert all(s.num_clusters is not None for s in stats)
    np.testing.assert_array_equal(np.asarray(stats[0].num_clusters)[:, 0], [64, 40])
    assert (np.asarray(stats[1].num_clusters) < np.array([[64], [40]])).all()
    with pytest.raises(ValueError, match="do not exist"):
        Encoder(cfg, ENACT(layers=(0, 9)), jnp.float32, nnx.Rngs(0))
    with pytest.raises(ValueError, match="layer indices"):
        detr_jax.parse_attention("enact:layers=a/b")


def test_released_taps_information_and_chunk_size():
    taps = released_taps(3.0)
    assert len(taps) == 17  # 6 sigma - 1: offsets -8..8
    np.testing.assert_allclose(taps, gaussian_taps(3.0)[1:-1], rtol=1e-6)
    with pytest.raises(ValueError, match="3\\*sigma"):
        ENACT(sigma=2.5, variant="released")
    logits = jnp.asarray([[0.0, 1.0, -2.0, 0.5]])
    p = np.asarray(jax.nn.softmax(logits, axis=-1)) + 1e-8
    np.testing.assert_allclose(released_information(logits), -p * np.log2(p), rtol=1e-6)
    # mean over images of N / regions: (100/3 + 100/7) / 2 = 23.8 -> 24 (not 200/10 = 20)
    ids, counts = released_chunks(jnp.asarray([3, 7]), 100)
    np.testing.assert_array_equal(counts, [4, 4])
    expected = np.full(100, -1)
    expected[2:98] = np.arange(96) // 24  # centre crop: 2 pixels dropped at each end
    np.testing.assert_array_equal(ids, np.stack([expected, expected]))
    # ties round half to even, as Python's round: (10 + 11) / 2 = 10.5 -> 10 chunks of 10
    _, counts = released_chunks(jnp.asarray([11, 10]), 110)
    np.testing.assert_array_equal(counts, [11, 11])


def numpy_released_layer(attn, q_in, k_in, v_in, sigma):
    """The released ClustAttn forward in NumPy (float64) with the module's weights."""
    lin = lambda m, x: x @ np.asarray(m.kernel[...], np.float64) + np.asarray(m.bias[...], np.float64)
    b, n, d = k_in.shape
    heads, dh = attn.num_heads, attn.head_dim
    logits = lin(attn.entropy, k_in)[..., 0]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True) + 1e-8
    info = -p * np.log2(p)
    half = int(3 * sigma - 1)
    x = np.arange(-half, half + 1)
    taps = np.exp(-x ** 2 / (2 * sigma ** 2)) / (sigma * np.sqrt(2 * np.pi))
    smooth = np.stack([np.convolve(row, taps, mode="same") for row in info])
    second = np.stack([np.convolve(row, [-1.0, 2.0, -1.0], mode="same") for row in smooth])
    step = (second > 0).astype(int)
    runs = [1 + np.count_nonzero(np.diff(row)) for row in step]
    chunk = int(round(np.mean([n / r for r in runs])))
    start, stop = (n % chunk) // 2, n - (n % chunk - (n % chunk) // 2)
    w = smooth[:, start:stop].reshape(b, -1, chunk)
    w = np.exp(w) / np.exp(w).sum(-1, keepdims=True)
    pool = lambda t: (w[..., None] * t[:, start:stop].reshape(b, -1, chunk, d)).sum(2)
    k = lin(attn.k_proj, pool(k_in)).reshape(b, -1, heads, dh)
    v = lin(attn.v_proj, pool(v_in)).reshape(b, -1, heads, dh)
    q = lin(attn.q_proj, q_in).reshape(b, n, heads, dh)
    s = np.einsum("bnhd,bmhd->bhnm", q, k)
    a = np.exp(s - s.max(-1, keepdims=True))
    a = a / a.sum(-1, keepdims=True) / dh
    out = np.einsum("bhnm,bmhd->bnhd", a, v).reshape(b, n, d)
    return lin(attn.out_proj, out), n // chunk


def test_released_layer_equals_the_released_formulas():
    sigma = 1.0
    attn = ENACT(sigma=sigma, variant="released").build(32, 4, layer_index=0, num_layers=1,
                                                         rngs=nnx.Rngs(3))
    rng = np.random.default_rng(4)
    src = rng.normal(size=(2, 60, 32)).astype(np.float32)
    pos = rng.normal(size=(2, 60, 32)).astype(np.float32)
    q = jnp.asarray(src + pos)
    out, stats = attn(q, q, jnp.asarray(src), None, None)
    expected, chunks = numpy_released_layer(attn, np.float64(src + pos), np.float64(src + pos),
                                            np.float64(src), sigma)
    assert 1 < chunks < 60
    np.testing.assert_array_equal(np.asarray(stats.num_clusters), chunks)
    assert relative_error(out, expected) < 1e-5
    # the padding mask is ignored, as in the release
    mask = jnp.zeros((2, 60), bool).at[1, 50:].set(True)
    np.testing.assert_array_equal(attn(q, q, jnp.asarray(src), mask, None)[0], out)


def test_training_memory_with_attention_dropout_stays_below_exact_attention():
    """On the XLA path a training step with attention dropout runs ENACT through the
    blocked attention (dropout redrawn per tile), not a capacity switch whose branches each
    keep their temporaries: its gradient needs less scratch than exact attention's."""
    from detr_jax.attention.backend import resolve_backend
    from tests.attention.clustered_cases import gradient_scratch_bytes

    backend = resolve_backend("xla").with_dropout(0.1, jax.random.key(3))
    temp_bytes = lambda setting: gradient_scratch_bytes(setting, backend)
    exact, enact = temp_bytes("exact"), temp_bytes("enact:sigma=3")
    assert enact < exact, (enact, exact)
