"""Several hash draws per ACT / K-means setting: one data pass, mean and std in the report."""

import json

import jax
import numpy as np
import pytest

from detr_jax.data.coco import CocoSource
from detr_jax.evaluation.coco_eval import EvalResult, evaluate
from detr_jax.evaluation.loop import draw_key, draw_name, setting_runs
from detr_jax.evaluation.report import build_rows, draws_summary, write_report
from detr_jax.models.config import tiny_model_config
from detr_jax.models.detector import encoder_key
from tests.data.tiny_coco import write_tiny_coco

ACT = "act:L=8,r=1,ladder=1"


def test_runs_follow_the_spec_and_keys_differ_per_draw():
    runs = setting_runs(["exact", ACT, "kmeans:C=4", "enact"], hash_seeds=3)
    assert runs["exact"] == [("exact", 0)] and runs["enact"] == [("enact", 0)]
    assert [d for _, d in runs[ACT]] == [0, 1, 2] and runs[ACT][1][0] == draw_name(ACT, 1)
    assert len(runs["kmeans:C=4"]) == 3
    assert setting_runs([ACT], hash_seeds=1) == {ACT: [(ACT, 0)]}
    with pytest.raises(ValueError):
        setting_runs([ACT], hash_seeds=0)
    data = [np.asarray(jax.random.key_data(draw_key(5, d))) for d in range(3)]
    # draw 0 is the single-draw key; the others differ from it and from each other
    np.testing.assert_array_equal(data[0], jax.random.key_data(encoder_key(jax.random.key(5))))
    assert len({d.tobytes() for d in data}) == 3


def _fake_result(runs):
    names = [r for rs in runs.values() for r in rs]
    return EvalResult(settings=list(runs), detections={r: {} for r in names}, image_ids=[1],
                      skipped=[], num_planned=1, dataset_size=1,
                      ms_per_image={r: [float(i + 1)] for i, r in enumerate(names)},
                      ratio_sums={r: None for r in names}, flops_inputs=[], compiles=0,
                      compile_seconds=0.0, xla_memory={}, peak_bytes=None, devices=[],
                      layout="per_device", batch_size=1, granularity=None, wall_seconds=0.0,
                      encoder_layers=2, runs=runs)


def test_rows_give_mean_and_sample_std_over_draws():
    runs = {"exact": ["exact"], ACT: [draw_name(ACT, i) for i in range(3)]}
    aps = [0.30, 0.33, 0.36]
    base = {n: 0.5 for n in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")}
    metrics = {"exact": dict(base, AP=0.40)}
    metrics.update({run: dict(base, AP=ap) for run, ap in zip(runs[ACT], aps)})
    rows = build_rows(_fake_result(runs), metrics, None)
    exact, act = rows
    assert exact["AP"] == pytest.approx(40.0) and exact["AP_std"] is None and exact["draws"] == 1
    assert act["draws"] == 3
    assert act["AP"] == pytest.approx(33.0)
    assert act["AP_std"] == pytest.approx(np.std([30.0, 33.0, 36.0], ddof=1))   # 3.0
    assert act["AP50"] == pytest.approx(50.0) and act["AP50_std"] == pytest.approx(0.0)
    assert act["ms_per_image"] == pytest.approx(3.0)        # median of the draws' samples 2, 3, 4
    per_draw = draws_summary(_fake_result(runs), metrics)
    assert list(per_draw) == [ACT] and per_draw[ACT]["AP"] == pytest.approx([30.0, 33.0, 36.0])


def test_three_draws_on_a_tiny_model(tmp_path):
    import detr_jax
    from detr_jax.convert.recipe import recipe_state_for_config
    write_tiny_coco(str(tmp_path / "coco"))
    source = CocoSource.from_dir(str(tmp_path / "coco"))
    model = detr_jax.load_torch_checkpoint(recipe_state_for_config(tiny_model_config()),
                                           num_heads=4)
    result = evaluate(model, source, ["exact", ACT], batch_size=1, granularity=0, size=96,
                      max_size=160, max_images=1, progress=False, devices=jax.devices()[:1],
                      flops_images=1, hash_seeds=3)
    act_runs = result.setting_runs(ACT)
    assert result.setting_runs("exact") == ["exact"] and len(act_runs) == 3
    assert set(result.detections) == {"exact", *act_runs}      # exact evaluated once
    # one compiled head per setting, whatever the draws: backbone + exact + ACT
    assert result.compiles == 3
    image = result.image_ids[0]
    scores = [result.detections[run][image][0] for run in act_runs]
    assert not all(np.array_equal(scores[0], s) for s in scores[1:])   # different hashes
    out = write_report(str(tmp_path / "out"), result, source.coco, plots=False)
    rows = {row["attention"]: row for row in out["rows"]}
    aps = [100.0 * out["metrics"][run]["AP"] for run in act_runs]
    assert rows[ACT]["draws"] == 3
    assert rows[ACT]["AP"] == pytest.approx(np.mean(aps), abs=1e-3)
    assert rows[ACT]["AP_std"] == pytest.approx(np.std(aps, ddof=1), abs=1e-3)
    assert rows["exact"]["draws"] == 1 and rows["exact"]["AP_std"] is None
    files = {path.rsplit(".", 1)[-1]: path for path in out["files"]
             if "/report." in path}                              # report.partial-1.{json,csv,md}
    with open(files["json"]) as f:
        report = json.load(f)
    assert report["draws"][ACT]["AP"] == pytest.approx(aps, abs=1e-3)
    assert set(report["metrics"]) == {"exact", *act_runs}       # each draw's full metrics
    with open(files["csv"]) as f:
        assert "AP_std" in f.readline()
    with open(files["md"]) as f:
        assert "±" in f.read()
    assert sum("predictions." in path for path in out["files"]) == 4


def test_flag_and_config_field():
    from detr_jax.evaluation.cli import build_parser, default_config
    from detr_jax.evaluation.defaults import EVAL_DEFAULTS
    assert EVAL_DEFAULTS["hash_seeds"] == 1 and default_config().eval.hash_seeds == 1
    args, _ = build_parser().parse_known_args(["--checkpoint", "c", "--hash-seeds", "3"])
    assert args.hash_seeds == 3
