"""Batch inference split into shards for any scheduler (issue 21 point 2): SLURM job arrays, ``xargs -P``, several
machines sharing one output folder.

``ctmil infer ... --shard I/N`` (``I`` in ``0 .. N-1``, e.g. ``$SLURM_ARRAY_TASK_ID/N``) keeps the cases whose id
hashes to ``I`` (:func:`in_shard`: SHA-256 of the case id, so every shard sees the same split whatever the order
or the machine), writes their outputs under ``cases/`` as always and its table as ``predictions.shard-I-of-N.csv``.
``ctmil merge-predictions OUT`` (:func:`merge_shards`) joins the N tables into ``predictions.csv`` and
``report.html``, refusing with one line when a shard is missing, the shards disagree on N, or a case appears twice.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pandas as pd

from ctmil.io.atomic import atomic_write_csv
from ctmil.infer.writer import InferenceOptions, predictions_frame, write_report
from ctmil.keys import Columns

__all__ = ["in_shard", "merge_shards", "parse_shard", "rank_cases", "shard_table"]

_TABLE = re.compile(r"^predictions\.shard-(\d+)-of-(\d+)\.csv$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)`` with ``0 <= I < N``; a one-line ``ValueError`` otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4 ... 3/4), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def in_shard(case_id: str, index: int, count: int) -> bool:
    """Whether ``case_id`` belongs to shard ``index`` of ``count``."""
    return int(hashlib.sha256(str(case_id).encode("utf-8")).hexdigest()[:12], 16) % count == index


def shard_table(index: int, count: int) -> str:
    """The file name of shard ``index`` of ``count``'s predictions table."""
    return f"predictions.shard-{index}-of-{count}.csv"


def rank_cases(cases: list, rank: int, world_size: int) -> list:
    """The cases of torchrun rank ``rank`` of ``world_size``: shard ``rank`` of ``world_size``, the same split as
    ``--shard`` (by case id, so a rerun gives every rank the same cases and resume works per rank)."""
    return [c for c in cases if in_shard(str(c[Columns.CASE_ID]), int(rank), int(world_size))]


def merge_shards(out_dir: "str | os.PathLike[str]") -> pd.DataFrame:
    """Join ``out_dir``'s shard tables into ``predictions.csv`` (rows in case-id order) and return it.

    Raises:
        ValueError: no shard table, shards of different counts, a missing shard, or a case in two shards (one line).
    """
    out_dir = Path(out_dir)
    found = {}
    for path in sorted(out_dir.glob("predictions.shard-*-of-*.csv")):
        match = _TABLE.match(path.name)
        if match:
            found[(int(match.group(1)), int(match.group(2)))] = path
    if not found:
        raise ValueError(f"no shard tables (predictions.shard-I-of-N.csv) in {out_dir}")
    counts = {n for _, n in found}
    if len(counts) != 1:
        raise ValueError(f"{out_dir} holds shards of different splits: N = {sorted(counts)}")
    count = counts.pop()
    missing = sorted(set(range(count)) - {i for i, _ in found})
    if missing:
        raise ValueError(f"shard {missing[0]} of {count} is missing in {out_dir} ({len(missing)} of {count} missing): run it, then merge")
    frames = [pd.read_csv(found[(i, count)], dtype=str, keep_default_na=False) for i in range(count)]
    merged = pd.concat(frames, ignore_index=True)
    twice = merged[Columns.CASE_ID][merged[Columns.CASE_ID].duplicated()]
    if len(twice):
        raise ValueError(f"case {twice.iloc[0]} is in two shards of {out_dir}")
    merged = merged.sort_values(Columns.CASE_ID, kind="stable").reset_index(drop=True)
    atomic_write_csv(merged, out_dir / "predictions.csv")
    features = [out_dir / f"features.shard-{i}-of-{count}.csv" for i in range(count)]
    if any(p.is_file() for p in features):  # --features: the shards' vectors, joined the same way
        parts = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in features if p.is_file()]
        joined = pd.concat(parts, ignore_index=True).sort_values(Columns.CASE_ID, kind="stable")
        atomic_write_csv(joined, out_dir / "features.csv")

    typed = predictions_frame(merged.to_dict("records"), with_study_uid="study_uid" in merged.columns)
    write_report(typed, out_dir, InferenceOptions())
    return typed
