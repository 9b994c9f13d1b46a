"""Pull studies from a PACS into local folders, push result files back, and keep a table of what happened.

* :func:`pull_studies` retrieves the CT series of each study into ``root/<study key>/``. A study retrieved whole gets
  a marker ``root/<study key>.complete`` (beside its folder, out of discovery's way) and is not retrieved again.
* :func:`push_files` asks the PACS which of a case's objects it already holds (by SOPInstanceUID, in their series)
  and stores only the others: a rerun after a failure sends what is missing and nothing twice. The objects' UIDs are
  stable (:func:`ctmil.infer.dicom_results.result_uid`), so a PACS never gets two copies of one result.
* One case's failure (the PACS went away, refused an object) is its row's one-line ``error``; the others go on.

``pacs.csv`` (:func:`write_transfer_table`) has one row per study pulled and per case pushed:
``case_id, direction, status, n_sent, n_present, error`` (``status``: ``ok``, ``cached`` for a study retrieved by an
earlier run, ``failed``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ctmil.io.atomic import atomic_write_csv
from ctmil.io.discovery import study_key
from ctmil.pacs.address import PacsError
from ctmil.pacs.clients import Pacs, group_by_series
from ctmil.keys import Columns

__all__ = ["COMPLETE", "TRANSFER_COLUMNS", "Transfer", "pull_studies", "push_files", "write_transfer_table"]

logger = logging.getLogger(__name__)

COMPLETE = ".complete"  # suffix of the marker of a study folder retrieved whole
TRANSFER_COLUMNS = [Columns.CASE_ID, "direction", Columns.STATUS, "n_sent", "n_present", "error"]


@dataclass
class Transfer:
    """One study pulled or one case pushed: ``n_sent`` objects moved, ``n_present`` already where they were going."""

    case_id: str
    direction: str  # "pull" | "push"
    status: str = "ok"  # "ok" | "cached" | "failed"
    n_sent: int = 0
    n_present: int = 0
    error: str = ""


def pull_studies(pacs: Pacs, study_uids: Sequence[str], root: "str | os.PathLike[str]", progress: bool = False) -> tuple[list[Path], list[Transfer]]:
    """Retrieve the CT series of ``study_uids`` (all studies with CT when empty) into ``root/<study key>/``.

    Returns:
        ``(folders, transfers)``: the folders of the studies now complete locally (input for ``ctmil infer``) and a
        row per study. A requested study the PACS does not hold is a failed row.

    Raises:
        PacsError: the PACS cannot be searched at all (nothing was retrieved).
    """
    root = Path(root)
    found = pacs.find_studies(study_uids)
    transfers = [Transfer(study_key(uid), "pull", "failed", error="study not found in the PACS")
                 for uid in study_uids if uid not in set(found)]
    folders = []
    bar = _bar(found, "pull", progress)
    for uid in bar:
        folder, marker = root / study_key(uid), root / f"{study_key(uid)}{COMPLETE}"
        row = Transfer(study_key(uid), "pull")
        if marker.is_file() and folder.is_dir():
            row.status = "cached"
            row.n_present = sum(1 for f in folder.rglob("*.dcm"))
        else:
            try:
                series = pacs.ct_series(uid)
                if not series:
                    raise PacsError(f"{pacs.address}: the study has no CT series")
                if folder.exists():  # a part of an earlier, interrupted retrieval
                    shutil.rmtree(folder)
                for n, series_uid in enumerate(series):
                    row.n_sent += pacs.retrieve_series(uid, series_uid, folder / f"series-{n:03d}")
                marker.write_text(f"{row.n_sent}\n")
            except PacsError as err:
                row.status, row.error = "failed", str(err)
                logger.warning("case %s: %s", row.case_id, err)
        if row.status != "failed":
            folders.append(folder)
        transfers.append(row)
    return folders, transfers


def push_files(pacs: Pacs, files_by_case: Mapping[str, Sequence[Path]], progress: bool = False) -> list[Transfer]:
    """Store each case's files in the PACS, only those it does not hold yet; one row per case."""
    transfers = []
    for case_id in _bar(list(files_by_case), "push", progress):
        row = Transfer(str(case_id), "push")
        try:
            missing = []
            for (study_uid, series_uid), ours in group_by_series(files_by_case[case_id]).items():
                held = pacs.instances(study_uid, series_uid) & set(ours)
                missing += [path for uid, path in sorted(ours.items()) if uid not in held]
                row.n_present += len(held)
            pacs.store(missing)  # one request (association) per case
            row.n_sent = len(missing)
        except PacsError as err:
            row.status, row.error = "failed", str(err)
            logger.warning("case %s: %s", case_id, err)
        transfers.append(row)
    return transfers


def write_transfer_table(transfers: Sequence[Transfer], out_dir: "str | os.PathLike[str]", name: str = "pacs.csv") -> Path:
    """``out_dir/pacs.csv``: one row per transfer (:data:`TRANSFER_COLUMNS`), written atomically."""
    path = Path(out_dir) / name
    atomic_write_csv(pd.DataFrame([asdict(t) for t in transfers], columns=TRANSFER_COLUMNS), path)
    return path


def _bar(items: list, desc: str, progress: bool):
    if not progress or len(items) < 2:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="study" if desc == "pull" else "case")
