"""Batch preprocessing: cases → one bag file per case + a manifest, cached and atomic.

A case that cannot be read gets a one-line reason in the manifest and the others still complete; what a user
should know about a usable case (slices dropped, gaps, inferred series grouping) goes to its ``warning``.
Bag file names come from :func:`ctmil.io.paths.safe_case_name` (never outside ``out_dir``, one per id). Bags are
written to a temporary name and renamed, so a bag file on disk is always whole. A bag is reused when its
recorded cache key (preprocessing settings + ctmil version + the input files' size and mtime) matches.
Quality control (:mod:`ctmil.data.qc`): each usable case's measures and montage go to ``qc/``, cohort outliers
are flagged in the manifest's ``qc_flags``, and ``qc.html`` shows them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch
from monai.data import PersistentDataset

from ctmil import __version__
from ctmil.data.qc import QC_COLUMNS, crop_shares, flag_outliers, read_case_qc, run_traced, write_case_qc, write_qc_report
from ctmil.transforms.compose import PREPROCESSING_REVISION, preprocessing_settings, preprocessing_transforms
from ctmil.io.atomic import atomic_torch_save, atomic_write_csv  # noqa: F401  (the writers' old home: still importable here)
from ctmil.io.dicom_series import DicomError
from ctmil.io.paths import inside, safe_case_name
from ctmil.io.readers import CaseError
from ctmil.transforms.density import density_vector
from ctmil.keys import Columns

logger = logging.getLogger(__name__)
MANIFEST_COLUMNS = [
    Columns.CASE_ID, Columns.LABEL, "patient", Columns.STATUS, "error", "warning", "source", "input_kind", "series", "n_slices",
    "n_slices_kept", "K", "bag_path", *QC_COLUMNS,
]


def source_signature(image) -> list:
    """Size and mtime of the input files: part of the cache key, so edited inputs are re-read."""
    files = image if isinstance(image, (list, tuple)) else [image]
    sig = []
    for f in files:
        p = Path(getattr(f, "path", f))  # a path, or a scanned DICOM header
        paths = sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p]
        sig.extend((str(q), q.stat().st_size, int(q.stat().st_mtime_ns)) for q in paths)
    return sig


def cache_key(case: dict, settings: dict) -> str:
    """Hash of what determines a bag: the effective settings (given ones over the defaults, so a changed default
    changes the key), the ctmil version and preprocessing revision, the input files and the label."""
    payload = {"settings": preprocessing_settings(**settings), "version": __version__, "revision": PREPROCESSING_REVISION,
               "source": source_signature(case["image"]), Columns.LABEL: case.get(Columns.LABEL)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def bag_path_for(bag_dir: str | os.PathLike, case_id: str) -> Path:
    """``bag_dir/<safe name>.pt`` for ``case_id``; inside ``bag_dir`` whatever the id (checked)."""
    path = Path(bag_dir) / f"{safe_case_name(case_id)}.pt"
    inside(path, bag_dir)
    return path


def preprocess_case(case: dict, transform, settings: dict, bag_dir: Path, qc_dir: Path | None = None, montages: bool = True) -> dict:
    """Preprocess one case into ``bag_dir/<safe name>.pt``; returns its manifest row (never raises for data problems).

    With ``qc_dir`` the case's QC measures (and with ``montages`` its montage) go there (:mod:`ctmil.data.qc`); a
    cached bag whose QC record is missing or stale is made again, from one run of the chain as always.
    """
    row = {c: "" for c in MANIFEST_COLUMNS}
    row.update(case_id=case[Columns.CASE_ID], label=label_text(case.get(Columns.LABEL)), patient=case.get("patient", case[Columns.CASE_ID]),
               source=case.get("source", ""), series=case.get("series", ""), warning=case.get("warning", ""))
    if case.get("error") or case.get("image") is None:
        row.update(status="failed", error=case.get("error") or "no input")
        return row
    bag_path = bag_path_for(bag_dir, case[Columns.CASE_ID])
    try:
        key = cache_key(case, settings)
        if bag_path.exists():
            old = torch.load(bag_path, weights_only=True)
            qc = read_case_qc(qc_dir, case[Columns.CASE_ID], key, montages) if qc_dir is not None else {}
            if old.get("meta", {}).get("cache_key") == key and qc is not None:
                return _fill_row(row, old, bag_path, "cached", qc)
        item = {"image": case["image"], Columns.CASE_ID: case[Columns.CASE_ID], Columns.LABEL: case.get(Columns.LABEL)}
        bag, trace = run_traced(transform, item) if qc_dir is not None else (transform(item), None)
        if trace is not None:  # the crop's share of the body: QC and the CV's shortcut check read it from the bag
            bag["meta"]["crop"] = crop_shares(bag, trace)
        bag["meta"]["cache_key"] = key
        bag["meta"]["preprocessing"] = {**json.loads(json.dumps(preprocessing_settings(**settings), default=str)),
                                        "revision": PREPROCESSING_REVISION}  # how it was made, beside the hash
        bag["meta"]["source"] = row["source"]  # as discovery shows it (relative to the input unless keep_paths)
        if isinstance(bag["meta"].get("series"), dict):  # the slices' file paths serve DICOM results, not a stored bag
            bag["meta"]["series"].pop("slice_files", None)
        atomic_torch_save(bag, bag_path)
        return _fill_row(row, bag, bag_path, "ok", _case_qc(bag, trace, qc_dir, key, montages))
    except Exception as raised:  # one case must never stop the batch
        row.update(status="failed", error=case_error_text(raised, case[Columns.CASE_ID]))
    return row


def _case_qc(bag: dict, trace, qc_dir: Path | None, key: str, montages: bool) -> dict:
    """The case's QC fields; a QC failure is logged and leaves them blank (the bag is good)."""
    if qc_dir is None:
        return {}
    try:
        return write_case_qc(bag, trace, qc_dir, key, montages)
    except Exception as raised:
        logger.warning("case %s: quality control failed: %s", bag.get(Columns.CASE_ID), case_error_text(raised, bag.get(Columns.CASE_ID, "")))
        return {}


def case_error_text(raised: BaseException, case_id: str = "") -> str:
    """The one-line manifest reason for an exception raised while processing one case.

    Data problems (``CaseError``, ``DicomError``, ``ValueError``, ``OSError``) give their message; anything
    else is labelled an internal error and its traceback goes to the debug log.
    """
    err = root_cause(raised)
    text = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, (CaseError, DicomError, ValueError, OSError)):
        logger.debug("case %s failed", case_id, exc_info=raised)
        text = f"internal error ({type(err).__name__}): {text}"
    return text


def label_text(label) -> "int | float | str":
    """A label as users write it: ``1``, not ``1.0`` (labels are read as numbers); empty when there is none."""
    if label is None or (isinstance(label, float) and label != label):
        return ""
    value = float(label)
    return int(value) if value.is_integer() else value


def join_warnings(given: str, meta: Mapping) -> str:
    """One ``"; "``-separated warning text: ``given`` (discovery's), the series reader's and the preprocessing's
    (``meta["warnings"]``, e.g. a lung mask kept with ``allow_implausible_lungs``), each once."""
    series = meta.get("series") if isinstance(meta.get("series"), Mapping) else {}
    warnings = [w for w in (given or "").split("; ") if w] + list(series.get("warnings") or []) + list(meta.get("warnings") or [])
    return "; ".join(dict.fromkeys(warnings))


def root_cause(err: BaseException) -> BaseException:
    """The original exception behind MONAI's ``RuntimeError("applying transform ...")`` wrappers."""
    while isinstance(err, RuntimeError) and err.__cause__ is not None and str(err).startswith("applying transform"):
        err = err.__cause__
    return err


def content_fingerprint(bag: Mapping) -> tuple | None:
    """What a study looks like after preprocessing: its grid, the slices kept and its lung-density features rounded
    to 1e-4. Two inputs with the same fingerprint are one study given twice (e.g. as DICOM and as NIfTI); ``None``
    for a bag that records no density."""
    meta = bag.get("meta") or {}
    if not meta.get("density"):
        return None
    values = tuple(round(float(v), 4) for v in density_vector(meta["density"]) if v == v)  # nan (no volume) left out
    return (tuple(meta.get("spatial_shape") or ()), int(bag["kept_slices"].numel()), values)


def report_same_studies(manifest: pd.DataFrame, fingerprints: Mapping[str, tuple | None]) -> pd.DataFrame:
    """Cases whose inputs look like one study (:func:`content_fingerprint`) get a warning naming the others, and one
    log line each group; returns ``manifest`` with those warnings joined to its ``warning`` column."""
    groups: dict = {}
    for case_id, fingerprint in fingerprints.items():
        if fingerprint is not None:
            groups.setdefault(fingerprint, []).append(case_id)
    manifest = manifest.copy()
    kinds = dict(zip(manifest[Columns.CASE_ID].astype(str), manifest["input_kind"].astype(str)))
    for ids in (g for g in groups.values() if len(g) > 1):
        named = ", ".join(f"{i} ({kinds.get(i, '?')})" for i in ids)
        times = "twice" if len(ids) == 2 else f"{len(ids)} times"
        logger.warning("%s look like one study given %s (the same image after preprocessing): keep one", named, times)
        for case_id in ids:
            others = ", ".join(i for i in ids if i != case_id)
            at = manifest[Columns.CASE_ID].astype(str) == case_id
            manifest.loc[at, "warning"] = [join_warnings(w if isinstance(w, str) else "", {"warnings": [f"the same study as {others}"]})
                                           for w in manifest.loc[at, "warning"]]
    return manifest


def _fill_row(row: dict, bag: dict, bag_path: Path, status: str, qc: dict | None = None) -> dict:
    meta = bag["meta"]
    row.update(status=status, error="", warning=join_warnings(row["warning"], meta), input_kind=meta.get("input_kind", ""),
               n_slices=meta["spatial_shape"][0],
               n_slices_kept=int(bag["kept_slices"].numel()), K=int(bag["patches"].shape[0]), bag_path=str(bag_path.resolve()))
    row.update(qc or {})
    row["_fingerprint"] = content_fingerprint(bag)  # not a manifest column: report_same_studies reads it
    return row


def preprocess_cases(cases: list[dict], out_dir: str | os.PathLike, settings: dict | None = None, progress: bool = True,
                     montages: bool = True) -> pd.DataFrame:
    """Write ``out_dir/bags/<safe name>.pt`` per case, ``out_dir/manifest.csv`` and ``out_dir/datalist.csv``
    (the labelled, usable cases in the form ``ctmil cv`` reads), and quality control: ``out_dir/qc/`` (per-case
    measures and montages), outlier flags in the manifest, ``out_dir/qc.html`` (:mod:`ctmil.data.qc`); return the
    manifest.

    Args:
        cases: from :func:`ctmil.io.discovery.discover_cases` (their ``source`` is written as given: discovery
            makes it relative to the input unless asked to keep paths).
        settings: keyword arguments of :func:`ctmil.transforms.preprocessing_transforms`.
        montages: draw each usable case's QC montage (``qc/<safe name>.png``, shown in ``qc.html``).

    Raises:
        ValueError: one line, before any case is processed: duplicate case ids, or an ``out_dir`` that cannot
            be written.
    """
    from tqdm.auto import tqdm

    settings = dict(settings or {})
    ids = [str(c[Columns.CASE_ID]) for c in cases]
    if len(ids) != len(set(ids)):
        raise ValueError("duplicate case ids: " + ", ".join(sorted({i for i in ids if ids.count(i) > 1})[:5]))
    out_dir = Path(out_dir)
    check_writable(out_dir / "bags")
    transform = preprocessing_transforms(**settings)
    rows = []
    bar = tqdm(cases, desc="preprocessing", unit="case", disable=not progress)
    for case in bar:
        bar.set_postfix_str(case[Columns.CASE_ID])
        row = preprocess_case(case, transform, settings, out_dir / "bags", out_dir / "qc", montages)
        if row[Columns.STATUS] == "failed":
            logger.warning("case %s failed: %s", row[Columns.CASE_ID], row["error"])
        rows.append(row)
    manifest = flag_outliers(pd.DataFrame(rows, columns=MANIFEST_COLUMNS))
    manifest = report_same_studies(manifest, {str(r[Columns.CASE_ID]): r.get("_fingerprint") for r in rows if r[Columns.STATUS] != "failed"})
    atomic_write_csv(manifest, out_dir / "manifest.csv")
    atomic_write_csv(bag_datalist(manifest, relative_to=out_dir), out_dir / "datalist.csv")
    write_qc_report(manifest, out_dir, montages)
    for row in manifest[manifest["qc_flags"] != ""].itertuples():
        logger.warning("case %s flagged by quality control: %s", row.case_id, row.qc_flags)
    return manifest


def check_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` and write a probe file there, before any work is done.

    Raises:
        ValueError: one line, when the folder cannot be created or written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"cannot write to {folder}: {err.strerror or type(err).__name__}") from None


def bag_datalist(manifest: pd.DataFrame, relative_to: str | os.PathLike | None = None) -> pd.DataFrame:
    """The training datalist (``case_id, bag, label, patient``) of the preprocessed cases that have a label.

    With ``relative_to`` (the datalist's folder) bag paths are written relative to it, so the folder can move.
    """
    ok = manifest[manifest[Columns.STATUS].isin(["ok", "cached"]) & pd.to_numeric(manifest[Columns.LABEL], errors="coerce").notna()]
    bags = [str(Path(p).resolve()) for p in ok["bag_path"]]
    if relative_to is not None:
        bags = [os.path.relpath(p, Path(relative_to).resolve()) for p in bags]
    return pd.DataFrame({Columns.CASE_ID: ok[Columns.CASE_ID], "bag": bags, Columns.LABEL: ok[Columns.LABEL].astype(float).astype(int), "patient": ok["patient"]})


def cached_bag_dataset(cases: list[dict], cache_dir: str | os.PathLike, settings: dict | None = None) -> PersistentDataset:
    """A MONAI ``PersistentDataset`` yielding bags; decoding and lung masking run once per case and settings.

    The cache key hashes the input item (paths, label, the input files' size and mtime) together with the
    effective preprocessing settings (defaults filled in, as :func:`cache_key`) and the ctmil version, so changing
    any transform setting, or a default, re-computes the bags.
    """
    settings = dict(settings or {})
    effective = preprocessing_settings(**settings)
    items = [
        {"image": c["image"], Columns.CASE_ID: c[Columns.CASE_ID], Columns.LABEL: c.get(Columns.LABEL), "signature": source_signature(c["image"])}
        for c in cases if c.get("image") is not None and not c.get("error")
    ]

    def hash_item(item) -> bytes:
        payload = {"item": item, "settings": effective, "version": __version__, "revision": PREPROCESSING_REVISION}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest().encode()

    return PersistentDataset(items, transform=preprocessing_transforms(**settings), cache_dir=cache_dir, hash_func=hash_item)
