"""The deterministic preprocessing chain of the paper, files → bag, as one MONAI ``Compose``."""

from __future__ import annotations

import inspect
from typing import Any
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, SelectItemsd

from ctmil.io.dicom_series import MIN_SLICES
from ctmil.transforms.crop import MARGIN_FRACTION, MIN_SLICE_AREA_FRACTION, SPATIAL_SIZE, LungBoxCropd, SelectLungSlicesd
from ctmil.transforms.density import LungDensityd
from ctmil.transforms.intensity import LUNG_WINDOW_HU, WindowHUd
from ctmil.transforms.layout import DEFAULT_SLICE_AXIS, check_slice_axis, stack_spacing, stack_to_array
from ctmil.transforms.load import LOADCT_SLICE_AXIS, LoadCTd
from ctmil.transforms.lung import INTENSITIES, LungMaskd
from ctmil.transforms.lung_masks import CHEST_WALL, CLOSING_MM, DILATE_MM, THRESHOLD_HU
from ctmil.transforms.plausibility import CheckLungsd
from ctmil.transforms.sampling import MAX_SLICES, SampleSlicesd
from ctmil.transforms.tiling import BAG_KEYS, PATCH_DTYPE, PATCH_NORM, PATCH_NORM_CHANNELS, PATCH_SIZE, ToBagd


def _plain(value):
    """Metadata as weights_only-loadable plain Python (lists, floats, str, dicts)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray) or hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


class StoreCaseMetad(MapTransform):
    """Record the case metadata of ``d[key]`` (a MetaTensor, before cropping) as plain Python in ``d[meta_key]``.

    The bag's ``meta`` (docs/design.md): ``spatial_shape`` ``(S, H, W)`` and ``affine`` (``(s, r, c, 1)`` → world
    mm) of the image seen as a slice stack (slices along ``slice_axis``, rows and columns the other axes in
    array order), and ``input_kind``, ``intensity``, ``spacing`` ``(dz, dy, dx)``, ``source``, ``series``. ctmil's
    :class:`~ctmil.transforms.LoadCT` records all of them; for an image from MONAI's loaders ``spacing`` comes
    from the affine, ``source`` from ``filename_or_obj``, ``intensity`` from the argument, the rest is ``None``.

    Args:
        intensity: ``"hu"`` or ``"windowed"`` to record; ``None`` keeps ctmil's recorded value (``None`` if none).
        slice_axis: spatial axis holding the slices (``-1``: MONAI's spatial-last layout; ``1``: LoadCT's).
    """

    def __init__(
        self, keys="image", meta_key: str = "image_meta", intensity: str | None = None, slice_axis: int = DEFAULT_SLICE_AXIS, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if intensity not in (None, *INTENSITIES):
            raise ValueError(f"intensity must be 'hu', 'windowed' or None, got {intensity!r}")
        self.meta_key = meta_key
        self.intensity = intensity
        self.slice_axis = check_slice_axis(slice_axis)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        img = d[self.first_key(d)]
        if not isinstance(img, MetaTensor):
            raise TypeError("StoreCaseMetad needs a MetaTensor (from LoadCTd, or MONAI's LoadImaged)")
        axes = stack_to_array(self.slice_axis)  # array spatial axis of (s, r, c)
        ours = "input_kind" in img.meta  # written by ctmil's LoadCT
        meta = {k: img.meta.get(k) for k in ("input_kind", "intensity")}
        meta["intensity"] = self.intensity or meta["intensity"]
        meta["spacing"] = img.meta.get("spacing") if ours else stack_spacing(img, self.slice_axis)
        meta["spatial_shape"] = tuple(int(img.shape[1 + a]) for a in axes)
        meta["source"] = img.meta.get("source") if ours else img.meta.get("filename_or_obj")
        meta["series"] = img.meta.get("series")
        affine = img.affine
        if axes != [0, 1, 2]:
            permute = torch.zeros((4, 4), dtype=affine.dtype)  # (s, r, c, 1) -> array index
            permute[axes, [0, 1, 2]] = 1.0
            permute[3, 3] = 1.0
            affine = affine @ permute
        meta["affine"] = affine
        d[self.meta_key] = _plain(meta)
        return d


def preprocessing_transforms(
    image_key: str = "image",
    min_slices: int = MIN_SLICES,
    threshold_hu: float = THRESHOLD_HU,
    closing_mm: float = CLOSING_MM,
    dilate_mm: float = DILATE_MM,
    min_area_fraction: float = MIN_SLICE_AREA_FRACTION,
    spatial_size: tuple[int, int] = SPATIAL_SIZE,
    patch_size: tuple[int, int] = PATCH_SIZE,
    margin_fraction: float = MARGIN_FRACTION,
    window_hu: Sequence[float] | None = LUNG_WINDOW_HU,
    max_slices: int | None = MAX_SLICES,
    slab_mm: float | None = None,
    patch_dtype: str = PATCH_DTYPE,
    chest_wall: bool = CHEST_WALL,
    patch_norm: str = PATCH_NORM,
    allow_implausible_lungs: bool = False,
) -> Compose:
    """``{"image": path, "case_id": str, "label": float}`` → bag dictionary (docs/design.md), nothing else.

    Args mirror the transforms': ``min_slices`` (DICOM series), ``threshold_hu`` / ``closing_mm`` / ``dilate_mm`` (lung mask),
    ``min_area_fraction`` (slice selection), ``max_slices`` / ``slab_mm`` (slice sampling, :class:`SampleSlicesd`; 18 slices
    by default, the paper's K ≈ 217, chosen in docs/preprocessing.md "Bag size"),
    ``spatial_size`` (H, W), ``margin_fraction`` (crop), ``window_hu`` (HU window before the per-patch min-max,
    :class:`WindowHUd`; ``None``: none), ``patch_size``, ``patch_dtype`` (``"float16"`` or ``"float32"``: the dtype
    the bag stores its min-max patches in, :class:`ToBagd`; docs/preprocessing.md "Patch storage"), ``chest_wall``
    (the lung mask grown to the first bone, so that the crop keeps consolidated lung, :class:`LungMask`;
    docs/preprocessing.md "Consolidated lung"), ``patch_norm`` (``"minmax"``, the paper's per-patch min-max;
    ``"window"``, the lung window scaled to [0, 1] for the whole volume; ``"both"``, two channels: :class:`ToBagd`;
    ``"window"`` and ``"both"`` need ``window_hu``), ``allow_implausible_lungs`` (a kept lung mask that cannot be an
    adult's lungs fails the case, :class:`CheckLungsd`; ``True`` keeps it with the reason in ``meta["warnings"]``:
    a choice of the run, never recorded with a model, :data:`RUN_OPTIONS`).
    LoadCTd gives ``(1, S, H, W)`` stacks, so every later transform gets ``slice_axis=1``; the intensity is the
    one LoadCT records (``hu`` for DICOM and NIfTI, ``windowed`` for slice images, which the window leaves as they are).
    """
    axis = LOADCT_SLICE_AXIS
    return Compose(
        [
            LoadCTd(image_key, min_slices=min_slices),
            StoreCaseMetad(image_key, slice_axis=axis),
            LungMaskd(image_key, mask_key="lung", full_resolution=False, intensity=None, slice_axis=axis,
                      threshold_hu=threshold_hu, closing_mm=closing_mm, dilate_mm=dilate_mm, chest_wall=chest_wall),
            LungDensityd(image_key, mask_key="lung", slice_axis=axis),  # every lung slice, before selection
            SelectLungSlicesd([image_key, "lung"], source_key="lung", min_area_fraction=min_area_fraction, slice_axis=axis),
            CheckLungsd(image_key, mask_key="lung", allow_implausible=allow_implausible_lungs, slice_axis=axis),
            SampleSlicesd([image_key, "lung"], max_slices=max_slices, slab_mm=slab_mm, slice_axis=axis),
            LungBoxCropd(image_key, source_key="lung", spatial_size=spatial_size, margin_fraction=margin_fraction, slice_axis=axis),
            WindowHUd(image_key, window_hu=window_hu, intensity=None),
            ToBagd(image_key, patch_size=patch_size, slice_axis=axis, patch_dtype=patch_dtype, patch_norm=patch_norm, window_hu=window_hu),
            SelectItemsd(BAG_KEYS),
        ],
        map_items=False,
    )


#: Settings of :func:`preprocessing_transforms` that are the run's choice, not the model's: a model never records them,
#: so inference uses what its own run asks for.
RUN_OPTIONS = ("allow_implausible_lungs",)

#: Bumped whenever the chain gives other bags for the same settings (an algorithm change, not a setting): bag caches
#: key on it, so a cache made before is never read as current. 2: the lung mask decides at full resolution what is
#: outside air, and picks a second lung within the first one's slices (issue 23).
PREPROCESSING_REVISION = 2


def bag_channels(settings: "Mapping[str, Any] | None" = None) -> int:
    """The channels of a patch in the bags that ``settings`` (:func:`preprocessing_transforms` keyword arguments,
    the defaults where absent) make: the ``in_channels`` of a network that takes them."""
    return PATCH_NORM_CHANNELS[preprocessing_settings(**dict(settings or {}))["patch_norm"]]


def preprocessing_settings(**settings) -> dict:
    """Every keyword argument of :func:`preprocessing_transforms` (but ``image_key``) with its effective value:
    ``settings`` over the defaults, sequences as lists (as JSON writes them). Hashing this, rather than the
    settings as given, makes a cache key change when a default changes; ``TypeError`` for an unknown name."""
    bound = inspect.signature(preprocessing_transforms).bind(**settings)
    bound.apply_defaults()
    full = dict(bound.arguments)
    full.pop("image_key")
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in full.items()}


#: Preprocessing settings added after models were first recorded, with the value every earlier model was
#: trained with (the setting did not exist yet): the HU window and slice sampling (issue 12), float32 patches
#: (issue 13; float16 storage is the default since), the air-dark lung mask without the chest-wall growth and with
#: 8 mm of dilation, the default until the growth made it redundant (issue 24), and the paper's per-patch min-max
#: alone, the default until two channels measured better (issue 19).
SETTINGS_BEFORE_THEY_EXISTED = {"window_hu": None, "max_slices": None, "slab_mm": None, "patch_dtype": "float32", "chest_wall": False, "dilate_mm": 8.0,
                               "patch_norm": "minmax"}


def complete_recorded_preprocessing(recorded: dict) -> dict:
    """A model's recorded preprocessing with the settings it predates filled with their old values.

    An empty record (a bare state dict) stays empty, i.e. today's defaults. A record from before the window
    and slice sampling existed gets ``window_hu=None, max_slices=None, slab_mm=None``, one from before float16
    patch storage ``patch_dtype="float32"``, one from before the chest-wall growth ``chest_wall=False``, one from
    before two channels ``patch_norm="minmax"``, so such a model (or bag) is preprocessed at inference exactly as it
    was in training, not with today's defaults. The run's own choices (:data:`~ctmil.transforms.compose.RUN_OPTIONS`, e.g.
    keeping implausible lungs) are dropped: inference decides them.
    """
    if not recorded:
        return {}
    return {k: v for k, v in {**SETTINGS_BEFORE_THEY_EXISTED, **recorded}.items() if k not in RUN_OPTIONS}
