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

__all__ = ["atomic_open", "atomic_torch_save", "atomic_write_bytes", "atomic_write_csv", "atomic_write_text", "file_mode"]

_UMASK_LOCK = threading.Lock()


def file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open`` gives a new file in this process now."""
    with _UMASK_LOCK:  # the umask can only be read by setting it: set it straight back, under a lock
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


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
            os.fchmod(fh.fileno(), file_mode())
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
