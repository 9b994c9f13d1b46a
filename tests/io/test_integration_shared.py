"""Integration tests on the real public samples in ../shared/data (skipped when the folder is absent)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from ctmil.io.discovery import discover_cases
from ctmil.io import scan_dicom_tree
from ctmil.transforms import LoadCT, LungMask, preprocessing_transforms
from tests.conftest import shared_data

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def thorax_bag():
    path = shared_data("thorax_ct_dicom")
    return preprocessing_transforms(max_slices=None)({"image": str(path), "case_id": "thorax", "label": None})  # every lung slice


def test_thorax_series_is_found_and_ordered():
    path = shared_data("thorax_ct_dicom")
    studies, skipped = scan_dicom_tree(path)
    assert len(studies) == 1 and not skipped
    img = LoadCT()(str(path))
    assert tuple(img.shape) == (1, 141, 512, 512)
    assert img.meta["spacing"][0] == pytest.approx(2.0) and img.meta["intensity"] == "hu"
    z = (img.affine @ torch.tensor([[0.0, 0, 0, 1], [140.0, 0, 0, 1]], dtype=torch.float64).T)[2]
    assert float(z[1] - z[0]) == pytest.approx(280.0)  # slices inferior → superior, 2 mm apart
    assert -1100 < float(img.min()) < -900  # HU: air after the rescale intercept


def test_thorax_bag_boxes_contain_the_lungs(thorax_bag):
    img = LoadCT()(str(shared_data("thorax_ct_dicom")))
    hu = np.asarray(img[0])
    kept, boxes = thorax_bag["kept_slices"].numpy(), thorax_bag["boxes"].numpy()
    assert 60 < kept.size < 141 and thorax_bag["patches"].shape == (12 * kept.size, 2, 60, 60)
    assert thorax_bag["meta"]["n_lung_slices"] == kept.size  # no sampling asked for
    middle = slice(kept.size // 4, 3 * kept.size // 4)  # mid-chest: no bowel gas in the HU range of lung
    for s, (r0, c0, r1, c1) in zip(kept[middle], boxes[middle]):
        # lung parenchyma (-950..-500 HU); outside air and the couch excluded by a body test
        body = ndimage.binary_fill_holes(ndimage.binary_opening(hu[s] > -300, iterations=3))
        body_labels, _ = ndimage.label(body)
        body = body_labels == np.argmax(np.bincount(body_labels.ravel())[1:]) + 1  # the patient, not the couch
        rows, cols = np.nonzero(body & (hu[s] > -950) & (hu[s] < -500))
        inside = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
        assert inside.mean() > 0.97, s
    assert float(thorax_bag["patches"].min()) == 0.0 and float(thorax_bag["patches"].max()) == 1.0


def test_thorax_lung_volume_is_plausible():
    img = LoadCT()(str(shared_data("thorax_ct_dicom")))
    mask = np.asarray(LungMask(slice_axis=1)(img))[0]  # LoadCT's (1, S, H, W)
    litres = mask.sum() * np.prod(img.meta["spacing"]) / 1e6
    assert 2.0 < litres < 9.0  # two adult lungs, generously masked


def test_percovid_patient_folder_becomes_a_bag():
    subjects = shared_data("percovid_sample") / "subjects"
    folder = sorted(subjects.iterdir())[0]
    bag = preprocessing_transforms()({"image": str(folder), "case_id": folder.name, "label": 1})
    n_files = len(list(folder.glob("*.png")))
    assert bag["meta"]["input_kind"] == "slices" and bag["meta"]["spatial_shape"][0] == n_files
    assert 0 < bag["kept_slices"].numel() <= n_files
    assert bag["patches"].shape[0] == 12 * bag["kept_slices"].numel() and float(bag["label"]) == 1.0
    boxes = bag["boxes"].numpy()
    assert np.all(boxes[:, 2] - boxes[:, 0] > 60) and np.all(boxes[:, 3] - boxes[:, 1] > 100)  # both lungs, not one


def test_percovid_subjects_folder_discovers_one_case_per_patient():
    subjects = shared_data("percovid_sample") / "subjects"
    cases = discover_cases([subjects])
    assert sorted(c["case_id"] for c in cases) == sorted(p.name for p in subjects.iterdir() if p.is_dir())
    assert all(not c["error"] for c in cases)
