"""eval.py outputs: unique names per input, a locked output directory, decompression bombs
and bad inputs as one-line errors (or skipped with --skip-bad-images)."""

import json
import os
import socket

import numpy as np
import pytest
from PIL import Image

import detr_jax
from detr_jax.data.coco import BadImageError, decode_rgb
from detr_jax.evaluation.cli import main
from detr_jax.evaluation.predict import output_stems
from detr_jax.locks import LOCK_NAME
from detr_jax.models.config import tiny_model_config


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outputs")
    ckpt = detr_jax.save_model(detr_jax.build_model(tiny_model_config(), seed=0), str(tmp / "ckpt"))
    rng = np.random.default_rng(0)
    for folder, name in (("d1", "same.jpg"), ("d2", "same.png")):
        (tmp / folder).mkdir()
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), np.uint8)).save(tmp / folder / name)
    Image.fromarray(rng.integers(0, 255, (60, 60, 3), np.uint8)).save(tmp / "bomb.png")
    return tmp, ckpt


def run(ckpt, out, *args):
    return main(["--checkpoint", ckpt, "--output-dir", str(out), "--config.data.size=32",
                 "--config.data.max_size=48", *args])


def test_output_stems_are_distinct():
    assert output_stems(["a/x.jpg", "b/y.jpg"]) == ["x", "y"]
    assert output_stems(["d1/same.jpg", "d2/same.png"]) == ["same.jpg", "same.png"]
    assert output_stems(["d1/same.jpg", "d2/same.jpg", "same.png"]) == \
        ["same.jpg", "same.jpg-2", "same.png"]


def test_same_stem_in_two_folders_gives_two_reports(files, tmp_path, capsys):
    tmp, ckpt = files
    assert run(ckpt, tmp_path, "--images", str(tmp / "d1" / "same.jpg"),
               str(tmp / "d2" / "same.png")) == 0
    names = sorted(os.listdir(tmp_path))
    assert names == ["same.jpg.exact.json", "same.jpg.exact.png", "same.png.exact.json",
                     "same.png.exact.png"]


def test_output_dir_in_use_by_another_run_is_refused(files, tmp_path, capsys):
    tmp, ckpt = files
    holder = {"pid": 1, "host": socket.gethostname(), "started": 0.0, "purpose": "evaluation"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(holder))  # a live process of this host
    assert run(ckpt, tmp_path, "--images", str(tmp / "d1" / "same.jpg")) == 2
    err = capsys.readouterr().err
    assert "in use by evaluation" in err and "process 1 on host" in err
    assert os.listdir(tmp_path) == [LOCK_NAME]


def test_decompression_bomb_is_a_bad_image(files, tmp_path, monkeypatch, capsys):
    tmp, ckpt = files
    bomb = str(tmp / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 3600 pixels: over twice the limit
    with pytest.raises(BadImageError, match="bomb.png .*DecompressionBomb"):
        decode_rgb(bomb, path=bomb, image_id=1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # over the limit: PIL only warns
    with pytest.raises(BadImageError, match="DecompressionBomb"):
        decode_rgb(bomb, path=bomb, image_id=1)
    good = str(tmp / "d1" / "same.jpg")
    assert run(ckpt, tmp_path, "--images", bomb, good) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bomb.png cannot be decoded" in err
    assert run(ckpt, tmp_path, "--images", bomb, good, "--skip-bad-images") == 0
    out = capsys.readouterr().out
    assert "skipped: image" in out and "bomb.png" in out
    assert sorted(os.listdir(tmp_path)) == ["same.exact.json", "same.exact.png"]


def test_enact_on_a_checkpoint_without_its_parameters(files, tmp_path, capsys):
    tmp, ckpt = files
    assert run(ckpt, tmp_path, "--images", str(tmp / "d1" / "same.jpg"),
               "--attention", "enact:sigma=3") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--attention enact:sigma=3 needs parameters" in err


def test_output_dir_whose_parent_is_a_file(files, tmp_path, capsys):
    tmp, ckpt = files
    (tmp_path / "afile").write_text("")
    assert run(ckpt, tmp_path / "afile" / "out", "--images", str(tmp / "d1" / "same.jpg")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "afile" in err
