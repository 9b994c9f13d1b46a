"""Every public generator and writer refuses bad arguments with ValueError before writing anything."""

from __future__ import annotations

import numpy as np
import pytest

from ctmil.synthetic.dicom_writer import write_dicom_series
from ctmil.synthetic.export_tree import write_export_tree
from ctmil.synthetic.phantoms import assign_labels, generate_cohort, make_phantom, sample_severity, write_nifti


@pytest.mark.parametrize(
    "call",
    [
        lambda: make_phantom(0, shape=(48, 128)),
        lambda: make_phantom(0, shape=(4, 128, 128)),
        lambda: make_phantom(0, spacing=(5.0, 0.0, 2.7)),
        lambda: make_phantom(0, involvement=0.95),
        lambda: make_phantom(0, couch="wood"),
        lambda: make_phantom(0, dependent_consolidation=0.95),
        lambda: make_phantom(0, dependent_consolidation=-0.1),
        lambda: make_phantom(-1),
        lambda: make_phantom(0, dtype=np.uint8),
        lambda: sample_severity(0, severe_fraction=1.5),
        lambda: assign_labels(0, -1),
        lambda: write_dicom_series(np.zeros((2, 8, 8)), (1.0, 1.0, 1.0), "unused", transfer_syntax="jpeg"),
        lambda: write_dicom_series(np.zeros((8, 8)), (1.0, 1.0, 1.0), "unused"),
        lambda: write_dicom_series(np.zeros((2, 8, 8)), (1.0, 1.0, 1.0), "unused", orientation="oblique"),
        lambda: write_dicom_series(np.zeros((2, 8, 8)), (1.0, 1.0, 1.0), "unused", instance_order="sorted"),
        lambda: write_dicom_series(np.zeros((2, 8, 8)), (1.0, 1.0, 1.0), "unused", rescale_slope=0.0),
        lambda: write_nifti(np.zeros((2, 8, 8)), (1.0, 1.0, 1.0), "x.nii.gz", layout="xyz"),
        lambda: write_nifti(np.zeros((2, 8, 8)), (1.0, 1.0, 1.0), "x.img"),
        lambda: generate_cohort("unused", n=0),
        lambda: generate_cohort("unused", n=2, formats=("png",)),
        lambda: generate_cohort("unused", n=2, transfer_syntax="jpeg"),
        lambda: generate_cohort("unused", n=2, seed=-3),
        lambda: write_export_tree("unused", 0),
    ],
)
def test_bad_arguments(call, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError):
        call()
    assert not any(tmp_path.iterdir())  # nothing written before validation
