"""The one atomic writer: every file ctmil writes appears whole or not at all, with the mode the user's umask gives.

A file is written under a hidden temporary name in its own folder (``tempfile.mkstemp``) and renamed over the
target. ``mkstemp`` creates the file 0600 whatever the umask, so before the rename the file gets the mode an
ordinary ``open`` would have given (``0666 & ~umask``: 0644 under the usual 022): colleagues on a shared server read
reports, CSVs and models as they read any other file (issue 25).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_path", "atomic_torch_save", "atomic_write_bytes", "atomic_write_csv", "atomic_write_text",
           "file_mode"]

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux ``/proc/self/status``);
    elsewhere by setting it and straight back, under a lock (another thread creating a file that instant would get
    the interim mask, so the interim is the strictest, 0o077)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o077)
        os.umask(umask)
    return umask


def file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open`` gives a new file in this process now."""
    return 0o666 & ~_umask()


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` (folders made as needed); on success give it the umask's mode and rename
    it to ``path``, on any error remove it. ``mode`` is ``"wb"`` or ``"w"`` (then ``kwargs`` such as ``newline``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the name: after a power loss the file is the old one or the new
            os.fchmod(fh.fileno(), file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that take a file name (nibabel, PIL, pydicom), ending in the
    same suffixes (``.nii.gz``: they read the format from it); on success it gets the umask's mode and is renamed
    to ``path``, on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_csv(frame: Any, path: str | os.PathLike, **to_csv: Any) -> Path:
    """A pandas ``frame`` as CSV (no index unless ``to_csv`` says so), atomically."""
    with atomic_open(path, "w", newline="") as fh:
        frame.to_csv(fh, **{"index": False, **to_csv})
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike, save: Callable | None = None) -> Path:
    """``torch.save(obj)`` (or ``save(obj, file)``) atomically."""
    if save is None:
        import torch

        save = torch.save
    with atomic_open(path, "wb") as fh:
        save(obj, fh)
    return Path(path)
