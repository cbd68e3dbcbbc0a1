"""train.py with a URL as --workdir (file:// here; gs:// takes the same code path through
detr_jax.paths, see tests/test_paths.py)."""

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_train_with_a_file_url_workdir_and_resume(synthetic_root, tmp_path):
    """train.py --workdir file:///...: trains, exports the model, and resumes there."""
    from detr_jax.checkpoint import load_model
    from detr_jax.training.cli import main
    root = str(synthetic_root)
    url = f"file://{tmp_path}/x/run"
    args = ["--config", os.path.join(ROOT, "configs", "tiny_train.py"), "--workdir", url,
            "--no-progress", f"--config.data.train_annotations={root}/annotations/instances_train.json",
            f"--config.data.train_images={root}/train", "--config.train.checkpoint_every=2"]
    assert main(args + ["--config.train.num_steps=2"]) == 0
    run = tmp_path / "x" / "run"
    assert (run / "checkpoints" / "2").is_dir() and (run / "model" / "config.json").exists()
    assert not (tmp_path / "file:").exists() and not os.path.exists(os.path.join(os.getcwd(), "file:"))
    assert main(args + ["--config.train.num_steps=3"]) == 0
    steps = [json.loads(line)["step"] for line in open(run / "metrics.jsonl")]
    assert steps == [1, 2, 3]
    assert load_model(f"file://{run}/model") is not None
