"""Directory locks: a second run stops naming the holder; a stale lock is taken over."""

import json
import os
import socket
import subprocess
import sys

import pytest

from detr_jax.locks import LOCK_NAME, DirectoryLock, DirectoryLocked

pytestmark = pytest.mark.multiprocess  # run on their own (scripts/test.sh): they time child processes


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # exited and reaped: no such process now


def test_second_lock_names_the_holder(tmp_path):
    with DirectoryLock(str(tmp_path), "training") as held:
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        # another process trying the same directory is refused at once
        code = ("import sys; from detr_jax.locks import DirectoryLock, DirectoryLocked\n"
                "try:\n DirectoryLock(sys.argv[1]).acquire()\nexcept DirectoryLocked as e:\n"
                " print(e); sys.exit(7)\n")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                             text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()), timeout=60)
        assert out.returncode == 7, out.stderr
        assert f"process {os.getpid()}" in out.stdout and socket.gethostname() in out.stdout
        assert "training" in out.stdout and "since" in out.stdout
        with pytest.raises(DirectoryLocked):
            DirectoryLock(str(tmp_path)).acquire()
        assert held.held
    assert not (tmp_path / LOCK_NAME).exists()  # released
    DirectoryLock(str(tmp_path)).acquire().release()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    stale = {"pid": dead_pid(), "host": socket.gethostname(), "started": 0.0, "purpose": "training"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    lock = DirectoryLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    other = {"pid": dead_pid(), "host": "some-other-host", "started": 0.0}
    (tmp_path / LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(DirectoryLocked, match="some-other-host"):
        DirectoryLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == other


def test_release_leaves_a_lock_taken_over_by_another_run(tmp_path):
    lock = DirectoryLock(str(tmp_path)).acquire()
    other = {"pid": 1, "host": socket.gethostname(), "started": 0.0}
    (tmp_path / LOCK_NAME).write_text(json.dumps(other))
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == other
