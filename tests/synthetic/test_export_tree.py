"""The messy hospital export tree: the manifest points at the right series, and the junk is there."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctmil.synthetic.export_tree import write_export_tree
from ctmil.synthetic.phantoms import make_phantom
from tests.synthetic._helpers import TINY, read_series_hu


@pytest.fixture(scope="module")
def export_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return root, write_export_tree(root, 3, seed=1)


def _headers(root: Path) -> dict[Path, pydicom.Dataset]:
    """Every file under root that pydicom can parse and that has a SeriesInstanceUID."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # junk
                continue
            if "SeriesInstanceUID" in ds:
                out[path] = ds
    return out


def test_export_manifest_points_to_largest_axial_series(export_tree):
    root, manifest = export_tree
    headers = _headers(root)
    assert len(manifest) == 3 and len({m["study_uid"] for m in manifest}) == 3
    assert sorted(m["label"] for m in manifest) == [0, 0, 1]
    for entry in manifest:
        series: dict[str, list[pydicom.Dataset]] = {}
        for ds in headers.values():
            if ds.StudyInstanceUID == entry["study_uid"]:
                series.setdefault(ds.SeriesInstanceUID, []).append(ds)
        kinds = {v["kind"]: uid for uid, v in entry["series"].items()}
        assert set(kinds) == {"axial", "thick", "localizer", "dose_sr", "corrupt"}
        assert kinds["axial"] == entry["series_uid"] and set(series) == set(entry["series"])
        for uid, spec in entry["series"].items():
            assert len(series[uid]) == spec["n_files"] == len(spec["files"])
            assert all((root / f).is_file() for f in spec["files"])
        axial_ct = {
            uid: len(dss) for uid, dss in series.items()
            if dss[0].Modality == "CT" and "AXIAL" in dss[0].ImageType
        }
        assert max(axial_ct, key=axial_ct.get) == entry["series_uid"] == kinds["axial"]
        assert len(series[entry["series_uid"]]) == entry["n_slices"] == 24
        loc = series[kinds["localizer"]]
        assert 1 <= len(loc) <= 2 and all("LOCALIZER" in d.ImageType for d in loc)
        assert all([float(v) for v in d.ImageOrientationPatient] != [1, 0, 0, 0, 1, 0] for d in loc)
        sr = series[kinds["dose_sr"]][0]
        assert sr.Modality == "SR"
        full = pydicom.dcmread(root / entry["series"][kinds["dose_sr"]]["files"][0])
        assert "PixelData" not in full
        broken = pydicom.dcmread(root / entry["series"][kinds["corrupt"]]["files"][0])
        with pytest.raises(Exception):
            broken.pixel_array


def test_export_tree_is_messy(export_tree):
    root, manifest = export_tree
    export = root / "EXPORT"
    files = [Path(d) / f for d, _, fs in os.walk(export) for f in fs]
    names = {p.name for p in files}
    assert {"DICOMDIR", "README.txt", ".DS_Store", "IM000000", "IM999999.dcm", "IM999998"} <= names
    assert (export / "DICOMDIR").is_file() and "PixelData" not in pydicom.dcmread(export / "DICOMDIR")
    assert any(p.stat().st_size == 0 for p in files)
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(export / "README.txt")
    images = [p for p in files if p.name.startswith("IM") and p.stat().st_size > 0]
    assert any(p.suffix == ".dcm" for p in images) and any(p.suffix == "" for p in images)
    assert all(len(p.relative_to(export).parts) == 3 for p in images)  # EXPORT/<a>/<b>/IM...
    # several studies share folders, and one series is spread over several folders
    study_of = {f: m["study_uid"] for m in manifest for s in m["series"].values() for f in s["files"]}
    per_folder: dict[Path, set] = {}
    for rel, study in study_of.items():
        per_folder.setdefault((root / rel).parent, set()).add(study)
    assert max(len(v) for v in per_folder.values()) >= 2
    axial_files = next(s["files"] for s in manifest[0]["series"].values() if s["kind"] == "axial")
    assert len({(root / f).parent for f in axial_files}) >= 2


def test_export_tree_from_given_volumes(tmp_path):
    vol, _, info = make_phantom(9, severe=True, **TINY)
    manifest = write_export_tree(tmp_path, [{"case_id": "given", "volume": vol, "spacing": info["spacing"],
                                             "label": info["label"]}], seed=0)
    (entry,) = manifest
    assert entry["case_id"] == "given" and entry["label"] == 1 and entry["n_slices"] == TINY["shape"][0]
    files = entry["series"][entry["series_uid"]]["files"]
    hu, _ = read_series_hu([tmp_path / f for f in files])
    np.testing.assert_array_equal(hu, vol)
