"""DICOM discovery, series choice, loading and bad-input handling on generated export trees."""


import numpy as np
import pydicom
import pytest
import torch

from ctmil.io.discovery import discover_cases, study_key
from ctmil.synthetic.dicom_writer import write_dicom_series
from ctmil.synthetic.export_tree import write_export_tree
from ctmil.synthetic.phantoms import make_phantom, write_nifti
from ctmil.data.preprocess import preprocess_cases
from ctmil.io import CaseError, choose_ct_series, load_dicom_series, scan_dicom_tree
from ctmil.transforms import LoadCT
from tests.conftest import simple_chest


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    manifest = write_export_tree(root, cases=2, seed=3)
    return root, manifest


def test_discovery_picks_the_axial_series_of_each_study(export):
    root, manifest = export
    studies, skipped = scan_dicom_tree(root)
    assert set(studies) == {m["study_uid"] for m in manifest}
    reasons = " ".join(r for _, r in skipped)
    assert "DICOMDIR" in reasons and "not DICOM" in reasons  # junk and the index are skipped
    for m in manifest:
        chosen, reason = choose_ct_series(studies[m["study_uid"]])
        assert chosen is not None and chosen.series_uid == m["series_uid"], reason
        assert chosen.n_files == m["n_slices"]
        assert "localizer" in reason and "not CT" in reason  # the rejected series are explained


def test_export_tree_cases_and_study_keys(export):
    root, manifest = export
    cases = discover_cases([root], labels={m["study_uid"]: m["label"] for m in manifest})
    by_id = {c["case_id"]: c for c in cases}
    for m in manifest:
        case = by_id[study_key(m["study_uid"])]
        assert case["label"] == m["label"] and not case["error"] and len(case["image"]) == m["n_slices"]
        assert m["patient_id"] not in case["case_id"]


def test_slices_are_ordered_by_position_not_file_name(tmp_path):
    vol = simple_chest(n_slices=10)
    vol += np.arange(10, dtype=np.float32)[:, None, None] * 3  # each slice identifiable
    write_dicom_series(vol, (5.0, 1.0, 1.0), tmp_path / "s", rng=1, instance_order="random", shuffle_file_names=True)
    files = sorted(str(p) for p in (tmp_path / "s").iterdir())
    names_in_order = [pydicom.dcmread(f).ImagePositionPatient[2] for f in files]
    assert names_in_order != sorted(names_in_order)  # file names are not in anatomical order
    loaded, affine, meta = load_dicom_series(files)
    assert np.allclose(loaded, vol, atol=1.0)
    assert meta["spacing"] == pytest.approx((5.0, 1.0, 1.0))


@pytest.mark.parametrize("as_datasets", [False, True])
def test_loader_accepts_files_or_datasets(tmp_path, as_datasets):
    vol = simple_chest(n_slices=9)
    write_dicom_series(vol, (5.0, 1.0, 1.0), tmp_path / "s", rng=2)
    files = [str(p) for p in (tmp_path / "s").iterdir()]
    loaded, _, _ = load_dicom_series([pydicom.dcmread(f) for f in files] if as_datasets else files)
    assert loaded.shape == vol.shape and np.allclose(loaded, vol, atol=1.0)


def test_nifti_and_dicom_of_the_same_volume_load_alike(tmp_path):
    vol, _, _ = make_phantom(5, shape=(20, 64, 64), spacing=(5.0, 5.0, 5.0))
    write_dicom_series(vol, (5.0, 5.0, 5.0), tmp_path / "dcm", rng=5)
    write_nifti(vol, (5.0, 5.0, 5.0), tmp_path / "v.nii.gz")
    a, b = LoadCT()(str(tmp_path / "dcm")), LoadCT()(str(tmp_path / "v.nii.gz"))
    assert a.shape == b.shape and torch.allclose(a.as_tensor().float(), b.as_tensor().float(), atol=1.0)
    assert np.allclose(np.asarray(a.affine)[:3, :3], np.asarray(b.affine)[:3, :3], atol=1e-4)


def _series(tmp_path, name, vol, **kw):
    rng = sum(map(ord, name))  # one study per series
    write_dicom_series(vol, kw.pop("spacing", (5.0, 1.0, 1.0)), tmp_path / name, rng=rng, **kw)
    return tmp_path / name


def test_bad_inputs_get_one_line_reasons_and_the_rest_completes(tmp_path):
    good = _series(tmp_path, "good", simple_chest(n_slices=12))
    few = _series(tmp_path, "few", simple_chest(n_slices=12)[:4])
    air = _series(tmp_path, "air", np.full((10, 64, 64), -1000.0, np.float32))
    gappy = _series(tmp_path, "gappy", simple_chest(n_slices=12))
    by_z = sorted(gappy.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    for f in by_z[6:]:  # make the slice spacing irregular: one 8 mm gap among 5 mm gaps
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 3.0
        ds.save_as(f)
    localizer = _series(tmp_path, "loc", simple_chest(n_slices=12), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not an image")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b garbage")
    inputs = [good, few, air, gappy, localizer, junk, broken, tmp_path / "missing"]
    cases = discover_cases(inputs)
    manifest = preprocess_cases(cases, tmp_path / "out", progress=False)
    status = dict(zip(manifest["case_id"].map(str), manifest["status"]))
    errors = dict(zip(manifest["case_id"].map(str), manifest["error"].fillna("")))
    ok = [c for c, s in status.items() if s == "ok"]
    assert len(ok) == 1
    texts = sorted(errors[c] for c in errors if c not in ok)
    joined = " | ".join(texts)
    for expected in ("too few slices", "no lungs found", "inconsistent slice spacing", "localizer", "no DICOM images", "unreadable NIfTI", "input not found"):
        assert expected in joined, joined
    assert all("\n" not in t and "Traceback" not in t for t in texts)
    bag_files = list((tmp_path / "out" / "bags").iterdir())
    assert len(bag_files) == 1 and not any(f.name.endswith(".tmp") for f in bag_files)


def test_preprocess_reuses_cached_bags_and_recomputes_when_settings_change(tmp_path):
    src = _series(tmp_path, "good", simple_chest(n_slices=12))
    cases = discover_cases([src])
    first = preprocess_cases(cases, tmp_path / "out", progress=False)
    again = preprocess_cases(cases, tmp_path / "out", progress=False)
    changed = preprocess_cases(cases, tmp_path / "out", settings={"min_area_fraction": 0.5}, progress=False)
    assert list(first["status"]) == ["ok"] and list(again["status"]) == ["cached"] and list(changed["status"]) == ["ok"]
    assert changed["n_slices_kept"][0] <= first["n_slices_kept"][0]


def test_no_patient_identifiers_in_outputs(tmp_path):
    src = tmp_path / "p"
    write_dicom_series(simple_chest(n_slices=12), (5.0, 1.0, 1.0), src, rng=1, patient_id="SECRET123", patient_name="DOE^JANE")
    manifest = preprocess_cases(discover_cases([tmp_path]), tmp_path / "out", progress=False)
    assert list(manifest["status"]) == ["ok"]
    bag = torch.load(manifest["bag_path"][0], weights_only=True)
    blob = (tmp_path / "out" / "manifest.csv").read_text() + repr(bag["meta"]) + bag["case_id"]
    assert "SECRET123" not in blob and "DOE" not in blob


def test_load_errors_are_case_errors(tmp_path):
    with pytest.raises(CaseError, match="input not found"):
        LoadCT()(str(tmp_path / "nothing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CaseError, match="no DICOM images"):
        LoadCT()(str(empty))


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"])  # RLE, JPEG 2000 lossless
def test_compressed_series_decode(tmp_path, syntax):
    from pydicom.uid import UID

    vol = simple_chest(n_slices=9)
    write_dicom_series(vol, (5.0, 1.0, 1.0), tmp_path / "raw", rng=4)
    out = tmp_path / "compressed"
    out.mkdir()
    for f in (tmp_path / "raw").iterdir():
        ds = pydicom.dcmread(f)
        ds.compress(UID(syntax))
        ds.save_as(out / f.name)
    assert pydicom.dcmread(next(out.iterdir())).file_meta.TransferSyntaxUID == syntax
    img = LoadCT()(str(out))
    assert np.allclose(np.asarray(img[0]), vol, atol=1.0)


def test_each_dicom_header_is_parsed_once_on_the_cli_path(tmp_path, monkeypatch):
    """discover_cases keeps the scanned headers in the case, so loading the series does not read them again."""
    import ctmil.io.dicom_series as series_module
    import ctmil.io.dicom_volume as volume_module
    from ctmil.data.preprocess import preprocess_cases
    from ctmil.io.discovery import discover_cases
    from ctmil.synthetic.phantoms import generate_cohort

    generate_cohort(tmp_path / "c", n=1, seed=4, formats=("dicom",), shape=(12, 64, 64), spacing=(10.0, 5.0, 5.0), progress=False)
    n_files = sum(1 for p in (tmp_path / "c" / "dicom").rglob("*") if p.is_file())
    calls = []
    for module in (series_module, volume_module):
        real = module.read_header
        monkeypatch.setattr(module, "read_header", lambda path, real=real: calls.append(str(path)) or real(path))
    cases = discover_cases([tmp_path / "c" / "dicom"])
    manifest = preprocess_cases(cases, tmp_path / "out", progress=False)
    assert manifest["status"].tolist() == ["ok"]
    assert n_files >= 12 and len(calls) == len(set(calls)) == n_files


@pytest.mark.parametrize("junk", [0, 2])
def test_slice_images_and_nifti_are_never_called_junk_dicom(tmp_path, caplog, junk):
    """A folder of PNG slices and a NIfTI file are cases; only real junk is counted as 'not usable DICOM'."""
    import numpy as np
    from PIL import Image

    from ctmil.io.discovery import discover_cases
    from ctmil.synthetic.phantoms import write_nifti

    (tmp_path / "slices").mkdir()
    for s in range(4):
        Image.fromarray(np.full((32, 32), 40 * s, np.uint8)).save(tmp_path / "slices" / f"s{s}.png")
    write_nifti(np.zeros((4, 8, 8), np.int16), (5.0, 1.0, 1.0), tmp_path / "ct.nii.gz")
    for i in range(junk):
        (tmp_path / f"junk{i}.bin").write_bytes(b"not dicom")
    with caplog.at_level("INFO", logger="ctmil.io.discovery"):
        cases = discover_cases([tmp_path])
    said = [r.getMessage() for r in caplog.records if "not usable DICOM" in r.getMessage()]
    assert {c["case_id"] for c in cases} >= {"slices", "ct"}
    assert said == ([f"{junk} files below {tmp_path} are not usable DICOM images (junk, DICOMDIR, reports, damaged); skipped"]
                    if junk else [])
