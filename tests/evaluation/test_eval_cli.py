"""``eval.py --coco-dir``: end to end on a converted tiny official-layout checkpoint."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.tiny_checkpoint import write_tiny_pth
from tests.data.tiny_coco import prepare_tfds_coco, write_tiny_coco

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytest.importorskip("torch")


def run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "eval.py", *args], cwd=ROOT, capture_output=True,
                          text=True, env=env)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from detr_jax.convert.cli import main as convert
    tmp = tmp_path_factory.mktemp("eval_cli")
    pth = write_tiny_pth(tmp / "tiny.pth")
    ckpt = tmp / "tiny-ckpt"
    assert convert(["--checkpoint", str(pth), "--output", str(ckpt)]) == 0
    coco = tmp / "coco"
    write_tiny_coco(str(coco))
    return tmp, ckpt, coco


def test_eval_coco_dir_writes_the_report(setup):
    tmp, ckpt, coco = setup
    out = tmp / "report"
    result = run("--checkpoint", str(ckpt), "--coco-dir", str(coco), "--attention", "exact",
                 "--config", "configs/tiny.py", "--output-dir", str(out),
                 "--compilation-cache", "none", "--no-progress", "--config.eval.batch_size=8",
                 "--config.data.size=96", "--config.data.max_size=160")
    assert result.returncode == 0, result.stderr
    assert "Full evaluation: all 5 images" in result.stdout
    assert "prototypes / tokens" in result.stdout
    names = set(os.listdir(out))
    assert {"report.md", "report.csv", "report.json", "predictions.exact.json",
            "ap_vs_gflops.png", "prototype_ratio.png"} <= names
    assert not any(n.startswith(".incomplete") for n in names)
    predictions = json.loads((out / "predictions.exact.json").read_text())
    assert len(predictions) == 5 * 10 and {p["image_id"] for p in predictions} == {3, 7, 15, 23, 42}
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["attention"] for r in rows] == ["exact"]
    assert {"AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "ms_per_image", "peak_mem_mb",
            "prototype_ratio_layer1", "prototype_ratio_layer2"} <= set(rows[0])
    report = (out / "report.md").read_text()
    assert "| `exact` |" in report and str(coco) in report
    summary = json.loads((out / "report.json").read_text())
    assert summary["status"] == "complete" and summary["image_count"] == 5
    # the TFDS copy of the same images gives the same predictions
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")
    prepare_tfds_coco(str(coco), str(tmp / "tfds"))
    out_tfds = tmp / "report_tfds"
    result = run("--checkpoint", str(ckpt), "--data-dir", str(tmp / "tfds"),
                 "--config", "configs/tiny.py", "--output-dir", str(out_tfds),
                 "--compilation-cache", "none", "--no-progress", "--config.eval.batch_size=8",
                 "--config.data.size=96", "--config.data.max_size=160")
    assert result.returncode == 0, result.stderr
    from_tfds = json.loads((out_tfds / "predictions.exact.json").read_text())
    assert len(from_tfds) == len(predictions)
    for a, b in zip(from_tfds, predictions):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-3)
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)
    assert "TFDS coco/2017" in (out_tfds / "report.md").read_text()


def test_eval_with_file_urls_matmul_precision_and_distributed_off(setup):
    """file:// URLs for the checkpoint, the data and the output; --matmul-precision and
    --distributed off are taken and recorded."""
    tmp, ckpt, coco = setup
    out = tmp / "url_report"
    result = run("--checkpoint", f"file://{ckpt}", "--coco-dir", f"file://{coco}",
                 "--attention", "exact", "--config", "configs/tiny.py",
                 "--output-dir", f"file://{out}", "--matmul-precision", "highest",
                 "--distributed", "off", "--compilation-cache", "none", "--no-progress",
                 "--config.eval.batch_size=8", "--config.data.size=96",
                 "--config.data.max_size=160", "--config.eval.plots=False")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "report.json").read_text())
    assert summary["status"] == "complete" and summary["image_count"] == 5
    assert summary["details"]["matmul precision"] == "highest"
    assert not os.path.exists(os.path.join(ROOT, "file:"))


def test_eval_bf16_precision_is_recorded_and_close_to_fp32(setup):
    tmp, ckpt, coco = setup
    predictions = {}
    for precision in ("fp32", "bf16"):
        out = tmp / f"report_{precision}"
        result = run("--checkpoint", str(ckpt), "--coco-dir", str(coco), "--attention", "exact",
                     "--config", "configs/tiny.py", "--output-dir", str(out), "--precision", precision,
                     "--compilation-cache", "none", "--no-progress", "--config.eval.batch_size=8",
                     "--config.data.size=96", "--config.data.max_size=160",
                     "--config.eval.plots=False")
        assert result.returncode == 0, result.stderr
        assert f"- precision: {precision}" in (out / "report.md").read_text()
        predictions[precision] = json.loads((out / "predictions.exact.json").read_text())
    fp32, bf16 = predictions["fp32"], predictions["bf16"]
    assert len(fp32) == len(bf16)
    scores32 = np.array([p["score"] for p in fp32])
    scores16 = np.array([p["score"] for p in bf16])
    assert not np.array_equal(scores32, scores16)        # bf16 really ran
    assert np.abs(np.sort(scores32) - np.sort(scores16)).max() < 0.05, (scores32, scores16)


def test_eval_coco_bad_paths_stop_at_once(setup, tmp_path):
    tmp, ckpt, coco = setup
    missing = run("--checkpoint", str(ckpt), "--coco-dir", str(tmp_path / "nococo"))
    assert missing.returncode == 2 and "nococo does not exist" in missing.stderr
    no_root = run("--checkpoint", str(ckpt), "--annotations",
                  str(coco / "annotations" / "instances_val2017.json"),
                  "--image-root", str(tmp_path / "noimages"))
    assert no_root.returncode == 2 and "image root" in no_root.stderr
    assert "noimages does not exist" in no_root.stderr
    wrong = run("--checkpoint", str(ckpt), "--coco-dir", str(coco), "--attention", "fast")
    assert wrong.returncode == 2 and "valid forms" in wrong.stderr


def test_printed_summary_has_the_prototype_column(capsys):
    from types import SimpleNamespace

    from detr_jax.evaluation.cli import _print_summary
    metrics = dict(AP=40.0, AP50=60.0, AP75=None, AP_S=10.0, AP_M=40.0, AP_L=50.0,
                   ms_per_image=12.5, gflops_total=2.5)
    rows = [dict(metrics, attention="exact", prototype_ratio=[1.0] * 3),
            dict(metrics, attention="act:L=32,r=3", prototype_ratio=[0.712, 0.571, 0.6]),
            dict(metrics, attention="kmeans:C=32", prototype_ratio=[0.0625] * 3)]
    result = SimpleNamespace(partial=False, dataset_size=5, skipped=[], image_ids=[1, 2, 3, 4, 5],
                             num_planned=5)
    _print_summary(rows, result)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith("prototypes / tokens")
    assert lines[2].split()[0] == "exact" and lines[2].split()[-1] == "1.0"
    assert lines[3].split()[-1] == "0.57-0.71"
    assert lines[4].split()[-1] == "0.06"


def test_attention_kernel_is_set_on_the_model_config():
    """``--attention-kernel`` becomes the config field ``attention_backend`` of a model
    built with the loaded parameters (the same arrays)."""
    from flax import nnx

    from detr_jax.evaluation.cli import with_config
    from detr_jax.models.build import build_model
    from detr_jax.models.config import tiny_model_config
    model = build_model(tiny_model_config(), seed=0)
    new = with_config(model, attention_backend="xla")
    assert new.config["attention_backend"] == "xla" and type(new) is type(model)
    old = dict(nnx.to_flat_state(nnx.state(model)))
    for path, var in nnx.to_flat_state(nnx.state(new)):
        assert var.get_value() is old[path].get_value()
