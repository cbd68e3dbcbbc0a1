"""Local paths and storage URLs (``gs://bucket/run``, ``s3://...``, ``file:///abs/path``).

Work directories, checkpoints, exported models, ``metrics.jsonl``, TensorBoard event
folders, evaluation outputs and dataset roots may be URLs. Local paths (and ``file://``
URLs, which become local paths) keep using the operating system's calls, with their
atomic renames and exclusive file creation; other URLs go through ``etils.epath``
(``gs://`` needs ``gcsfs`` or TensorFlow, ``s3://`` ``s3fs``). Object stores have no
atomic directory rename: there a directory written under a temporary name and then
renamed is complete once its marker file exists (see ``detr_jax.checkpoint``).
"""

from __future__ import annotations

import os
import posixpath
import re
from urllib.parse import unquote, urlparse


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path) -> bool:
    """``scheme://...`` (``file://`` included)."""
    return bool(_URL.match(os.fspath(path)))


def is_remote(path) -> bool:
    """A URL other than ``file://`` (handled through ``etils.epath``)."""
    return is_url(path) and not os.fspath(path).startswith("file://")


def resolve(path) -> str:
    """The canonical string of ``path``: local paths and ``file://`` URLs absolute and
    user-expanded; other URLs as given, without a trailing slash."""
    text = os.fspath(path)
    if text.startswith("file://"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{text}: a file:// URL names a path on this machine "
                             f"(file:///abs/path), not host {parsed.netloc!r}")
        text = unquote(parsed.path)
    if is_url(text):
        return text.rstrip("/") if not text.endswith("://") else text
    return os.path.abspath(os.path.expanduser(text))


def as_path(path):
    """An ``etils.epath.Path`` for ``path`` (after :func:`resolve`)."""
    from etils import epath
    return epath.Path(resolve(path))


def join(base, *parts: str) -> str:
    """``base/part/...`` for local paths and URLs alike."""
    base = resolve(base)
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def basename(path) -> str:
    return posixpath.basename(resolve(path).rstrip("/"))


def dirname(path) -> str:
    path = resolve(path)
    return posixpath.dirname(path) if is_remote(path) else os.path.dirname(path)


def exists(path) -> bool:
    path = resolve(path)
    return as_path(path).exists() if is_remote(path) else os.path.exists(path)


def isfile(path) -> bool:
    path = resolve(path)
    return as_path(path).is_file() if is_remote(path) else os.path.isfile(path)


def isdir(path) -> bool:
    path = resolve(path)
    return as_path(path).is_dir() if is_remote(path) else os.path.isdir(path)


def makedirs(path) -> str:
    path = resolve(path)
    if is_remote(path):
        as_path(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)
    return path


def listdir(path) -> list[str]:
    path = resolve(path)
    if is_remote(path):
        return sorted(p.name for p in as_path(path).iterdir())
    return sorted(os.listdir(path))


def open_file(path, mode: str = "r"):
    """``open`` for local paths, ``epath.Path.open`` for URLs (no append mode there)."""
    path = resolve(path)
    if is_remote(path):
        if "a" in mode or "+" in mode:
            raise ValueError(f"{path}: mode {mode!r} is not supported on object stores")
        return as_path(path).open(mode)
    return open(path, mode)


def read_text(path) -> str:
    with open_file(path) as f:
        return f.read()


def write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) whole, as :func:`write_bytes`."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path, data: bytes) -> None:
    """Write ``data`` whole: locally through a temporary file and ``os.replace`` (readers
    see the old or the new content), on object stores in one upload (equally whole)."""
    path = resolve(path)
    if is_remote(path):
        as_path(path).parent.mkdir(parents=True, exist_ok=True)  # a no-op on most stores
        as_path(path).write_bytes(data)
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def remove(path) -> None:
    path = resolve(path)
    if is_remote(path):
        as_path(path).unlink(missing_ok=True)
    elif os.path.lexists(path):
        os.remove(path)


def rmtree(path) -> None:
    path = resolve(path)
    if is_remote(path):
        p = as_path(path)
        if p.exists():
            p.rmtree()
    else:
        import shutil
        shutil.rmtree(path, ignore_errors=True)


def rename(src, dst) -> None:
    """Rename a file or directory (``os.replace`` locally; copy-and-delete on object
    stores, where it is not atomic)."""
    src, dst = resolve(src), resolve(dst)
    if is_remote(src) or is_remote(dst):
        as_path(src).rename(as_path(dst))
    else:
        os.replace(src, dst)


class AppendLog:
    """A text file that grows by whole lines (``metrics.jsonl``).

    Locally lines are appended and flushed as now. Object stores cannot append: the
    lines are kept and the whole file is uploaded again at :meth:`flush` when
    ``min_interval`` seconds have passed since the last upload, and always at :meth:`close`.
    """

    def __init__(self, path, *, min_interval: float = 30.0):
        self.path = resolve(path)
        self.remote = is_remote(self.path)
        self.min_interval = min_interval
        self._last = None  # monotonic time of the last upload; the first flush always uploads
        if self.remote:
            self._lines = read_text(self.path).splitlines(True) if exists(self.path) else []
            self._dirty = False
        else:
            self._file = open(self.path, "a")

    def write(self, text: str) -> None:
        if self.remote:
            self._lines.append(text)
            self._dirty = True
        else:
            self._file.write(text)

    def flush(self, force: bool = False) -> None:
        import time
        if not self.remote:
            self._file.flush()
            return
        due = self._last is None or time.monotonic() - self._last >= self.min_interval
        if self._dirty and (force or due):
            write_text(self.path, "".join(self._lines))
            self._last, self._dirty = time.monotonic(), False

    def close(self) -> None:
        if self.remote:
            self.flush(force=True)
        else:
            self._file.close()
