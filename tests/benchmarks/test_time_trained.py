"""benchmarks/device/time_trained.sh with a stand-in python3: one inference timing per
trained run on its own weights, one training-step timing per config with all of its runs'
attentions, and a missing model named."""

import os
import stat
import subprocess
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STUB = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
while [ $# -gt 0 ]; do [ "$1" = --json ] && echo '[]' > "$2"; shift; done
"""


def test_timings_per_run_and_per_config(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(STUB)
    (bin_dir / "python3").chmod(stat.S_IRWXU)
    runs = tmp_path / "runs"
    for name in ("plain", "enact"):
        (runs / name / "model").mkdir(parents=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "out"),
           "CALLS": str(tmp_path / "calls"), "TRAINED_ROOT": str(runs),
           "TIMINGS_DIR": str(tmp_path / "timings"), "WHEELS": str(tmp_path / "no_wheels"),
           "SITE": str(tmp_path / "site")}
    config = "configs/anchor_detr_synthetic.py"
    done = subprocess.run(
        ["bash", "benchmarks/device/time_trained.sh", f"plain={config}",
         f"enact={config}@enact:sigma=5", f"missing={config}"],
        cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "missing" in done.stderr and "no trained model" in done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    infer = [c for c in calls if "--mode infer" in c]
    train = [c for c in calls if "--mode train" in c]
    assert len(infer) == 2 and len(train) == 1
    assert f"--checkpoint {runs}/plain/model" in infer[0] and "--attention exact " in infer[0]
    assert f"--checkpoint {runs}/enact/model" in infer[1] and "--attention enact:sigma=5 " in infer[1]
    assert "--attention exact enact:sigma=5 --batch 32" in train[0]
    with tarfile.open(tmp_path / "out" / "timings.tar") as tar:
        names = {os.path.basename(n) for n in tar.getnames()}
    assert {"plain_infer.json", "enact_infer.json", "anchor_detr_synthetic_train.json",
            "timings.log"} <= names
