"""One live run per output folder (per shard) (issue 21 point 4): a lock file holding the pid and host of the run.

What two runs writing one ``predictions.csv`` would do is undefined, so a second run refuses with one line while the
first lives. Shards of one split write different tables and lock separately. A lock whose process is gone (a run
killed with ``kill -9`` on this host) is taken over; a lock from another host cannot be checked and is refused, with
the file to remove named, once that run is known to be gone.

Claiming, checking and taking over happen under an exclusive ``fcntl.flock`` of ``.ctmil-<name>.lock.guard`` (a
file that is never removed), so two runs that find the same dead lock cannot both take it over: without it, the
second could remove the lock the first had just claimed. Where ``fcntl`` is missing (Windows) there is no guard.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OutputInUse", "output_lock"]


class OutputInUse(ValueError):
    """Another live run holds the output folder (one line)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _claim(path: Path, record: dict) -> bool:
    """Create ``path`` holding ``record`` if it does not exist (atomically: ``O_EXCL``); ``False`` if it does."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh)
    return True


@contextlib.contextmanager
def _guarded(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` of ``path`` + ``.guard`` for the block (released when the process dies, too)."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: the O_EXCL claim alone
        yield
        return
    with open(path.with_name(path.name + ".guard"), "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def output_lock(out_dir: "str | os.PathLike[str]", name: str = "infer") -> Iterator[Path]:
    """Hold ``out_dir/.ctmil-<name>.lock`` for the block; :class:`OutputInUse` when a live run holds it."""
    path = Path(out_dir) / f".ctmil-{name}.lock"
    host = socket.gethostname()
    record = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    with _guarded(path):
        _acquire(path, record, host, out_dir)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()


def _acquire(path: Path, record: dict, host: str, out_dir: "str | os.PathLike[str]") -> None:
    """Claim ``path``, taking over a dead run's lock on this host; :class:`OutputInUse` when a live run holds it."""
    while not _claim(path, record):
        try:
            held = json.loads(path.read_text())
        except (OSError, ValueError):  # being written by its owner this instant, or damaged: look once more
            time.sleep(0.05)
            held = {}
            with contextlib.suppress(OSError, ValueError):
                held = json.loads(path.read_text())
        pid, other = int(held.get("pid") or 0), str(held.get("host") or "")
        if other == host and pid and (pid == os.getpid() or not _alive(pid)):  # killed (or our own pid reused, as
            path.unlink(missing_ok=True)  # a restarted container's pid 1): take over
            continue
        where = f"pid {pid} on {other}" if other else "another run"
        hint = "; wait for it" + ("" if other == host else f", or remove {path} if that run is gone")
        raise OutputInUse(f"{Path(out_dir)} is in use by {where} (since {held.get('started', '?')}){hint}")
