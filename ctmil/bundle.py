"""The composition root: the MONAI bundle's configs, where they live, and the few functions they call.

Every setting of a run is in the bundle's ``ConfigParser`` configs (``configs/train.json`` and the files
merged over it); ``ctmil train``, ``ctmil cv``, ``ctmil demo`` and ``python -m monai.bundle run`` all build
their trainer from them through :func:`build_workflow`. The configs ship inside the package
(``ctmil/configs``, the bundle's ``configs`` folder), so an installed ctmil finds them without a checkout.

Functions called from the configs: :func:`bag_table` (datalist or CT inputs → preprocessed bag table),
:func:`split_cases` (patient-grouped stratified hold-out split), :func:`bag_dataset`, :func:`virtual_slots`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ctmil.data.bag_settings import check_bag_preprocessing
from ctmil.data.bags import BagDataset
from ctmil.stats.folds import stratified_group_folds
from ctmil.words import plural
from ctmil.data.preprocess import bag_datalist, preprocess_cases
from ctmil.transforms import preprocessing_settings
from ctmil.io.discovery import discover_cases, parse_label, read_table
from ctmil.keys import Columns

__all__ = [
    "bag_dataset",
    "bag_table",
    "build_workflow",
    "check_override_ids",
    "config_dir",
    "config_files",
    "load_bag_datalist",
    "read_labels",
    "split_cases",
]

logger = logging.getLogger(__name__)
PathLike = "str | os.PathLike[str]"
BAG_COLUMNS = [Columns.CASE_ID, "bag", Columns.LABEL, "patient"]


# ------------------------------------------------------------------------------------------------ configs
def config_dir() -> Path:
    """The packaged bundle configs (``metadata.json``, ``train.json``, ``cv.json``, ...)."""
    return Path(str(resources.files("ctmil") / "configs"))


def config_files(*names: str) -> list[str]:
    """Absolute paths of packaged config files, e.g. ``config_files("train.json", "cv.json")``."""
    paths = [config_dir() / n for n in names]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"packaged config {p.name} not found in {config_dir()}")
    return [str(p) for p in paths]


class _NoLoggingNotice(logging.Filter):
    """Drop MONAI's notice that a workflow leaves logging alone (ctmil's entry points configure logging)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Logging file is set to False")


def build_workflow(files: Sequence[str | os.PathLike], overrides: Mapping[str, Any] | None = None,
                   workflow_type: str = "train", properties: Mapping[str, Any] | None = None):
    """A MONAI ``ConfigWorkflow`` over ``files`` (merged in order) with ``overrides`` of its ids, initialised.

    Plain names are packaged configs (``"train.json"``); paths are used as they are. Override values may be
    Python objects. ``properties`` are set by MONAI's bundle property names through the workflow's own setters
    (``{"train_dataset": fold_bags, "val_dataset": None}``): how a driver hands the workflow objects without naming
    where the configs keep them. This is exactly what ``python -m monai.bundle run`` builds, so every entry point
    trains the same way. Logging is left as the caller configured it (the bundle's ``logging.conf`` is for
    ``python -m monai.bundle run``; it would send ctmil's logs to stdout).

    Raises:
        ValueError: an override id the configs do not have, or a name that is not a property of the workflow.
    """
    from monai.bundle import ConfigWorkflow

    notice = logging.getLogger("monai.bundle.workflows")
    if not any(isinstance(f, _NoLoggingNotice) for f in notice.filters):
        notice.addFilter(_NoLoggingNotice())

    paths = config_paths(files)
    check_override_ids(paths, overrides or {})
    workflow = ConfigWorkflow(config_file=paths, meta_file=config_files("metadata.json")[0], logging_file=False,
                              workflow_type=workflow_type, **dict(overrides or {}))
    for name, value in dict(properties or {}).items():
        if name not in (workflow.properties or {}):
            raise ValueError(f"{name!r} is not a property of the {workflow_type} workflow (they are: {', '.join(sorted(workflow.properties))})")
        setattr(workflow, name, value)  # MONAI's setter writes the config item the property names
    workflow.initialize()
    return workflow


def config_paths(files: Sequence[str | os.PathLike]) -> list[str]:
    """Config files as paths: plain names are the bundle's packaged configs (``"train.json"``), paths stay."""
    return [str(f) if os.sep in str(f) or Path(f).is_file() else config_files(str(f))[0] for f in files]


#: Config ids that were renamed, old → new, for a one-line hint when an old one is given. "preprocessing" is the
#: infer workflow's ``Compose`` (MONAI's property name); the settings it is built from are ``preprocessing_args``
#: in every config.
RENAMED_IDS = {"preprocessing": "preprocessing_args"}


def check_override_ids(files: Sequence[str], overrides: Mapping[str, Any]) -> None:
    """Refuse overrides whose id is not in the merged configs: a misspelt ``max_epoch`` would silently be a new key.

    The parent of every id must exist; the last part must exist too, unless the parent is a component (a dict with
    ``_target_``), whose constructor arguments may be added (``network_def#feature_dim``).

    Raises:
        ValueError: one line naming the first unknown id.
    """
    from monai.bundle import ConfigParser

    config = ConfigParser.load_config_files(list(files))
    for key in overrides:
        node: Any = config
        parts = str(key).split("#")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            index = int(part) if isinstance(node, list) and part.lstrip("-").isdigit() else part
            known = (isinstance(node, dict) and index in node) or (isinstance(node, list) and isinstance(index, int) and -len(node) <= index < len(node))
            if not known:
                if last and isinstance(node, dict) and "_target_" in node:
                    break
                renamed = RENAMED_IDS.get(parts[0]) if depth == 0 else None
                hint = f" (since bundle 0.3.0 it is {'#'.join([renamed, *parts[1:]])!r})" if renamed else ""
                raise ValueError(f"unknown config id {key!r}: {'#'.join(parts[:depth + 1])!r} is not in {[Path(f).name for f in files]}{hint}")
            node = node[index]


# ------------------------------------------------------------------------------------------------ data
def operating_point_args(parser) -> dict:
    """The arguments the deep runs' operating-point handler is built with (``train#operating_point`` of a run's MONAI
    ``ConfigParser``), as :func:`ctmil.stats.quantitative.predict_fold` takes them, so that ``Q`` learns its point as
    the deep settings do. Read here, where configs become objects, so no driver spells a ``#``-id."""
    names = {"calibration_method": "calibration", "rule": "rule", "target": "target", "fallback_threshold": "fallback_threshold"}
    return {k: parser.get_parsed_content(f"train#operating_point#{v}") for k, v in names.items()}


def read_labels(labels: "str | os.PathLike[str] | Mapping[str, float] | None") -> dict[str, float]:
    """Labels by case id (or StudyInstanceUID) from a mapping or a CSV with ``label`` and ``case_id``/``study_uid``.

    The CSV is read as text (:func:`ctmil.io.discovery.read_table`: ``0012`` stays ``0012``, ``NA`` is an id);
    labels are 0/1, blank or ``NA`` for unlabelled (:func:`~ctmil.io.discovery.parse_label`).

    Raises:
        ValueError: one line, for a CSV without the columns or with a label other than 0/1/blank.
    """
    if labels is None:
        return {}
    if isinstance(labels, Mapping):
        return {str(k): float(v) for k, v in labels.items()}
    table = read_table(labels)
    keys = [c for c in (Columns.CASE_ID, "study_uid") if c in table.columns]
    if Columns.LABEL not in table.columns or not keys:
        raise ValueError(f"{labels}: a labels CSV needs a 'label' column and a 'case_id' or 'study_uid' column.")
    out: dict[str, float] = {}
    for key in keys:
        for k, text in zip(table[key], table[Columns.LABEL]):
            try:
                value = parse_label(text)
            except ValueError as err:
                raise ValueError(f"{labels}: case {k!r}: {err}") from None
            if k != "" and value is not None:
                out[k] = value
    return out


def load_bag_datalist(datalist: "str | os.PathLike[str] | pd.DataFrame") -> pd.DataFrame:
    """A datalist of bags (``case_id, bag, label[, patient]``) → a frame with exactly :data:`BAG_COLUMNS`.

    Relative ``bag`` paths are resolved against the CSV's folder; rows without a 0/1 label are dropped with a
    warning; ``patient`` defaults to ``case_id``.
    """
    if isinstance(datalist, pd.DataFrame):
        df, root = datalist.copy(), Path.cwd()
    else:
        df, root = pd.read_csv(datalist, dtype=str, keep_default_na=False), Path(datalist).resolve().parent
    missing = [c for c in (Columns.CASE_ID, "bag", Columns.LABEL) if c not in df.columns]
    if missing:
        raise ValueError(f"datalist is missing columns {missing}; it needs case_id, bag, label (and optional patient).")
    df[Columns.CASE_ID] = df[Columns.CASE_ID].astype(str)
    if df[Columns.CASE_ID].duplicated().any():
        raise ValueError(f"duplicate case ids in the datalist, e.g. {df.loc[df[Columns.CASE_ID].duplicated(), Columns.CASE_ID].tolist()[:5]}.")
    label = pd.to_numeric(df[Columns.LABEL], errors="coerce")
    known = label.isin([0, 1])
    if not known.all():
        logger.warning("datalist: %d case(s) without a 0/1 label are left out.", int((~known).sum()))
    df = df.loc[known].copy()
    df[Columns.LABEL] = label[known].astype(int)
    patient = df["patient"].astype(str) if "patient" in df.columns else df[Columns.CASE_ID]
    df["patient"] = [p if p else c for p, c in zip(patient, df[Columns.CASE_ID])]
    df["bag"] = [str(p if Path(p).is_absolute() else (root / p)) for p in df["bag"].astype(str)]
    return df[BAG_COLUMNS].reset_index(drop=True)


def _is_bag_datalist(path: Any) -> bool:
    return isinstance(path, (str, os.PathLike)) and str(path).endswith(".csv") and Path(path).is_file() and \
        "bag" in pd.read_csv(path, nrows=0).columns


def bag_table(
    datalist: "str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | pd.DataFrame",
    cache_dir: "str | os.PathLike[str]",
    preprocessing: Mapping[str, Any] | None = None,
    labels: "str | os.PathLike[str] | Mapping[str, float] | None" = None,
    progress: bool = False,
) -> pd.DataFrame:
    """The labelled bags of a run (:data:`BAG_COLUMNS`) from a bag datalist, or from CT inputs preprocessed first.

    CT inputs (a datalist of CT files, export folders, NIfTI files) are preprocessed into ``cache_dir`` with
    ``preprocessing`` (keyword arguments of :func:`ctmil.transforms.preprocessing_transforms`); bags whose
    cache key matches are reused, failed cases are left out with a warning (``cache_dir/manifest.csv`` says why).
    Under ``torch.distributed`` rank 0 preprocesses while the others wait.

    Raises:
        ValueError: no usable labelled case.
    """
    if isinstance(datalist, pd.DataFrame) or _is_bag_datalist(datalist):
        table = load_bag_datalist(datalist)
        check_bag_preprocessing(table["bag"], preprocessing)
    else:
        table = _preprocessed(datalist, cache_dir, preprocessing, labels, progress)
    if table.empty:
        raise ValueError(f"no usable labelled case in {datalist}.")
    return table


def _preprocessed(datalist, cache_dir, preprocessing, labels, progress) -> pd.DataFrame:
    inputs = [datalist] if isinstance(datalist, (str, os.PathLike)) else list(datalist)
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(preprocessing or {}).items()}
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or torch.distributed.get_rank() == 0:  # one writer per cache folder
        cases = discover_cases(inputs, labels=read_labels(labels), min_slices=preprocessing_settings(**settings)["min_slices"])
        preprocess_cases(cases, cache_dir, settings=settings, progress=progress)
    if distributed:
        torch.distributed.barrier()
    manifest = pd.read_csv(Path(cache_dir) / "manifest.csv", dtype=str, keep_default_na=False)
    for row in manifest[manifest[Columns.STATUS] == "failed"].itertuples():
        logger.warning("case %s left out: %s", row.case_id, row.error)
    return load_bag_datalist(bag_datalist(manifest.assign(label=pd.to_numeric(manifest[Columns.LABEL], errors="coerce"))))


def split_cases(cases: pd.DataFrame, val_fraction: float = 0.2, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, validation)`` rows of a bag table: a stratified split that keeps each patient's cases together.

    ``val_fraction`` 0 puts every case in training; otherwise the validation part is one of
    ``round(1 / val_fraction)`` folds of :func:`ctmil.stats.folds.stratified_group_folds` (0.2 → one of five).
    A validation part with one class only is a warning: its AUC is undefined.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}.")
    if val_fraction == 0.0:
        return cases.reset_index(drop=True), cases.iloc[:0]
    folds = stratified_group_folds(cases[Columns.LABEL].tolist(), cases["patient"].tolist(), max(2, round(1.0 / val_fraction)), int(seed))
    train, val = cases[folds != 0].reset_index(drop=True), cases[folds == 0].reset_index(drop=True)
    if len(val) and val[Columns.LABEL].nunique() < 2:
        logger.warning("the validation split (%s) holds only one class: its AUC is undefined (nan) every epoch and "
                       "selects nothing; the model of the last epoch is kept. Give more cases of each class, or "
                       "--val-fraction 0.", plural(len(val), "case"))
    return train, val


def bag_dataset(table: pd.DataFrame | None) -> BagDataset | None:
    """A :class:`BagDataset` of a bag table's rows (``None`` for no rows: no validation set)."""
    if table is None or len(table) == 0:
        return None
    return BagDataset(table["bag"].tolist(), labels=table[Columns.LABEL].tolist(), case_ids=table[Columns.CASE_ID].tolist())
