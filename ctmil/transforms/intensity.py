"""The HU window applied before the per-patch min-max of the bag (array + dictionary pair).

Per-patch min-max (:class:`~ctmil.transforms.NormalizePatches`) stretches whatever a patch holds to [0, 1]: a rib
(600 HU) or a contrast-filled vessel at the chest wall takes the top of the range and squeezes lung, ground glass
and consolidation into its lower part. Clipping Hounsfield units to a lung window first (default L −600 / W 1500,
[−1350, 150] HU) keeps that range for lung tissue, as a lung-window slice image (Per-COVID-19's PNGs) already has.
Slice images (``intensity="windowed"``) pass unchanged: their window was applied when they were exported.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, TraceableTransform
from monai.transforms.utils_pytorch_numpy_unification import clip
from monai.utils import TransformBackends

from ctmil.transforms.layout import wrap_like
from ctmil.transforms.lung import INTENSITIES, recorded_intensity

__all__ = ["LUNG_WINDOW_HU", "WindowHU", "WindowHUd", "WindowHUD", "WindowHUDict", "check_window"]

#: The lung window, level −600 HU / width 1500 HU, as ``(low, high)`` HU.
LUNG_WINDOW_HU = (-1350.0, 150.0)


def check_window(window_hu: Sequence[float] | None) -> tuple[float, float] | None:
    """``window_hu`` as ``(low, high)`` floats with ``low < high``, or ``None`` (no window); ``ValueError`` otherwise."""
    if window_hu is None:
        return None
    try:
        low, high = (float(v) for v in window_hu)
    except (TypeError, ValueError):
        raise ValueError(f"window_hu must be a pair (low, high) of HU values or None, got {window_hu!r}") from None
    if not low < high:
        raise ValueError(f"window_hu must have low < high, got {window_hu!r}")
    return low, high


class WindowHU(TraceableTransform):
    """Clip a Hounsfield-unit image to ``window_hu`` (MONAI's ``clip``); any shape, numpy or torch, layout kept.

    Args:
        window_hu: ``(low, high)`` HU; ``None`` returns the image as it is.
        intensity: ``"hu"`` (clip) or ``"windowed"`` (slice images in [0, 1]: unchanged). ``None`` reads
            ``meta["intensity"]`` of a :class:`~ctmil.transforms.LoadCT` MetaTensor (crops keep it); any other
            image is then an error, as for :class:`~ctmil.transforms.LungMask`.

    A MetaTensor result records ``window_hu`` (``None`` when nothing was clipped) in ``applied_operations``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, window_hu: Sequence[float] | None = LUNG_WINDOW_HU, intensity: str | None = None) -> None:
        if intensity is not None and intensity not in INTENSITIES:
            raise ValueError(f"intensity must be 'hu', 'windowed' or None (ctmil's LoadCT's record), got {intensity!r}")
        self.window_hu = check_window(window_hu)
        self.intensity = intensity

    def intensity_of(self, img: NdarrayOrTensor) -> str:
        """``hu`` or ``windowed``: the constructor's value, else LoadCT's record; ``ValueError`` when neither."""
        return recorded_intensity(img, self.intensity, "WindowHU")

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        window = self.window_hu if self.window_hu is not None and self.intensity_of(img) == "hu" else None
        x = img.as_tensor() if isinstance(img, MetaTensor) else img
        out = x if window is None else clip(x, window[0], window[1])
        return wrap_like(out, img, self, extra_info={"window_hu": None if window is None else list(window)})


class WindowHUd(MapTransform):
    """Dictionary wrapper of :class:`WindowHU`: clips every key (see :class:`WindowHU` for the arguments)."""

    backend = WindowHU.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        window_hu: Sequence[float] | None = LUNG_WINDOW_HU,
        intensity: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.windower = WindowHU(window_hu, intensity)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.windower(d[key])
        return d


WindowHUD = WindowHUDict = WindowHUd
