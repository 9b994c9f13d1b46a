"""The before/after picture of docs/preprocessing.md "Lungs under the skin" (phantoms only; a few seconds).

    python docs/make_mask_pictures.py               # docs/img/mask_neck_to_abdomen.png, after only
    python docs/make_mask_pictures.py --before REV  # ... with a top row drawn by the lung mask of git revision REV

A ``neck_to_abdomen`` phantom (upper abdomen with bowel gas below the lungs, the neck above, the lung apices 2-4 mm
under the skin). Each row shows, as QC montages draw them (lung mask outline in red, crop box in green), the first
kept slice, the kept slice of largest mask area and the last kept slice. The top row is the mask of ``REV`` (e.g.
``bf1af3b``, the last commit before issue 23's fix): its lungs joined the air outside through the apex and were
discarded, and the "lungs" it kept were bowel gas. The bottom row is today's mask. ``REV``'s ``lung_masks.py`` is
read with ``git show`` and run on its own, with today's chest-wall growth.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ctmil.report.montage import label_tile, png_bytes, slice_tile, tile_grid  # noqa: E402
from ctmil.synthetic.phantoms import make_phantom  # noqa: E402
from ctmil.transforms import LungBoxCrop, SelectLungSlices  # noqa: E402
from ctmil.transforms.lung_masks import lung_mask_hu  # noqa: E402

OUT = ROOT / "docs" / "img"
GEOMETRY = dict(shape=(80, 160, 160), spacing=(3.0, 2.2, 2.2))


def mask_of_revision(rev: str):
    """``lung_mask_hu`` of ``ctmil/transforms/lung_masks.py`` at git revision ``rev``."""
    source = subprocess.run(["git", "show", f"{rev}:ctmil/transforms/lung_masks.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"lung_masks_{rev}")
    exec(compile(source, f"{rev}:lung_masks.py", "exec"), module.__dict__)  # noqa: S102  (our own history)
    return module.lung_mask_hu


def row(vol: np.ndarray, spacing, masker, lung: np.ndarray, title: str) -> tuple[list[np.ndarray], str]:
    mask, stride = masker(vol, spacing)
    selector, cropper = SelectLungSlices(slice_axis=1), LungBoxCrop(slice_axis=1)
    kept = selector.compute_kept_slices(mask[None])
    boxes = cropper.compute_boxes(mask[None][:, kept], stride, vol.shape[1:])
    recall = float((mask & lung[:, ::stride, ::stride]).sum() / lung[:, ::stride, ::stride].sum())
    areas = mask[kept].sum(axis=(1, 2))
    picks = [(0, "first kept"), (int(np.argmax(areas)), "largest"), (len(kept) - 1, "last kept")]
    tiles = [label_tile(slice_tile(vol[kept[j]], mask[kept[j]], boxes[j].tolist(), width=260, mask_stride=stride,
                                   intensity="hu"), f"{title}: {role} (slice {kept[j]})") for j, role in picks]
    first, last = np.flatnonzero(lung.any(axis=(1, 2)))[[0, -1]]
    text = f"{title}: kept slices {kept[0]}-{kept[-1]} (lungs {first}-{last}), lung recall {recall:.3f}"
    return tiles, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", metavar="REV", help="git revision whose lung mask draws the top row")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    vol, _, info = make_phantom(0, field_of_view="neck_to_abdomen", **GEOMETRY)
    rows = [("before", mask_of_revision(args.before))] if args.before else []
    tiles = []
    for title, masker in [*rows, ("today", lung_mask_hu)]:
        got, text = row(vol, info["spacing"], masker, info["lung_mask"], title)
        tiles += got
        print(text)
    path = OUT / "mask_neck_to_abdomen.png"
    path.write_bytes(png_bytes(tile_grid(tiles, columns=3)))
    print(path)


if __name__ == "__main__":
    main()
