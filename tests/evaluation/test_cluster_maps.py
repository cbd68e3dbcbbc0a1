"""Cluster maps (report.write_cluster_maps): one jitted replay for every clustered setting,
on the evaluation's padded input, with the clusters of the unpadded replay."""

import jax
import numpy as np
import pytest
from flax import nnx

from detr_jax.attention import parse_attention
from detr_jax.data.coco import CocoSource
from detr_jax.data.transforms import preprocess
from detr_jax.evaluation.coco_eval import evaluate
from detr_jax.evaluation.plots import settings_assignments
from detr_jax.evaluation.report import write_report
from detr_jax.models.build import with_encoder_attention
from detr_jax.models.config import tiny_model_config
from detr_jax.models.detector import encoder_key
from tests.data.tiny_coco import write_tiny_coco

SIZE, MAX_SIZE = 96, 160
SETTINGS = ["exact", "act:L=8,ladder=1", "kmeans:C=4"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_coco_maps")
    write_tiny_coco(str(root))
    return CocoSource.from_dir(str(root))


@pytest.fixture(scope="module")
def model():
    import detr_jax
    from detr_jax.convert.recipe import recipe_state_for_config
    return detr_jax.load_torch_checkpoint(recipe_state_for_config(tiny_model_config()),
                                          num_heads=4)


def test_joint_replay_on_the_evaluated_shape_has_the_evaluation_clusters(source, model):
    """settings_assignments on an image padded to its evaluation batch's input size: per
    clustered setting, layer and head, as many clusters as the evaluation counted for that
    image, and -1 on padding."""
    result = evaluate(model, source, SETTINGS, batch_size=1, granularity=64, size=SIZE,
                      max_size=MAX_SIZE, progress=False, devices=jax.devices()[:1],
                      flops_images=2)
    key = encoder_key(jax.random.key(0))
    state = nnx.split(model)[1]
    clustered = SETTINGS[1:]
    graphdefs = {s: nnx.split(with_encoder_attention(model, parse_attention(s)))[0]
                 for s in clustered}
    assign = jax.jit(lambda st, px, m, k: settings_assignments(graphdefs, st, px, m, k))
    for entry in result.flops_inputs:
        example = source[entry["index"]]
        exact = preprocess([example.image], size=SIZE, max_size=MAX_SIZE)
        h, w = exact.pixel_values.shape[1:3]
        ph, pw = entry["input_hw"]
        padded = np.zeros((1, ph, pw, 3), np.float32)
        padded[0, :h, :w] = exact.pixel_values[0]
        mask = np.ones((1, ph, pw), bool)
        mask[0, :h, :w] = exact.padding_mask[0]
        joint, (fh, fw) = assign(state, padded, mask, key)
        for setting in clustered:
            for layer, (ids, stats) in enumerate(zip(joint[setting], entry["stats"][setting])):
                ids = np.asarray(ids)[0]
                counts = [len(np.unique(row[row >= 0])) for row in ids]
                np.testing.assert_array_equal(counts, np.asarray(stats.num_clusters)[0],
                                              err_msg=f"{setting} layer {layer}")
                assert (ids.reshape(-1, int(fh), int(fw))[:, -1] == -1).all() or h == ph


def test_write_report_draws_a_map_per_clustered_setting(source, model, tmp_path):
    result = evaluate(model, source, SETTINGS, batch_size=2, granularity=64, size=SIZE,
                      max_size=MAX_SIZE, progress=False, devices=jax.devices()[:1])
    out = write_report(str(tmp_path), result, source.coco, model=model, source=source,
                       cluster_map_images=2, size=SIZE, max_size=MAX_SIZE, progress=False)
    maps = sorted(p for p in out["files"] if "cluster_maps" in p)
    ids = [r.image_id for r in source.records if r.image_id in set(result.image_ids)][:2]
    expected = sorted(f"{i}.{tag}.png" for i in ids for tag in ("act_L8_ladder1", "kmeans_C4"))
    assert [p.rsplit("/", 1)[1] for p in maps] == expected
