"""NIfTI writer: both layouts round-trip through nibabel and MONAI, and agree with the DICOM writer in RAS."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest

from ctmil.synthetic.dicom_writer import write_dicom_series
from ctmil.synthetic.phantoms import make_phantom, write_nifti
from tests.synthetic._helpers import TINY, load_monai


@pytest.mark.parametrize("layout", ["ras", "shw"])
def test_nifti_round_trip(tmp_path, mild, layout):
    vol, _, info = mild
    path = write_nifti(vol, info["spacing"], tmp_path / "case.nii.gz", origin=info["origin_lps"], layout=layout)
    img = nib.load(path)
    canonical = nib.as_closest_canonical(img)
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    data = np.asarray(canonical.dataobj)
    assert data.dtype == np.int16
    np.testing.assert_array_equal(data[::-1, ::-1, :].transpose(2, 1, 0), vol)
    # voxel (s, r, c) of the volume and its NIfTI voxel sit at the same RAS position
    s, r, c = 7, 20, 90
    ijk = np.linalg.inv(img.affine) @ (np.asarray(info["affine_ras"]) @ [s, r, c, 1])
    assert np.asarray(img.dataobj)[tuple(np.rint(ijk[:3]).astype(int))] == vol[s, r, c]
    np.testing.assert_array_equal(load_monai(path), vol)


def test_nifti_and_dicom_agree_in_ras(tmp_path):
    from monai.transforms import LoadImage, Orientation

    vol, _, info = make_phantom(2, **TINY)
    write_nifti(vol, info["spacing"], tmp_path / "a.nii.gz")
    write_dicom_series(vol, info["spacing"], tmp_path / "dcm", rng=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = Orientation("RAS")(LoadImage(ensure_channel_first=True)(str(tmp_path / "a.nii.gz")))
        b = Orientation("RAS")(LoadImage(ensure_channel_first=True, reader="PydicomReader")(str(tmp_path / "dcm")))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-4)
