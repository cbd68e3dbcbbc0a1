"""Directory locks: one run at a time writes a training workdir or an evaluation output dir.

``DirectoryLock(directory)`` creates ``directory/.detr_jax.lock`` atomically
(``O_CREAT | O_EXCL``) holding the owner's process id, host name and start time (JSON).
A second run on the same directory raises :class:`DirectoryLocked` naming the holder. A lock
whose holder process no longer exists on this host (a run killed with ``kill -9``) is
stale: it is taken over by writing a new lock file beside it and renaming it over the old
one, then checking that the lock now names this process, so two runs that both find the
same stale lock cannot both win. A lock held from another host is never taken over (its
process cannot be checked from here). Releasing removes the file only if this process
still owns it.
"""

from __future__ import annotations

import json
import os
import socket
import time

from detr_jax import paths

LOCK_NAME = ".detr_jax.lock"


class DirectoryLocked(RuntimeError):
    """Another live run holds the directory; the message names its process, host and start."""


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _describe(holder: dict) -> str:
    started = holder.get("started")
    when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
            if isinstance(started, (int, float)) else "an unknown time")
    return f"process {holder.get('pid', '?')} on host {holder.get('host', '?')} since {when}"


class DirectoryLock:
    """Exclusive ownership of ``directory`` by this process (see the module docstring).

    Use as a context manager or call :meth:`acquire` / :meth:`release`. ``purpose`` is
    written into the lock file and the error message ("training", "evaluation").
    """

    def __init__(self, directory: str, purpose: str = "a run"):
        self.directory = paths.resolve(directory)  # a local path or a URL
        self.path = paths.join(self.directory, LOCK_NAME)
        # object stores have no exclusive create: there the lock is written, then read
        # back (a run starting in the same instant may still pass; the usual case, a
        # second run started later, is caught)
        self.remote = paths.is_remote(self.directory)
        self.purpose = purpose
        self.held = False
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.time(), "purpose": purpose}

    def _read(self) -> dict | None:
        try:
            value = json.loads(paths.read_text(self.path))
            return value if isinstance(value, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or damaged

    def _is_stale(self, holder: dict) -> bool:
        if holder.get("host") != self.record["host"]:
            return False
        pid = holder.get("pid")
        return isinstance(pid, int) and not _process_alive(pid)

    def _try_create(self) -> bool:
        if self.remote:
            if paths.exists(self.path):
                return False
            paths.write_text(self.path, json.dumps(self.record))
            return self._read() == self.record
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.record, f)
        return True

    def _take_over(self) -> bool:
        if self.remote:
            paths.write_text(self.path, json.dumps(self.record))
            time.sleep(0.05)
            return self._read() == self.record
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.record, f)
        os.replace(tmp, self.path)
        time.sleep(0.05)  # let a competing takeover land, then see who won
        return self._read() == self.record

    def acquire(self) -> "DirectoryLock":
        paths.makedirs(self.directory)
        for _ in range(20):
            if self._try_create():
                self.held = True
                return self
            holder = self._read()
            if holder is None:
                continue  # released meanwhile: try again
            if holder == {}:  # written right now by another run: give it a moment
                time.sleep(0.05)
                holder = self._read()
                if holder in (None, {}):
                    continue
            if holder.get("pid") == os.getpid() and holder.get("host") == self.record["host"]:
                raise DirectoryLocked(f"{self.directory} is already locked by this process")
            if self._is_stale(holder):
                if self._take_over():
                    self.held = True
                    return self
                continue
            raise DirectoryLocked(
                f"{self.directory} is in use by {holder.get('purpose', 'another run')} "
                f"({_describe(holder)}); wait for it to finish or use another directory "
                f"(if that run is gone, delete {self.path})")
        raise DirectoryLocked(f"{self.directory}: could not take the lock {self.path}")

    def release(self):
        if self.held and self._read() == self.record:
            try:
                paths.remove(self.path)
            except FileNotFoundError:
                pass
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
