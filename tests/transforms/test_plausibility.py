"""A lung mask that cannot be an adult's lungs fails the case, never "ok" (issue 23 point 3): the rule, the chain,
``ctmil preprocess`` and ``ctmil infer``, and ``--allow-implausible-lungs``.

The hostile input is an abdomen without lungs (the slices of a neck-to-abdomen phantom below the lung bases): the
only enclosed air is bowel gas, which is what the real pneumonia CT's "lung" was before the mask was fixed.
"""

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ctmil.cli import main
from ctmil.data.preprocess import preprocess_cases
from ctmil.infer.batch import run_inference
from ctmil.infer.writer import InferenceOptions
from ctmil.synthetic.phantoms import make_phantom, write_nifti
from ctmil.transforms import CheckLungs, ImplausibleLungs, preprocessing_transforms
from ctmil.transforms.plausibility import MIN_AREA_FRACTION, MIN_LUNG_SHARE

GEOMETRY = dict(shape=(80, 160, 160), spacing=(3.0, 2.2, 2.2))
NAN = float("nan")


@pytest.mark.parametrize("measures, expected", [
    ({"lung_share": 0.03, "area_fraction": 0.001, "volume_ml": 16.0, "extent_mm": 16.0},
     "lung mask implausible: 16 mL over 16 mm, lungs 3% of the chest's cross-section (at least 7% expected)"),
    ({"lung_share": 0.05, "area_fraction": 0.015, "volume_ml": NAN, "extent_mm": NAN},
     "lung mask implausible: lungs 5% of the chest's cross-section (at least 7% expected), 1.5% of the slice area "
     "(at least 2% expected)"),
    ({"lung_share": 0.30, "area_fraction": 0.012, "volume_ml": NAN, "extent_mm": NAN},
     "lung mask implausible: 1.2% of the slice area (at least 2% expected)"),
    ({"lung_share": 0.30, "area_fraction": 0.001, "volume_ml": 99.0, "extent_mm": 16.0}, None),  # small, yet a chest
    ({"lung_share": 0.25, "area_fraction": 0.25, "volume_ml": NAN, "extent_mm": NAN}, None),
    ({"lung_share": MIN_LUNG_SHARE, "area_fraction": MIN_AREA_FRACTION, "volume_ml": NAN, "extent_mm": NAN}, None),
])
def test_reason(measures, expected):
    assert CheckLungs().reason(measures) == expected


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="lung bounds"):
        CheckLungs(min_lung_share=2.0)


@pytest.fixture(scope="module")
def abdomen():
    """An upper abdomen without lungs, and a whole neck-to-abdomen scan of the same phantom."""
    vol, _, info = make_phantom(0, field_of_view="neck_to_abdomen", **GEOMETRY)
    return vol[: info["lung_slices"][0] - 1], vol, info["spacing"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, abdomen):
    """NIfTI files of the abdomen and the whole scan, and slice-image folders of both."""
    below, whole, spacing = abdomen
    root = tmp_path_factory.mktemp("plausibility")
    for name, vol in (("abdomen", below), ("chest", whole)):
        write_nifti(vol, spacing, root / f"{name}.nii.gz")
        folder = root / f"{name}_slices"
        folder.mkdir()
        windowed = np.clip((vol.astype(np.float32) + 1350) / 1500, 0, 1)
        for s in range(vol.shape[0]):
            Image.fromarray((windowed[s] * 255).astype(np.uint8)).save(folder / f"s{s:03d}.png")
    return root


@pytest.mark.parametrize("kind", ["nifti", "slices"])
def test_an_abdomen_fails_with_a_one_line_reason(inputs, kind):
    path = inputs / ("abdomen.nii.gz" if kind == "nifti" else "abdomen_slices")
    with pytest.raises(Exception) as raised:
        preprocessing_transforms()({"image": str(path), "case_id": "a", "label": None})
    err = raised.value
    while err.__cause__ is not None and not isinstance(err, ImplausibleLungs):
        err = err.__cause__
    assert isinstance(err, ImplausibleLungs) and str(err).startswith("lung mask implausible: ") and "\n" not in str(err)


@pytest.mark.parametrize("kind", ["nifti", "slices"])
def test_allowed_implausible_lungs_make_a_bag_with_the_warning(inputs, kind):
    path = inputs / ("abdomen.nii.gz" if kind == "nifti" else "abdomen_slices")
    bag = preprocessing_transforms(allow_implausible_lungs=True)({"image": str(path), "case_id": "a", "label": None})
    assert bag["patches"].shape[0] > 0 and bag["meta"]["warnings"][0].startswith("lung mask implausible: ")
    lungs = bag["meta"]["lungs"]
    assert lungs["lung_share"] < MIN_LUNG_SHARE
    assert (lungs["volume_ml"] > 0) if kind == "nifti" else math.isnan(lungs["volume_ml"])  # no spacing: no volume


@pytest.mark.parametrize("kind", ["nifti", "slices"])
def test_a_whole_chest_is_plausible_and_measured(inputs, kind):
    path = inputs / ("chest.nii.gz" if kind == "nifti" else "chest_slices")
    bag = preprocessing_transforms()({"image": str(path), "case_id": "c", "label": None})
    lungs = bag["meta"]["lungs"]
    assert "warnings" not in bag["meta"]
    assert lungs["lung_share"] > 2 * MIN_LUNG_SHARE
    if kind == "nifti":
        assert lungs["volume_ml"] > 1000 and lungs["extent_mm"] > 100
    else:
        assert lungs["area_fraction"] > 2 * MIN_AREA_FRACTION


def test_preprocess_fails_the_case_and_allow_keeps_it_with_the_warning(tmp_path, inputs):
    cases = [{"case_id": n, "image": str(inputs / f"{n}.nii.gz"), "label": 1.0} for n in ("abdomen", "chest")]
    strict = preprocess_cases(cases, tmp_path / "strict", progress=False, montages=False).set_index("case_id")
    assert strict.loc["abdomen", "status"] == "failed" and strict.loc["abdomen", "error"].startswith("lung mask implausible: ")
    assert strict.loc["chest", "status"] == "ok" and strict.loc["chest", "error"] == ""
    assert list(pd.read_csv(tmp_path / "strict" / "datalist.csv")["case_id"]) == ["chest"]
    kept = preprocess_cases(cases, tmp_path / "kept", settings={"allow_implausible_lungs": True}, progress=False,
                            montages=False).set_index("case_id")
    assert kept.loc["abdomen", "status"] == "ok" and "lung mask implausible: " in kept.loc["abdomen", "warning"]


@pytest.fixture(scope="module")
def model_path(untrained_model):
    return untrained_model


@pytest.mark.parametrize("allow", [False, True])
def test_infer_writes_no_probability_for_implausible_lungs_unless_allowed(tmp_path, inputs, model_path, allow):
    predictions, n_failed = run_inference([inputs / "abdomen.nii.gz", inputs / "chest.nii.gz"], model_path, tmp_path / "out", InferenceOptions(save_maps=False, save_overlays=False),
                                          progress=False, allow_implausible_lungs=allow)
    rows = predictions.set_index("case_id")
    abdomen, chest = rows.loc["abdomen"], rows.loc["chest"]
    assert chest["status"] == "ok" and 0 <= chest["probability"] <= 1
    if allow:
        assert n_failed == 0 and abdomen["status"] == "ok" and "lung mask implausible: " in abdomen["warning"]
    else:
        assert n_failed == 1 and abdomen["status"] == "failed" and abdomen["error"].startswith("lung mask implausible: ")
        assert pd.isna(abdomen["probability"]) or abdomen["probability"] == ""


@pytest.mark.parametrize("flag, code", [([], 3), (["--allow-implausible-lungs"], 0)])
def test_cli_preprocess_and_infer_say_failed_and_take_the_flag(tmp_path, inputs, model_path, capsys, flag, code):
    from ctmil.cli import EXIT_PARTIAL

    expected = EXIT_PARTIAL if code else 0
    assert main(["preprocess", str(inputs / "abdomen.nii.gz"), "--out", str(tmp_path / "p"), "-q", "--no-montages", *flag]) == expected
    assert main(["infer", str(inputs / "abdomen.nii.gz"), "--model", str(model_path), "--out", str(tmp_path / "i"), "-q",
                 "--no-maps", "--no-overlays", *flag]) == expected
    err = capsys.readouterr().err
    assert ("FAILED abdomen: lung mask implausible: " in err) == bool(code)
