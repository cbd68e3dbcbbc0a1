"""benchmarks/device/common.sh: a checkpoint split into parts arrives over several calls
(each carrying some parts) and is restored only once every listed part is there."""

import os
import subprocess

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMON = os.path.join(ROOT, "benchmarks", "device", "common.sh")


def bash(script, cwd, env):
    return subprocess.run(["bash", "-c", f"set -euo pipefail; source {COMMON}; {script}"],
                          cwd=cwd, env={**os.environ, "WHEELS": str(cwd / "no_wheels"),
                                        "SITE": str(cwd / "site"), **env},
                          capture_output=True, text=True)


def test_parts_carried_over_two_calls_restore_the_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    work = tmp_path / "run"
    (work / "checkpoints" / "100").mkdir(parents=True)
    (work / "checkpoints" / "50").mkdir()
    payload = {name: rng.bytes(size) for name, size in (("a", 30000), ("b", 12345))}
    for name, data in payload.items():
        (work / "checkpoints" / "100" / name).write_bytes(data)
    env = {"OUT": str(tmp_path / "out"), "CARRIED_ROOT": str(tmp_path / "carried"),
           "PART_SIZE": "10K"}
    packed = bash(f"pack_checkpoint {work}", tmp_path, env)
    assert packed.returncode == 0, packed.stderr
    parts = sorted(p.name for p in (tmp_path / "out").glob("ckpt.tar.part-*"))
    assert len(parts) >= 4  # only the latest step, in 10 KB parts
    listed = (tmp_path / "out" / "ckpt.parts").read_text().split("\n")
    assert [line.split()[0] for line in listed if line] == parts

    # first call: all but the last part arrive; nothing is restored, the missing part is named
    carry = tmp_path / "carry" / "run"
    carry.mkdir(parents=True)
    for name in parts[:-1] + ["ckpt.parts"]:
        (carry / name).write_bytes((tmp_path / "out" / name).read_bytes())
    first = bash(f"resume_from {carry} {tmp_path / 'restored'}", tmp_path, env)
    assert first.returncode == 3 and parts[-1] in first.stderr
    assert not (tmp_path / "restored").exists()

    # second call carries only the last part: the gathered parts restore the checkpoint
    for name in os.listdir(carry):
        os.remove(carry / name)
    (carry / parts[-1]).write_bytes((tmp_path / "out" / parts[-1]).read_bytes())
    second = bash(f"resume_from {carry} {tmp_path / 'restored'}", tmp_path, env)
    assert second.returncode == 0, second.stderr
    restored = tmp_path / "restored" / "checkpoints"
    assert sorted(os.listdir(restored)) == ["100"]
    for name, data in payload.items():
        assert (restored / "100" / name).read_bytes() == data
