"""Loading a trained bag network for inference: weights-only checkpoints or TorchScript, with clear errors.

Accepted files:

* a state dict saved with ``torch.save(model.state_dict(), path)`` (what ``ctmil cv`` writes as ``model.pt``;
  its ``model.json`` next to it supplies the ``MILNet`` keyword arguments);
* a dict ``{"state_dict": ..., "network": {MILNet kwargs}, "preprocessing": {preprocessing_transforms kwargs}}``;
* an Ignite / MONAI checkpoint holding the weights under ``"model"`` or ``"network"`` (``ctmil`` training
  checkpoints, bundle ``CheckpointSaver`` files);
* a TorchScript file (``torch.jit.save``, the MONAI bundle's ``ckpt_export``).

The operating point recorded in ``model.json`` (calibration map + threshold, learnt on training data by
``ctmil train`` / ``ctmil cv``) travels with the loaded model: :attr:`BagPrediction.probability` is calibrated
and :attr:`InferenceModel.threshold` is the learnt threshold.

Pickled files are always read with ``torch.load(..., weights_only=True)``: a checkpoint can never run code
on load. Without recorded constructor arguments they are inferred from the weights' shapes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctmil.stats.calibration import apply_calibration
from ctmil.stats.operating_point import check_operating_point, fixed_operating_point
from ctmil.io.model_card import card_path, read_card
from ctmil.infer.dicom_results import ModelIdentity
from ctmil.infer.model_files import ModelError, fit_patch_norm, infer_network_kwargs, is_torchscript, strip_prefix, unpack
from ctmil.networks import MILNet
from ctmil.networks.predict import BagInferer, predict_batch
from ctmil.transforms.density import density_input
from ctmil.transforms.compose import bag_channels, complete_recorded_preprocessing
from ctmil.keys import Columns

logger = logging.getLogger(__name__)


@dataclass
class BagPrediction:
    """The network's answer for one bag: ``attention (K,)`` and ``bag_features (M,)`` are ``None`` when unavailable."""

    logit: float
    probability: float  # calibrated by the model's operating point (the raw sigmoid when it has none)
    attention: np.ndarray | None = None
    bag_features: np.ndarray | None = None
    raw_probability: float | None = None  # sigmoid(logit)


@dataclass
class InferenceModel:
    """A loaded bag network and how to query it.

    ``strategy`` is ``"parts"`` (a :class:`MILNet`, plain or scripted: instances are encoded in equal chunks of
    at most ``chunk_size``, so activation memory (~0.6 MB per 60×60 patch) does not grow with the bag size, then
    pooled), ``"forward_all"``, ``"attention"``
    (logits from ``forward`` plus an ``attention`` method) or ``"logits"`` (only ``forward``: no maps).
    """

    module: torch.nn.Module
    kind: str  # "state_dict" | "torchscript"
    path: str
    strategy: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    network: dict = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)
    chunk_size: int = 1024
    operating_point: dict = field(default_factory=fixed_operating_point)  # calibration + threshold (model.json)
    intensities: tuple = ()  # what the model was trained on: "hu" and/or "windowed" (model.json "input"); () unknown

    @classmethod
    def wrap(cls, module: torch.nn.Module, device: "str | torch.device" = "cpu", chunk_size: int = 1024,
             operating_point: Mapping[str, Any] | None = None) -> "InferenceModel":  # fmt: skip
        """An in-memory network (e.g. the bundle's ``network_def`` after its ``CheckpointLoader``) as an inference model."""
        point = check_operating_point(operating_point) if operating_point else fixed_operating_point()
        return cls(module.eval(), "module", "<in memory>", _strategy(module), torch.device(device),
                   network=dict(getattr(module, "hparams", {}) or {}), chunk_size=chunk_size, operating_point=point)

    @property
    def threshold(self) -> float:
        """The decision threshold on :attr:`BagPrediction.probability` learnt with the model (0.5 if none)."""
        return float(self.operating_point[Columns.THRESHOLD])

    @property
    def has_attention(self) -> bool:
        return self.strategy != "logits"

    @property
    def identity(self) -> ModelIdentity:
        """Which model this is (file name and SHA-256), as the DICOM results record it (:func:`model_identity`)."""
        if "_identity" not in self.__dict__:
            self.__dict__["_identity"] = model_identity(self.path) if self.path and Path(self.path).is_file() \
                else ModelIdentity("in-memory model", _state_sha256(self.module))
        return self.__dict__["_identity"]

    @property
    def has_features(self) -> bool:
        return self.strategy in ("parts", "forward_all")

    def predict_bag(self, bag: Mapping[str, Any]) -> BagPrediction:
        """Predict one bag dict (what preprocessing writes): its patches and, when the bag has them, its lung-density
        features (``bag["density"]``, else ``bag["meta"]["density"]``), which a hybrid network needs."""
        recorded = (bag.get("meta") or {}).get("density")
        return self.predict(bag["patches"], bag.get("density", None if recorded is None else density_input(recorded)))

    def predict(self, patches: torch.Tensor, density: "torch.Tensor | None" = None) -> BagPrediction:
        """Predict one bag from its ``patches (K, C, P, P)`` (any dtype: float16 bags are cast to float32 on the
        device) and, for a hybrid network, its lung-density features ``density (F,)`` (:func:`ctmil.transforms.density_input`)."""
        if patches.dim() != 4 or patches.shape[0] == 0:
            raise ValueError(f"expected patches (K, C, P, P) with K > 0, got {tuple(patches.shape)}")
        x = patches.to(self.device).float()[None]  # (1, K, C, P, P) float32; copied in the stored dtype, cast on the device
        attention = features = None
        with torch.inference_mode():
            if self.strategy == "parts":  # a MILNet: the one prediction path of validation, CV and the bundle
                mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
                batch = {"patches": x, "mask": mask, Columns.LABEL: torch.full((1,), -1.0), Columns.CASE_ID: [""]}
                if density is not None:
                    batch["density"] = torch.as_tensor(density, dtype=torch.float32).reshape(1, -1)
                out = predict_batch(self.module, batch, BagInferer(self.chunk_size), self.device)
                logits = out["logit"]
                attention, features = out["attention"], out["bag_features"]
            elif self.strategy == "forward_all":
                uses_density = density is not None and bool(getattr(self.module, "n_density", 0))
                out = self.module.forward_all(x, density=torch.as_tensor(density, dtype=torch.float32).reshape(1, -1).to(x.device)) \
                    if uses_density else self.module.forward_all(x)
                logits, attention, features = out["logits"], out["attention"], out.get("bag_features")
            else:
                logits = self.module(x)
                if self.strategy == "attention":
                    attention = self.module.attention(x)
        logits = torch.as_tensor(logits)
        if logits.numel() != 1:
            raise ValueError(f"the model returned {tuple(logits.shape)} logits for one bag; expected (1, 1)")
        if attention is not None and attention.numel() != x.shape[1]:
            raise ValueError(f"the model returned {attention.numel()} attention weights for {x.shape[1]} patches")
        logit = float(logits.reshape(()).float().cpu())
        raw = float(torch.sigmoid(torch.tensor(logit)))
        return BagPrediction(
            logit=logit,
            probability=float(apply_calibration(self.operating_point["calibration"], np.array([raw]))[0]),
            raw_probability=raw,
            attention=None if attention is None else attention.reshape(-1).float().cpu().numpy(),
            bag_features=None if features is None else features.reshape(-1).float().cpu().numpy(),
        )


def _strategy(module) -> str:
    if all(hasattr(module, name) for name in ("encode", "pool", "classifier")):
        return "parts"
    if hasattr(module, "forward_all"):
        return "forward_all"
    if hasattr(module, "attention"):
        return "attention"
    return "logits"


def _sidecar_info(path: Path) -> dict:
    """The model card beside ``path`` (:func:`ctmil.io.model_card.read_card`; {} when absent)."""
    return read_card(path)


def _sidecar(path: Path) -> tuple[dict, dict]:
    """``(network, preprocessing)`` of the ``model.json`` beside ``path`` (empty when absent)."""
    info = _sidecar_info(path)
    return dict(info.get("network") or {}), dict(info.get("preprocessing") or {})


def recorded_intensities(path: "str | os.PathLike") -> tuple:
    """The intensities the model beside ``model.json`` was trained on (``"hu"``: DICOM and NIfTI in Hounsfield units;
    ``"windowed"``: lung-window slice images); ``()`` for a model recorded before ctmil wrote them."""
    found = (_sidecar_info(Path(path)).get("input") or {}).get("intensity") or []
    return tuple(str(v) for v in found if v in ("hu", "windowed"))


def recorded_operating_point(path: "str | os.PathLike", default_threshold: float = 0.5) -> dict:
    """The operating point recorded in the ``model.json`` beside ``path`` (:mod:`ctmil.stats.operating_point`):
    its calibration map and threshold; a recorded plain ``threshold`` alone; else the identity and
    ``default_threshold``.

    Raises:
        ModelError: a recorded point that is not usable (one line).
    """
    info = _sidecar_info(Path(path))
    point = info.get("operating_point")
    if point is None and info.get(Columns.THRESHOLD) is not None:
        point = {**fixed_operating_point(info[Columns.THRESHOLD], "threshold recorded in model.json"),
                 "calibration": info.get("calibration") or {"method": "none"}}  # fmt: skip
    if point is None:
        return fixed_operating_point(default_threshold, f"default {default_threshold:g} (no operating point recorded with the model)")
    try:
        return check_operating_point(point)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelError(f"{Path(path).with_suffix('.json').name}: unusable operating point: {err}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; a one-line :class:`ModelError` for a bad name or CUDA that is not there."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ModelError(f"invalid device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    return dev


def recorded_network(path: "str | os.PathLike") -> dict:
    """The ``MILNet`` keyword arguments of the model at ``path`` (recorded, or read from its weights' shapes), so that
    a bundle's ``network_def`` fits its weights (a fused or hybrid network has more parts); empty (= the
    defaults) when the file is not there yet or is not a state dict."""
    path = Path(path)
    if not path.is_file() or is_torchscript(path):
        return {}
    try:
        return dict(load_model(path).network)
    except ModelError:
        return _sidecar(path)[0]


def network_for(path: "str | os.PathLike", preprocessing: Mapping[str, Any] | None = None, **kwargs: Any) -> MILNet:
    """A ``MILNet`` shaped like the model at ``path`` (:func:`recorded_network`), with ``kwargs`` over it: the bundle's
    ``inference.json`` ``network_def``, so that its weights fit whatever settings trained them, while a
    ``--network_def#<arg>`` override still wins. With no model at ``path`` yet, the network takes the channels of the
    bags that ``preprocessing`` makes (e.g. for MONAI's ``verify_net_in_out``)."""
    recorded = recorded_network(path)
    if not recorded and preprocessing is not None:
        recorded = {"in_channels": bag_channels(preprocessing)}
    return MILNet(**{**recorded, **kwargs})


def recorded_preprocessing(path: "str | os.PathLike") -> dict:
    """The preprocessing settings recorded with a model (``model.json`` beside it, or inside the checkpoint);
    empty (= the defaults) when none were recorded or the file is not there yet."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return dict(load_model(path).preprocessing)
    except ModelError:
        return complete_recorded_preprocessing(_sidecar(path)[1])


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    network: Mapping[str, Any] | None = None,
    chunk_size: int = 1024,
    allow_torchscript: bool = False,
) -> InferenceModel:
    """Load a model file for inference (see the module docstring for the accepted formats).

    Args:
        path: the checkpoint or TorchScript file.
        device: where the network runs.
        network: ``MILNet`` keyword arguments; overrides those recorded in the checkpoint / ``model.json``.
        chunk_size: instances encoded at once (bounds memory for large bags).
        allow_torchscript: load TorchScript archives (programs that run on load, unlike weights); refused otherwise.

    Raises:
        ModelError: missing, unreadable or incompatible file (one-line reason).
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"model path is not a file: {path}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dev = check_device(device)
    if is_torchscript(path):
        if not allow_torchscript:
            raise ModelError(f"{path.name} is a TorchScript program, not weights; load it only if you trust it "
                             "(--allow-torchscript), or pass the model.pt state dict")
        try:
            module = torch.jit.load(str(path), map_location=dev)
        except Exception as err:  # torch raises RuntimeError subclasses with multi-line messages
            raise ModelError(f"cannot load TorchScript model {path.name}: {_first_line(err)}") from None
        module.eval()
        strategy = _strategy(module)
        if strategy == "logits":
            logger.warning("TorchScript model %s exposes no attention (no encode/forward_all/attention method): "
                           "only probabilities are written, attention maps and overlays are skipped", path.name)
        network_kwargs, preprocessing = _sidecar(path)  # a model.json beside the export records its preprocessing
        preprocessing = {k: tuple(x) if isinstance(x, list) else x for k, x in complete_recorded_preprocessing(preprocessing).items()}
        channels = network_kwargs.get("in_channels", getattr(module, "in_channels", None))  # a scripted MILNet keeps it
        if channels is not None:  # another program's channels are unknown: today's defaults
            preprocessing = fit_patch_norm(preprocessing, int(channels))
        return InferenceModel(module, "torchscript", str(path), strategy, dev, network=network_kwargs,
                              preprocessing=preprocessing, chunk_size=chunk_size, operating_point=recorded_operating_point(path),
                              intensities=recorded_intensities(path))

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise ModelError(
                f"{path.name} holds pickled Python objects ({found.group(1)}; e.g. a whole model saved with torch.save(model)); "
                "ctmil loads weights only: save torch.save(model.state_dict(), path) or export TorchScript") from None
        raise ModelError(f"cannot read model file {path.name}: not a PyTorch checkpoint or TorchScript file (corrupt pickle)") from None
    except Exception as err:  # truncated zip, random bytes, wrong format
        raise ModelError(f"cannot read model file {path.name}: not a PyTorch checkpoint or TorchScript file ({_first_line(err)})") from None
    state, recorded, preprocessing = unpack(obj, path.name)
    state = strip_prefix(state)
    side_network, side_preprocessing = _sidecar(path)
    preprocessing = complete_recorded_preprocessing({**side_preprocessing, **preprocessing})
    preprocessing = {k: tuple(v) if isinstance(v, list) else v for k, v in preprocessing.items()}
    kwargs = {**infer_network_kwargs(state), **side_network, **recorded, **dict(network or {})}
    preprocessing = fit_patch_norm(preprocessing, int(kwargs.get("in_channels", 1)))
    try:
        module = MILNet(**kwargs)
    except (TypeError, ValueError) as err:
        raise ModelError(f"{path.name}: invalid network settings {kwargs}: {err}") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else "")
        raise ModelError(f"{path.name}: weights do not fit MILNet({kwargs}): {detail[:300]}") from None
    module.eval().to(dev)
    return InferenceModel(module, "state_dict", str(path), "parts", dev, network=kwargs, preprocessing=preprocessing,
                          chunk_size=chunk_size, operating_point=recorded_operating_point(path), intensities=recorded_intensities(path))


def model_identity(path: "str | os.PathLike[str]") -> ModelIdentity:
    """The identity of the model at ``path``: its file name and the SHA-256 of its bytes and of its ``model.json``
    beside it (the calibration and threshold are part of what the model says)."""
    digest = hashlib.sha256()
    card = card_path(path)
    for part in (Path(path), *([card] if card.is_file() else [])):
        with open(part, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return ModelIdentity(Path(path).name, digest.hexdigest())


def _state_sha256(module: torch.nn.Module) -> str:
    """The SHA-256 of a module's weights (for a model held only in memory)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
