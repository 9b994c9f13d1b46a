"""A labelled phantom cohort on disk: DICOM series and/or NIfTI files per case, optional masks, ``labels.csv``."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from ctmil.io.atomic import atomic_path
from ctmil.synthetic.chest import make_phantom
from ctmil.synthetic.dicom_writer import check_transfer_syntax, write_dicom_series
from ctmil.synthetic.geometry import check_geometry
from ctmil.synthetic.labels import assign_labels
from ctmil.synthetic.nifti_writer import write_nifti
from ctmil.synthetic.seeding import check_seed
from ctmil.keys import Columns

__all__ = ["generate_cohort"]

logger = logging.getLogger(__name__)

_FORMATS = ("dicom", "nifti")


def _case_rngs(seed: int, n: int) -> tuple[np.random.Generator, list[np.random.SeedSequence]]:
    """One generator for cohort-level draws and one SeedSequence per case (case i's does not depend on n)."""
    seed = check_seed(seed)
    cohort = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    return cohort, [np.random.SeedSequence(seed, spawn_key=(1, i)) for i in range(n)]


def _check_cohort_args(n: Any, formats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    fmts = tuple(formats)
    if not fmts or any(f not in _FORMATS for f in fmts):
        raise ValueError(f"formats must be a non-empty subset of {_FORMATS}, got {formats!r}")
    return fmts


def _write_dicom_case(
    out: Path, case_id: str, i: int, seed: int, vol: np.ndarray, info: dict, rng: np.random.Generator, syntax: str
) -> str:
    """Write case ``i`` to ``dicom/<case_id>`` through a temporary folder; returns the folder relative to ``out``."""
    final = out / "dicom" / case_id
    tmp = out / "dicom" / f".{case_id}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    write_dicom_series(
        vol,
        info["spacing"],
        tmp,
        rng=rng,
        patient_id=f"PH{seed}-{i:04d}",
        patient_name=f"PHANTOM^{i:04d}",
        origin=info["origin_lps"],
        transfer_syntax=syntax,
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final.relative_to(out).as_posix()


def _write_case(
    out: Path, i: int, seed: int, case_ss: np.random.SeedSequence, severe: bool, fmts: tuple[str, ...], *,
    shape: Sequence[int], spacing: Sequence[float], write_masks: bool, transfer_syntax: str,
) -> dict[str, Any]:
    """Draw case ``i`` and write it in ``fmts`` (and its masks); returns its ``labels.csv`` row."""
    case_id = f"case_{i:04d}"
    case_rng = np.random.default_rng(case_ss)
    vol, lesion, info = make_phantom(case_rng, shape, spacing, severe=severe)
    row: dict[str, Any] = {
        Columns.CASE_ID: case_id,
        Columns.LABEL: info[Columns.LABEL],
        "involvement": round(info["involvement"], 6),
        "dicom_dir": "",
        "nifti_path": "",
    }
    if "dicom" in fmts:  # UIDs come from the case's generator, after the phantom's draws
        row["dicom_dir"] = _write_dicom_case(out, case_id, i, seed, vol, info, case_rng, transfer_syntax)
    niftis = [("nifti_path", vol, out / "nifti" / f"{case_id}.nii.gz")] if "nifti" in fmts else []
    if write_masks:
        for name, arr in (("lesion", lesion), ("lung", info["lung_mask"].astype(np.uint8))):
            niftis.append((f"{name}_mask_path", arr, out / "masks" / f"{case_id}_{name}.nii.gz"))
    for column, arr, path in niftis:
        row[column] = write_nifti(arr, info["spacing"], path, origin=info["origin_lps"]).relative_to(out).as_posix()
    return row


def generate_cohort(
    out_dir: str | os.PathLike,
    n: int = 16,
    seed: int = 0,
    formats: Sequence[str] = ("dicom", "nifti"),
    shape: Sequence[int] = (48, 128, 128),
    spacing: Sequence[float] = (5.0, 2.7, 2.7),
    severe_fraction: float = 0.25,
    *,
    write_masks: bool = False,
    transfer_syntax: str = "explicit",
    progress: bool | None = None,
) -> pd.DataFrame:
    """Write ``n`` phantoms and ``labels.csv`` under ``out_dir``; return the label table.

    Layout: ``dicom/<case_id>/IM######`` (one shuffled-name series per case), ``nifti/<case_id>.nii.gz``
    (``layout="ras"``, see :func:`write_nifti`), ``labels.csv`` with columns ``case_id, label, involvement,
    dicom_dir, nifti_path`` (paths relative to ``out_dir``, empty when the format was not asked for) and, with
    ``write_masks``, ``lesion_mask_path, lung_mask_path`` (``masks/<case_id>_{lesion,lung}.nii.gz``, same layout).
    Exactly ``round(n * severe_fraction)`` cases are severe, clipped to ``[1, n - 1]`` when ``n >= 2``
    (:func:`assign_labels`) -- both classes are present for ``n >= 2`` unless ``severe_fraction`` is 0 or 1.
    Output bytes, UIDs included, depend only on the arguments (no clock, no global RNG); case ``i``'s phantom
    depends on ``seed``, ``i``, its label, ``shape`` and ``spacing``. Each case folder / file is written under a
    temporary name and renamed. Empty path cells read back as NaN with :func:`pandas.read_csv`.
    """
    fmts = _check_cohort_args(n, formats)
    check_geometry(shape, spacing)
    check_transfer_syntax(transfer_syntax)
    cohort_rng, case_ss = _case_rngs(seed, int(n))
    flags = assign_labels(cohort_rng, int(n), severe_fraction)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        _write_case(out, i, seed, case_ss[i], bool(flags[i]), fmts, shape=shape, spacing=spacing,
                    write_masks=write_masks, transfer_syntax=transfer_syntax)
        for i in tqdm(range(int(n)), desc="phantoms", disable=None if progress is None else not progress)
    ]
    table = pd.DataFrame(rows)
    with atomic_path(out / "labels.csv") as tmp:
        table.to_csv(tmp, index=False)
    logger.debug("wrote %d phantoms (%d severe) to %s", len(table), int(table[Columns.LABEL].sum()), out)
    return table
