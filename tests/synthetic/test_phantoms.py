"""Tests for the synthetic chest-CT phantom generator and its DICOM / NIfTI writers."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from ctmil.synthetic.dicom_writer import write_dicom_series
from ctmil.synthetic.phantoms import (
    LESION_LABELS,
    SEVERE_THRESHOLD,
    TISSUE_LABELS,
    assign_labels,
    generate_cohort,
    make_phantom,
    sample_severity,
    write_nifti,
)
from ctmil.synthetic.export_tree import write_export_tree

SMALL = dict(shape=(16, 48, 48), spacing=(15.0, 7.2, 7.2))  # same field of view as the default, coarse
TINY = dict(shape=(12, 32, 32), spacing=(20.0, 10.8, 10.8))


@pytest.fixture(scope="module")
def mild():
    return make_phantom(3, severe=False, involvement=0.1)


@pytest.fixture(scope="module")
def severe():
    return make_phantom(4, severe=True)


def _load_monai(path: Path, **kwargs) -> np.ndarray:
    """MONAI LoadImage + Orientation("LPS"), permuted to the phantom's (S, H, W) layout."""
    from monai.transforms import LoadImage, Orientation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = LoadImage(ensure_channel_first=True, **kwargs)(str(path))
        img = Orientation(axcodes="LPS")(img)
    return img[0].numpy().transpose(2, 1, 0)


def _read_series_hu(paths) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """Read files with pydicom, sort by position along the slice normal, return HU (N, rows, cols) and datasets."""
    dss = [pydicom.dcmread(p) for p in paths]
    normal = np.cross(np.array(dss[0].ImageOrientationPatient[:3], float), dss[0].ImageOrientationPatient[3:])
    dss.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, float), normal)))
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
    return hu, dss


# ---------------------------------------------------------------------------------------------------------- content


@pytest.mark.parametrize(
    "tissue, lo, hi",
    [
        ("air", -1010, -985),
        ("fat", -130, -70),
        ("soft", 20, 70),
        ("bone", 300, 1000),
        ("couch", 150, 300),
        ("airway", -1024, -700),
    ],
)
def test_tissue_hu_ranges(mild, tissue, lo, hi):
    vol, _, info = mild
    values = vol[info["tissue_map"] == TISSUE_LABELS[tissue]]
    assert values.size > 20
    assert lo <= np.median(values) <= hi


def test_lung_parenchyma_hu(mild):
    vol, lesion, info = mild
    values = vol[(info["tissue_map"] == TISSUE_LABELS["lung"]) & (lesion == 0)]
    assert -900 <= np.median(values) <= -750
    assert values.std() > 15  # textured, not flat


@pytest.mark.parametrize("kind, lo, hi", [("ggo", -600, -300), ("consolidation", -100, 40)])
def test_lesion_hu(severe, kind, lo, hi):
    vol, lesion, _ = severe
    values = vol[lesion == LESION_LABELS[kind]]
    assert values.size > 100
    assert lo <= np.median(values) <= hi


def test_lesions_inside_lungs(severe):
    _, lesion, info = severe
    assert np.all(info["lung_mask"][lesion > 0])
    assert info["lesion_voxels"] == np.count_nonzero(lesion)


def test_couch_separated_from_body_by_air(mild):
    _, _, info = mild
    tissue = info["tissue_map"][info["shape"][0] // 2]
    col = tissue[:, tissue.shape[1] // 2]  # anterior -> posterior through the midline
    body_rows = np.flatnonzero(np.isin(col, [TISSUE_LABELS[k] for k in ("fat", "soft", "bone")]))
    couch_rows = np.flatnonzero(col == TISSUE_LABELS["couch"])
    assert couch_rows.size and couch_rows.min() > body_rows.max() + 1
    assert np.all(col[body_rows.max() + 1 : couch_rows.min()] == TISSUE_LABELS["air"])


@pytest.mark.parametrize(
    "seed, geometry",
    [(0, {}), (1, SMALL), (2, TINY), (5, dict(shape=(30, 64, 80), spacing=(8.0, 5.4, 4.5)))],
)
def test_lungs_in_middle_not_at_ends(seed, geometry):
    vol, _, info = make_phantom(seed, **geometry)
    lung_area = info["lung_mask"].sum(axis=(1, 2))
    n_s = lung_area.size
    first, last = info["lung_slices"]
    assert first >= 2 and last <= n_s - 3
    assert np.all(lung_area[:2] == 0) and np.all(lung_area[-2:] == 0)
    assert lung_area[n_s // 2] > 0.04 * vol[0].size
    peak = lung_area.max()
    assert lung_area[first] < 0.7 * peak and lung_area[last] < 0.7 * peak  # small at base and apex
    # in HU too: inside the body, end slices have little low-density area compared with mid-chest
    body = np.isin(info["tissue_map"], [TISSUE_LABELS[k] for k in ("fat", "soft", "bone", "lung", "airway", "gas")])
    dark = ((vol < -500) & body).sum(axis=(1, 2))
    assert dark[[0, -1]].max() < 0.15 * dark[n_s // 2]


@pytest.mark.parametrize("seed", [0, 11])
def test_deterministic_per_seed(seed):
    a = make_phantom(seed, **SMALL)
    b = make_phantom(np.random.default_rng(seed), **SMALL)
    c = make_phantom(seed + 1, **SMALL)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2]["involvement"] == b[2]["involvement"]
    assert not np.array_equal(a[0], c[0])


def test_volume_dtype_and_range(mild):
    vol, lesion, info = mild
    assert vol.shape == lesion.shape == info["lung_mask"].shape == (48, 128, 128)
    assert vol.dtype == np.int16 and lesion.dtype == np.uint8
    assert vol.min() >= -1024 and vol.max() <= 3071
    vol_f, _, _ = make_phantom(3, severe=False, involvement=0.1, dtype=np.float32)
    assert vol_f.dtype == np.float32
    np.testing.assert_array_equal(np.rint(vol_f).astype(np.int16), vol)


def test_default_phantom_is_fast():
    make_phantom(0)  # warm-up (imports, FFT plans)
    start = time.perf_counter()
    make_phantom(1)
    assert time.perf_counter() - start < 2.0  # typically ~0.3 s; generous for a shared 2-core machine


# ---------------------------------------------------------------------------------------------------------- labels


@pytest.mark.parametrize("n, fraction, expected", [(40, 0.25, 10), (16, 0.25, 4), (2, 0.25, 1), (3, 0.05, 1)])
def test_assign_labels_counts(n, fraction, expected):
    flags = assign_labels(0, n, fraction)
    assert flags.shape == (n,) and flags.sum() == expected
    assert 0 < flags.sum() < n


def test_sample_severity_rate():
    rng = np.random.default_rng(0)
    draws = [sample_severity(rng) for _ in range(2000)]
    rate = np.mean([d.severe for d in draws])
    assert 0.22 <= rate <= 0.28
    assert all((d.involvement > SEVERE_THRESHOLD) == d.severe for d in draws)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_severe_cases_more_involved(seed):
    _, lesion_s, info_s = make_phantom(seed, severe=True, **SMALL)
    _, lesion_m, info_m = make_phantom(seed, severe=False, **SMALL)
    assert info_s["label"] == 1 and info_m["label"] == 0
    assert info_s["involvement"] > SEVERE_THRESHOLD > info_m["involvement"]
    assert np.count_nonzero(lesion_s == 2) > 5 * max(1, np.count_nonzero(lesion_m == 2))  # large consolidations


@pytest.mark.parametrize("target", [0.0, 0.05, 0.3, 0.5])
def test_involvement_is_controlled(target):
    _, _, info = make_phantom(7, involvement=target, **SMALL)
    assert abs(info["involvement"] - target) < 0.01
    assert info["label"] == int(target > SEVERE_THRESHOLD)


def test_cohort_label_balance(tmp_path):
    table = generate_cohort(tmp_path, n=40, seed=3, formats=("nifti",), progress=False, **TINY)
    assert len(table) == 40 and table["label"].sum() == 10
    assert table.loc[table.label == 1, "involvement"].min() > table.loc[table.label == 0, "involvement"].max()


# ---------------------------------------------------------------------------------------------------------- DICOM


@pytest.mark.parametrize(
    "transfer_syntax, intercept", [("explicit", -1024.0), ("implicit", -1024.0), ("rle", -1024.0), ("explicit", 0.0)]
)
def test_dicom_round_trip(tmp_path, mild, transfer_syntax, intercept):
    vol = mild[0][::3]  # 16 slices keep the test fast
    paths = write_dicom_series(
        vol, (15.0, 2.7, 2.7), tmp_path, rng=5, patient_id="PH0007", patient_name="PHANTOM^0007",
        transfer_syntax=transfer_syntax, rescale_intercept=intercept,
    )
    assert len(paths) == vol.shape[0] and len(set(paths)) == len(paths)
    hu, dss = _read_series_hu(sorted(paths))  # name order
    np.testing.assert_array_equal(hu, vol)
    by_name = [Path(p).name for p in sorted(paths)]
    by_position = [Path(d.filename).name for d in dss]
    assert by_name != by_position  # shuffled names
    d0 = dss[0]
    assert d0.SOPClassUID == pydicom.uid.CTImageStorage and d0.Modality == "CT"
    assert list(d0.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert str(d0.PatientName) == "PHANTOM^0007" and d0.PatientID == "PH0007"
    assert [float(v) for v in d0.PixelSpacing] == [2.7, 2.7]
    assert float(d0.SliceThickness) == float(d0.SpacingBetweenSlices) == 15.0
    assert float(d0.RescaleIntercept) == intercept and d0.PixelRepresentation == int(intercept == 0)
    assert d0.file_meta.TransferSyntaxUID == {"explicit": pydicom.uid.ExplicitVRLittleEndian,
                                              "implicit": pydicom.uid.ImplicitVRLittleEndian,
                                              "rle": pydicom.uid.RLELossless}[transfer_syntax]
    z = [float(d.ImagePositionPatient[2]) for d in dss]
    np.testing.assert_allclose(np.diff(z), 15.0)
    assert [d.InstanceNumber for d in dss] == list(range(len(dss), 0, -1))  # head first, like the scanner
    assert len({d.SeriesInstanceUID for d in dss}) == 1 and len({d.StudyInstanceUID for d in dss}) == 1
    assert len({d.SOPInstanceUID for d in dss}) == len(dss)
    assert all(d.SOPInstanceUID == d.file_meta.MediaStorageSOPInstanceUID for d in dss)


def test_dicom_random_instance_numbers(tmp_path, mild):
    vol = mild[0][::4]
    paths = write_dicom_series(vol, (20.0, 2.7, 2.7), tmp_path, rng=1, instance_order="random")
    hu, dss = _read_series_hu(paths)
    np.testing.assert_array_equal(hu, vol)
    numbers = [d.InstanceNumber for d in dss]
    assert sorted(numbers) == list(range(1, len(dss) + 1))
    assert numbers not in (sorted(numbers), sorted(numbers, reverse=True))


def test_dicom_paths_in_array_order(tmp_path, mild):
    vol = mild[0][::6]
    paths = write_dicom_series(vol, (30.0, 2.7, 2.7), tmp_path, rng=2, shuffle_file_names=False)
    assert [p.name for p in paths] == [f"IM{k + 1:06d}" for k in range(len(paths))]
    for k in (0, len(paths) - 1):
        d = pydicom.dcmread(paths[k])
        np.testing.assert_array_equal(d.pixel_array.astype(np.int32) - 1024, vol[k])


def test_monai_reads_dicom_folder(tmp_path, mild):
    vol, _, info = mild
    write_dicom_series(vol, info["spacing"], tmp_path / "series", rng=0, origin=info["origin_lps"])
    np.testing.assert_array_equal(_load_monai(tmp_path / "series", reader="PydicomReader"), vol)


# ---------------------------------------------------------------------------------------------------------- NIfTI


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
    np.testing.assert_array_equal(_load_monai(path), vol)


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


# ---------------------------------------------------------------------------------------------------------- export tree


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


# ---------------------------------------------------------------------------------------------------------- cohort


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_cohort_layout_and_determinism(tmp_path):
    table = generate_cohort(tmp_path / "a", n=3, seed=5, progress=False, write_masks=True, **TINY)
    assert list(table.columns[:5]) == ["case_id", "label", "involvement", "dicom_dir", "nifti_path"]
    assert set(table.label) == {0, 1}
    csv = pd.read_csv(tmp_path / "a" / "labels.csv")
    assert csv.case_id.tolist() == table.case_id.tolist() and csv.label.tolist() == table.label.tolist()
    for row in csv.itertuples():
        files = sorted((tmp_path / "a" / row.dicom_dir).iterdir())
        assert len(files) == TINY["shape"][0] and not any(f.name.startswith(".") for f in files)
        vol = np.asarray(nib.as_closest_canonical(nib.load(tmp_path / "a" / row.nifti_path)).dataobj)
        assert vol.shape == (32, 32, 12)
        hu, _ = _read_series_hu(files)
        np.testing.assert_array_equal(hu, vol[::-1, ::-1, :].transpose(2, 1, 0))
        lesion = np.asarray(nib.load(tmp_path / "a" / row.lesion_mask_path).dataobj)
        assert (lesion > 0).sum() / max(1, np.asarray(nib.load(tmp_path / "a" / row.lung_mask_path).dataobj).sum()) \
            == pytest.approx(row.involvement, abs=1e-5)
    generate_cohort(tmp_path / "b", n=3, seed=5, progress=False, write_masks=True, **TINY)
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")
    generate_cohort(tmp_path / "c", n=3, seed=6, formats=("dicom",), progress=False, **TINY)
    uid_b = pydicom.dcmread(next((tmp_path / "b" / "dicom" / "case_0000").iterdir())).StudyInstanceUID
    uid_c = pydicom.dcmread(next((tmp_path / "c" / "dicom" / "case_0000").iterdir())).StudyInstanceUID
    assert uid_b != uid_c
    assert (pd.read_csv(tmp_path / "c" / "labels.csv").nifti_path.isna()).all()


# ---------------------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "call",
    [
        lambda: make_phantom(0, shape=(48, 128)),
        lambda: make_phantom(0, shape=(4, 128, 128)),
        lambda: make_phantom(0, spacing=(5.0, 0.0, 2.7)),
        lambda: make_phantom(0, involvement=0.95),
        lambda: make_phantom(0, couch="wood"),
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


def test_export_tree_from_given_volumes(tmp_path):
    vol, _, info = make_phantom(9, severe=True, **TINY)
    manifest = write_export_tree(tmp_path, [{"case_id": "given", "volume": vol, "spacing": info["spacing"],
                                             "label": info["label"]}], seed=0)
    (entry,) = manifest
    assert entry["case_id"] == "given" and entry["label"] == 1 and entry["n_slices"] == TINY["shape"][0]
    files = entry["series"][entry["series_uid"]]["files"]
    hu, _ = _read_series_hu([tmp_path / f for f in files])
    np.testing.assert_array_equal(hu, vol)
