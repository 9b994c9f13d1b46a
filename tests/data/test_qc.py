"""Preprocessing QC: measures, the robust outlier rule, montages, why lines, qc.html, cached runs, --no-montages."""

import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib import image as mpimg

from ctmil.data.preprocess import MANIFEST_COLUMNS, preprocess_cases
from ctmil.data.qc import (NOTHING_FLAGGED, QC_MEASURES, REPORT_COLUMNS, CaseTrace, case_montage, flag_outliers,
                           montage_picks, robust_z, run_traced, why_line, write_qc_report)
from ctmil.synthetic.chest import make_phantom
from ctmil.synthetic.nifti_writer import write_nifti
from ctmil.transforms import preprocessing_transforms

SPACING = (8.0, 3.6, 3.6)


def write_cohort(folder, n: int = 6) -> list[dict]:
    """``n`` small NIfTI phantoms; the last is cut to 8 of its 24 slices (few kept slices, little lung)."""
    cases = []
    for i in range(n):
        vol, _, _ = make_phantom(i, shape=(24, 96, 96), spacing=SPACING)
        if i == n - 1:
            vol = vol[8:16]
        path = write_nifti(vol, SPACING, folder / f"c{i}.nii.gz")
        cases.append({"case_id": f"c{i}", "image": str(path), "label": i % 2, "source": path.name})
    return cases


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("qc_in"))


def manifest_frame(values: dict, status=None) -> pd.DataFrame:
    n = len(next(iter(values.values())))
    frame = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "status": status or ["ok"] * n,
                          "n_slices_kept": [40] * n, "lung_volume_ml": [4000.0] * n, "box_aspect": [1.8] * n})
    for k, v in values.items():
        frame[k] = v
    return frame


@pytest.mark.parametrize("values, status, flagged", [
    ({"n_slices_kept": [40, 41, 39, 40, 42, 12]}, None, {5: "n_slices_kept low"}),
    ({"lung_volume_ml": [4000, 4100, 3900, 4050, 3950, 9000]}, None, {5: "lung_volume_ml high"}),
    ({"n_slices_kept": [40, 41, 39, 40, 12]}, ["ok", "ok", "ok", "failed", "ok"], {}),  # 4 usable: too few to judge
    ({"n_slices_kept": [40, 40, 40, 40, 40, 41]}, None, {}),  # MAD 0 and a 2.5 % difference: not an outlier
    ({"n_slices_kept": [40, 40, 40, 40, 40, 60]}, None, {5: "n_slices_kept high"}),  # MAD 0: mean-AD fallback
    ({"box_aspect": [1.8] * 6}, None, {}),  # identical cohort
])
def test_outlier_rule(values, status, flagged):
    out = flag_outliers(manifest_frame(values, status))
    for i, text in enumerate(out["qc_flags"]):
        assert (text.startswith(flagged[i]) if i in flagged else text == ""), (i, text)


def test_robust_z_matches_the_modified_z_score():
    z = robust_z([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, MAD 1
    assert np.allclose(z, 0.6745 * np.array([-2, -1, 0, 1, 97]))


def test_traced_run_gives_the_same_bag(cohort):
    transform = preprocessing_transforms()
    item = {"image": cohort[0]["image"], "case_id": "c0", "label": 1}
    bag, trace = run_traced(transform, item)
    plain = transform(dict(item))
    assert set(bag) == set(plain) and all(torch.equal(bag[k], plain[k]) for k in ("patches", "kept_slices", "boxes", "position"))
    assert trace.ct.shape[1] == 24 and trace.mask_full.shape[1] == 24 and trace.mask_kept.shape[1] == len(bag["kept_slices"])


def test_preprocess_writes_measures_flags_montages_and_qc_html(tmp_path, cohort):
    manifest = preprocess_cases(cohort, tmp_path / "out", progress=False)
    assert list(manifest.columns) == MANIFEST_COLUMNS and list(manifest["status"]) == ["ok"] * 6
    assert manifest.loc[5, "qc_flags"].startswith("n_slices_kept low (8 vs median") and (manifest.loc[:4, "qc_flags"] == "").all()
    assert manifest["lung_volume_ml"].between(500, 6000).all() and manifest["box_aspect"].between(1.0, 3.0).all()
    on_disk = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    assert on_disk.loc[5, "qc_flags"] == manifest.loc[5, "qc_flags"]
    png = mpimg.imread(manifest.loc[0, "qc_montage"])
    assert png.shape[1] <= 600 and png.shape[0] > 100 and png[..., :3].std() > 0.05
    shown = json.loads((tmp_path / "out" / "qc" / "c0.json").read_text())["montage_slices"]
    kept = torch.load(manifest.loc[0, "bag_path"], weights_only=True)["kept_slices"].tolist()
    assert len(shown) == 4 and shown == sorted(shown) and set(shown) <= set(kept) and {kept[0], kept[-1]} <= set(shown)
    page = (tmp_path / "out" / "qc.html").read_text()
    assert page.index('data-case-id="c5"') < page.index('data-case-id="c0"')  # flagged first
    assert page.count("data:image/png;base64,") == 6 and "http" not in page

    capped = write_qc_report(manifest, tmp_path / "capped", max_montages=2).read_text()
    assert capped.count("data:image/png;base64,") == 3 and "first 2 of 5 unflagged cases" in capped  # + the flagged one

    again = preprocess_cases(cohort, tmp_path / "out", progress=False)
    assert list(again["status"]) == ["cached"] * 6
    pd.testing.assert_frame_equal(again.drop(columns="status"), manifest.drop(columns="status"))


def test_no_montages_still_measures_and_says_so(tmp_path, cohort):
    manifest = preprocess_cases(cohort, tmp_path / "out", progress=False, montages=False)
    assert (manifest["qc_montage"] == "").all() and manifest.loc[5, "qc_flags"] != ""
    assert not list((tmp_path / "out" / "qc").glob("*.png"))
    page = (tmp_path / "out" / "qc.html").read_text()
    assert "Montages were turned off" in page and "data:image" not in page
    with_montages = preprocess_cases(cohort, tmp_path / "out", progress=False)  # QC record lacks a montage: made again
    assert list(with_montages["status"]) == ["ok"] * 6 and (with_montages["qc_montage"] != "").all()


def test_a_montage_of_an_older_layout_is_drawn_again(tmp_path, cohort):
    first = preprocess_cases(cohort[:5], tmp_path / "out", progress=False)
    assert list(preprocess_cases(cohort[:5], tmp_path / "out", progress=False)["status"]) == ["cached"] * 5
    sidecar = Path(first.loc[0, "qc_montage"]).with_suffix(".json")
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**record, "montage_revision": record["montage_revision"] - 1}))
    again = preprocess_cases(cohort[:5], tmp_path / "out", progress=False)
    assert list(again["status"]) == ["ok"] + ["cached"] * 4


def test_qc_html_renders_in_chromium(tmp_path, cohort):
    from tests.report._chromium import dom_cards, dom_images, render, screenshot_is_drawn, table_rows

    preprocess_cases(cohort, tmp_path / "out", progress=False)
    dom, shot = render(tmp_path / "out" / "qc.html", tmp_path / "qc.png")
    flagged = table_rows(dom, "flagged")
    flags_column = REPORT_COLUMNS.index("qc_flags")
    assert [r[0] for r in flagged] == ["c5"] and flagged[0][flags_column].startswith("n_slices_kept low")
    assert [r[0] for r in table_rows(dom, "cases")] == [f"c{i}" for i in range(6)]
    cards = dom_cards(dom)
    assert [c["data-case-id"] for c in cards] == ["c5", "c0", "c1", "c2", "c3", "c4"] and cards[0]["data-flagged"] == "1"
    assert cards[0]["data-why"].startswith("number of lung slices kept 8 is far below the cohort's median")
    assert all(c["data-why"] == NOTHING_FLAGGED for c in cards[1:])
    images = dom_images(dom)
    assert len(images) == 6 and all(i["src"].startswith("data:image/png") and i["data-natural-width"] == "600" for i in images)
    assert screenshot_is_drawn(shot)


def test_cli_preprocess_writes_qc_and_no_montages_turns_them_off(tmp_path, cohort):
    from ctmil.cli import main

    pd.DataFrame({"case_id": [c["case_id"] for c in cohort], "image": [c["image"] for c in cohort]}).to_csv(
        tmp_path / "list.csv", index=False)
    assert main(["preprocess", str(tmp_path / "list.csv"), "--out", str(tmp_path / "on"), "-q"]) == 0
    assert len(list((tmp_path / "on" / "qc").glob("*.png"))) == 6 and (tmp_path / "on" / "qc.html").is_file()
    assert main(["preprocess", str(tmp_path / "list.csv"), "--out", str(tmp_path / "off"), "-q", "--no-montages"]) == 0
    manifest = pd.read_csv(tmp_path / "off" / "manifest.csv", keep_default_na=False)
    assert not list((tmp_path / "off" / "qc").glob("*.png")) and manifest["qc_flags"].str.startswith("n_slices_kept low").sum() == 1


def test_slice_images_have_no_volume_but_an_area(tmp_path):
    """Without a spacing there are no millilitres: lung_volume_ml is empty and lung_area_px (pixels) says the size."""
    from PIL import Image

    vol, _, _ = make_phantom(1, shape=(24, 96, 96), spacing=SPACING)
    folder = tmp_path / "slices"
    folder.mkdir()
    for s, image in enumerate(np.clip((vol.astype(np.float32) + 1350) / 1500, 0, 1)):
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"s{s:03d}.png")
    nifti = write_nifti(vol, SPACING, tmp_path / "c.nii.gz")
    manifest = preprocess_cases([{"case_id": "png", "image": str(folder)}, {"case_id": "nii", "image": str(nifti)}],
                                tmp_path / "out", progress=False, montages=False).set_index("case_id")
    assert pd.isna(manifest.loc["png", "lung_volume_ml"]) and manifest.loc["nii", "lung_volume_ml"] > 100
    assert manifest.loc["png", "lung_area_px"] > 500 and manifest.loc["nii", "lung_area_px"] > 500
    written = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False).set_index("case_id")
    assert written.loc["png", "lung_volume_ml"] == ""


def test_crop_shares_are_in_the_manifest_the_bag_and_qc_html(tmp_path, cohort):
    manifest = preprocess_cases(cohort[:5], tmp_path / "out", progress=False, montages=False)
    for column in ("box_height_share", "box_width_share"):
        assert manifest[column].between(0.3, 1.0).all(), manifest[column]
    bag = torch.load(manifest.loc[0, "bag_path"], weights_only=True)
    assert bag["meta"]["crop"] == {k: manifest.loc[0, k] for k in ("box_height_share", "box_width_share")}
    assert "box_height_share" in (tmp_path / "out" / "qc.html").read_text()


@pytest.mark.parametrize("share,flagged", [(0.45, True), (0.80, False)])
def test_a_box_small_for_its_body_is_flagged(share, flagged):
    frame = manifest_frame({"box_height_share": [0.80, 0.82, 0.79, 0.81, 0.80, share]})
    out = flag_outliers(frame)
    assert out.loc[5, "qc_flags"].startswith("box_height_share low") == flagged


# Montage slices: areas are the lung-mask pixel counts of the kept slices; the picks are positions in the kept range.
@pytest.mark.parametrize("areas, picks", [
    ([1, 2, 3, 4, 9, 5, 4, 3, 2, 1], [(0, "first kept"), (4, "largest lung"), (6, "midway"), (9, "last kept")]),
    ([1, 9, 3, 4, 5, 5, 4, 3, 2, 1], [(0, "first kept"), (1, "largest lung"), (5, "midway"), (9, "last kept")]),
    ([1, 2, 3, 4, 5, 5, 4, 3, 9, 1], [(0, "first kept"), (4, "midway"), (8, "largest lung"), (9, "last kept")]),
    ([1, 2, 3, 4, 5, 9, 1], [(0, "first kept"), (2, "midway"), (5, "largest lung"), (6, "last kept")]),
    ([9, 2, 3, 4, 1], [(0, "first kept + largest lung"), (2, "midway"), (4, "last kept")]),
    ([1, 2, 3, 4, 9], [(0, "first kept"), (2, "midway"), (4, "largest lung + last kept")]),
    ([1, 5, 5, 1], [(0, "first kept"), (1, "largest lung"), (2, "midway"), (3, "last kept")]),  # ties: the first
    ([1, 5, 2], [(0, "first kept"), (1, "largest lung"), (2, "last kept")]),  # 3 kept: no midway left to show
    ([3, 5], [(0, "first kept"), (1, "largest lung + last kept")]),
    ([4], [(0, "first kept + largest lung + last kept")]),
])
def test_montage_picks_the_largest_slice_both_ends_and_one_between(areas, picks):
    assert montage_picks(areas) == picks


def synthetic_case(areas: list[int], first: int = 5, size: int = 40) -> tuple[dict, CaseTrace]:
    """A bag and trace whose kept slice ``j`` (CT slice ``first + j``) has a square lung mask of ``areas[j]`` pixels."""
    n = len(areas)
    ct = np.full((1, first + n + 3, size, size), -1000.0, np.float32)
    mask = np.zeros((1, n, size, size), bool)
    boxes = []
    for j, area in enumerate(areas):
        side = int(round(area**0.5))
        mask[0, j, 4 : 4 + side, 4 : 4 + side] = True
        ct[0, first + j, 4 : 4 + side, 4 : 4 + side] = -850.0
        boxes.append([2, 2, 6 + side, 6 + side])
    bag = {"case_id": "s", "kept_slices": torch.arange(first, first + n), "boxes": torch.tensor(boxes),
           "meta": {"spacing": (5.0, 1.0, 1.0), "intensity": "hu"}}
    return bag, CaseTrace(ct=ct, mask_full=np.zeros((1, first + n + 3, size, size), bool), mask_kept=mask, stride=1)


@pytest.mark.parametrize("areas", [
    [16, 25, 36, 49, 400, 81, 64, 49, 36, 16],  # largest at kept position 4: not one of 4 evenly spaced (0, 3, 6, 9)
    [16, 400, 36, 49, 81, 81, 64, 49, 36, 16],
    [16, 25, 36, 49, 81, 400, 16],  # 7 kept: evenly spaced would be 0, 2, 4, 6
    [100, 400, 144],
])
def test_montage_shows_the_largest_lung_slice_and_both_ends(areas):
    bag, trace = synthetic_case(areas)
    kept = bag["kept_slices"].tolist()
    data, shown = case_montage(bag, trace)
    largest = kept[int(np.argmax(areas))]
    assert largest in shown and {kept[0], kept[-1]} <= set(shown) and len(shown) == min(4, len(kept))
    assert shown == sorted(set(shown)) and set(shown) <= set(kept)
    png = mpimg.imread(io.BytesIO(data))
    assert png.shape[1] == 600
    label_rows = png[:20, :, :3]  # each tile's label strip: white text on black, above the slice
    for half in (label_rows[:, :298], label_rows[:, 302:]):
        assert (half.min(axis=2) > 0.9).any() and (half.max(axis=2) < 0.1).mean() > 0.5


def test_montage_of_a_phantom_shows_its_largest_lung_slice(cohort):
    bag, trace = run_traced(preprocessing_transforms(), {"image": cohort[0]["image"], "case_id": "c0", "label": 1})
    kept = bag["kept_slices"].tolist()
    areas = trace.mask_kept[0].reshape(len(kept), -1).sum(axis=1)
    _, shown = case_montage(bag, trace)
    assert kept[int(np.argmax(areas))] in shown and {kept[0], kept[-1]} <= set(shown)
    assert len(shown) == min(4, len(kept)) and shown == sorted(shown)


# why_line: one outlier per measure, flagged by the real rule, said in plain words.
WHY = {
    "n_slices_kept": ([40, 41, 39, 40, 42, 12], "number of lung slices kept 12 is far below the cohort's median 40"),
    "lung_volume_ml": ([6400, 6495, 6495, 6495, 6600, 16],
                       "lung volume 16 mL is far below the cohort's median 6,495 mL"),
    "lung_area_px": ([9000, 9100, 8900, 9050, 9000, 300],
                     "lung area per lung slice 300 pixels is far below the cohort's median 9,000 pixels"),
    "box_aspect": ([1.8, 1.82, 1.79, 1.81, 1.8, 3.0],
                   "crop box's width / height 3.00 is far above the cohort's median 1.80"),
    "box_height_share": ([0.80, 0.82, 0.79, 0.81, 0.80, 0.45],
                         "crop box's share of the body's height 45% is far below the cohort's median 80%"),
    "box_width_share": ([0.80, 0.82, 0.79, 0.81, 0.80, 0.99],
                        "crop box's share of the body's width 99% is far above the cohort's median 80%"),
}


@pytest.mark.parametrize("measure", QC_MEASURES)  # a new measure without plain words fails here (KeyError)
def test_why_line_says_each_measure_in_plain_words(measure):
    values, expected = WHY[measure]
    flags = flag_outliers(manifest_frame({measure: values}))["qc_flags"]
    assert flags[5].startswith(measure) and (flags[:5] == "").all()
    assert why_line(flags[5]) == expected and measure not in expected


@pytest.mark.parametrize("flags, expected", [
    ("", NOTHING_FLAGGED),
    (float("nan"), NOTHING_FLAGGED),  # a manifest read back without keep_default_na
    (None, NOTHING_FLAGGED),
    ("lung_volume_ml low (16 vs median 6495, z -8.2); box_aspect high (3 vs median 1.8, z +5.0)",
     "lung volume 16 mL is far below the cohort's median 6,495 mL (and 1 more)"),
    ("lung_volume_ml high (1.234e+04 vs median 6495, z +9.9)",
     "lung volume 12,340 mL is far above the cohort's median 6,495 mL"),
    ("bowel_gas_share high (0.3 vs median 0.01, z +7.0)", "bowel_gas_share 0.3 is far above the cohort's median 0.01"),
    ("no lung slice found; n_slices_kept low (8 vs median 16.5, z -11.5)", "no lung slice found (and 1 more)"),
])
def test_why_line_of_no_flags_several_flags_and_unknown_reasons(flags, expected):
    assert why_line(flags) == expected


def test_qc_html_says_why_under_each_card(tmp_path):
    png = tmp_path / "m.png"
    mpimg.imsave(png, np.linspace(0, 1, 64).reshape(8, 8))
    frame = manifest_frame({"lung_volume_ml": [6400, 6495, 6495, 6495, 6600, 16]})
    frame = flag_outliers(frame.assign(label=0, n_slices=60, box_height_share=0.8, box_width_share=0.8, warning="",
                                       qc_montage=str(png)))
    page = write_qc_report(frame, tmp_path / "out").read_text()
    captions = {case: html.unescape(text) for case, text in
                re.findall(r'<figure class="card" data-case-id="([^"]+)"[^>]*>.*?<figcaption>(.*?)</figcaption>', page)}
    assert list(captions) == ["c5", "c0", "c1", "c2", "c3", "c4"]  # flagged first
    assert captions["c5"].startswith("c5: lung volume 16 mL is far below the cohort's median 6,495 mL. ")
    assert all(captions[f"c{i}"].startswith(f"c{i}: looks like the others. ") for i in range(5))
