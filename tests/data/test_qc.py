"""Preprocessing QC: measures, the robust outlier rule, montages, qc.html, cached runs, --no-montages."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib import image as mpimg

from ctmil.data.preprocess import MANIFEST_COLUMNS, preprocess_cases
from ctmil.data.qc import REPORT_COLUMNS, flag_outliers, robust_z, run_traced, write_qc_report
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
