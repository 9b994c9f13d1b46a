"""Repeated stratified, patient-grouped k-fold cross-validation of the ablation settings (paper Sec. IV.C, IV.E).

The settings are :data:`ctmil.train.settings.SETTINGS` (paper Table IV: ``A`` MIL only, ``B`` + virtual bags, ``C`` +
self-supervision, ``D`` both), defined there once.

``C-rel`` / ``D-rel`` (paper Table VI) run beside ``A``-``D`` in one CV, on the same folds and seeds, so one
report compares all of them. ``Q`` (:mod:`ctmil.stats.quantitative`), the quantitative baseline, needs no
training workflow; it is skipped, with the reason logged, when the bags record no lung density.

Each run (setting, repeat, fold) is the bundle's train workflow (:func:`ctmil.bundle.build_workflow` over
``train.json`` + ``cv.json`` + the user's overrides) with the fold's bags, the setting's ``ssl`` and
``use_virtual_bags`` and the run's seed set as overrides: the very trainer ``ctmil train`` and
``python -m monai.bundle run`` build. Every setting of one repeat uses the same folds and, per fold, the same
seed, so settings are compared on paired runs. Predictions go through :func:`ctmil.train.engines.predict`.

Operating point: with ``cv#calibration_fraction`` > 0 each run holds back that share of its training folds
(stratified, patients kept together, seeded by the run) as inner validation cases; the run trains on the rest,
and its :class:`~ctmil.train.handlers.OperatingPointHandler` fits a calibration map and a threshold on the
held-back cases. The test fold is never used for either; its predictions carry the raw ``raw_probability`` and, at
the learnt point, the calibrated ``probability``, ``prediction`` and ``threshold``. The final model (never ``Q``) is made the same
way. ``Q`` holds back the same cases (:func:`_inner_cases`) and learns its point as the handler (``train#operating_point``).

Outputs (in ``out_dir``): ``config.json`` (what the run was made from), ``folds.csv``, ``predictions.csv``,
``runs/<setting>/r<R>_f<F>/predictions.csv`` (+ checkpoints while a run trains), the report of
:func:`ctmil.evaluate.report.write_report` (with the crop shortcut check of the run's cases,
:mod:`ctmil.evaluate.shortcut`, whose warnings are also logged before training), and the final model
(``model.pt`` + ``model.json``). A re-run into the same ``out_dir`` with the same record skips finished runs and
resumes an interrupted one from its last checkpoint; a different config or datalist is refused unless ``restart``
is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import pandas as pd
from monai.bundle import ConfigParser
from tqdm.auto import tqdm

from ctmil.bundle import bag_table, build_workflow, config_files, operating_point_args, split_cases
from ctmil.data.bags import BagDataset
from ctmil.io.atomic import atomic_write_csv
from ctmil.stats.folds import make_folds, run_seed
from ctmil.stats.operating_point import apply_operating_point
from ctmil.stats.quantitative import QUANTITATIVE, density_features, predict_fold
from ctmil.evaluate.report import read_predictions, write_report
from ctmil.evaluate.report_tables import describe
from ctmil.train.settings import SETTINGS
from ctmil.evaluate.shortcut import logged_shortcut_check
from ctmil.train.engines import predict
from ctmil.keys import Columns

__all__ = ["SETTINGS", "CVConfigError", "cv_protocol", "fused_descriptions", "run_cv"]

logger = logging.getLogger(__name__)

_FINAL_MODEL = ("all_data", "last_fold", "none")
DEFAULT_FILES = ("train.json", "cv.json")
_COLUMNS = (Columns.CASE_ID, Columns.SETTING, Columns.REPEAT, Columns.FOLD, Columns.RAW_PROBABILITY, Columns.LABEL, Columns.PROBABILITY, Columns.PREDICTION, Columns.THRESHOLD)
PathLike = Union[str, "os.PathLike[str]"]


class CVConfigError(ValueError):
    """A cross-validation that cannot start as asked (bad protocol, or an ``--out`` made from other inputs)."""


def cv_protocol(files: Sequence[PathLike] = DEFAULT_FILES, overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The ``cv`` section of the merged configs, validated: ``n_folds, n_repeats, settings, ssl_task, ...``."""
    parser = ConfigParser(ConfigParser.load_config_files([_path(f) for f in files]))
    parser.update(dict(overrides or {}))
    cv = dict(parser.get_parsed_content("cv"))
    settings = list(cv.get("settings", []))
    if not settings or any(s not in SETTINGS and s != QUANTITATIVE for s in settings):
        raise CVConfigError(f"cv#settings must be a non-empty subset of {[*SETTINGS, QUANTITATIVE]}, got {settings!r}.")
    if cv.get("ssl_task") not in ("absolute", "relative"):
        raise CVConfigError(f"cv#ssl_task must be 'absolute' or 'relative', got {cv.get('ssl_task')!r}.")
    fraction = cv.setdefault("calibration_fraction", 0.0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise CVConfigError(f"cv#calibration_fraction must be a number in [0, 1), got {fraction!r}.")
    if cv.get("final_model", "all_data") not in _FINAL_MODEL:
        raise CVConfigError(f"cv#final_model must be one of {_FINAL_MODEL}, got {cv.get('final_model')!r}.")
    for key in ("n_folds", "n_repeats"):
        if isinstance(cv.get(key), bool) or not isinstance(cv.get(key), int) or cv[key] < (2 if key == "n_folds" else 1):
            raise CVConfigError(f"cv#{key} must be an int >= {2 if key == 'n_folds' else 1}, got {cv.get(key)!r}.")
    deep = [s for s in settings if s != QUANTITATIVE]
    cv["final_setting"] = cv.get("final_setting") or (deep[-1] if deep else None)
    if cv.get("final_model", "all_data") != "none":
        if not deep or cv["final_setting"] == QUANTITATIVE:
            raise CVConfigError(f"cv#final_model {cv.get('final_model', 'all_data')!r} needs a deep setting: "
                                f"{QUANTITATIVE} has no network to keep; add one to cv#settings or set cv#final_model 'none'.")
        if cv["final_setting"] not in settings:
            raise CVConfigError(f"cv#final_setting {cv['final_setting']!r} is not among the settings {settings}.")
    return {"final_model": "all_data", "keep_checkpoints": False, **cv, "settings": settings}


def _path(f: PathLike) -> str:
    return str(f) if os.sep in str(f) or Path(f).is_file() else config_files(str(f))[0]


def _record(files, overrides, table: pd.DataFrame, protocol) -> Dict[str, Any]:
    merged = ConfigParser.load_config_files([_path(f) for f in files])
    digest = hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()
    return {"configs": json.loads(json.dumps(merged, default=str)), "overrides": json.loads(json.dumps(dict(overrides or {}), default=str)),
            "protocol": json.loads(json.dumps(protocol, default=str)), "datalist_sha256": digest, "n_cases": len(table),
            "n_positive": int(table[Columns.LABEL].sum())}


def _check_out(out: Path, record: Mapping[str, Any], restart: bool) -> None:
    path = out / "config.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != record:
            if not restart:
                raise CVConfigError(f"{out} holds a cross-validation made from another config or datalist; "
                                    "use another --out, or --restart to discard it.")
            for name in ("runs", "predictions.csv", "folds.csv", "model.pt", "model.json"):
                target = out / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))


def _inner_cases(table: pd.DataFrame, fraction: float, seed: int) -> tuple:
    """``(training rows, calibration rows)`` of a fold's training cases (``fraction`` 0: no calibration rows); the
    one split of every setting of the run, deep or ``Q``.

    Too few cases for a split with both classes on each side: every case trains, and the run keeps the fixed
    threshold (a warning says so; the report shows the fixed threshold for that run).
    """
    table = table.reset_index(drop=True)
    try:
        fit, calibration = split_cases(table, fraction, seed)
    except ValueError as err:
        fit, calibration = table, table.iloc[:0]
        logger.warning("no inner calibration split (%s): this run keeps the fixed threshold", err)
    if len(calibration) and (calibration[Columns.LABEL].nunique() < 2 or fit[Columns.LABEL].nunique() < 2):
        logger.warning("the inner calibration split of %d cases lacks a class: this run keeps the fixed threshold", len(table))
        fit, calibration = table, table.iloc[:0]
    return fit, calibration


def _subset(bags: BagDataset, index: Mapping[str, int], ids: Sequence[str]) -> Optional[BagDataset]:
    """The bags of case ``ids`` (``None`` for no ids: no validation set)."""
    return bags.subset([index[c] for c in ids]) if len(ids) else None


def _train(files, overrides: Mapping[str, Any], setting: str, ssl_task: str, train_ds: BagDataset,
           calibration_ds: Optional[BagDataset], seed: int, run_dir: Path, model_dir: Optional[Path]):
    """One run of the bundle's train workflow on ``train_ds``, its operating point learnt on ``calibration_ds``
    (the validation set of the workflow; never a test fold); returns the network, its device and the point."""
    _, use_virtual, task = SETTINGS[setting]
    ssl = "none" if task is None else (ssl_task if task == "cv" else task)
    run = {**dict(overrides), "seed": seed, "ssl": ssl, "use_virtual_bags": use_virtual, "output_dir": str(run_dir),
           "save_model": model_dir is not None, "ckpt_dir": str(model_dir or run_dir)}
    workflow = build_workflow([_path(f) for f in files], run,
                              properties={"train_dataset": train_ds, "val_dataset": calibration_ds})  # MONAI's property names
    workflow.run()
    network, device = workflow.network_def, workflow.device
    point = workflow.trainer.state.operating_point  # what the operating-point handler learnt (it records it there)
    workflow.finalize()
    return network, device, point


def _write_point(run_dir: Path, point: Mapping[str, Any], ids: Sequence[str]) -> None:
    """``operating_point.json`` of a run: the point and the ids of the cases it was fitted on (for audit)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "operating_point.json").write_text(json.dumps({**point, "calibration_cases": list(ids)}, indent=2))


def _fold_predictions(pred: pd.DataFrame, point: Mapping[str, Any], setting: str, r: int, f: int) -> pd.DataFrame:
    """The test fold's predictions (``case_id, raw_probability, label``) with ``probability`` / ``prediction`` at the run's
    learnt point."""
    pred.insert(1, Columns.SETTING, setting)
    pred.insert(2, Columns.REPEAT, r)
    pred.insert(3, Columns.FOLD, f)
    pred[Columns.LABEL] = pred[Columns.LABEL].astype(int)
    pred[Columns.PROBABILITY], pred[Columns.PREDICTION] = apply_operating_point(point, pred[Columns.RAW_PROBABILITY].to_numpy())
    pred[Columns.THRESHOLD] = point[Columns.THRESHOLD]
    return pred


def run_cv(
    datalist: "PathLike | pd.DataFrame",
    out_dir: PathLike,
    files: Sequence[PathLike] = DEFAULT_FILES,
    overrides: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
    restart: bool = False,
) -> pd.DataFrame:
    """Cross-validate the settings of ``cv#settings`` on ``datalist`` and write the report into ``out_dir``.

    Args:
        datalist: a bag datalist (``case_id, bag, label[, patient]``), or CT inputs (preprocessed into
            ``out_dir/bags`` first with the config's ``preprocessing``).
        files: config files merged in order (packaged names or paths); the ``cv`` section is the protocol.
        overrides: ``#``-id overrides of the configs (``{"max_epochs": 2, "cv#n_folds": 3}``).
        restart: discard an ``out_dir`` made from another config or datalist instead of refusing it.

    Returns:
        The out-of-fold predictions: ``case_id, setting, repeat, fold, raw_probability, label, probability, prediction, threshold``.
    """
    overrides = dict(overrides or {})
    protocol = cv_protocol(files, overrides)
    out = Path(out_dir)
    parser = ConfigParser(ConfigParser.load_config_files([_path(f) for f in files]))
    parser.update(overrides)
    table = bag_table(datalist, out / "bags", parser.get_parsed_content("preprocessing_args"), progress=progress)
    _check_out(out, _record(files, overrides, table, protocol), restart)
    seed = int(parser.get_parsed_content("seed"))
    manifest = make_folds(table, protocol["n_folds"], protocol["n_repeats"], seed)
    atomic_write_csv(manifest, out / "folds.csv")
    bags = BagDataset(table["bag"].tolist(), labels=table[Columns.LABEL].tolist(), case_ids=table[Columns.CASE_ID].tolist())
    index = {c: i for i, c in enumerate(table[Columns.CASE_ID])}
    position = {path: i for i, path in enumerate(table["bag"])}

    def load(path: str) -> dict:  # the shortcut check, Q and training share one read of each bag file
        return bags[position[path]]

    shortcut = logged_shortcut_check(table, load)
    settings, features = list(protocol["settings"]), None
    if QUANTITATIVE in settings:
        features, reason = density_features(table, load)
        if features is None:
            logger.warning("setting %s skipped: %s.", QUANTITATIVE, reason)
            if settings == [QUANTITATIVE]:
                raise CVConfigError(f"nothing to cross-validate: setting {QUANTITATIVE} skipped: {reason}.")
            settings.remove(QUANTITATIVE)
    overrides = {"progress": False, **overrides}
    jobs = [(s, r, f) for s in settings for r in range(protocol["n_repeats"]) for f in range(protocol["n_folds"])]
    final, final_setting = protocol["final_model"], protocol["final_setting"]
    last = (protocol["n_repeats"] - 1, protocol["n_folds"] - 1)
    predictions: List[pd.DataFrame] = []
    with tqdm(total=len(jobs) + (final == "all_data"), desc="cross-validation", disable=not progress) as bar:
        for setting, r, f in jobs:
            bar.set_postfix(setting=setting, repeat=r, fold=f)
            run_dir = out / "runs" / setting / f"r{r}_f{f}"
            keep = final == "last_fold" and setting == final_setting and (r, f) == last
            if (run_dir / "predictions.csv").exists() and (not keep or (out / "model.pt").exists()):
                predictions.append(read_predictions(run_dir / "predictions.csv"))
            else:
                part = manifest[manifest[Columns.REPEAT] == r]
                test = table[table[Columns.CASE_ID].isin(part.loc[part[Columns.FOLD] == f, Columns.CASE_ID])]
                fit, calibration = _inner_cases(table[~table[Columns.CASE_ID].isin(test[Columns.CASE_ID])],
                                                protocol["calibration_fraction"], run_seed(seed, r, f))
                if setting == QUANTITATIVE:
                    raw, point = predict_fold(features, fit, calibration, test, run_seed(seed, r, f), **operating_point_args(parser))
                else:
                    network, device, point = _train(
                        files, overrides, setting, protocol["ssl_task"], _subset(bags, index, fit[Columns.CASE_ID]),
                        _subset(bags, index, calibration[Columns.CASE_ID]), run_seed(seed, r, f), run_dir, out if keep else None)
                    raw = pd.DataFrame(predict(network, _subset(bags, index, test[Columns.CASE_ID]), device=device)).rename(
                        columns={"prob": Columns.RAW_PROBABILITY})
                pred = _fold_predictions(raw, point, setting, r, f)
                _write_point(run_dir, point, calibration[Columns.CASE_ID])
                atomic_write_csv(pred, run_dir / "predictions.csv")
                predictions.append(pred)
                if not protocol["keep_checkpoints"]:
                    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            bar.update(1)
        if final == "all_data":
            bar.set_postfix(setting=final_setting, repeat="-", fold="all")
            if not (out / "model.pt").exists():
                run_dir = out / "runs" / final_setting / "all_data"
                fit, calibration = _inner_cases(table, protocol["calibration_fraction"], seed)
                _train(files, overrides, final_setting, protocol["ssl_task"], _subset(bags, index, fit[Columns.CASE_ID]),
                       _subset(bags, index, calibration[Columns.CASE_ID]), seed, run_dir, out)
                if not protocol["keep_checkpoints"]:
                    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
                    if run_dir.is_dir() and not any(run_dir.iterdir()):  # the model went to out: no empty folder left
                        run_dir.rmdir()
            bar.update(1)
    all_predictions = pd.concat(predictions, ignore_index=True).reindex(columns=list(_COLUMNS))
    atomic_write_csv(all_predictions, out / "predictions.csv")
    write_report(out, all_predictions, threshold=float(parser.get_parsed_content("threshold")), shortcut=shortcut,
                 descriptions=fused_descriptions(all_predictions[Columns.SETTING].unique(), bool(parser.get("density_fusion", False))))
    return all_predictions


def fused_descriptions(settings: Sequence[str], fused: bool) -> Optional[Dict[str, str]]:
    """The reports' descriptions of the deep ``settings`` when their networks fuse the lung-density model (train.json's
    ``density_fusion``, the default: :mod:`ctmil.networks.fusion`); ``None`` (the built-in ones) otherwise."""
    if not fused:
        return None
    return {str(s): f"{describe(s)}, fused with the lung-density model" for s in settings if str(s) != QUANTITATIVE}
