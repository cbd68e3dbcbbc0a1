"""End to end for Conditional DETR and Anchor DETR: official-layout ``.pth`` files ->
``convert_torch_weights.py`` -> ``eval.py --images`` detections, and ``eval.py --coco-dir``
with ACT and K-means on a Conditional DETR (tiny recipe-weight models, CPU)."""

import csv
import json

import numpy as np
import pytest

from detr_jax.data.examples import example_image
from detr_jax.evaluation.report import setting_tag
from tests.data.tiny_coco import write_tiny_coco

torch = pytest.importorskip("torch")


def conditional_state():
    from detr_jax.convert.conditional import conditional_recipe_state
    from detr_jax.models.conditional_detr import tiny_conditional_detr_config
    return conditional_recipe_state(tiny_conditional_detr_config(num_heads=8))


def anchor_state():
    from detr_jax.convert.anchor import build_anchor_detr, expected_anchor_shapes
    from detr_jax.convert.recipe import recipe_tensor
    from detr_jax.models.anchor_detr import tiny_anchor_detr_config
    shapes = expected_anchor_shapes(build_anchor_detr(tiny_anchor_detr_config(), abstract=True))
    return {name: recipe_tensor(name, shape, index, 1)
            for index, (name, shape) in enumerate(sorted(shapes.items()))}


def convert(tmp, name, state):
    from detr_jax.convert.cli import main
    pth = tmp / f"{name}.pth"
    torch.save({"model": {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}}, pth)
    out = tmp / f"{name}-ckpt"
    assert main(["--checkpoint", str(pth), "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("detectors")
    image = tmp / "img.png"
    example_image(96, 80).save(image)
    return tmp, image, {"conditional": convert(tmp, "conditional", conditional_state()),
                        "anchor": convert(tmp, "anchor", anchor_state())}


@pytest.mark.parametrize("name,settings", [("conditional", ["exact", "act:L=32"]),
                                           ("anchor", ["exact"])])
def test_converted_checkpoint_gives_detections_json(converted, name, settings, capsys):
    from detr_jax.checkpoint import read_config
    from detr_jax.evaluation.cli import main
    tmp, image, ckpts = converted
    assert read_config(str(ckpts[name]))["detector"] == f"{name}_detr"
    out = tmp / f"pred-{name}"
    code = main(["--checkpoint", str(ckpts[name]), "--images", str(image), "--attention",
                 *settings, "--output-dir", str(out), "--threshold", "0",
                 "--config", "configs/tiny.py", "--config.data.size=64"])
    assert code == 0, capsys.readouterr().err
    for setting in settings:
        record = json.loads((out / f"img.{setting_tag(setting)}.json").read_text())
        assert record["width"] == 96 and record["height"] == 80
        boxes = np.array([d["box"] for d in record["detections"]])
        # the official top-100 over queries x classes, capped at their number (converted
        # checkpoints keep the official 100): 10 x 5 (Conditional), 6 x 2 x 5 (Anchor)
        assert len(boxes) == {"conditional": 50, "anchor": 60}[name]
        assert np.isfinite(boxes).all()
        scores = [d["score"] for d in record["detections"]]
        assert scores == sorted(scores, reverse=True)


def test_coco_evaluation_of_conditional_detr_with_act_and_kmeans(converted, capsys):
    from detr_jax.evaluation.cli import main
    tmp, _, ckpts = converted
    coco = tmp / "coco"
    write_tiny_coco(str(coco))
    out = tmp / "report"
    settings = ["exact", "act:L=8", "kmeans:C=4"]
    code = main(["--checkpoint", str(ckpts["conditional"]), "--coco-dir", str(coco),
                 "--attention", *settings, "--config", "configs/tiny.py",
                 "--output-dir", str(out), "--compilation-cache", "none", "--no-progress",
                 "--config.eval.batch_size=8", "--config.data.size=64",
                 "--config.data.max_size=96"])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["attention"] for r in rows] == settings
    # the detector's own FLOPs: one backbone, an encoder-attention-dependent transformer
    assert len({r["gflops_backbone"] for r in rows}) == 1
    assert all(float(r["gflops_transformer"]) > 0 for r in rows)
    assert len({r["gflops_transformer"] for r in rows}) == len(settings)
    for setting in settings:
        predictions = json.loads((out / f"predictions.{setting_tag(setting)}.json").read_text())
        assert {p["image_id"] for p in predictions} == {3, 7, 15, 23, 42}
        assert len(predictions) == 5 * 50  # all 10 x 5 (query, class) pairs per image
    assert (out / "ap_vs_gflops.png").exists()
    summary = json.loads((out / "report.json").read_text())
    assert summary["status"] == "complete" and summary["image_count"] == 5
