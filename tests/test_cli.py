"""The command-line front ends: convert_torch_weights.py and eval.py --images."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.tiny_checkpoint import write_tiny_pth
from detr_jax.data.examples import example_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("torch")


def run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    pth = write_tiny_pth(tmp / "tiny.pth")
    out = tmp / "tiny-ckpt"
    result = run("convert_torch_weights.py", "--checkpoint", str(pth), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "6 class outputs" in result.stdout
    return tmp, out


def test_convert_refuses_to_overwrite_and_reports_bad_files(converted):
    tmp, out = converted
    again = run("convert_torch_weights.py", "--checkpoint", str(tmp / "tiny.pth"), "--output", str(out))
    assert again.returncode == 2 and "overwrite" in again.stderr
    (tmp / "broken.pth").write_bytes(b"\x00" * 64)
    bad = run("convert_torch_weights.py", "--checkpoint", str(tmp / "broken.pth"), "--output", str(tmp / "x"))
    assert bad.returncode == 2 and "broken.pth" in bad.stderr
    assert not (tmp / "x").exists()


def test_eval_images_writes_json_and_drawings(converted):
    tmp, ckpt = converted
    image = tmp / "scene.png"
    example_image(160, 120).save(image)
    gray = tmp / "gray.jpg"
    example_image(100, 140).convert("L").save(gray)
    out = tmp / "pred"
    result = run("eval.py", "--checkpoint", str(ckpt), "--images", str(image), str(gray),
                 "--output-dir", str(out), "--threshold", "0", "--config", "configs/tiny.py",
                 "--config.data.size=96")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "scene.exact.json").read_text())
    assert record["width"] == 160 and record["height"] == 120
    assert len(record["detections"]) == 10  # tiny model: 10 queries, threshold 0
    box = np.array([d["box"] for d in record["detections"]])
    assert np.isfinite(box).all()
    assert (out / "scene.exact.png").exists() and (out / "gray.exact.png").exists()


def test_eval_bad_inputs(converted, tmp_path):
    tmp, ckpt = converted
    missing = run("eval.py", "--checkpoint", str(ckpt), "--images", str(tmp_path / "nope.jpg"))
    assert missing.returncode == 2 and "nope.jpg does not exist" in missing.stderr
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    bad = run("eval.py", "--checkpoint", str(ckpt), "--images", str(tmp_path / "bad.jpg"))
    assert bad.returncode == 2 and "bad.jpg cannot be decoded" in bad.stderr
    wrong = run("eval.py", "--checkpoint", str(ckpt), "--images", "x.jpg", "--attention", "fast")
    assert wrong.returncode == 2 and "valid forms" in wrong.stderr
    override = run("eval.py", "--checkpoint", str(ckpt), "--images", "x.jpg", "--config.data.nope=1")
    assert override.returncode == 2 and "no field 'nope'" in override.stderr


HELP_COMMANDS = [["eval.py"], ["train.py"], ["convert_torch_weights.py"], ["-m", "detr_jax.benchmark"]]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: c[-1])
def test_help_imports_no_jax_and_documents_every_option(command):
    """--help answers without importing JAX, Flax or torch (they come after parsing)."""
    code = ("import runpy, sys\n"
            f"sys.argv = {command!r} + ['--help']\n"
            "try:\n"
            f"    runpy.run_{'module' if command[0] == '-m' else 'path'}({command[-1]!r}, run_name='__main__')\n"
            "except SystemExit as exit:\n"
            "    assert exit.code in (0, None), exit.code\n"
            "heavy = sorted(m for m in ('jax', 'flax', 'torch', 'orbax') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    result = run("-c", code)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert "HEAVY []" in result.stdout, result.stdout[-300:]


def test_parsers_give_every_option_a_help_text():
    from detr_jax.benchmark import build_parser as benchmark_parser
    from detr_jax.convert.cli import build_parser as convert_parser
    from detr_jax.evaluation.cli import build_parser as eval_parser
    from detr_jax.training.cli import build_parser as train_parser
    for build in (benchmark_parser, convert_parser, eval_parser, train_parser):
        for action in build()._actions:
            assert action.help, (build.__module__, action.option_strings)
    threshold = next(a for a in eval_parser()._actions if "--threshold" in a.option_strings)
    assert "0.7" in threshold.help
