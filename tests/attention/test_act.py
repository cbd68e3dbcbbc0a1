"""ACT attention: official parity on the fixture, bucketing, strings, jit, shared parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import detr_jax
from detr_jax.attention import ACTAttention, parse_attention
from detr_jax.attention.capacity import ladder_capacities
from detr_jax.models.inference import Forward
from tests.attention.clustered_cases import (build_attention, discrete_tokens, exact_attention,
                                             relative_error)


@pytest.fixture(scope="module")
def act_single(reference, recipe_weights, dc5_model):
    """Official ACT case: our ACT and exact outputs on image1 (one jitted forward each)."""
    spec = detr_jax.ACT(hash_weights=reference["act_single/hash_weights"],
                        hash_biases=reference["act_single/hash_biases"])
    model = detr_jax.load_torch_checkpoint(recipe_weights, dilation=True, encoder_attention=spec)
    batch = detr_jax.preprocess([reference["image1"]], resize_images=False)
    args = jnp.asarray(batch.pixel_values), jnp.asarray(batch.padding_mask)
    ours = Forward(model, return_intermediates=True)(*args)
    exact = Forward(dc5_model, return_intermediates=True)(*args)
    return model, ours, exact


def test_act_single_matches_official(act_single, reference):
    model, ours, exact = act_single
    assert isinstance(model.transformer.encoder.layers[0].self_attn, ACTAttention)
    counts = np.stack([np.asarray(s.num_clusters[0]) for s in ours["encoder_stats"]])
    expected = reference["act_single/clusters_per_layer_head"]
    np.testing.assert_array_equal(counts[0], expected[0])
    assert np.all(np.abs(counts[1:] - expected[1:]) <= 0.02 * expected[1:] + 0.5)
    memory_ref = reference["act_single/memory"].transpose(1, 0, 2)
    memory_err = relative_error(ours["memory"], memory_ref)
    logits_err = relative_error(ours["pred_logits"], reference["act_single/pred_logits"])
    assert memory_err < 2e-3 and logits_err < 1e-3
    # ACT moves the outputs away from exact attention far more than we differ from ACT.
    assert relative_error(exact["memory"], memory_ref) > 10 * memory_err
    exact_logits_err = relative_error(exact["pred_logits"], reference["act_single/pred_logits"])
    assert exact_logits_err > 10 * logits_err
    stats = ours["encoder_stats"][0]
    assert stats.num_clusters.dtype == jnp.int32 and stats.num_clusters.shape == (1, 8)
    assert int(stats.num_valid[0]) == 18 * 30
    assert int(stats.capacity) == 540  # 426 clusters need the top rung


def test_parameters_identical_to_exact():
    cfg = detr_jax.tiny_model_config()
    states = [nnx.state(detr_jax.build_model(cfg, encoder_attention=spec))
              for spec in (None, "act:L=16,r=8", detr_jax.ACT(group="QK"), "kmeans:C=10")]
    flat = [jax.tree_util.tree_leaves_with_path(s) for s in states]
    for other in flat[1:]:
        assert [p for p, _ in other] == [p for p, _ in flat[0]]
        for (_, a), (_, b) in zip(other, flat[0]):
            np.testing.assert_array_equal(a, b)


def test_strings_parse_and_round_trip():
    assert parse_attention("act:L=16,r=8") == detr_jax.ACT(rounds=16, bucket_width=8.0)
    spec = parse_attention("act:L=24,r=4,group=qk,Lk=12,seed=3,ladder=8/2/1")
    assert spec == detr_jax.ACT(rounds=24, bucket_width=4.0, group="QK", key_rounds=12, seed=3,
                                ladder=(1 / 8, 1 / 2, 1.0))
    assert parse_attention(spec.to_string()) == spec
    assert parse_attention("act") == detr_jax.ACT()
    assert detr_jax.ACT().to_string() == "act:L=32,r=8"
    assert parse_attention("kmeans:C=100") == detr_jax.KMeans(clusters=100)


def test_offsets_option_parses_and_round_trips():
    assert detr_jax.ACT().offsets == "released"
    paper = parse_attention("act:L=32,r=8,offsets=paper")
    assert paper == detr_jax.ACT(offsets="paper") and paper != detr_jax.ACT()
    assert paper.to_string() == "act:L=32,r=8,offsets=paper"
    assert parse_attention(paper.to_string()) == paper
    assert parse_attention("act:offsets=released") == detr_jax.ACT()
    with pytest.raises(ValueError, match="offsets"):
        parse_attention("act:offsets=text")


def test_layer_draws_offsets_as_the_spec_says():
    """The module's own draw (no hash arrays): b in [0, 1) for released, [0, r) for paper."""
    draws = {}
    for offsets in ("released", "paper"):
        spec = detr_jax.ACT(rounds=32, bucket_width=8.0, offsets=offsets)
        layer = spec.build(64, 2, layer_index=1, num_layers=2, rngs=nnx.Rngs(0))
        weights, biases = layer.hash_params(jax.random.key(5), "Q")
        assert weights.shape == (32, 32) and biases.shape == (32,)
        draws[offsets] = np.asarray(biases)
    assert draws["released"].min() >= 0 and draws["released"].max() < 1
    assert draws["paper"].min() >= 0 and draws["paper"].max() < 8
    assert draws["paper"].max() > 1  # uses the whole width, not U[0, 1)
    assert not np.allclose(draws["paper"], draws["released"])


@pytest.mark.parametrize("bad, hint", [("act:X=1", "act[:L="), ("act:L=40", "1..32"),
                                       ("act:group=V", "group="), ("act:ladder=x", "ladder"),
                                       ("kmeans:C=0", "kmeans[:C="), ("actt", "kmeans")])
def test_bad_strings_list_valid_forms(bad, hint):
    with pytest.raises(ValueError, match=r"form") as err:
        parse_attention(bad)
    assert hint in str(err.value)


def test_spec_with_arrays_is_hashable_by_content():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(2, 8, 4)), rng.uniform(size=(2, 4))
    spec = detr_jax.ACT(hash_weights=w, hash_biases=b)
    assert spec.rounds == 4
    same = detr_jax.ACT(hash_weights=w.copy(), hash_biases=b.copy())
    assert spec == same and hash(spec) == hash(same)
    assert spec != detr_jax.ACT(hash_weights=w + 1, hash_biases=b)
    with pytest.raises(ValueError, match="both"):
        detr_jax.ACT(hash_weights=w)
    with pytest.raises(ValueError, match="head_dim"):
        spec.build(64, 2, layer_index=0, num_layers=2, rngs=nnx.Rngs(0))


def controlled_queries(distinct_per_head, n=64, heads=2, head_dim=8, seed=0):
    """(1, n, H, Dh) queries and keys with a given number of distinct vectors per head."""
    rng = np.random.default_rng(seed)
    q, k = (np.concatenate([discrete_tokens(rng, n, 1, head_dim, d, scale=3.0)
                            for d in distinct_per_head], axis=1)[None] for _ in range(2))
    v = rng.normal(0, 1, (1, n, heads, head_dim)).astype(np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


@pytest.mark.parametrize("group", ["Q", "K", "QK"])
def test_bucketing_picks_smallest_capacity_and_equals_full(group):
    q, k, v = controlled_queries((7, 3))
    small_r = dict(rounds=16, bucket_width=0.5, group=group, key_rounds=2)
    out, stats = build_attention(detr_jax.ACT(**small_r)).attend(q, k, v, None, None)
    full, full_stats = build_attention(detr_jax.ACT(**small_r, ladder=(1.0,))).attend(
        q, k, v, None, None)
    needed = max(int(np.max(getattr(stats, name)))
                 for name in ("num_clusters", "num_key_clusters")
                 if getattr(stats, name) is not None)
    assert int(stats.capacity) == min(c for c in ladder_capacities(64) if c >= needed)
    assert int(stats.capacity) < 64 and int(full_stats.capacity) == 64
    assert relative_error(out, full) < 1e-6


def test_one_cluster_per_token_is_exact_attention():
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.normal(0, 1, (2, 30, 2, 8)).astype(np.float32)) for _ in range(3))
    mask = jnp.zeros((2, 30), bool).at[1, 20:].set(True)
    for group in ("Q", "K", "QK"):
        spec = detr_jax.ACT(bucket_width=1e-4, group=group)  # every vector its own cell
        out, stats = build_attention(spec).attend(q, k, v, mask, None)
        np.testing.assert_array_equal(stats.num_clusters, [[30, 30], [20, 20]])
        np.testing.assert_array_equal(stats.num_valid, [30, 20])
        assert relative_error(out[0], exact_attention(q, k, v, mask)[0]) < 1e-5
        assert relative_error(out[1, :20], exact_attention(q, k, v, mask)[1, :20]) < 1e-5


def test_jit_compiles_once_for_varying_cluster_counts():
    module = build_attention(detr_jax.ACT(rounds=16, bucket_width=0.5))
    traces = []

    @nnx.jit
    def attend(module, q, k, v):
        traces.append(1)
        return module.attend(q, k, v, None, None)

    capacities = set()
    for distinct in ((2, 1), (9, 5), (30, 40), (64, 64)):
        q, k, v = controlled_queries(distinct, seed=sum(distinct))
        out, stats = attend(module, q, k, v)
        eager, _ = module.attend(q, k, v, None, None)
        assert relative_error(out, eager) < 1e-6
        capacities.add(int(stats.capacity))
    assert len(traces) == 1 and len(capacities) >= 3


def test_rng_key_changes_draws_deterministically():
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.normal(0, 1, (1, 64, 2, 8)).astype(np.float32)) for _ in range(3))
    module = build_attention(detr_jax.ACT(rounds=4, bucket_width=6.0))
    run = lambda rng: np.asarray(module.attend(q, k, v, None, rng)[0])
    np.testing.assert_array_equal(run(jax.random.key(1)), run(jax.random.key(1)))
    assert not np.array_equal(run(jax.random.key(1)), run(jax.random.key(2)))


def test_training_memory_on_the_xla_path_stays_at_exact_attention_level():
    """Differentiating the capacity switch keeps every branch's residuals unless the
    branches are rematerialized; ACT's gradient then needs no more scratch than exact's."""
    from detr_jax.attention.backend import resolve_backend
    from tests.attention.clustered_cases import gradient_scratch_bytes

    temp_bytes = lambda setting: gradient_scratch_bytes(setting, resolve_backend("xla"))
    exact, act = temp_bytes("exact"), temp_bytes("act:L=32,r=4")
    probabilities = 2 * 4 * 512 * 512 * 4  # one (B, H, N, N) fp32 array
    assert exact >= probabilities
    assert act <= exact * 1.05 + 2 ** 20, (act, exact)
