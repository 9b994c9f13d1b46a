"""The before/after pictures of docs/preprocessing.md "Consolidated lung" (phantoms only; a few seconds).

    python docs/make_crop_pictures.py   # writes docs/img/crop_consolidated_hu.png and crop_consolidated_slices.png

A severe phantom whose back half of each lung is consolidated (``make_phantom(dependent_consolidation=0.5)``),
three of its kept slices, each drawn as QC montages draw them (lung mask outline in red, crop box in green): top
row with the air-dark mask (``chest_wall=False``, ctmil before the growth), bottom row with the chest-wall growth
(the default); once on the HU path and once on the slice-image path (the same phantom in ctmil's lung window).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ctmil.report.montage import png_bytes, slice_tile, tile_grid  # noqa: E402
from ctmil.synthetic.chest import make_phantom  # noqa: E402
from ctmil.transforms import LungBoxCrop, LungMask, SelectLungSlices  # noqa: E402
from tests.transforms.test_consolidated_crop import lesion_inside, windowed  # noqa: E402

OUT = ROOT / "docs" / "img"


def tiles(image: np.ndarray, spacing, intensity: str, chest_wall: bool, lesion: np.ndarray, picks=(0.25, 0.5, 0.75)):
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    img = MetaTensor(torch.from_numpy(image)[None], affine=affine, meta={"intensity": intensity})
    before = {} if chest_wall else {"dilate_mm": 8.0}  # the mask before the growth, with that time's dilation
    mask, stride = LungMask(slice_axis=1, chest_wall=chest_wall, **before).working_mask(img)
    kept = SelectLungSlices(slice_axis=1).compute_kept_slices(mask)
    boxes = LungBoxCrop(slice_axis=1).compute_boxes(np.asarray(mask)[:, kept], stride, image.shape[1:])
    share = lesion_inside(lesion, kept, boxes)
    out = []
    for f in picks:
        j = int(round(f * (len(kept) - 1)))
        out.append(slice_tile(image[kept[j]], np.asarray(mask)[0, kept[j]], boxes[j].tolist(), width=260,
                              mask_stride=stride, intensity=intensity))
    return out, share


def main() -> None:
    OUT.mkdir(exist_ok=True)
    vol, lesion, info = make_phantom(0, severe=True, dependent_consolidation=0.5, dtype=np.float32)
    for name, image, intensity in (("hu", vol, "hu"), ("slices", windowed(vol), "windowed")):
        before, b = tiles(image, info["spacing"], intensity, False, lesion)
        after, a = tiles(image, info["spacing"], intensity, True, lesion)
        path = OUT / f"crop_consolidated_{name}.png"
        path.write_bytes(png_bytes(tile_grid(before + after, columns=3)))
        print(f"{path}: lesion inside the boxes {b:.3f} before, {a:.3f} after")


if __name__ == "__main__":
    main()
