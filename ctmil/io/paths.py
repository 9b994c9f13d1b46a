"""Paths in and out: walking input trees (directory symlinks followed once), output names from case ids, and
source paths as they may appear in outputs (relative to the input root, so a patient-named folder stays out).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_SLUG = 80


def safe_case_name(case_id: str) -> str:
    """A file/folder name for ``case_id`` that can never leave its folder, unique per id.

    The id itself when it is already a plain name (lower-case letters, digits, ``.``, ``_``, ``-``; not
    ``.``/``..``, not hidden, at most 80 characters); otherwise a readable slug of it, ``+`` and 10 hex digits of
    its SHA-256, so that ``x`` and ``./x`` (or ``a/b`` and ``a_b``) get different names, and no hashed name can be
    a plain id. Ids with capitals are hashed too, so ``Case1`` and ``case1`` cannot collide on a
    case-insensitive file system (macOS, Windows).

    >>> safe_case_name("case_0012")
    'case_0012'
    >>> safe_case_name("../../x/model").startswith("x_model+")
    True
    """
    case_id = str(case_id)
    plain = (_UNSAFE.sub("", case_id) == case_id and case_id.strip(".") and not case_id.startswith(".")
             and case_id == case_id.lower())
    if plain and len(case_id) <= _MAX_SLUG:
        return case_id
    slug = _UNSAFE.sub("_", case_id).strip("._-")[:_MAX_SLUG] or "case"
    return f"{slug}+{hashlib.sha256(case_id.encode()).hexdigest()[:10]}"  # "+" never occurs in a plain id


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """``path`` resolved, after checking that it lies inside ``folder`` (``ValueError`` otherwise)."""
    resolved, root = Path(path).resolve(), Path(folder).resolve()
    if resolved != root and root not in resolved.parents:
        raise ValueError(f"refusing to write outside {root}: {path}")
    return resolved


def walk_files(root: str | os.PathLike) -> Iterator[Path]:
    """Every file below ``root`` in sorted order; directory symlinks are followed once (a link back into a
    folder already being walked, or to one already walked, is logged and skipped)."""
    root = Path(root)
    if root.is_file():
        yield root
        return
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True, onerror=lambda err: logger.warning("cannot list %s", err.filename)):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            logger.warning("directory %s was already walked (symlink loop or second link); skipped", folder)
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_file():
                yield path


def walk_dirs(root: str | os.PathLike) -> Iterator[Path]:
    """``root`` and every folder below it (symlinks followed once, as :func:`walk_files`)."""
    seen: set[tuple[int, int]] = set()
    for folder, dirs, _ in os.walk(root, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        yield Path(folder)


def shown_path(path: str | os.PathLike, root: str | os.PathLike | None, keep_paths: bool = False) -> str:
    """How a source path appears in outputs: as given with ``keep_paths``, else relative to ``root`` (the
    input the user named; ``.`` for the root itself), else only its name (also for a path outside ``root``)."""
    path = Path(path)
    if keep_paths:
        return str(path)
    if root is not None:
        try:
            shown = Path(os.path.relpath(path.absolute(), Path(root).absolute())).as_posix()
        except ValueError:  # another drive
            shown = ".."
        if shown != ".." and not shown.startswith("../"):
            return shown
    return path.name
