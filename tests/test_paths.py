"""Storage URLs (detr_jax.paths): file:// URLs become local paths; other URLs go through
etils.epath. ``gs://`` is faked here by an fsspec file system mapped onto a local folder
(offline), for the parts written without Orbax: metrics.jsonl, the lock, small files."""

import json
import os

import pytest

from detr_jax import paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_resolve_local_file_and_remote(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.resolve("run") == str(tmp_path / "run")
    assert paths.resolve("file:///tmp/x/run") == "/tmp/x/run"
    assert paths.resolve("file://localhost/tmp/a%20b") == "/tmp/a b"
    assert paths.resolve("gs://bucket/run/") == "gs://bucket/run"  # not <cwd>/gs:/bucket/run
    assert paths.is_remote("gs://b/x") and not paths.is_remote("file:///x")
    assert not paths.is_url("/a/b://c") and paths.is_url("s3://b")
    assert paths.join("gs://b/run", "checkpoints", "4") == "gs://b/run/checkpoints/4"
    assert paths.join("file:///tmp/run", "model") == "/tmp/run/model"
    assert paths.basename("gs://b/run/model/") == "model"
    assert paths.dirname("gs://b/run/model") == "gs://b/run"
    with pytest.raises(ValueError, match="file:///abs/path"):
        paths.resolve("file://otherhost/x")


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    """``gs://bucket/...`` -> ``tmp_path/gcs/bucket/...`` through etils.epath's fsspec backend."""
    import fsspec
    from etils.epath import backend, gpath
    from fsspec.implementations.local import LocalFileSystem

    root = tmp_path / "gcs"
    root.mkdir()

    class FakeGCS(LocalFileSystem):
        protocol = ("gs", "gcs")

        @classmethod
        def _strip_protocol(cls, path):
            path = os.fspath(path)
            for prefix in ("gs://", "gcs://"):
                if path.startswith(prefix):
                    return os.path.join(str(root), path[len(prefix):])
            return super()._strip_protocol(path)

    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    previous = fsspec.registry.get("gcs")
    fsspec.register_implementation("gcs", FakeGCS, clobber=True)
    backend.fsspec_backend._get_filesystem.cache_clear()
    yield root
    backend.fsspec_backend._get_filesystem.cache_clear()
    if previous is not None:
        fsspec.register_implementation("gcs", previous, clobber=True)


def test_files_on_a_fake_bucket(fake_gcs):
    paths.makedirs("gs://bucket/run/sub")
    assert paths.isdir("gs://bucket/run/sub") and (fake_gcs / "bucket/run/sub").is_dir()
    paths.write_text("gs://bucket/run/a.json", '{"x": 1}')
    assert json.loads(paths.read_text("gs://bucket/run/a.json")) == {"x": 1}
    assert (fake_gcs / "bucket/run/a.json").read_text() == '{"x": 1}'
    assert paths.listdir("gs://bucket/run") == ["a.json", "sub"]
    paths.rename("gs://bucket/run/sub", "gs://bucket/run/sub.moved")
    assert paths.listdir("gs://bucket/run") == ["a.json", "sub.moved"]
    paths.remove("gs://bucket/run/a.json")
    assert not paths.exists("gs://bucket/run/a.json")
    with pytest.raises(ValueError, match="not supported on object stores"):
        paths.open_file("gs://bucket/run/log", "a")


def test_metrics_log_and_truncation_on_a_fake_bucket(fake_gcs):
    from detr_jax.training.trainer import truncate_metrics
    paths.makedirs("gs://bucket/run")
    log = paths.AppendLog("gs://bucket/run/metrics.jsonl", min_interval=3600)
    for step in (1, 2, 3):
        log.write(json.dumps({"step": step}) + "\n")
        log.flush()
    # the first flush uploads; later ones wait for the interval, close uploads the rest
    assert len((fake_gcs / "bucket/run/metrics.jsonl").read_text().splitlines()) == 1
    log.close()
    assert len((fake_gcs / "bucket/run/metrics.jsonl").read_text().splitlines()) == 3
    assert truncate_metrics("gs://bucket/run/metrics.jsonl", 2) == 1
    resumed = paths.AppendLog("gs://bucket/run/metrics.jsonl")  # keeps what is there
    resumed.write(json.dumps({"step": 3}) + "\n")
    resumed.close()
    steps = [json.loads(line)["step"] for line in paths.read_text("gs://bucket/run/metrics.jsonl").splitlines()]
    assert steps == [1, 2, 3]


def test_lock_on_a_fake_bucket(fake_gcs):
    from detr_jax.locks import DirectoryLock, DirectoryLocked
    lock = DirectoryLock("gs://bucket/run", "training").acquire()
    assert (fake_gcs / "bucket/run/.detr_jax.lock").exists()
    other = DirectoryLock("gs://bucket/run", "evaluation")
    other.record = dict(other.record, pid=other.record["pid"] + 1)  # another process
    other.record["host"] = "elsewhere"
    with pytest.raises(DirectoryLocked, match="in use by training"):
        other.acquire()
    lock.release()
    assert not (fake_gcs / "bucket/run/.detr_jax.lock").exists()


def test_coco_data_and_report_files_on_a_fake_bucket(fake_gcs):
    from detr_jax.data.coco import CocoSource
    from detr_jax.data.synthetic import generate_split
    from detr_jax.evaluation.report import Staging
    generate_split(str(fake_gcs / "bucket" / "synthetic"), "val", 2, seed=0)
    source = CocoSource("gs://bucket/synthetic/annotations/instances_val.json",
                        "gs://bucket/synthetic/val")
    assert len(source) == 2 and source.records[0].path.startswith("gs://bucket/synthetic/val/")
    assert all(h > 0 and w > 0 for h, w in source.image_sizes())
    assert source[0] is not None
    staging = Staging("gs://bucket/out")
    staging.write_text("report.md", "# report\n")
    staging.write_json("sub/results.json", {"ok": True})
    written = staging.commit()
    assert written == ["gs://bucket/out/report.md", "gs://bucket/out/sub/results.json"]
    assert (fake_gcs / "bucket/out/report.md").read_text() == "# report\n"
    assert json.loads((fake_gcs / "bucket/out/sub/results.json").read_text()) == {"ok": True}
    assert not os.path.exists(staging.directory)


def test_images_by_url(fake_gcs, tmp_path):
    from PIL import Image

    from detr_jax.evaluation.predict import open_image
    (fake_gcs / "bucket").mkdir()
    Image.new("L", (5, 3)).save(fake_gcs / "bucket" / "a.png")
    assert open_image("gs://bucket/a.png").size == (5, 3)
    Image.new("RGB", (4, 2)).save(tmp_path / "b.png")
    assert open_image(f"file://{tmp_path}/b.png").mode == "RGB"
    with pytest.raises(FileNotFoundError, match="gs://bucket/missing.png"):
        open_image("gs://bucket/missing.png")
