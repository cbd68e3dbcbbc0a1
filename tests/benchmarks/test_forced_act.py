"""ACT with forced prototype ratios (the benchmark variant for trained-model counts)."""

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.forced_act import ForcedACT, forced_words, register
from detr_jax.attention import parse_attention
from detr_jax.attention.clustering import cluster_ids
from tests.attention.clustered_cases import build_attention, padded_case

register()


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.3, 0.01])
def test_forced_words_give_the_requested_count_over_valid_tokens(ratio):
    lengths = np.array([37, 100, 1, 64])
    valid = jnp.asarray(np.arange(100)[None] < lengths[:, None])
    ids, counts = cluster_ids(*forced_words(valid, ratio), valid)
    expected = np.floor((lengths - 1) * np.float32(ratio)).astype(int) + 1
    np.testing.assert_array_equal(np.asarray(counts), expected)
    ids = np.asarray(ids)
    for row, length in enumerate(lengths):
        assert (ids[row, length:] < 0).all()  # padding joins no cluster
        members = np.bincount(ids[row, :length])
        assert members.min() >= 1 and members.max() - members.min() <= int(np.ceil(1 / ratio))


def test_members_are_spread_over_the_image():
    valid = jnp.ones((1, 64), bool)
    ids, _ = cluster_ids(*forced_words(valid, 0.5), valid)
    ids = np.asarray(ids)[0]
    neighbours_together = np.mean(ids[:-1] == ids[1:])
    assert neighbours_together < 0.5  # consecutive tokens mostly in different clusters


def test_layer_reports_forced_counts_on_a_padded_batch():
    q, k, v, mask, _ = padded_case(seed=3, sizes=((5, 6), (4, 3)))
    spec = parse_attention("act_forced:ratios=0.5/0.25,r=4")
    for layer, ratio in ((0, 0.5), (1, 0.25), (4, 0.25)):  # the last ratio repeats
        out, stats = build_attention(spec, layer_index=layer).attend(q, k, v, mask, None)
        valid = np.array([30, 12])
        expected = np.floor((valid - 1) * np.float32(ratio)).astype(int) + 1
        np.testing.assert_array_equal(np.asarray(stats.num_clusters),
                                      np.repeat(expected[:, None], 2, axis=1))
        assert out.shape == q.shape and bool(jnp.isfinite(out).all())


def test_spec_round_trip_and_errors():
    spec = ForcedACT(ratios="0.5/0.44", rounds=20, bucket_width=4.0)
    assert spec.to_string() == "act_forced:L=20,r=4,ratios=0.5/0.44"
    assert parse_attention(spec.to_string()) == spec
    with pytest.raises(ValueError, match="ratios"):
        parse_attention("act_forced:ratios=0")
    with pytest.raises(ValueError, match="ratios"):
        parse_attention("act_forced:ratios=1.5")
    with pytest.raises(ValueError, match="group=Q"):
        ForcedACT(group="K")


def test_flops_are_those_of_act_at_the_same_ratios():
    from detr_jax.flops import count_flops
    from tests.tiny_checkpoint import tiny_model_config
    cfg = tiny_model_config()
    stats = [{"cluster_ratio": 0.4}] * cfg["enc_layers"]
    forced = count_flops(cfg, (64, 96), attention="act_forced:ratios=0.4", encoder_stats=stats)
    act = count_flops(cfg, (64, 96), attention="act:L=32", encoder_stats=stats)
    assert forced["gflops_transformer"] == act["gflops_transformer"] > 0
