"""convert_torch_weights.py: what it inferred, outputs never silently replaced."""

import os
import stat

import numpy as np
import pytest

from detr_jax.convert.cli import main
from detr_jax.convert.recipe import recipe_state_for_config
from detr_jax.models.config import tiny_model_config


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "tiny.npz"
    np.savez(path, **recipe_state_for_config(tiny_model_config(num_heads=8)))
    return str(path)


def convert(src, out, *extra):
    return main(["--checkpoint", src, "--output", str(out), "--no-dilation", *extra])


def test_says_what_it_inferred_including_a_short_decoder(tmp_path, capsys):
    cfg = tiny_model_config(num_heads=8)
    state = recipe_state_for_config(cfg)
    last = cfg.dec_layers - 1
    state = {k: v for k, v in state.items() if f"decoder.layers.{last}." not in k}
    np.savez(tmp_path / "short.npz", **state)
    assert convert(str(tmp_path / "short.npz"), tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert f"{cfg.enc_layers} encoder + {last} decoder layers" in out
    assert "official DETR models have 6 encoder + 6 decoder layers" in out


def test_overwrite_replaces_only_a_converted_checkpoint(tiny_npz, tmp_path, capsys):
    out = tmp_path / "model"
    assert convert(tiny_npz, out) == 0
    assert convert(tiny_npz, out) == 2 and "overwrite" in capsys.readouterr().err
    assert convert(tiny_npz, out, "--overwrite") == 0  # a converted checkpoint: replaced
    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    (unrelated / "holiday.jpg").write_bytes(b"x")
    assert convert(tiny_npz, unrelated, "--overwrite") == 2
    err = capsys.readouterr().err
    assert str(unrelated) in err and "not a detr_jax model" in err
    assert (unrelated / "holiday.jpg").read_bytes() == b"x"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert convert(tiny_npz, a_file, "--overwrite") == 2
    assert a_file.read_text() == "keep me" and "is a file" in capsys.readouterr().err


def test_leftover_temporary_folders_removed_and_usual_permissions(tiny_npz, tmp_path):
    leftover = tmp_path / "model.tmp-abc123"
    (leftover / "state").mkdir(parents=True)
    other = tmp_path / "other.tmp-abc123"  # not ours: kept
    other.mkdir()
    old_umask = os.umask(0o022)
    try:
        assert convert(tiny_npz, tmp_path / "model") == 0
    finally:
        os.umask(old_umask)
    assert sorted(os.listdir(tmp_path)) == ["model", "other.tmp-abc123"]
    assert stat.S_IMODE(os.stat(tmp_path / "model").st_mode) == 0o755


def test_output_parent_is_a_file_or_unwritable(tiny_npz, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert convert(tiny_npz, tmp_path / "afile" / "model") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file" in err
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        assert convert(tiny_npz, locked / "model") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot write" in err
    finally:
        locked.chmod(0o755)


def test_zero_class_head_is_refused(tmp_path, capsys):
    state = recipe_state_for_config(tiny_model_config(num_heads=8))
    state["class_embed.weight"] = state["class_embed.weight"][:1]
    state["class_embed.bias"] = state["class_embed.bias"][:1]
    np.savez(tmp_path / "zero.npz", **state)
    assert convert(str(tmp_path / "zero.npz"), tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least one class" in err
