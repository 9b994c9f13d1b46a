"""ctmil infer's report.html: predictions, failed cases and the overlay gallery, in a real browser too."""

import html
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ctmil.infer.batch import run_inference
from ctmil.infer.writer import InferenceOptions, predictions_frame, write_report
from ctmil.networks import MILNet
from ctmil.report import external_references
from ctmil.synthetic.phantoms import make_phantom, write_nifti
from tests.report._chromium import dom_cards, dom_images, render, screenshot_is_drawn, table_rows

SHAPE, SPACING = (16, 96, 96), (15.0, 3.6, 3.6)
IDS = ["a<b>&c", "n2", "broken"]


@pytest.fixture(scope="module")
def inferred(tmp_path_factory):
    """Two NIfTI phantoms (one with an id that needs escaping) and a broken file, predicted with 2 overlays each."""
    root = tmp_path_factory.mktemp("infer_report")
    for i, name in enumerate(("p0", "p1")):
        vol, _, info = make_phantom(i, shape=SHAPE, spacing=SPACING)
        write_nifti(vol, SPACING, root / "in" / f"{name}.nii.gz", origin=info["origin_lps"])
    (root / "in" / "broken.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    pd.DataFrame({"case_id": IDS, "image": ["p0.nii.gz", "p1.nii.gz", "broken.nii.gz"], "label": ["1", "0", ""]}).to_csv(
        root / "in" / "list.csv", index=False)
    torch.manual_seed(0)
    torch.save(MILNet().state_dict(), root / "model.pt")
    predictions, n_failed = run_inference([root / "in" / "list.csv"], root / "model.pt", root / "out", InferenceOptions(top_slices=2), progress=False)
    return {"out": root / "out", "predictions": predictions, "n_failed": n_failed}


def test_report_lists_predictions_failures_and_overlays(inferred):
    page = (inferred["out"] / "report.html").read_text(encoding="utf-8")
    assert external_references(page) == [] and "<script" not in page
    ok = inferred["predictions"].query("status != 'failed'")
    assert inferred["n_failed"] == 1 and len(ok) == 2
    assert page.count('<figure class="card"') == 4 and page.count("data:image/png;base64,") == 4
    assert page.count(f'data-case-id="{html.escape("a<b>&c")}"') == 2 and "a<b>" not in page
    for row in ok.itertuples():
        assert f"probability {row.probability:.3f}" in page
    assert '<table class="ctmil-table" id="failed">' in page and "broken" in page.split('id="failed"')[1]


def test_no_overlays_and_no_report_options(tmp_path, inferred):
    frame = pd.read_csv(inferred["out"] / "predictions.csv", keep_default_na=False)
    page = write_report(predictions_frame(frame.to_dict("records")), tmp_path,
                        InferenceOptions(save_overlays=False)).read_text()
    assert "Overlays were turned off" in page and "<figure" not in page and 'id="predictions"' in page
    empty = write_report(predictions_frame([]), tmp_path / "empty", InferenceOptions()).read_text()
    assert "0 cases" in empty and "No case failed." in empty and "No overlay was written" in empty
    assert InferenceOptions().write_report and not InferenceOptions(write_report=False).write_report
    shutil.copytree(inferred["out"], tmp_path / "copy")
    capped = write_report(predictions_frame(frame.to_dict("records")), tmp_path / "copy", InferenceOptions(report_max_overlays=3)).read_text()
    assert capped.count('<figure class="card"') == 3 and "3 of 4 overlays are shown" in capped


def test_report_renders_in_chromium(inferred, tmp_path):
    dom, shot = render(inferred["out"] / "report.html", tmp_path / "report.png")
    assert 'data-probe="done"' in dom and screenshot_is_drawn(shot)
    rows = table_rows(dom, "predictions")
    assert [r[0] for r in rows] == IDS and [r[1] for r in rows] == ["ok", "ok", "failed"]
    probs = inferred["predictions"]["probability"].tolist()
    assert [float(r[2]) for r in rows[:2]] == pytest.approx(probs[:2], abs=1e-3) and rows[2][2] == ""
    assert [r[0] for r in table_rows(dom, "failed")] == ["broken"]
    images = dom_images(dom)
    assert len(images) == 4 and all(i["src"].startswith("data:image/png;base64,") for i in images)
    written = sorted(Image.open(f).size[0] for f in (inferred["out"] / "cases").rglob("overlay_*.png"))
    assert written[0] >= 512  # the slice is drawn at least 512 px wide, beside its colour bar
    assert all(i["data-complete"] == "true" for i in images)  # decoded at the size written
    assert sorted(int(i["data-natural-width"]) for i in images) == written
    cards = dom_cards(dom)
    order = np.argsort(-np.asarray(probs[:2]), kind="stable")
    assert [c["data-case-id"] for c in cards] == [IDS[k] for k in order for _ in range(2)]
    assert [c["data-rank"] for c in cards] == ["1", "2", "1", "2"]
