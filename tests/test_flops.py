"""The analytic MAC counter (detr_jax.flops) against hand counts and XLA's cost analysis."""

import os

import numpy as np
import pytest

from detr_jax.attention.stats import LayerStats
from detr_jax.flops import count_flops, encoder_matmul_macs, main
from detr_jax.models.config import model_config, tiny_model_config

DC5 = model_config(backbone=dict(dilation=True))


def test_tiny_backbone_convolutions_by_hand():
    # tiny: stem width 8, one bottleneck per stage; a 64x64 input.
    result = count_flops(tiny_model_config(), (64, 64))
    stages = result["backbone_stages"]
    assert stages["stem"] == 32 * 32 * 8 * (7 * 7 * 3)          # 7x7/2 conv -> 32x32x8
    # after the 3x3/2 max pool: 16x16x8; layer1 planes 8, out 32, stride 1, projection
    assert stages["layer1"] == (16 * 16 * 8 * 8                   # conv1 1x1
                                + 16 * 16 * 8 * 8 * 9             # conv2 3x3
                                + 16 * 16 * 8 * 32                # conv3 1x1
                                + 16 * 16 * 8 * 32)               # downsample 1x1
    # layer2: planes 16, out 64; conv1 at 16x16, the rest at 8x8 (stride on the 3x3)
    assert stages["layer2"] == (16 * 16 * 32 * 16 + 8 * 8 * 16 * 16 * 9
                                + 8 * 8 * 16 * 64 + 8 * 8 * 32 * 64)
    assert result["feature_hw"] == (2, 2) and result["tokens"] == 4
    assert result["backbone"] == sum(stages.values())


def test_tiny_linear_layers_by_hand():
    # d=32, 4 heads, ffn 64, 2+2 layers, 10 queries, 6 classes; 4 tokens from 64x64.
    r = count_flops(tiny_model_config(), (64, 64))
    n, d, f, q = 4, 32, 64, 10
    assert r["input_proj"] == n * (256 * d + d)                  # 1x1 conv 256 -> 32, bias
    assert r["encoder_ffn"] == 2 * (n * (d * f + f) + n * (f * d + d))
    assert r["encoder_attention_projections"] == 2 * 4 * n * (d * d + d)
    assert r["encoder_attention_products"] == 2 * (2 * n * n * d)
    assert r["heads"] == 2 * q * ((d * 6 + 6) + 2 * (d * d + d) + (d * 4 + 4))
    assert r["decoder_ffn"] == 2 * (q * (d * f + f) + q * (f * d + d))
    assert r["decoder_self_attention"] == 2 * (4 * q * (d * d + d) + 2 * q * q * d)
    assert r["decoder_cross_attention"] == 2 * (2 * q * (d * d + d) + 2 * n * (d * d + d)
                                                + 2 * q * n * d)
    parts = ("input_proj", "encoder_attention", "encoder_ffn", "hashing_and_clustering",
             "decoder", "heads")
    assert r["transformer"] == pytest.approx(sum(r[k] for k in parts), rel=1e-12)
    assert r["total"] == r["backbone"] + r["transformer"]
    assert r["gflops_backbone"] == r["backbone"] / 1e9


def test_resnet50_224_matches_torchvision():
    result = count_flops(model_config(), (224, 224))
    assert result["backbone_stages"]["stem"] == 118_013_952       # 112*112*64*147
    # torchvision lists 4.09 GFLOPS (MACs) for resnet50; the fc adds only 2 MMACs.
    assert result["backbone"] == pytest.approx(4.09e9, rel=0.01)


def _dc5_by_hand(h_img, w_img):
    """DETR-DC5 (R50) MACs written out stage by stage and layer by layer."""
    h, w = (h_img - 1) // 2 + 1, (w_img - 1) // 2 + 1            # 7x7/2, pad 3
    stem = h * w * 64 * 147
    h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1                    # max pool 3x3/2
    backbone = stem
    in_ch = 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 1)):
        ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
        first = (h * w * in_ch * planes + ho * wo * (9 * planes * planes + 4 * planes * planes
                                                     + in_ch * 4 * planes))
        later = ho * wo * (4 * planes * planes + 9 * planes * planes + 4 * planes * planes)
        backbone += first + (blocks - 1) * later
        h, w, in_ch = ho, wo, 4 * planes
    n, d, f, q, c = h * w, 256, 2048, 100, 92
    lin = lambda rows, i, o: rows * (i * o + o)
    enc_layer = 4 * lin(n, d, d) + 2 * n * n * d + lin(n, d, f) + lin(n, f, d)
    dec_layer = (4 * lin(q, d, d) + 2 * q * q * d                  # self-attention
                 + 2 * lin(q, d, d) + 2 * lin(n, d, d) + 2 * q * n * d   # cross-attention
                 + lin(q, d, f) + lin(q, f, d))
    heads = lin(q, d, c) + 2 * lin(q, d, d) + lin(q, d, 4)
    transformer = lin(n, 2048, d) + 6 * enc_layer + 6 * (dec_layer + heads)
    return backbone, transformer, n


def test_dc5_800x1199_by_hand():
    result = count_flops(DC5, (800, 1199))
    backbone, transformer, n = _dc5_by_hand(800, 1199)
    assert n == result["tokens"] == 50 * 75
    assert result["backbone"] == pytest.approx(backbone, rel=1e-12)
    assert result["transformer"] == pytest.approx(transformer, rel=1e-12)
    # the figures derived in docs/flops.md
    assert result["gflops_backbone"] == pytest.approx(118.75, abs=0.01)
    assert result["gflops_transformer"] == pytest.approx(79.84, abs=0.01)
    small = count_flops(DC5, (800, 1066))
    assert small["gflops_backbone"] == pytest.approx(106.02, abs=0.01)
    assert small["gflops_transformer"] == pytest.approx(67.31, abs=0.01)
    # the paper's 110.7 + 73.4 is a mean over COCO sizes that lie between these two
    assert small["gflops_backbone"] < 110.7 < result["gflops_backbone"]
    assert small["gflops_transformer"] < 73.4 < result["gflops_transformer"]


def test_plain_dict_config_and_padding():
    as_dict = count_flops(DC5.to_dict(), (800, 1199))
    assert as_dict["total"] == count_flops(DC5, (800, 1199))["total"]
    padded = count_flops(DC5, (800, 1216), valid_hw=(800, 1199))
    assert padded["tokens"] == 50 * 76 and padded["valid_tokens"] == 50 * 75
    assert padded["encoder_attention_products"] == 6 * 2 * 3750 ** 2 * 256
    assert padded["backbone"] > as_dict["backbone"]               # convolutions run on padding


def test_xla_counts_two_flops_per_mac():
    import jax
    import jax.numpy as jnp
    a, b = jnp.ones((16, 24)), jnp.ones((24, 40))
    cost = jax.jit(jnp.matmul).lower(a, b).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert cost["flops"] == 2 * 16 * 24 * 40


def test_exact_encoder_against_xla_cost_analysis():
    from detr_jax.flops import xla_encoder_flops
    cfg = tiny_model_config(hidden_dim=128, num_heads=4, enc_layers=2, ffn_dim=256)
    tokens = 200
    xla = xla_encoder_flops(cfg, tokens)
    matmul = encoder_matmul_macs(cfg, tokens)
    ratio = xla / (2 * matmul)
    # XLA adds softmax (max, subtract, sum, divide per logit), masking, bias adds,
    # LayerNorm and ReLU elementwise ops on top of the 2 flops per matmul MAC.
    assert 1.0 < ratio < 1.05, ratio
    softmax_elements = 2 * 4 * tokens * tokens
    assert xla - 2 * matmul > 3 * softmax_elements                # softmax is the bulk


def _stats(clusters, valid, heads=8, batch=1):
    return LayerStats(num_clusters=np.full((batch, heads), clusters, np.int32),
                      num_valid=np.full((batch,), valid, np.int32))


def test_act_cost_monotone_and_exact_at_full_clusters():
    exact = count_flops(DC5, (800, 1199))
    n = exact["valid_tokens"]
    previous = None
    for clusters in (n, 3000, 2000, 1000, 100, 1):
        act = count_flops(DC5, (800, 1199), attention="act:L=32",
                          encoder_stats=[_stats(clusters, n)] * 6)
        if previous is not None:
            assert act["transformer"] < previous
        previous = act["transformer"]
        assert act["encoder_attention_products"] == pytest.approx(
            6 * 2 * clusters * n * 256, rel=1e-12)
        if clusters == n:
            assert act["encoder_attention_products"] == exact["encoder_attention_products"]
            overhead = act["transformer"] - exact["transformer"]
            assert overhead == pytest.approx(act["hashing_and_clustering"], rel=1e-9)
            # E2LSH projections dominate: N * Dh * L per head
            assert act["hashing_and_clustering"] == pytest.approx(6 * n * 256 * 32, rel=0.1)
    # fewer rounds hash for less
    small = count_flops(DC5, (800, 1199), attention="act:L=16",
                        encoder_stats=[_stats(1000, n)] * 6)
    big = count_flops(DC5, (800, 1199), attention="act:L=32",
                      encoder_stats=[_stats(1000, n)] * 6)
    assert small["hashing_and_clustering"] < big["hashing_and_clustering"]


def test_act_uses_mean_clusters_over_heads_and_images():
    counts = np.array([[100, 200, 300, 400, 500, 600, 700, 800],
                       [50] * 8], np.int32)
    stats = LayerStats(num_clusters=counts, num_valid=np.array([3750, 1000], np.int32))
    r = count_flops(DC5, (800, 1199), attention="act:L=32", encoder_stats=[stats] * 6)
    per_image = [2 * 32 * 3750 * counts[0].sum(), 2 * 32 * 1000 * counts[1].sum()]
    assert r["encoder_attention_products"] == pytest.approx(6 * np.mean(per_image), rel=1e-12)
    ratio = count_flops(DC5, (800, 1199), attention="act:L=32",
                        encoder_stats=[{"cluster_ratio": 0.5}] * 6)
    assert ratio["encoder_attention_products"] == pytest.approx(6 * 2 * 1875 * 3750 * 256)
    with pytest.raises(ValueError, match="encoder_stats"):
        count_flops(DC5, (800, 1199), attention="act:L=32")


def test_act_stats_from_the_attention_module():
    """The stats an ACT layer really returns are accepted as they are."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from detr_jax.attention import parse_attention
    spec = parse_attention("act:L=8")
    layer = spec.build(32, 4, layer_index=0, num_layers=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 20, 32))
    mask = jnp.zeros((2, 20), bool).at[1, 16:].set(True)
    _, stats = nnx.jit(lambda module, x, mask: module(x, x, x, mask))(layer, x, mask)
    cfg = tiny_model_config()
    r = count_flops(cfg, (128, 160), attention=spec, encoder_stats=[stats, stats])
    counts = np.asarray(stats.num_clusters).astype(float)
    valid = np.asarray(stats.num_valid).astype(float)
    expected = np.mean(2 * 8 * valid * counts.sum(axis=1))        # 2 * Dh * N * sum_h C_h
    assert r["encoder_layers"][0]["products"] == pytest.approx(expected)
    assert r["encoder_layers"][0]["hashing_and_clustering"] > 0


def test_enact_cost_by_hand_and_from_the_module():
    """ENACT: k/v projections and products on R regions; at R = N they equal exact's."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from detr_jax.attention import parse_attention
    cfg = tiny_model_config()
    n, d = 4, 32
    exact = count_flops(cfg, (64, 64))
    full = count_flops(cfg, (64, 64), attention="enact:sigma=3",
                       encoder_stats=[{"cluster_ratio": 1.0}] * 2)
    assert full["encoder_attention_products"] == exact["encoder_attention_products"]
    assert full["encoder_attention_projections"] == exact["encoder_attention_projections"]
    taps = 2 * 9 + 1  # sigma 3: offsets -9..9
    assert full["hashing_and_clustering"] == 2 * (n * (d + 1) + n * (taps + 3) + 2 * n * d)
    quarter = count_flops(cfg, (64, 64), attention="enact:sigma=3", encoder_stats=[1, 1])
    assert quarter["encoder_attention_products"] == 2 * (2 * n * 1 * d)
    assert quarter["encoder_attention_projections"] == 2 * (2 * n * (d * d + d) + 2 * 1 * (d * d + d))
    with pytest.raises(ValueError, match="encoder_stats"):
        count_flops(cfg, (64, 64), attention="enact:sigma=3")
    spec = parse_attention("enact:sigma=3")
    layer = spec.build(32, 4, layer_index=0, num_layers=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 20, 32))
    mask = jnp.zeros((2, 20), bool).at[1, 16:].set(True)
    _, stats = nnx.jit(lambda module, x, mask: module(x, x, x, mask))(layer, x, mask)
    r = count_flops(cfg, (128, 160), attention=spec, encoder_stats=[stats, stats])
    regions = np.asarray(stats.num_clusters)[:, 0].astype(float)
    valid = np.asarray(stats.num_valid).astype(float)
    assert r["encoder_layers"][0]["products"] == pytest.approx(np.mean(2 * valid * regions * 32))
    assert r["encoder_layers"][0]["cluster_ratio"] == pytest.approx(np.mean(regions / valid))

    # ENACT in layer 1 only: layer 0 costs what exact attention's does, without clustering
    partial = count_flops(cfg, (64, 64), attention="enact:sigma=3,layers=1", encoder_stats=[1, 1])
    assert partial["encoder_layers"][0] == exact["encoder_layers"][0]
    assert partial["encoder_layers"][1] == quarter["encoder_layers"][1]


def test_kmeans_cost():
    n = 3750
    r = count_flops(DC5, (800, 1199), attention="kmeans:C=100,iterations=10,bits=32")
    assert r["encoder_attention_products"] == 6 * 2 * 100 * n * 256
    lloyd = 8 * (10 * n * 100 * 32 + 9 * n * 32)
    hashing = 8 * n * 32 * 32
    means = 8 * (n * 32 + 100 * 32)
    assert r["hashing_and_clustering"] == 6 * (lloyd + hashing + means)


def test_cli_prints_table(capsys):
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "detr_r50_dc5.py")
    assert main(["--config", config, "--size", "800", "1199",
                 "--attention", "exact", "act:L=32", "--cluster-ratio", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "118.748" in out and "79.838" in out and "act:L=32" in out
