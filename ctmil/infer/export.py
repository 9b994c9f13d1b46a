"""Export a trained model for deployment tools that cannot run Python: TorchScript or ONNX, checked for parity.

Both exports take the weights-only ``model.pt`` (+ ``model.json``) that training writes. The exported graph is the
network's ``forward``: bag logits ``(B, 1)`` for patches ``(B, K, C, 60, 60)`` (``C`` the network's ``in_channels``:
2 for the default two-channel bags), with ``K`` dynamic, and for a
network that uses the bags' lung-density features (the default model's fusion) a second input ``density (B, 27)``
(``bag["density"]``, :func:`ctmil.transforms.density_input`). After writing,
the export is run on a random bag and compared with the PyTorch model (ONNX through onnxruntime); the largest
absolute difference of the logits is returned, and an export that disagrees by more than ``tolerance`` is an error.
``model.json`` is copied beside the export (``model.onnx`` → ``model.json``), so the preprocessing the model was
trained with travels with it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ctmil.io.model_card import read_card, write_card
from ctmil.infer.model_io import ModelError, load_model

__all__ = ["export_model"]

logger = logging.getLogger(__name__)
FORMATS = ("onnx", "torchscript")


def _sample(network: torch.nn.Module, k: int, seed: int = 0) -> torch.Tensor:
    size = int(getattr(network, "hparams", {}).get("patch_size", 60))
    channels = int(getattr(network, "in_channels", 1))
    return torch.rand(1, k, channels, size, size, generator=torch.Generator().manual_seed(seed))  # (1, K, C, P, P)


def _density(network: torch.nn.Module, seed: int = 0) -> "torch.Tensor | None":
    """A random ``density (1, n_density)`` for a network that uses the bags' lung-density features, else ``None``."""
    n = int(getattr(network, "n_density", 0) or 0)
    return torch.randn(1, n, generator=torch.Generator().manual_seed(seed + 1)) if n else None


def _onnx(network: torch.nn.Module, out: Path, opset: int) -> None:
    """ONNX with inputs ``patches (B, K, C, P, P)`` and, for a network with lung-density features (the default
    model's fusion), ``density (B, n_density)``."""
    density = _density(network)
    args = (_sample(network, 12),) if density is None else (_sample(network, 12), {"density": density})
    names = ["patches"] if density is None else ["patches", "density"]
    axes = {"patches": {0: "B", 1: "K"}, "logits": {0: "B"}, **({} if density is None else {"density": {0: "B"}})}
    torch.onnx.export(network, args, str(out), dynamo=False, opset_version=opset, input_names=names, output_names=["logits"],
                      dynamic_axes=axes)  # fmt: skip


def _run_onnx(out: Path, x: torch.Tensor, density: "torch.Tensor | None" = None) -> torch.Tensor:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError("the ONNX parity check needs onnxruntime: pip install 'ctmil[export]'") from None
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feed = {"patches": x.numpy(), **({} if density is None else {"density": density.numpy()})}
    return torch.from_numpy(session.run(None, feed)[0])


#: File extensions of each format (``ctmil export`` takes the format from the extension).
EXTENSIONS = {".onnx": "onnx", ".ts": "torchscript", ".pt": "torchscript", ".torchscript": "torchscript"}


def export_format(out: "str | os.PathLike", fmt: "str | None" = None) -> str:
    """The format to write ``out`` in: ``fmt`` when given, else the one of ``out``'s extension; ``ValueError`` (one
    line) when neither says, or when they disagree."""
    suffix = Path(out).suffix.lower()
    by_name = EXTENSIONS.get(suffix)
    if fmt is None:
        if by_name is None:
            raise ValueError(f"cannot tell the format from {Path(out).name!r}: name it .onnx or .ts, or give --format")
        return by_name
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if by_name is not None and by_name != fmt:
        raise ValueError(f"--format {fmt} does not match the file name {Path(out).name!r} ({suffix} is {by_name})")
    return fmt


def export_model(model: "str | os.PathLike", out: "str | os.PathLike", fmt: str = "onnx", opset: int = 17,
                 tolerance: float = 1e-4) -> float:
    """Write ``model`` as ``fmt`` to ``out`` and return the largest logit difference on random bags (K = 12, 36, 100).

    Raises:
        ModelError: the model cannot be loaded, or the export disagrees with it by more than ``tolerance``.
        ValueError: unknown ``fmt``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    loaded = load_model(model)
    network = loaded.module.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        torch.jit.script(network).save(str(out))
        exported = torch.jit.load(str(out))
        run = lambda x, d: exported(x) if d is None else exported(x, None, d)  # noqa: E731
    else:
        _onnx(network, out, opset)
        run = lambda x, d: _run_onnx(out, x, d)  # noqa: E731
    card = read_card(model)
    if card:  # the export keeps the model's card (network, preprocessing, operating point), for ctmil infer
        write_card(out, card)
    worst = 0.0
    with torch.no_grad():
        for k in (12, 36, 100):  # 100: more than the encoder's chunk of 48 patches
            x, d = _sample(network, k, seed=k), _density(network, seed=k)
            worst = max(worst, float((run(x, d).float() - network(x, density=d)).abs().max()))
    if worst > tolerance:
        raise ModelError(f"the {fmt} export differs from the model by {worst:.2e} (> {tolerance:.0e}); not usable")
    logger.info("%s export written to %s (max logit difference %.2e)", fmt, out, worst)
    return worst
