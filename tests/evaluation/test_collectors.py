"""The evaluation collectors and the loop's rounds, on hand-made rounds (no model)."""

import numpy as np
import pytest

from detr_jax.data.pipeline import HostBatch, Step
from detr_jax.evaluation.collectors import (ClusterStats, Detections, Skipped, Timing,
                                            gather_across_hosts)
from detr_jax.evaluation.layer_stats import image_layer_stats, read_layer_stats
from detr_jax.evaluation.loop import Round

Q, L, H = 3, 2, 2


def host_batch(image_ids, indices, skipped=(), hw=(32, 48)):
    rows = len(image_ids)
    return HostBatch(step=Step(0, tuple(indices), None), pixel_values=np.zeros((rows, *hw, 3)),
                     padding_mask=np.zeros((rows, *hw), bool),
                     original_sizes=np.full((rows, 2), 64, np.int32),
                     image_sizes=np.tile(np.array([[30, 40]], np.int32), (rows, 1)),
                     image_ids=np.asarray(image_ids, np.int64),
                     indices=np.asarray(indices, np.int64), skipped=list(skipped))


def outputs(rows, clusters=None, seed=0):
    rng = np.random.default_rng(seed)
    out = {"scores": rng.random((rows, Q)), "labels": rng.integers(0, 5, (rows, Q)),
           "boxes": rng.random((rows, Q, 4))}
    if clusters is not None:
        out["num_clusters"] = np.full((rows, L, H), clusters, np.int32)
        out["num_valid"] = np.full((rows, L), 10, np.int32)
        out["capacity"] = np.array([8, 8], np.int32)
    return out


def make_round(settings=("exact", "act"), compiled=False, seconds=0.004):
    # one real image (id 7, index 0), one dummy row, one skipped image
    batch = host_batch([7, -1], [0, -1], skipped=[(1, 8, "b.jpg", "unreadable")])
    outs = {"exact": [outputs(2)], "act": [outputs(2, clusters=5, seed=1)]}
    return Round(batches=[batch], ran=[batch], outputs={s: outs[s] for s in settings},
                 seconds={s: seconds for s in settings}, rows=2, compiled=compiled,
                 local_rows=None)


def test_round_yields_real_images_with_their_rows():
    round_ = make_round()
    (image,) = list(round_.images("act"))
    assert (image.image_id, image.index, image.input_hw, image.valid_hw) == (7, 0, (32, 48), (30, 40))
    np.testing.assert_array_equal(image.output["boxes"], round_.outputs["act"][0]["boxes"][0])
    assert image.output["num_clusters"].shape == (L, H) and image.output["capacity"].shape == (L,)
    assert round_.skipped() == [{"index": 1, "image_id": 8, "path": "b.jpg", "reason": "unreadable"}]


def test_sharded_round_reads_this_hosts_rows():
    batch = host_batch([7, 9], [0, 1])
    out = outputs(4)
    round_ = Round([batch], [batch], {"exact": [out]}, {"exact": 0.0}, 4, False, local_rows=[2, 3])
    ids = [(i.image_id, float(i.output["scores"][0])) for i in round_.images("exact")]
    assert ids == [(7, out["scores"][2, 0]), (9, out["scores"][3, 0])]


def test_detections_and_skipped_merge_over_hosts():
    det, skipped = Detections(["exact", "act"]), Skipped()
    for collector in (det, skipped):
        collector.update(make_round())
    assert list(det.detections["act"]) == [7]
    other = {"exact": {3: "x"}, "act": {3: "y"}}
    det.merge([det.payload(), other])
    assert sorted(det.detections["exact"]) == [3, 7] and det.detections["act"][3] == "y"
    skipped.merge([[{"index": 5}], skipped.payload()])
    assert [e["index"] for e in skipped.entries] == [1, 5]


def test_timing_skips_warmup_and_compiles():
    timing = Timing(["exact"], warmup_rounds=1)
    timing.update(make_round(("exact",)))                 # warm-up
    timing.update(make_round(("exact",), compiled=True))  # compiled: not timed
    timing.update(make_round(("exact",), seconds=0.01))
    timing.update(Round([], [], {}, {}, 0, False, None))  # nothing ran: not a round
    assert timing.samples["exact"] == [pytest.approx(5.0)] and timing.rounds == 3
    assert timing.median("exact") == pytest.approx(5.0) and Timing(["a"]).median("a") is None


def test_cluster_stats_ratios_flops_inputs_and_merge():
    stats = ClusterStats(["exact", "act"], flops_images=1)
    stats.update(make_round())
    assert stats.ratio_sums["exact"] is None
    sums, count = stats.ratio_sums["act"]
    np.testing.assert_allclose(sums, [0.5, 0.5])
    assert count == 1
    (entry,) = stats.ordered_flops_inputs()
    assert entry["stats"]["exact"] is None and len(entry["stats"]["act"]) == L
    layer = entry["stats"]["act"][0]
    nc, nv, cap = read_layer_stats(layer)
    assert nc.shape == (1, H) and int(nv[0]) == 10 and int(cap) == 8
    other = {"ratio_sums": {"exact": None, "act": (np.array([1.0, 0.0]), 1)},
             "flops_inputs": {0: "ignored: index 0 is known", 4: "kept"}}
    stats.merge([stats.payload(), other])
    np.testing.assert_allclose(stats.ratio_sums["act"][0], [1.5, 0.5])
    assert stats.ratio_sums["act"][1] == 2 and stats.flops_inputs[4] == "kept"
    assert stats.flops_inputs[0] is entry


def test_layer_stats_adapter():
    assert read_layer_stats(None) is None and read_layer_stats({}) is None
    stats = image_layer_stats(np.array([3, 4]), np.array(9))
    nc, nv, cap = read_layer_stats(stats)
    assert nc.tolist() == [[3, 4]] and nv.tolist() == [9] and cap is None


def test_single_process_gather_is_the_payload():
    assert gather_across_hosts({"a": 1}) == [{"a": 1}]
