"""Make the pictures of docs/pacs.md: the Secondary Capture overlay ctmil writes into a study (its pixels as a PNG) and
the SR's content tree (pasted between the ``sr-tree`` markers of docs/pacs.md).

A severe phantom (seed 3, 55 % of the lung involved) is written as a DICOM study and predicted with ``--dicom`` by the model given (``make demo``
writes one trained on phantoms: ``out/demo/cv/model.pt``); without ``--model`` an untrained, seeded MILNet predicts,
so the probability and attention mean nothing and only the format is shown.

Run: .venv/bin/python docs/make_pacs_pictures.py [--model out/demo/cv/model.pt]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctmil.infer.batch import run_inference  # noqa: E402

from ctmil.infer.writer import InferenceOptions  # noqa: E402
from ctmil.infer.dicom_read import sr_content_tree  # noqa: E402
from ctmil.networks import MILNet  # noqa: E402
from ctmil.synthetic.chest import make_phantom  # noqa: E402
from ctmil.synthetic.dicom_writer import write_dicom_series  # noqa: E402

DOCS = Path(__file__).resolve().parent
SPACING = (5.0, 2.7, 2.7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model.pt (default: an untrained, seeded MILNet)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else tmp / "untrained.pt"
        if not args.model:
            torch.manual_seed(0)
            torch.save(MILNet().state_dict(), model)
        vol, _, info = make_phantom(3, shape=(48, 128, 128), spacing=SPACING, severe=True, involvement=0.55)
        write_dicom_series(vol, SPACING, tmp / "export" / "study", rng=0, patient_name="PHANTOM^DOCS", patient_id="DOCS0001",
                           origin=info["origin_lps"])
        predictions, _ = run_inference([tmp / "export"], model, tmp / "out", InferenceOptions(top_slices=1, dicom=True), progress=False)
        row = predictions.iloc[0]
        paths = [tmp / "out" / p for p in str(row["dicom_paths"]).split(";")]
        overlay = next(p for p in paths if p.name.startswith("overlay_"))
        rgb = pydicom.dcmread(overlay).pixel_array.astype(np.uint8)
        picture = Image.fromarray(rgb).resize((rgb.shape[1] * 3, rgb.shape[0] * 3), Image.NEAREST)
        picture.save(DOCS / "img" / "pacs_overlay.png", optimize=True)
        tree = sr_content_tree(next(p for p in paths if p.name == "sr.dcm"))
    doc = DOCS / "pacs.md"
    text = doc.read_text()
    block = f"<!-- sr-tree -->\n```\n{tree}\n```\n<!-- /sr-tree -->"
    doc.write_text(re.sub(r"<!-- sr-tree -->.*?<!-- /sr-tree -->", lambda _: block, text, flags=re.S))
    print(pd.Series(row[["case_id", "probability", "prediction", "threshold"]]).to_string())
    print(f"wrote {DOCS / 'img' / 'pacs_overlay.png'} and the SR tree in {doc} (model: {args.model or 'untrained'})")


if __name__ == "__main__":
    main()
