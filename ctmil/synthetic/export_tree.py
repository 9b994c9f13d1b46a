"""A messy hospital DICOM export of phantom studies, for series-discovery tests.

Per study: the axial CT series, a thick-slice recon, a localizer, a dose-report SR; junk files, a DICOMDIR and
corrupt files spread over random nested folders (see :func:`write_export_tree`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from ctmil.synthetic.chest import make_phantom
from ctmil.synthetic.dicom_writer import (
    ct_series_datasets,
    default_origin,
    dicomdir_dataset,
    dose_report_dataset,
    make_uid,
    save_dataset,
)
from ctmil.synthetic.geometry import check_geometry
from ctmil.synthetic.labels import assign_labels
from ctmil.synthetic.seeding import check_seed
from ctmil.keys import Columns

__all__ = ["write_export_tree"]

logger = logging.getLogger(__name__)


def _random_name(rng: np.random.Generator, k: int = 8) -> str:
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    return "".join(rng.choice(alphabet, size=k))


def _localizer_images(volume: np.ndarray, spacing: tuple[float, float, float]) -> list[tuple[np.ndarray, str]]:
    """AP (coronal) and lateral (sagittal) projection radiographs ``(1, rows, cols)`` with head at row 0."""
    dz, dy, dx = spacing
    mu = np.clip((volume.astype(np.float32) + 1000.0) / 1000.0, 0, None)
    out = []
    for axis, col_sp, orient in ((1, dx, "coronal"), (2, dy, "sagittal")):
        proj = mu.sum(axis=axis) * (dy if axis == 1 else dx)  # (S, W) or (S, H), line integral in mm
        proj = proj[::-1]  # head first
        proj = ndimage.zoom(proj, (dz / col_sp, 1.0), order=1)  # square pixels
        img = np.clip(proj / max(float(proj.max()), 1e-6) * 2000.0, 0, 4095)
        out.append((np.rint(img)[None].astype(np.int16), orient))
    return out


def _draw_specs(
    rng: np.random.Generator, cases: int, shape: Sequence[int], spacing: Sequence[float], severe_fraction: float
) -> list[dict[str, Any]]:
    """Draw ``cases`` phantoms from the tree's generator, labels as :func:`assign_labels`."""
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    shp, sp = check_geometry(shape, spacing)
    flags = assign_labels(rng, int(cases), severe_fraction)
    specs = []
    for i in range(int(cases)):
        vol, _, info = make_phantom(rng, shp, sp, severe=bool(flags[i]))
        specs.append(
            {Columns.CASE_ID: f"case_{i:04d}", "volume": vol, "spacing": sp, Columns.LABEL: info[Columns.LABEL],
             "involvement": info["involvement"], "origin": info["origin_lps"]}
        )
    return specs


def _given_specs(cases: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    specs = []
    for spec in cases:
        if Columns.CASE_ID not in spec or "volume" not in spec or "spacing" not in spec:
            raise ValueError("each case mapping needs 'case_id', 'volume' and 'spacing'")
        specs.append(dict(spec))
    if not specs:
        raise ValueError("cases is empty")
    return specs


def _make_leaves(rng: np.random.Generator, export: Path) -> list[Path]:
    """2-3 random top folders with 1-2 random subfolders each, created."""
    leaves = []
    for _ in range(int(rng.integers(2, 4))):
        top = _random_name(rng)
        for _ in range(int(rng.integers(1, 3))):
            leaf = export / top / _random_name(rng)
            leaf.mkdir(parents=True, exist_ok=True)
            leaves.append(leaf)
    return leaves


def _thick_recon(
    rng: np.random.Generator, vol: np.ndarray, sp: tuple[float, ...], origin: Sequence[float], common: dict
) -> list[Dataset]:
    """Axial recon with pairs of slices averaged (half the slices, twice as thick)."""
    n_thick = vol.shape[0] // 2
    thick_vol = vol[: 2 * n_thick].reshape(n_thick, 2, *vol.shape[1:]).mean(axis=1)
    thick_origin = np.asarray(origin, dtype=float) + np.array([0.0, 0.0, sp[0] / 2])
    return ct_series_datasets(
        thick_vol, (2 * sp[0], sp[1], sp[2]), rng=rng, origin=thick_origin, series_number=3,
        series_description=f"THORAX {2 * sp[0]:.1f} B30f MEDIASTINUM", **common,
    )


def _localizers(rng: np.random.Generator, vol: np.ndarray, sp: tuple[float, ...], common: dict) -> list[Dataset]:
    """One LOCALIZER series: an AP (coronal) and a lateral (sagittal) projection."""
    locs = []
    loc_uid = make_uid(rng)
    for k, (img, orient) in enumerate(_localizer_images(vol, sp)):
        col_sp = sp[2] if orient == "coronal" else sp[1]
        ds = ct_series_datasets(
            img, (1.0, col_sp, col_sp), rng=rng, orientation=orient, series_uid=loc_uid, series_number=1,
            series_description="TOPOGRAM 0.6 T20s", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
            rescale_intercept=0.0, instance_order="feet_first", **common,
        )[0]
        ds.InstanceNumber = k + 1
        locs.append(ds)
    return locs


def _study(
    rng: np.random.Generator, j: int, spec: Mapping[str, Any], seed: int
) -> tuple[dict[str, Any], list[tuple[Dataset, dict]]]:
    """Study ``j``'s manifest entry, and its datasets each with the manifest series it belongs to."""
    vol = np.asarray(spec["volume"])
    sp = tuple(float(v) for v in spec["spacing"])
    origin = spec.get("origin")
    origin = default_origin(vol.shape, sp) if origin is None else tuple(float(v) for v in origin)
    pid = f"PHX{seed}-{j:03d}"
    pname = f"PHANTOM^{spec[Columns.CASE_ID]}"
    study_uid, frame_uid = make_uid(rng), make_uid(rng)
    common = dict(patient_id=pid, patient_name=pname, study_uid=study_uid, frame_of_reference_uid=frame_uid)
    entry: dict[str, Any] = {
        Columns.CASE_ID: spec[Columns.CASE_ID],
        Columns.LABEL: int(spec.get(Columns.LABEL, -1)),
        "involvement": float(spec.get("involvement", float("nan"))),
        "patient_id": pid,
        "study_uid": study_uid,
        "series": {},
    }
    axial = ct_series_datasets(vol, sp, rng=rng, origin=origin, series_number=2, **common)
    entry["series_uid"] = str(axial[0].SeriesInstanceUID)
    entry["n_slices"] = len(axial)
    thick = _thick_recon(rng, vol, sp, origin, common)
    locs = _localizers(rng, vol, sp, common)
    sr = dose_report_dataset(rng=rng, patient_id=pid, patient_name=pname, study_uid=study_uid)
    corrupt = ct_series_datasets(vol[vol.shape[0] // 2 : vol.shape[0] // 2 + 1], sp, rng=rng, series_number=99,
                                 series_description="BROKEN", **common)[0]
    pending = []
    for kind, datasets in (("axial", axial), ("thick", thick), ("localizer", locs), ("dose_sr", [sr]),
                           ("corrupt", [corrupt])):
        series = {"kind": kind, "n_files": len(datasets), "files": []}
        entry["series"][str(datasets[0].SeriesInstanceUID)] = series
        pending.extend((ds, series) for ds in datasets)
    return entry, pending


def _scatter(rng: np.random.Generator, pending: list[tuple[Dataset, dict]], leaves: list[Path], root: Path) -> None:
    """Save every dataset into a random leaf, shuffled numbering, some with a ``.dcm`` suffix; cut corrupt ones."""
    order = rng.permutation(len(pending))
    numbers = rng.choice(np.arange(1, min(10 * len(pending) + 1000, 999_990)), size=len(pending), replace=False)
    for pos, idx in enumerate(order):
        ds, series = pending[idx]
        leaf = leaves[int(rng.integers(len(leaves)))]
        name = f"IM{int(numbers[pos]):06d}" + (".dcm" if rng.random() < 0.25 else "")
        path = save_dataset(ds, leaf / name)
        series["files"].append(path.relative_to(root).as_posix())
        if series["kind"] == "corrupt":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) - len(data) // 3])  # cut inside the pixel data


def _write_junk(
    rng: np.random.Generator, export: Path, leaves: list[Path], manifest: list[dict[str, Any]], root: Path
) -> None:
    """DICOMDIR, README.txt, .DS_Store files, an empty file, a file cut in its meta and one of noise."""
    save_dataset(dicomdir_dataset(rng=rng), export / "DICOMDIR")
    (export / "README.txt").write_text("Exported by a synthetic PACS (ctmil phantom). Not patient data.\n")
    for folder in (export, leaves[0]):
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + rng.bytes(64))
    (leaves[-1] / "IM000000").write_bytes(b"")
    header_cut = leaves[int(rng.integers(len(leaves)))] / "IM999999.dcm"
    sample = next(p for s in manifest[0]["series"].values() if s["kind"] == "axial" for p in s["files"])
    header_cut.write_bytes((root / sample).read_bytes()[:300])  # preamble and part of the file meta only
    garbage = leaves[int(rng.integers(len(leaves)))] / "IM999998"
    garbage.write_bytes(bytes(128) + b"DICM" + rng.bytes(512))  # DICOM magic, then noise


def write_export_tree(
    out_dir: str | os.PathLike,
    cases: int | Sequence[Mapping[str, Any]] = 3,
    seed: int = 0,
    *,
    shape: Sequence[int] = (24, 64, 64),
    spacing: Sequence[float] = (10.0, 5.4, 5.4),
    severe_fraction: float = 0.25,
) -> list[dict[str, Any]]:
    """Write a messy hospital DICOM export under ``out_dir/EXPORT`` for series-discovery tests.

    ``cases`` is a number of phantoms to draw (``shape``/``spacing`` used, labels as :func:`assign_labels`) or a
    sequence of mappings with ``case_id``, ``volume`` ``(S, H, W)`` HU, ``spacing`` and optional ``label``,
    ``involvement``, ``origin``. Per study (one patient each): the axial CT series (the one to pick), a thick-slice
    axial recon with half the slices, a LOCALIZER series (an AP and a lateral projection, coronal / sagittal
    orientation), and a dose-report SR without pixel data. All files of all studies are spread at random over
    nested folders ``EXPORT/<8 chars>/<8 chars>/IM######``, about a quarter with a ``.dcm`` suffix. Junk: an empty
    ``EXPORT/DICOMDIR`` (a DICOM file without pixel data), ``EXPORT/README.txt``, ``.DS_Store`` files, a zero-byte
    file ``IM000000``, ``IM999999.dcm`` cut inside its file meta (pydicom reads it leniently as a dataset without
    any attribute), ``IM999998`` (``DICM`` magic then noise) and, per study, a one-slice series ``BROKEN`` cut
    inside its pixel data (header readable, ``pixel_array`` raises).

    Returns:
        one dict per study: ``case_id, label, involvement, patient_id, study_uid, series_uid`` (the axial series
        discovery must pick), ``n_slices`` and ``series``, a dict ``series_uid -> {"kind", "n_files", "files"}``
        with kinds ``axial``, ``thick``, ``localizer``, ``dose_sr``, ``corrupt`` and paths relative to ``out_dir``.
    """
    check_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xE7]))
    if isinstance(cases, (int, np.integer)) and not isinstance(cases, bool):
        specs = _draw_specs(rng, cases, shape, spacing, severe_fraction)
    else:
        specs = _given_specs(cases)
    root = Path(out_dir)
    export = root / "EXPORT"
    export.mkdir(parents=True, exist_ok=True)
    leaves = _make_leaves(rng, export)
    manifest: list[dict[str, Any]] = []
    pending: list[tuple[Dataset, dict]] = []  # (dataset, its manifest series)
    for j, spec in enumerate(specs):
        entry, datasets = _study(rng, j, spec, seed)
        manifest.append(entry)
        pending.extend(datasets)
    _scatter(rng, pending, leaves, root)
    _write_junk(rng, export, leaves, manifest, root)
    logger.info("wrote an export tree with %d studies under %s", len(manifest), export)
    return manifest
