"""Training curves read from metrics.jsonl and plotted (detr_jax.training.curves)."""

import json

import pytest

from detr_jax.training import curves


def _write(workdir, rows):
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return workdir


def test_curves_read_eval_ap_and_loss(tmp_path):
    run = _write(tmp_path / "a", [{"step": 50, "loss": 3.0}, {"step": 100, "loss": 2.5},
                                  {"step": 100, "eval": {"AP": 0.125, "AP50": 0.3}},
                                  {"final_step": 100}])
    got = curves.read_curves(str(run))
    assert got == {"eval": [(100, 12.5)], "loss": [(50, 3.0), (100, 2.5)]}


def test_curves_cli_plots_named_runs_and_names_bad_files(tmp_path, capsys):
    a = _write(tmp_path / "a", [{"step": 10, "loss": 1.0}, {"step": 10, "eval": {"AP": 0.1}}])
    b = _write(tmp_path / "b", [{"step": 10, "loss": 2.0}, {"step": 20, "eval": {"AP": 0.2}}])
    out = tmp_path / "curves.png"
    assert curves.main([str(a), f"second={b}", "--output", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert curves.main([str(tmp_path / "missing"), "--output", str(out)]) == 2
    assert "no metrics.jsonl in" in capsys.readouterr().err
    (b / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        curves.read_curves(str(b))
