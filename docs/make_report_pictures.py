"""Make the pictures of docs/reports.md from phantoms: a QC montage, and screenshots of qc.html and of
ctmil infer's report.html rendered by headless Chromium (skipped, with a message, when it is not installed).

Six small NIfTI phantoms (the last cut to 8 of its 24 slices, so QC flags it) are preprocessed, and two of them
are predicted by an *untrained* MILNet (seeded): the probabilities in the picture mean nothing, the layout is
what it shows. Screenshots are reduced to a 192-colour palette so each PNG stays well under 200 KB.

Run: .venv/bin/python docs/make_report_pictures.py
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctmil.data.preprocess import preprocess_cases  # noqa: E402
from ctmil.infer.batch import run_inference  # noqa: E402
from ctmil.infer.writer import InferenceOptions  # noqa: E402
from ctmil.networks import MILNet  # noqa: E402
from ctmil.synthetic.phantoms import make_phantom, write_nifti  # noqa: E402

IMG = Path(__file__).with_name("img")
SPACING = (8.0, 3.6, 3.6)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def write_inputs(folder: Path) -> list[dict]:
    cases = []
    for i in range(6):
        vol, _, info = make_phantom(i, shape=(24, 96, 96), spacing=SPACING)
        if i == 5:
            vol = vol[8:16]
        path = write_nifti(vol, SPACING, folder / f"case{i}.nii.gz", origin=info["origin_lps"])
        cases.append({"case_id": f"case{i}", "image": str(path), "label": int(i % 3 == 0), "source": path.name})
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    return cases


def shrink_png(src: Path, dst: Path, width: int = 900) -> Path:
    """``src`` resized to ``width`` pixels across and saved as a 256-colour PNG."""
    with Image.open(src) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
        im.quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
    return dst


def screenshot(page: Path, dst: Path, window=(1000, 1250)) -> Path | None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        logging.warning("chromium not found: %s not made", dst.name)
        return None
    with tempfile.TemporaryDirectory() as work:
        raw = Path(work) / "shot.png"
        subprocess.run([binary, *FLAGS, f"--user-data-dir={work}/profile", f"--screenshot={raw}",
                        f"--window-size={window[0]},{window[1]}", page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
        return shrink_png(raw, dst)


def main() -> list[Path]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    IMG.mkdir(exist_ok=True)
    made = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases = write_inputs(root / "in")
        manifest = preprocess_cases(cases, root / "prep", progress=False)
        made.append(shrink_png(Path(manifest.loc[5, "qc_montage"]), IMG / "qc_montage.png", width=600))
        made.append(screenshot(root / "prep" / "qc.html", IMG / "report_qc.png"))
        pd.DataFrame({"case_id": ["case0", "case3", "broken"], "image": ["case0.nii.gz", "case3.nii.gz", "broken.nii.gz"],
                      "label": ["1", "1", ""]}).to_csv(root / "in" / "infer.csv", index=False)
        torch.manual_seed(0)
        torch.save(MILNet().state_dict(), root / "model.pt")
        run_inference([root / "in" / "infer.csv"], root / "model.pt", root / "infer", InferenceOptions(top_slices=2), progress=False)
        made.append(screenshot(root / "infer" / "report.html", IMG / "report_infer.png"))
    made = [p for p in made if p is not None]
    for p in made:
        logging.info("%s: %d KB", p, p.stat().st_size // 1024)
    return made


if __name__ == "__main__":
    main()
