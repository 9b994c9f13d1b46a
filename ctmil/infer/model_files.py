"""What a model file may hold and how to read constructor arguments from it: state dicts, checkpoints, prefixes."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ctmil.transforms.tiling import PATCH_NORM, PATCH_NORM_CHANNELS

__all__ = ["ModelError", "fit_patch_norm", "infer_network_kwargs", "is_torchscript", "strip_prefix", "unpack"]


class ModelError(ValueError):
    """A model file that cannot be used; the message says why in one line."""


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unpack(obj, name: str) -> tuple[dict, dict, dict]:
    """``(state_dict, network kwargs, preprocessing settings)`` from what ``torch.load`` returned."""
    if _is_state_dict(obj):
        return dict(obj), {}, {}
    if isinstance(obj, Mapping):
        recorded, preprocessing = obj.get("network"), obj.get("preprocessing")
        network = dict(recorded) if isinstance(recorded, Mapping) and not _is_state_dict(recorded) else {}
        preprocessing = dict(preprocessing) if isinstance(preprocessing, Mapping) else {}
        for key in ("state_dict", "model", "network", "net", "model_state_dict"):
            if _is_state_dict(obj.get(key)):
                return dict(obj[key]), network, preprocessing
        keys = ", ".join(sorted(map(str, obj))[:8])
        raise ModelError(f"{name}: no weights found (a state dict, or one under 'state_dict'/'model'); keys: {keys}")
    raise ModelError(f"{name}: holds a {type(obj).__name__}, not model weights")


def strip_prefix(state: dict) -> dict:
    """Drop the ``module.`` (DataParallel) / ``_orig_mod.`` (torch.compile) prefixes."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def infer_network_kwargs(state: Mapping[str, torch.Tensor]) -> dict:
    """``MILNet`` keyword arguments readable from the weights' shapes (the others keep their defaults)."""
    kwargs: dict[str, Any] = {}
    shape = {k: tuple(v.shape) for k, v in state.items()}
    if "encoder.trunk.0.weight" in shape:
        kwargs["in_channels"] = shape["encoder.trunk.0.weight"][1]
    if "density.proj.weight" in shape:  # a hybrid: the classifier sees the pooled features and the density branch
        kwargs["density_hidden"], kwargs["n_density"] = shape["density.proj.weight"]
    if "attention_encoder.trunk.0.weight" in shape:  # attention scored on the first channels only
        kwargs["attention_channels"] = shape["attention_encoder.trunk.0.weight"][1]
    if "fusion.coef" in shape:  # the late fusion with a linear density model (ctmil.networks.fusion)
        kwargs["n_density"], kwargs["density_use"] = shape["fusion.coef"][0], "fusion"
    if "classifier.weight" in shape:
        kwargs["feature_dim"] = shape["classifier.weight"][1] - kwargs.get("density_hidden", 0)
    if "pool.v.weight" in shape:
        kwargs["attention_dim"] = shape["pool.v.weight"][0]
        kwargs["gated"] = "pool.u.weight" in shape
    if "ssl_heads.absolute.layers.0.weight" in shape:
        kwargs["ssl_hidden"] = shape["ssl_heads.absolute.layers.0.weight"][0]
    if "ssl_heads.absolute.layers.3.weight" in shape:
        kwargs["n_positions"] = shape["ssl_heads.absolute.layers.3.weight"][0]
    if "ssl_heads.relative.layers.3.weight" in shape:
        kwargs["n_directions"] = shape["ssl_heads.relative.layers.3.weight"][0]
    return kwargs


def fit_patch_norm(preprocessing: Mapping[str, Any], in_channels: int) -> dict:
    """``preprocessing`` with a ``patch_norm`` that gives the network's ``in_channels``: a model that records none (a
    bare state dict) was trained on one channel, the paper's min-max, or on today's two (:data:`PATCH_NORM`)."""
    if "patch_norm" in preprocessing:
        return dict(preprocessing)
    return {**preprocessing, "patch_norm": PATCH_NORM if in_channels == PATCH_NORM_CHANNELS[PATCH_NORM] else "minmax"}


def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with ``<name>/constants.pkl`` and ``<name>/code/``; torch.save files are not."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)
