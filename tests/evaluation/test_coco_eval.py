"""COCO evaluation: results JSON + COCOeval, the shared-backbone runner, sharding, report."""

import json
import os

import jax
import numpy as np
import pytest

from detr_jax.data.coco import BadImageError, CocoSource
from detr_jax.data.transforms import preprocess
from detr_jax.evaluation.coco_eval import coco_metrics, detections_to_results, evaluate
from detr_jax.evaluation.postprocess import postprocess
from detr_jax.evaluation.report import Staging, write_report
from detr_jax.models.config import tiny_model_config
from detr_jax.models.inference import Forward
from tests.data.tiny_coco import write_tiny_coco

SIZE, MAX_SIZE = 96, 160


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_coco_eval")
    write_tiny_coco(str(root))
    return CocoSource.from_dir(str(root))


@pytest.fixture(scope="module")
def model():
    """The tiny model with recipe weights (loading is much faster than a random init)."""
    import detr_jax
    from detr_jax.convert.recipe import recipe_state_for_config
    return detr_jax.load_torch_checkpoint(recipe_state_for_config(tiny_model_config()),
                                          num_heads=4)


def test_perfect_predictions_score_ap_one(source, tmp_path):
    """Ground-truth boxes through our results writer, a JSON file and COCOeval: AP 1."""
    ids, scores, labels, boxes = [], [], [], []
    for index in range(len(source)):
        example = source[index]
        keep = ~example.iscrowd
        pad = 3 - int(keep.sum())  # same number of detections per image
        ids.append(example.image_id)
        scores.append(np.r_[np.ones(keep.sum()), np.zeros(pad)])
        labels.append(np.r_[example.labels[keep], np.zeros(pad, np.int64)])
        boxes.append(np.concatenate([example.boxes[keep], np.zeros((pad, 4), np.float32)]))
    results = detections_to_results(ids, scores, labels, boxes)
    results = [r for r in results if r["score"] > 0]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    metrics = coco_metrics(source.coco, json.loads(path.read_text()))
    for name in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"):
        assert metrics[name] == pytest.approx(1.0), name
    # one wrong box lowers AP; empty predictions give 0, not an error
    wrong = [dict(r, bbox=[0.0, 0.0, 1.0, 1.0]) if i == 0 else r for i, r in enumerate(results)]
    assert coco_metrics(source.coco, wrong)["AP"] < 1.0
    assert coco_metrics(source.coco, [])["AP"] == 0.0


def test_sharded_evaluation_matches_one_device_and_the_model(source, model):
    """Buckets sharded over 4 host devices = 1 device = the plain model on that batch;
    images without annotations are evaluated like the others."""
    kwargs = dict(batch_size=8, granularity=32, size=SIZE, max_size=MAX_SIZE, progress=False,
                  num_workers=2)
    four = evaluate(model, source, ["exact"], devices=jax.devices(), **kwargs)
    one = evaluate(model, source, ["exact"], devices=jax.devices()[:1], **kwargs)
    assert len(four.devices) == 4 and len(one.devices) == 1
    assert four.image_ids == one.image_ids == sorted(r.image_id for r in source.records)
    for image_id in four.image_ids:
        for a, b in zip(four.detections["exact"][image_id], one.detections["exact"][image_id]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    metrics_four = coco_metrics(source.coco, four.results_json("exact"))
    metrics_one = coco_metrics(source.coco, one.results_json("exact"))
    np.testing.assert_allclose(metrics_four["stats"], metrics_one["stats"], atol=1e-6)
    # the shared-backbone split equals the whole model on the same padded batch
    batch = preprocess([source[i].image for i in range(len(source))], size=SIZE,
                       max_size=MAX_SIZE, granularity=32)
    out = Forward(model)(batch.pixel_values, batch.padding_mask, jax.random.key(0))
    expected = postprocess(out, batch.original_sizes)
    for i in range(len(source)):
        got = one.detections["exact"][source.records[i].image_id]
        np.testing.assert_allclose(got[0], expected[i]["scores"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[2], expected[i]["boxes"], rtol=1e-5, atol=1e-3)
    assert four.prototype_ratios("exact") is None and four.skipped == []


def test_act_setting_equals_the_act_model(source, model):
    """Exact-shape batch-1 mode: the ACT setting (on the shared backbone) equals the ACT
    model called with the same key; its statistics feed the ratios, FLOPs inputs and the
    cluster maps."""
    from detr_jax.attention import parse_attention
    from detr_jax.evaluation.plots import cluster_assignments
    from detr_jax.models.detector import encoder_key
    from detr_jax.models.build import with_encoder_attention
    setting = "act:L=8,ladder=1"
    result = evaluate(model, source, [setting], batch_size=1, granularity=0,
                      size=SIZE, max_size=MAX_SIZE, max_images=1, progress=False,
                      devices=jax.devices()[:1], flops_images=1)
    assert result.layout == "per_device" and result.partial and len(result.image_ids) == 1
    act_model = with_encoder_attention(model, parse_attention(setting))
    forward = Forward(act_model)
    example = source[0]
    batch = preprocess([example.image], size=SIZE, max_size=MAX_SIZE)
    out = forward(batch.pixel_values, batch.padding_mask, jax.random.key(0))
    expected = postprocess(out, batch.original_sizes)[0]
    got = result.detections[setting][example.image_id]
    np.testing.assert_allclose(got[0], expected["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2], expected["boxes"], rtol=1e-5, atol=1e-3)
    ratios = result.prototype_ratios(setting)
    assert len(ratios) == 2 and all(0 < r <= 1 for r in ratios)
    assert [len(e["stats"][setting]) for e in result.flops_inputs] == [2]
    # cluster maps use the clusters the model used: same counts per layer and head
    from flax import nnx
    key = encoder_key(jax.random.key(0))
    graphdef, state = nnx.split(act_model)
    ids, (h, w) = jax.jit(lambda st, px, m, k: cluster_assignments(nnx.merge(graphdef, st), px,
                                                                    m, k))(
        state, batch.pixel_values, batch.padding_mask, key)
    h, w = int(h), int(w)
    for layer, stats in enumerate(out["encoder_stats"]):
        counts = [len(np.unique(np.asarray(ids[layer])[0, head])) for head in range(4)]
        np.testing.assert_array_equal(counts, np.asarray(stats.num_clusters)[0])
    assert np.asarray(ids[0]).shape == (1, 4, h * w)


def test_report_partial_and_skipped_images_and_atomic_writes(tmp_path, model):
    root = tmp_path / "coco"
    write_tiny_coco(str(root))
    (root / "val2017" / "000000000007.jpg").write_bytes(b"not a jpeg")
    source = CocoSource.from_dir(str(root))
    # exact shapes, batches round-robin over 3 devices (one of them gets the bad image)
    kwargs = dict(batch_size=1, granularity=0, size=SIZE, max_size=MAX_SIZE, progress=False,
                  max_images=3, devices=jax.devices()[:3])
    with pytest.raises(BadImageError, match=r"000000000007\.jpg \(id 7\)"):
        evaluate(model, source, ["exact"], **kwargs)
    result = evaluate(model, source, ["exact"], skip_bad_images=True, **kwargs)
    assert [s["image_id"] for s in result.skipped] == [7]
    assert result.image_ids == [3, 15] and result.partial and result.layout == "per_device"
    out = tmp_path / "out"
    # an interrupted report leaves nothing behind
    import detr_jax.evaluation.report as report

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    original = report.render_markdown
    report.render_markdown = broken
    try:
        with pytest.raises(KeyboardInterrupt):
            write_report(str(out), result, source.coco, model=model, plots=False)
    finally:
        report.render_markdown = original
    assert os.listdir(out) == []
    written = write_report(str(out), result, source.coco, model=model, source=source,
                           plots=True, cluster_map_images=0)
    names = sorted(os.listdir(out))
    assert names == ["ap_vs_gflops.partial-3.png", "predictions.exact.partial-3.json",
                     "prototype_ratio.partial-3.png",
                     "report.partial-3.csv", "report.partial-3.json", "report.partial-3.md"]
    text = (out / "report.partial-3.md").read_text()
    assert "PARTIAL evaluation: the first 3 of 5 images" in text
    assert "1 image(s) could not be decoded and were skipped" in text
    assert "000000000007.jpg" in text
    summary = json.loads((out / "report.partial-3.json").read_text())
    assert summary["status"] == "partial" and summary["image_count"] == 2
    predictions = json.loads((out / "predictions.exact.partial-3.json").read_text())
    assert {p["image_id"] for p in predictions} == {3, 15}
    assert len(predictions) == 2 * 10  # every query of the tiny model
    assert written["rows"][0]["prototype_ratio"] == [1.0, 1.0]
    staging = Staging(str(tmp_path / "other"))
    staging.write_text("x.txt", "x")
    staging.discard()
    assert os.listdir(tmp_path / "other") == []
