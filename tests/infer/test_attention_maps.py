"""Painting per-patch attention back on the CT grid, the NIfTI geometry of the maps, overlays (no network needed)."""

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from ctmil.synthetic.dicom_writer import write_dicom_series
from ctmil.synthetic.phantoms import write_nifti
from ctmil.infer.attention_maps import (
    cell_index,
    paint_attention,
    relayout,
    save_attention_nifti,
    slice_attention,
    top_attended_slices,
    voxel_mapping,
)
from ctmil.infer.overlays import save_overlay
from ctmil.transforms import LoadCT, LungBoxCrop, TilePatches
from tests.conftest import simple_chest


def _bag_bookkeeping(boxes, kept, attention=None, seed=0):
    """slice_index/position/attention of a full bag (12 patches per kept slice, ordered by position)."""
    kept = np.asarray(kept)
    slice_index = np.repeat(kept, 12)
    position = np.tile(np.arange(12), kept.size)
    if attention is None:
        a = np.random.default_rng(seed).random(kept.size * 12)
        attention = a / a.sum()
    return np.asarray(attention, float), slice_index, position, np.asarray(boxes), kept


@pytest.mark.parametrize("length,n", [(30, 3), (31, 3), (40, 4), (41, 4), (7, 3), (3, 3), (512, 4), (1, 3)])
def test_cell_index_tiles_the_side(length, n):
    cells = cell_index(length, n)
    assert cells.shape == (length,) and np.all(np.diff(cells) >= 0) and np.all(np.diff(cells) <= 1)
    counts = np.bincount(cells, minlength=n)
    if length >= n:
        assert cells[0] == 0 and cells[-1] == n - 1 and counts.min() >= 1 and counts.max() - counts.min() <= 1
    else:  # a box smaller than the grid: each pixel goes to the cell holding its centre
        assert cells.tolist() == [int((i + 0.5) * n / length) for i in range(length)]
    if length % n == 0:
        assert np.all(counts == length // n)  # exact tiling into equal cells


@pytest.mark.parametrize("box", [(10, 20, 40, 60), (5, 3, 36, 44), (0, 0, 96, 96), (20, 7, 77, 107), (2, 1, 402, 301)])
def test_painted_cells_are_the_patches_of_the_resize_and_tiling(box):
    """Paint position ids, crop+resize the box like preprocessing and tile: each patch sees only its own id."""
    r0, c0, r1, c1 = box
    shape = (1, max(r1, 100), max(c1, 100))
    painted = paint_attention(np.arange(12) + 1.0, [0] * 12, np.arange(12), [box], [0], shape)
    resized = LungBoxCrop((180, 240), slice_axis=1)(painted[None], boxes=np.array([box]))  # (1, 1, 180, 240)
    patches, position, _ = TilePatches((60, 60), slice_axis=1)(resized)
    for p, pos in zip(patches[:, 0], position):
        centre = p[12:48, 12:48]  # away from the bilinear blur across cell borders
        assert torch.allclose(centre, torch.full_like(centre, float(pos) + 1), atol=1e-4), int(pos)


def test_exact_tiling_with_hand_made_boxes():
    boxes, kept = [(10, 20, 40, 60), (0, 0, 30, 40)], [1, 3]  # 30 x 40 boxes: 10 x 10 cells
    a, s, pos, boxes, kept = _bag_bookkeeping(boxes, kept)
    out = paint_attention(a, s, pos, boxes, kept, (5, 64, 80))
    assert out.shape == (5, 64, 80) and out.dtype == np.float32
    for j, (sl, (r0, c0, r1, c1)) in enumerate(zip(kept, boxes)):
        for p in range(12):
            row, col = divmod(p, 4)
            cell = out[sl, r0 + 10 * row : r0 + 10 * (row + 1), c0 + 10 * col : c0 + 10 * (col + 1)]
            np.testing.assert_allclose(cell, a[12 * j + p], rtol=1e-6)
        outside = out[sl].copy()
        outside[r0:r1, c0:c1] = 0
        assert not outside.any()  # zero outside the box
    assert not out[[0, 2, 4]].any()  # slices that were not kept stay zero
    # mass: each cell's value times nothing else — the values of a slice's cells sum to its attention mass
    for j, sl in enumerate(kept):
        r0, c0, r1, c1 = boxes[j]
        cells = out[sl, r0:r1:10, c0:c1:10]  # one pixel per cell
        assert cells.sum() == pytest.approx(a[12 * j : 12 * (j + 1)].sum(), rel=1e-5)


def test_slice_mode_normalises_each_slice():
    a, s, pos, boxes, kept = _bag_bookkeeping([(0, 0, 30, 40), (3, 4, 33, 44), (6, 0, 36, 40)], [0, 2, 4], seed=3)
    out = paint_attention(a, s, pos, boxes, kept, (6, 40, 48), mode="slice")
    for j, sl in enumerate(kept):
        r0, c0, r1, c1 = boxes[j]
        cells = out[sl, r0:r1:10, c0:c1:10]
        assert cells.sum() == pytest.approx(1.0, rel=1e-5)
        np.testing.assert_allclose(cells.ravel(), a[12 * j : 12 * (j + 1)] / a[12 * j : 12 * (j + 1)].sum(), rtol=1e-5)


def test_partial_bag_and_torch_inputs_match_numpy():
    a, s, pos, boxes, kept = _bag_bookkeeping([(0, 0, 31, 41), (5, 5, 50, 70)], [2, 5], seed=1)
    keep = np.ones(a.size, bool)
    keep[[3, 14, 15]] = False  # patches missing from the bag leave their cells at zero
    args = (a[keep], s[keep], pos[keep], boxes, kept, (7, 60, 80))
    expected = paint_attention(*args)
    got = paint_attention(*(torch.as_tensor(v) if isinstance(v, np.ndarray) else v for v in args))
    np.testing.assert_array_equal(expected, got)
    r0, c0, r1, c1 = boxes[0]
    rows, cols = cell_index(r1 - r0, 3), cell_index(c1 - c0, 4)
    region = expected[2, r0:r1, c0:c1]
    assert not region[(rows[:, None] == 0) & (cols[None, :] == 3)].any()  # position 3 of slice 2 is missing


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(slice_index=[9] * 12), "kept_slices"),
        (dict(position=list(range(11)) + [12]), "position"),
        (dict(attention=np.ones(11)), "differ in length"),
        (dict(boxes=[(0, 0, 0, 10)]), "empty or outside"),
        (dict(boxes=[(0, 0, 10, 999)]), "empty or outside"),
        (dict(kept_slices=[0, 1]), "boxes"),
        (dict(mode="volume"), "mode"),
    ],
)
def test_bad_inputs_raise(change, message):
    args = dict(attention=np.ones(12) / 12, slice_index=[1] * 12, position=list(range(12)), boxes=[(0, 0, 30, 40)],
                kept_slices=[1], spatial_shape=(3, 40, 50))
    args.update(change)
    with pytest.raises(ValueError, match=message):
        paint_attention(**args)


def test_slice_mass_and_top_slices():
    a = np.array([0.1, 0.1, 0.3, 0.05, 0.05, 0.2, 0.2])
    s = np.array([4, 4, 7, 9, 9, 2, 2])
    slices, mass = slice_attention(a, s)
    assert slices.tolist() == [2, 4, 7, 9] and mass == pytest.approx([0.4, 0.2, 0.3, 0.1])
    assert top_attended_slices(a, s, 2).tolist() == [2, 7]
    assert top_attended_slices(torch.tensor([0.5, 0.5]), torch.tensor([3, 1]), 5).tolist() == [1, 3]  # tie: lower first
    assert top_attended_slices(a, s, 0).size == 0


def _signed_permutation_affine(rng, shape):
    axes = rng.permutation(3)
    signs = rng.choice([-1, 1], 3)
    m = np.zeros((4, 4))
    m[3, 3] = 1
    for t, (src, sg) in enumerate(zip(axes, signs)):
        m[src, t] = sg
        m[src, 3] = 0 if sg > 0 else shape[src] - 1
    return m, tuple(shape[a] for a in axes)


@pytest.mark.parametrize("seed", range(6))
def test_voxel_mapping_relayout_keeps_world_coordinates(seed):
    rng = np.random.default_rng(seed)
    shape = (5, 7, 9)
    vol = rng.random(shape).astype(np.float32)
    affine = np.diag([2.5, -0.7, 0.7, 1.0])
    affine[:3, 3] = rng.normal(size=3) * 50
    index_map, shape_to = _signed_permutation_affine(rng, shape)  # target index -> source index
    target_affine = affine @ index_map
    axes, flips = voxel_mapping(affine, shape, target_affine, shape_to)
    out = relayout(vol, axes, flips)
    assert out.shape == shape_to
    for idx in [(0, 0, 0), (4, 6, 8), (2, 3, 1)]:
        world = affine @ np.array([*idx, 1.0])
        t = np.rint(np.linalg.inv(target_affine) @ world).astype(int)[:3]
        assert out[tuple(t)] == vol[idx]
    oblique = target_affine.copy()
    oblique[:3, :3] = oblique[:3, :3] @ np.array([[0.8, 0.6, 0], [-0.6, 0.8, 0], [0, 0, 1]])
    assert voxel_mapping(affine, shape, oblique, shape_to) is None
    assert voxel_mapping(affine, shape, target_affine @ np.diag([2, 1, 1, 1]), shape_to) is None  # other sampling
    assert voxel_mapping(affine, shape, target_affine, (1, 1, 1)) is None  # other shape


def _marker(shape, points):
    vol = np.zeros(shape, np.float32)
    for k, p in enumerate(points):
        vol[p] = k + 1
    return vol


@pytest.mark.parametrize("layout", ["ras", "shw"])
def test_nifti_map_has_the_input_grid_and_world_coordinates(tmp_path, layout):
    hu = simple_chest(n_slices=10, size=48)
    spacing = (5.0, 1.5, 1.2)
    src = write_nifti(hu.astype(np.int16), spacing, tmp_path / "ct.nii.gz", layout=layout, origin=(-20.0, 35.0, 12.0))
    img = LoadCT()(str(src))
    meta = {"input_kind": "nifti", "source": str(src), "affine": img.affine.numpy(), "spatial_shape": tuple(img.shape[1:])}
    points = [(0, 0, 0), (3, 10, 40), (9, 47, 1), (6, 20, 30)]
    painted = _marker(img.shape[1:], points)
    out = nib.load(str(save_attention_nifti(painted, meta, tmp_path / "att.nii.gz")))
    ref = nib.load(str(src))
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)
    assert int(out.header["sform_code"]) == int(ref.header["sform_code"]) and int(out.header["qform_code"]) == int(ref.header["qform_code"])
    data, ref_data, ct = out.get_fdata(), ref.get_fdata(), img[0].numpy()
    for k, p in enumerate(points):
        world = img.affine.numpy() @ np.array([*p, 1.0])  # the CT voxel the value was painted on
        v = tuple(np.rint(np.linalg.inv(out.affine) @ world).astype(int)[:3])
        assert data[v] == k + 1  # the map's voxel at that world point holds the value
        assert ref_data[v] == ct[p]  # and the input file's voxel there is the same CT voxel
    assert data.sum() == painted.sum()


def test_dicom_map_world_coordinates_match_the_series(tmp_path):
    import pydicom

    hu = simple_chest(n_slices=10, size=48)
    files = write_dicom_series(hu, (4.0, 1.5, 1.25), tmp_path / "dcm", rng=1, origin=(-30.0, -36.0, 100.0))
    img = LoadCT()(str(tmp_path / "dcm"))
    meta = {"input_kind": "dicom", "source": str(tmp_path / "dcm"), "affine": img.affine.numpy(), "spatial_shape": tuple(img.shape[1:])}
    points = [(0, 0, 0), (9, 47, 47), (4, 10, 30)]
    out = nib.load(str(save_attention_nifti(_marker(img.shape[1:], points), meta, tmp_path / "att.nii.gz")))
    assert out.shape == (48, 48, 10)  # (columns, rows, slices): the layout ITK / Slicer give the series
    data = out.get_fdata()
    for k, (s, r, c) in enumerate(points):
        ds = pydicom.dcmread(files[s])  # write_dicom_series returns the files in array order
        iop = np.asarray(ds.ImageOrientationPatient, float)
        lps = np.asarray(ds.ImagePositionPatient, float) + c * float(ds.PixelSpacing[1]) * iop[:3] + r * float(ds.PixelSpacing[0]) * iop[3:]
        ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
        v = np.linalg.inv(out.affine) @ ras
        assert np.allclose(v, np.rint(v), atol=1e-4)
        assert data[tuple(np.rint(v).astype(int)[:3])] == k + 1


def test_overlay_png(tmp_path):
    hu = simple_chest(n_slices=6, size=64)
    a, s, pos, boxes, kept = _bag_bookkeeping([(18, 6, 50, 58)], [3])
    painted = paint_attention(a, s, pos, boxes, kept, hu.shape)
    path = save_overlay(hu[3], painted[3], boxes[0], tmp_path / "o.png", vmax=float(painted.max()), title="case slice 3")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200
        pixels = np.asarray(im.convert("RGB"), float)
    assert (np.abs(pixels[..., 0] - pixels[..., 2]) > 60).any()  # coloured heat map drawn over the grey CT
    assert not list(tmp_path.glob(".tmp-*"))
