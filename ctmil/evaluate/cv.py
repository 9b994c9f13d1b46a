"""Repeated stratified, patient-grouped k-fold cross-validation of the ablation settings (paper Sec. IV.C, IV.E).

Settings (paper Table IV):

======  =====================  ============  ==========================
name    meaning                virtual bags  self-supervised loss
======  =====================  ============  ==========================
``A``   MIL only               no            no
``B``   MIL + augmentation     yes           no
``C``   MIL + self-supervised  no            ``ssl_task``
``D``   MIL + both             yes           ``ssl_task``
======  =====================  ============  ==========================

Every setting of one repeat uses the same folds and, per fold, the same model initialisation and data-order
seed, so settings are compared on paired runs. Folds are drawn per repeat by
:func:`stratified_group_folds` (no scikit-learn), deterministic for a given seed.

Outputs (in ``out_dir``): ``config.json``, ``folds.csv``, ``predictions.csv``, ``runs/<setting>/r<R>_f<F>/``
(``predictions.csv`` of the fold, TensorBoard events, checkpoints while training), the report files of
:func:`ctmil.evaluate.report.write_report` and the final model (``model.pt`` + ``model.json``).
A re-run with the same ``out_dir`` skips folds whose ``predictions.csv`` exists and resumes an interrupted
fold from its last checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import ctmil
from ctmil.data.bags import BagDataset
from ctmil.evaluate.report import write_report
from ctmil.train.trainer import TrainConfig, VirtualBagConfig, build_model, fit, predict

__all__ = [
    "SETTINGS",
    "load_config",
    "load_datalist",
    "make_folds",
    "run_cv",
    "run_cv_from_config",
    "stratified_group_folds",
]

logger = logging.getLogger(__name__)

#: setting -> (description, uses virtual bags, uses the SSL loss)
SETTINGS: Dict[str, Tuple[str, bool, bool]] = {
    "A": ("MIL only", False, False),
    "B": ("MIL + augmentation", True, False),
    "C": ("MIL + self-supervision", False, True),
    "D": ("MIL + both", True, True),
}
_CONFIG_SECTIONS = ("base", "seed", "cv", "network", "train", "virtual")
_FINAL_MODEL = ("all_data", "last_fold", "none")
PathLike = Union[str, "os.PathLike[str]"]


# ------------------------------------------------------------------------------------------------ datalist
def load_datalist(datalist: Union[PathLike, pd.DataFrame]) -> pd.DataFrame:
    """Read a datalist: columns ``case_id``, ``bag`` (bag file path), ``label`` (0/1), optional ``patient``.

    Relative ``bag`` paths are resolved against the CSV's folder. Rows without a 0/1 label are dropped
    (with a warning); ``patient`` defaults to ``case_id``. Returns a frame with exactly those four columns.
    """
    if isinstance(datalist, pd.DataFrame):
        df, root = datalist.copy(), Path.cwd()
    else:
        df, root = pd.read_csv(datalist, dtype={"case_id": str, "patient": str}), Path(datalist).resolve().parent
    missing = [c for c in ("case_id", "bag", "label") if c not in df.columns]
    if missing:
        raise ValueError(f"datalist is missing columns {missing}; it needs case_id, bag, label (and optional patient).")
    df["case_id"] = df["case_id"].astype(str)
    if df["case_id"].duplicated().any():
        dup = df.loc[df["case_id"].duplicated(), "case_id"].tolist()[:5]
        raise ValueError(f"duplicate case ids in the datalist, e.g. {dup}.")
    label = pd.to_numeric(df["label"], errors="coerce")
    known = label.isin([0, 1])
    if not known.all():
        logger.warning("datalist: %d case(s) without a 0/1 label are left out.", int((~known).sum()))
    df = df.loc[known].copy()
    df["label"] = label[known].astype(int)
    if "patient" not in df.columns:
        df["patient"] = df["case_id"]
    df["patient"] = df["patient"].fillna(df["case_id"]).astype(str)
    df["bag"] = [str(p if Path(p).is_absolute() else (root / p)) for p in df["bag"].astype(str)]
    return df[["case_id", "bag", "label", "patient"]].reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ folds
def stratified_group_folds(labels: Sequence[int], groups: Sequence[Any], n_folds: int, seed: int) -> np.ndarray:
    """Assign each sample a fold in ``0..n_folds-1``; all samples of a group share a fold.

    Greedy, like scikit-learn's ``StratifiedGroupKFold(shuffle=True)``: groups are visited in a seeded random
    order, larger groups first, and each goes to the fold that keeps every class's share across folds most
    even (smallest mean over classes of the std of ``fold count / class total``); ties go to the fold with
    fewer samples, then the lower index. With one sample per group, fold counts of each class differ by at most one.
    """
    labels = np.asarray(labels)
    groups = np.asarray([str(g) for g in groups])
    if labels.shape != groups.shape or labels.ndim != 1:
        raise ValueError("labels and groups must be 1-D and of the same length.")
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"n_folds must be an int >= 2, got {n_folds!r}.")
    classes, y = np.unique(labels, return_inverse=True)
    names, g = np.unique(groups, return_inverse=True)
    if names.size < n_folds:
        raise ValueError(f"{names.size} groups cannot fill {n_folds} folds.")
    counts = np.zeros((names.size, classes.size))  # (groups, classes)
    np.add.at(counts, (g, y), 1)
    totals = counts.sum(axis=0)  # (classes,)
    order = np.random.default_rng(seed).permutation(names.size)
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    fold_counts = np.zeros((n_folds, classes.size))  # (folds, classes)
    group_fold = np.empty(names.size, dtype=int)
    for grp in order:
        best_key, best = None, -1
        for f in range(n_folds):
            fold_counts[f] += counts[grp]
            key = (round(float((fold_counts / totals).std(axis=0).mean()), 12), fold_counts[f].sum(), f)
            fold_counts[f] -= counts[grp]
            if best_key is None or key < best_key:
                best_key, best = key, f
        fold_counts[best] += counts[grp]
        group_fold[grp] = best
    return group_fold[g]


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def make_folds(datalist: pd.DataFrame, n_folds: int, n_repeats: int, seed: int) -> pd.DataFrame:
    """The fold manifest: one row per (repeat, case) with ``repeat, fold, case_id, patient, label``."""
    rows = []
    for r in range(n_repeats):
        folds = stratified_group_folds(datalist["label"].tolist(), datalist["patient"].tolist(), n_folds, _seed(seed, r))
        rows.append(
            pd.DataFrame(
                {
                    "repeat": r,
                    "fold": folds,
                    "case_id": datalist["case_id"].values,
                    "patient": datalist["patient"].values,
                    "label": datalist["label"].values,
                }
            )
        )
    manifest = pd.concat(rows, ignore_index=True)
    for (r, f), part in manifest.groupby(["repeat", "fold"]):
        if part["label"].nunique() < 2:
            logger.warning("repeat %d fold %d holds only one class (%d cases).", r, f, len(part))
    return manifest


# ------------------------------------------------------------------------------------------------ config
def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _nest(overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"train.epochs": 2}`` or ``{"train::epochs": 2}`` -> ``{"train": {"epochs": 2}}`` (nested dicts kept)."""
    out: Dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).replace("::", ".").split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), Mapping):
            node[parts[-1]] = _deep_merge(node[parts[-1]], _nest(value))
        else:
            node[parts[-1]] = _nest(value) if isinstance(value, Mapping) else value
    return out


def load_config(config: Union[PathLike, Mapping[str, Any]], overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Read a CV config (JSON path or dict), merge its ``base`` chain, then ``overrides``.

    ``"base": "cv.json"`` (relative to the config file) makes a config hold only its differences from the
    base; nested sections merge key by key, lists are replaced. ``overrides`` may use dotted keys
    (``{"train.epochs": 2}``). Unknown top-level keys are an error.
    """
    if isinstance(config, Mapping):
        cfg, root = dict(config), Path.cwd()
    else:
        with open(config) as f:
            cfg = json.load(f)
        root = Path(config).resolve().parent
    seen = set()
    while "base" in cfg and cfg["base"]:
        base_path = (root / cfg["base"]).resolve()
        if base_path in seen:
            raise ValueError(f"config base chain loops at {base_path}.")
        seen.add(base_path)
        with open(base_path) as f:
            base = json.load(f)
        cfg = _deep_merge(base, {k: v for k, v in cfg.items() if k != "base"})
        root = base_path.parent
    cfg.pop("base", None)
    if overrides:
        cfg = _deep_merge(cfg, _nest(overrides))
    unknown = set(cfg) - set(_CONFIG_SECTIONS)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; known: {list(_CONFIG_SECTIONS[1:])}.")
    return cfg


# ------------------------------------------------------------------------------------------------ runs
def _train_config(setting: str, ssl_task: str, train: Mapping[str, Any], virtual: Mapping[str, Any], seed: int) -> TrainConfig:
    _, use_virtual, use_ssl = SETTINGS[setting]
    return TrainConfig.from_dict(
        train,
        ssl=ssl_task if use_ssl else "none",
        virtual=VirtualBagConfig(**virtual) if use_virtual else None,
        seed=seed,
    )


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _train_and_predict(
    setting: str,
    ssl_task: str,
    train_ds: BagDataset,
    test_ds: Optional[BagDataset],
    network: Mapping[str, Any],
    train: Mapping[str, Any],
    virtual: Mapping[str, Any],
    seed: int,
    run_dir: Path,
    device: str,
    keep_checkpoints: bool,
) -> Tuple[torch.nn.Module, Optional[pd.DataFrame]]:
    config = _train_config(setting, ssl_task, train, virtual, seed)
    model = build_model(network, seed)
    fit(model, train_ds, config, out_dir=run_dir, val_data=test_ds, device=device)
    if not keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    if test_ds is None:
        return model, None
    pred = pd.DataFrame(predict(model, test_ds, config.batch_size, device))
    pred["label"] = pred["label"].astype(int)
    return model, pred


def _model_info(network: Mapping[str, Any], setting: str, ssl_task: str, trained_on: str) -> Dict[str, Any]:
    _, use_virtual, use_ssl = SETTINGS[setting]
    return {"network": dict(network), "setting": setting, "ssl": ssl_task if use_ssl else "none",
            "virtual_bags": use_virtual, "trained_on": trained_on}


def _save_model(model: torch.nn.Module, out_dir: Path, info: Mapping[str, Any]) -> None:
    """``model.pt`` (a state dict, ``weights_only``-loadable) and ``model.json`` (how to rebuild it)."""
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / "model.pt")
    with open(out_dir / "model.json", "w") as f:
        json.dump(dict(info), f, indent=2)


def _has_model(out_dir: Path, info: Mapping[str, Any]) -> bool:
    """Whether ``out_dir`` already holds the final model described by ``info``."""
    if not (out_dir / "model.pt").exists() or not (out_dir / "model.json").exists():
        return False
    with open(out_dir / "model.json") as f:
        return json.load(f) == json.loads(json.dumps(dict(info)))


def run_cv(
    datalist: Union[PathLike, pd.DataFrame],
    out_dir: PathLike,
    *,
    settings: Sequence[str] = ("A", "B", "C", "D"),
    ssl_task: str = "absolute",
    n_folds: int = 10,
    n_repeats: int = 5,
    seed: int = 0,
    network: Optional[Mapping[str, Any]] = None,
    train: Optional[Mapping[str, Any]] = None,
    virtual: Optional[Mapping[str, Any]] = None,
    final_model: str = "all_data",
    final_setting: Optional[str] = None,
    keep_checkpoints: bool = False,
    progress: bool = True,
    device: str = "cpu",
    config: Optional[Mapping[str, Any]] = None,
) -> pd.DataFrame:
    """Cross-validate ``settings`` on the bags of ``datalist`` and write the report into ``out_dir``.

    Args:
        datalist: CSV path or frame with ``case_id``, ``bag``, ``label`` and optional ``patient``.
        out_dir: output folder (created; an existing one is resumed).
        settings: any of ``"A"``-``"D"`` (see :data:`SETTINGS`).
        ssl_task: ``"absolute"`` or ``"relative"``, the SSL loss of settings C and D.
        n_folds, n_repeats, seed: ``n_repeats`` independent stratified patient-grouped ``n_folds``-fold splits.
        network: ``MILNet`` keyword arguments.
        train: :class:`~ctmil.train.trainer.TrainConfig` fields (``ssl``, ``virtual`` and ``seed`` are set
            per run here).
        virtual: :class:`~ctmil.train.trainer.VirtualBagConfig` fields, for settings B and D.
        final_model: ``"all_data"`` (train ``final_setting`` on every case), ``"last_fold"`` (keep the model of
            the last fold of the last repeat of ``final_setting``) or ``"none"``.
        final_setting: setting of the final model (default: the last of ``settings``).
        keep_checkpoints: keep each run's checkpoints after it finished.
        progress: show a progress bar over runs.
        device: torch device.
        config: the full config to record in ``config.json`` (``run_cv_from_config`` passes it).

    Returns:
        The out-of-fold predictions: ``case_id, setting, repeat, fold, prob, label``.
    """
    settings = list(settings)
    bad = [s for s in settings if s not in SETTINGS]
    if bad or not settings:
        raise ValueError(f"settings must be a non-empty subset of {list(SETTINGS)}, got {settings!r}.")
    if ssl_task not in ("absolute", "relative"):
        raise ValueError(f"ssl_task must be 'absolute' or 'relative', got {ssl_task!r}.")
    if final_model not in _FINAL_MODEL:
        raise ValueError(f"final_model must be one of {_FINAL_MODEL}, got {final_model!r}.")
    final_setting = settings[-1] if final_setting is None else final_setting
    if final_model != "none" and final_setting not in settings:
        raise ValueError(f"final_setting {final_setting!r} is not among the settings {settings}.")
    network, train, virtual = dict(network or {}), dict(train or {}), dict(virtual or {})
    for name in ("ssl", "virtual", "seed"):
        if name in train:
            raise ValueError(f"train.{name} is set per run by run_cv; remove it from the train section.")
    _train_config("D", ssl_task, train, virtual, seed)  # validate the config before any work

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_datalist(datalist)
    record = dict(config) if config is not None else {
        "seed": seed,
        "cv": {"n_folds": n_folds, "n_repeats": n_repeats, "settings": settings, "ssl_task": ssl_task,
               "final_model": final_model, "final_setting": final_setting},
        "network": network, "train": train, "virtual": virtual,
    }
    with open(out / "config.json", "w") as f:
        json.dump(
            {**record, "_resolved": {"train": _train_config("D", ssl_task, train, virtual, seed).to_dict(),
                                     "n_cases": len(data), "n_positive": int(data["label"].sum()),
                                     "ctmil": ctmil.__version__, "torch": torch.__version__,
                                     "python": platform.python_version()}},
            f, indent=2, default=str,
        )
    manifest = make_folds(data, n_folds, n_repeats, seed)
    _write_csv(manifest, out / "folds.csv")

    bags = BagDataset(data["bag"].tolist(), labels=data["label"].tolist(), case_ids=data["case_id"].tolist())
    index = {c: i for i, c in enumerate(data["case_id"])}
    jobs = [(s, r, f) for s in settings for r in range(n_repeats) for f in range(n_folds)]
    n_total = len(jobs) + (1 if final_model == "all_data" else 0)
    predictions: List[pd.DataFrame] = []
    last = (n_repeats - 1, n_folds - 1)
    last_fold_info = _model_info(network, final_setting, ssl_task, f"repeat {last[0]} fold {last[1]} training split")
    all_data_info = _model_info(network, final_setting, ssl_task, "all cases")
    with tqdm(total=n_total, desc="cross-validation", disable=not progress) as bar:
        for setting, r, f in jobs:
            run_dir = out / "runs" / setting / f"r{r}_f{f}"
            pred_path = run_dir / "predictions.csv"
            keep_model = final_model == "last_fold" and setting == final_setting and (r, f) == last
            bar.set_postfix(setting=setting, repeat=r, fold=f)
            if pred_path.exists() and (not keep_model or _has_model(out, last_fold_info)):
                pred = pd.read_csv(pred_path, dtype={"case_id": str})
            else:
                part = manifest[manifest["repeat"] == r]
                test_ids = part.loc[part["fold"] == f, "case_id"]
                train_ids = part.loc[part["fold"] != f, "case_id"]
                model, pred = _train_and_predict(
                    setting, ssl_task,
                    bags.subset([index[c] for c in train_ids]), bags.subset([index[c] for c in test_ids]),
                    network, train, virtual, _seed(seed, r, f), run_dir, device, keep_checkpoints,
                )
                assert pred is not None
                pred.insert(1, "setting", setting)
                pred.insert(2, "repeat", r)
                pred.insert(3, "fold", f)
                pred = pred[["case_id", "setting", "repeat", "fold", "prob", "label"]]
                if keep_model:
                    _save_model(model, out, last_fold_info)
                _write_csv(pred, pred_path)
            predictions.append(pred)
            bar.update(1)
        if final_model == "all_data":
            bar.set_postfix(setting=final_setting, repeat="-", fold="all")
            if not _has_model(out, all_data_info):
                model, _ = _train_and_predict(
                    final_setting, ssl_task, bags.subset(range(len(bags))), None, network, train, virtual,
                    _seed(seed, n_repeats, n_folds), out / "runs" / final_setting / "all_data", device, keep_checkpoints,
                )
                _save_model(model, out, all_data_info)
            bar.update(1)
    all_predictions = pd.concat(predictions, ignore_index=True)
    _write_csv(all_predictions, out / "predictions.csv")
    write_report(out, all_predictions, threshold=TrainConfig.from_dict(train).threshold)
    return all_predictions


def run_cv_from_config(
    config_path_or_dict: Union[PathLike, Mapping[str, Any]],
    datalist: Union[PathLike, pd.DataFrame],
    out_dir: PathLike,
    overrides: Optional[Mapping[str, Any]] = None,
) -> pd.DataFrame:
    """:func:`run_cv` with the sections of a JSON config (see ``docs/training.md``); returns the predictions.

    ``overrides`` is merged into the config first (dotted keys allowed: ``{"train.epochs": 2}``).
    """
    cfg = load_config(config_path_or_dict, overrides)
    cv = dict(cfg.get("cv", {}))
    return run_cv(
        datalist,
        out_dir,
        seed=cfg.get("seed", 0),
        network=cfg.get("network"),
        train=cfg.get("train"),
        virtual=cfg.get("virtual"),
        config=cfg,
        **cv,
    )
