"""Quality control of preprocessing: per-case measures and montages, cohort outlier flags, and ``qc.html``.

Per usable case :func:`ctmil.data.preprocess.preprocess_cases` records

* ``n_slices_kept``: slices kept by the lung-slice selection (before ``max_slices`` sampling, which would make
  every case look alike);
* ``lung_volume_ml``: voxels of the lung mask (all slices, before selection) × voxel volume, in mL (the mask is
  computed on a grid of every ``stride``-th row and column, so each of its pixels counts ``stride²`` pixels); empty
  for slice images, whose spacing is unknown;
* ``lung_area_px``: the lung mask's mean area per slice with lung, in image pixels (every input: the measure of size
  for slice images);
* ``box_aspect``: median over the kept slices of the lung box's width / height in mm;
* ``box_height_share``, ``box_width_share``: the lung box's height and width as a share of the body's (the
  patient's outline: pixels denser than air, holes filled, the largest region), mean over the kept slices. A box
  that shrinks with disease (consolidated lung left out of the crop) shows as a small height share, and the CV
  report checks that it does not tell severe from non-severe on its own (:mod:`ctmil.evaluate.shortcut`). The
  bag records both under ``meta["crop"]``;
* ``qc_montage``: ``qc/<safe name>.png`` (2 × 2, 600 px wide, lung mask outline in red, crop box in green) of up
  to four of the bag's kept slices (``kept_slices``, after any ``max_slices`` sampling), in slice order
  (:func:`montage_picks`): the first and the last, the one with the largest lung-mask area, and the one midway
  across the longer of the two gaps between the largest and an end (fewer tiles when fewer slices are kept). Each
  tile is labelled with its role ("first kept", "largest lung", "last kept", "midway") and its slice index in the
  loaded volume, so a crop box drawn around bowel gas shows on a tile that says where it sits instead of hiding
  among lung-looking slices; the slices shown are recorded as ``montage_slices`` in ``qc/<safe name>.json``.

**Outlier rule.** With at least :data:`MIN_CASES` usable cases, a measure is flagged when its robust z-score
``0.6745 · (x − median) / MAD`` (Iglewicz & Hoaglin's modified z; MAD = median absolute deviation) exceeds
:data:`Z_LIMIT` = 3.5 in absolute value *and* ``x`` differs from the median by more than :data:`MIN_RELATIVE`
(10 %) of it, so a cohort of near-identical cases is not flagged for a one-slice difference. When the MAD is 0 the
mean absolute deviation stands in (``(x − median) / (1.2533 · mean |x − median|)``); when that is 0 too nothing is
flagged. ``qc_flags`` lists the reasons (``"; "``-separated, empty when the case looks like the others), e.g.
``"lung_volume_ml low (16 vs median 6495, z -8.2)"``; :func:`why_line` says the first in plain words ("lung volume
16 mL is far below the cohort's median 6,495 mL"), and ``qc.html`` puts that line first in each montage's caption.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from monai.transforms import Compose, SelectItemsd
from scipy import ndimage as ndi

from ctmil.io.paths import inside, safe_case_name
from ctmil.report import GalleryItem, HtmlReport, atomic_write_bytes, atomic_write_text
from ctmil.report.montage import label_tile, png_bytes, slice_tile, tile_grid
from ctmil.transforms.lung import LungMaskd
from ctmil.keys import Columns

__all__ = ["CROP_MEASURES", "MIN_CASES", "MIN_RELATIVE", "NOTHING_FLAGGED", "PLAIN_MEASURES", "QC_COLUMNS",
           "QC_MEASURES", "REPORT_COLUMNS", "Z_LIMIT", "CaseTrace", "case_measures", "case_montage", "crop_shares",
           "flag_outliers", "montage_picks", "read_case_qc", "robust_z", "run_traced", "why_line", "write_case_qc",
           "write_qc_report"]

logger = logging.getLogger(__name__)

CROP_MEASURES = ("box_height_share", "box_width_share")
QC_MEASURES = ("n_slices_kept", "lung_volume_ml", "lung_area_px", "box_aspect", *CROP_MEASURES)
QC_COLUMNS = ["lung_volume_ml", "lung_area_px", "box_aspect", *CROP_MEASURES, "qc_flags", "qc_montage"]
#: Body outline: denser than this (HU, or the level of a lung-window slice image: about -825 HU in ctmil's window).
BODY_HU, BODY_LEVEL = -500.0, 0.35
MIN_CASES = 5
Z_LIMIT = 3.5
MIN_RELATIVE = 0.10
RULE = (f"A measure is flagged when its robust z-score 0.6745·(x − median)/MAD exceeds {Z_LIMIT} in absolute value and x "
        f"differs from the cohort median by more than {MIN_RELATIVE:.0%}; only with at least {MIN_CASES} usable cases.")


@dataclass
class CaseTrace:
    """What the chain sees on the way to a bag and drops: the loaded CT ``(1, S, H, W)``, the lung mask on its
    working grid before (``(1, S, h, w)``) and after slice selection (``(1, S_kept, h, w)``), the grid's stride."""

    ct: np.ndarray
    mask_full: np.ndarray
    mask_kept: np.ndarray
    stride: int


def _numpy(x) -> np.ndarray:
    x = x.as_tensor() if hasattr(x, "as_tensor") else x
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def run_traced(transform: Compose, item: dict) -> tuple[dict, CaseTrace]:
    """Run the preprocessing ``Compose`` once, in the segments ``Compose(start=, end=)`` allows, keeping the
    intermediates QC needs; the bag is the one ``transform(item)`` gives.

    Needs the chain of :func:`ctmil.transforms.preprocessing_transforms`: a loader first, one ``LungMaskd``.
    """
    steps = list(transform.transforms)
    masker = next(t for t in steps if isinstance(t, LungMaskd))
    i_mask = steps.index(masker) + 1
    i_end = len(steps) - 1 if isinstance(steps[-1], SelectItemsd) else len(steps)
    image_key = steps[0].keys[0]
    d = transform(item, end=1)
    ct = d[image_key]
    d = transform(d, start=1, end=i_mask)
    full = d[masker.mask_key]
    d = transform(d, start=i_mask, end=i_end)
    trace = CaseTrace(_numpy(ct), _numpy(full), _numpy(d[masker.mask_key]), int(d.get(masker.stride_key, 1)))
    bag = transform(d, start=i_end) if i_end < len(steps) else d
    return bag, trace


def _body_extent(image: np.ndarray, level: float) -> tuple[int, int] | None:
    """Height and width (pixels) of the body outline of one slice, or ``None`` when there is no body."""
    body = ndi.binary_fill_holes(image > level)
    labels, n = ndi.label(body)
    if n == 0:
        return None
    largest = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    rows, cols = np.flatnonzero(largest.any(1)), np.flatnonzero(largest.any(0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def crop_shares(bag: dict, trace: CaseTrace) -> dict:
    """``box_height_share`` and ``box_width_share`` of one case (module docstring), from the loaded CT of ``trace``
    on its mask's working grid (every ``stride``-th pixel: a share needs no finer grid); NaN without a body."""
    level = BODY_HU if (bag["meta"].get("intensity") or "hu") == "hu" else BODY_LEVEL
    step = trace.stride
    heights, widths = [], []
    for z, (r0, c0, r1, c1) in zip(np.asarray(bag["kept_slices"]).reshape(-1).tolist(), np.asarray(bag["boxes"]).reshape(-1, 4).tolist()):
        extent = _body_extent(trace.ct[0, z, ::step, ::step], level)
        if extent is not None:
            heights.append(min(1.0, (r1 - r0) / (extent[0] * step)))
            widths.append(min(1.0, (c1 - c0) / (extent[1] * step)))
    return {"box_height_share": _mean(heights), "box_width_share": _mean(widths)}


def _mean(values: list) -> float:
    return round(float(np.mean(values)), 4) if values else float("nan")


def case_measures(bag: dict, trace: CaseTrace) -> dict:
    """``n_slices_kept``, ``lung_volume_ml``, ``box_aspect`` and the crop shares of one case (module docstring);
    the shares are the bag's ``meta["crop"]`` when it has them."""
    spacing = bag["meta"].get("spacing")  # None for slice images: no volume then, only the area in pixels
    dz, dy, dx = (float(v) for v in (spacing or (1.0, 1.0, 1.0)))
    voxels = float(np.count_nonzero(trace.mask_full)) * trace.stride**2
    lung_slices_mask = int(np.count_nonzero(np.asarray(trace.mask_full).reshape(len(trace.mask_full), -1).any(axis=1)))
    boxes = np.asarray(bag["boxes"], np.float64).reshape(-1, 4)
    aspect = np.median((boxes[:, 3] - boxes[:, 1]) * dx / np.maximum((boxes[:, 2] - boxes[:, 0]) * dy, 1e-9))
    lung_slices = (bag.get("meta") or {}).get("n_lung_slices")  # before slice sampling (max_slices), if recorded
    return {"n_slices_kept": int(len(bag["kept_slices"]) if lung_slices is None else lung_slices),
            "lung_volume_ml": round(voxels * dz * dy * dx / 1000.0, 2) if spacing else float("nan"),
            "lung_area_px": round(voxels / max(lung_slices_mask, 1), 1),
            "box_aspect": round(float(aspect), 4), **(bag["meta"].get("crop") or crop_shares(bag, trace))}


def montage_picks(areas: Sequence[float]) -> list[tuple[int, str]]:
    """The kept slices a montage shows, as ``(position in the kept range, role)`` in slice order, from each kept
    slice's lung-mask area: the first, the largest (the first of equal ones), the last, and the slice midway across
    the longer gap between the largest and an end (the one towards the first on a tie). A slice with two roles is
    shown once, its roles joined by " + "; with fewer than 4 kept slices fewer are shown."""
    n = len(areas)
    if n == 0:
        return []
    largest, last = int(np.argmax(np.asarray(areas, np.float64))), n - 1
    ends = (0, largest) if largest >= last - largest else (largest, last)
    roles: dict[int, list[str]] = {}
    for j, role in ((0, "first kept"), (largest, "largest lung"), (last, "last kept"), (sum(ends) // 2, "midway")):
        if role != "midway" or j not in roles:
            roles.setdefault(j, []).append(role)
    return [(j, " + ".join(roles[j])) for j in sorted(roles)]


def case_montage(bag: dict, trace: CaseTrace, width: int = 600) -> tuple[bytes, list[int]]:
    """PNG bytes of the kept slices :func:`montage_picks` chooses (2 per row, ``width`` px in all, each tile
    labelled with its role and slice index) and the slice indices shown."""
    kept = [int(v) for v in np.asarray(bag["kept_slices"]).reshape(-1)]
    areas = np.count_nonzero(trace.mask_kept[0].reshape(len(kept), -1), axis=1)
    chosen = montage_picks(areas)
    picks = [j for j, _ in chosen]
    spacing = bag["meta"].get("spacing") or (1.0, 1.0, 1.0)
    aspect = float(spacing[1]) / float(spacing[2])
    columns = min(2, len(picks))
    tile_w = (width - 4 * (columns - 1)) // columns
    intensity = bag["meta"].get("intensity") or "hu"
    tiles = [label_tile(slice_tile(trace.ct[0, kept[j]], trace.mask_kept[0, j], np.asarray(bag["boxes"][j]).tolist(),
                                   width=tile_w, aspect=aspect, mask_stride=trace.stride, intensity=intensity),
                        f"{role} (slice {kept[j]})") for j, role in chosen]
    return png_bytes(tile_grid(tiles, columns=columns)), [kept[j] for j in picks]


def _qc_paths(qc_dir: Path, case_id: str) -> tuple[Path, Path]:
    stem = qc_dir / safe_case_name(case_id)
    inside(stem, qc_dir)
    return stem.with_suffix(".json"), stem.with_suffix(".png")


#: The montage's layout; a cached case whose montage has another is drawn again (2: the largest slice and both ends).
MONTAGE_REVISION = 2


def write_case_qc(bag: dict, trace: CaseTrace, qc_dir: Path, key: str, montage: bool = True) -> dict:
    """Measure (and draw) one case; writes ``qc_dir/<safe name>.json`` (+ ``.png``); returns its manifest fields."""
    record = {"cache_key": key, "measures": case_measures(bag, trace), "montage_slices": [], "montage_revision": MONTAGE_REVISION}
    sidecar, png = _qc_paths(Path(qc_dir), bag[Columns.CASE_ID])
    if montage:
        data, record["montage_slices"] = case_montage(bag, trace)
        atomic_write_bytes(data, png)
    else:
        png.unlink(missing_ok=True)
    atomic_write_text(json.dumps(record), sidecar)
    return _fields(record, png)


def read_case_qc(qc_dir: Path, case_id: str, key: str, montage: bool = True) -> dict | None:
    """The manifest fields recorded for a cached case, or ``None`` when missing, stale or without the montage asked."""
    sidecar, png = _qc_paths(Path(qc_dir), case_id)
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if record.get("cache_key") != key or (montage and (not png.is_file() or record.get("montage_revision") != MONTAGE_REVISION)):
        return None  # stale, or a montage of an older layout
    if not montage:
        png.unlink(missing_ok=True)
    return _fields(record, png)


def _fields(record: dict, png: Path) -> dict:
    m = record["measures"]
    return {"lung_volume_ml": m["lung_volume_ml"], "lung_area_px": m.get("lung_area_px", float("nan")), "box_aspect": m["box_aspect"],
            **{k: m.get(k, float("nan")) for k in CROP_MEASURES},
            "qc_montage": str(png.resolve()) if png.is_file() else ""}


def robust_z(values) -> np.ndarray:
    """Modified z-scores ``0.6745 · (x − median) / MAD`` (mean-absolute-deviation fallback; zeros when both are 0)."""
    x = np.asarray(values, np.float64)
    med = np.median(x)
    dev = x - med
    mad = np.median(np.abs(dev))
    if mad > 0:
        return 0.6745 * dev / mad
    mean_ad = np.mean(np.abs(dev))
    return dev / (1.253314 * mean_ad) if mean_ad > 0 else np.zeros_like(x)


def flag_outliers(manifest: pd.DataFrame, min_cases: int = MIN_CASES, z_limit: float = Z_LIMIT,
                  min_relative: float = MIN_RELATIVE) -> pd.DataFrame:
    """``manifest`` with ``qc_flags`` filled by the outlier rule of the module docstring (usable cases only)."""
    out = manifest.copy()
    out["qc_flags"] = ""
    usable = out[Columns.STATUS].isin(["ok", "cached"])
    if usable.sum() < min_cases:
        return out
    reasons: dict[int, list[str]] = {i: [] for i in out.index[usable]}
    for column in (c for c in QC_MEASURES if c in out):  # a manifest from before a measure existed lacks it
        values = pd.to_numeric(out.loc[usable, column], errors="coerce")
        values = values[np.isfinite(values)]
        if len(values) < min_cases:
            continue
        med, z = float(values.median()), robust_z(values.to_numpy())
        for i, x, zi in zip(values.index, values.to_numpy(), z):
            if abs(zi) > z_limit and abs(x - med) > min_relative * abs(med):
                reasons[i].append(f"{column} {'low' if zi < 0 else 'high'} ({x:.4g} vs median {med:.4g}, z {zi:+.1f})")
    for i, r in reasons.items():
        out.at[i, "qc_flags"] = "; ".join(r)
    return out


#: Plain words and a number format for each measure a flag can name (:func:`why_line`).
PLAIN_MEASURES = {
    "n_slices_kept": ("number of lung slices kept", "{:,.4g}"),
    "lung_volume_ml": ("lung volume", "{:,.0f} mL"),
    "lung_area_px": ("lung area per lung slice", "{:,.0f} pixels"),
    "box_aspect": ("crop box's width / height", "{:.2f}"),
    "box_height_share": ("crop box's share of the body's height", "{:.0%}"),
    "box_width_share": ("crop box's share of the body's width", "{:.0%}"),
}
NOTHING_FLAGGED = "looks like the others"
_FLAG = re.compile(r"(?P<column>\S+) (?P<side>low|high) \((?P<x>\S+) vs median (?P<median>[^,]+), z [^)]*\)")


def why_line(qc_flags: str) -> str:
    """One plain-language line for a case's ``qc_flags``: its first reason (``"lung_volume_ml low (16 vs median 6495,
    z -8.2)"`` → ``"lung volume 16 mL is far below the cohort's median 6,495 mL"``), with ``"(and N more)"`` when
    there are more, or :data:`NOTHING_FLAGGED` when there are none.

    A measure missing from :data:`PLAIN_MEASURES` keeps its column name and the numbers as written; a reason not in
    :func:`flag_outliers`' form (say, why a case failed) is returned as it is.
    """
    text = qc_flags if isinstance(qc_flags, str) else ""  # NaN / None: a manifest read without keep_default_na
    reasons = [r.strip() for r in text.split(";") if r.strip()]
    if not reasons:
        return NOTHING_FLAGGED
    more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
    m = _FLAG.fullmatch(reasons[0])
    if m is None:
        return reasons[0] + more
    name, fmt = PLAIN_MEASURES.get(m["column"], (m["column"], None))
    x, median = (_plain_number(m[k], fmt) for k in ("x", "median"))
    side = "below" if m["side"] == "low" else "above"
    return f"{name} {x} is far {side} the cohort's median {median}{more}"


def _plain_number(text: str, fmt: str | None) -> str:
    try:
        return fmt.format(float(text)) if fmt else text
    except ValueError:
        return text


def _cards(rows: pd.DataFrame, with_flags: bool) -> list[GalleryItem]:
    """Montage cards; each caption starts with the case's :func:`why_line` (also in ``data-why``)."""
    cards = []
    for row in rows.itertuples():
        if not row.qc_montage or not Path(row.qc_montage).is_file():
            continue
        why = why_line(row.qc_flags)
        volume = _num(row.lung_volume_ml, '.0f')
        size = f"{volume} mL" if volume != "?" else f"{_num(getattr(row, 'lung_area_px', float('nan')), ',.0f')} px per slice"
        text = (f"{row.case_id}: {why}. {row.n_slices_kept} slices kept, lung {size}, "
                f"box aspect {_num(row.box_aspect, '.2f')}, box {_num(row.box_height_share, '.0%')} of the body's height")
        cards.append(GalleryItem(row.qc_montage, text + (f" — {row.qc_flags}" if with_flags else ""), case_id=str(row.case_id),
                                 attrs={"flagged": "1" if row.qc_flags else "0", "why": why}))
    return cards


def _num(value, fmt: str) -> str:
    v = pd.to_numeric(value, errors="coerce")
    return format(float(v), fmt) if not (v is None or math.isnan(v)) else "?"


REPORT_COLUMNS = (Columns.CASE_ID, Columns.STATUS, Columns.LABEL, "n_slices", "n_slices_kept", "lung_volume_ml", "box_aspect", *CROP_MEASURES,
              "qc_flags", "warning")
"""The columns of ``qc.html``'s tables, in order."""


def write_qc_report(manifest: pd.DataFrame, out_dir: str | os.PathLike, montages: bool = True, max_montages: int = 200) -> Path:
    """``out_dir/qc.html``: flagged cases first (with their reasons and montages), then failed ones, then the rest.

    Every flagged case's montage is inlined, and at most ``max_montages`` of the others (each PNG is ~50-300 KB, so
    a large cohort would make a page too big to open); every montage stays under ``qc/``.
    """
    usable = manifest[manifest[Columns.STATUS].isin(["ok", "cached"])]
    flagged, rest = usable[usable["qc_flags"] != ""], usable[usable["qc_flags"] == ""]
    failed = manifest[manifest[Columns.STATUS] == "failed"]
    report = HtmlReport("ctmil preprocess: quality control")
    report.paragraph(f"{len(manifest)} cases: {len(usable)} usable, {len(failed)} failed, {len(flagged)} flagged as outliers. "
                     f"Montages: the first and last kept slices, the one with the largest lung area and one "
                     f"between, each labelled with its role and slice index; lung mask outline in red, crop box in "
                     f"green. Each caption starts with why the case is (or is not) flagged. "
                     f"box_height_share / box_width_share: the crop box's share of the body's height / width (mean over kept "
                     f"slices); a box unusually small for its body has left lung out of the crop.")
    report.paragraph(RULE + ("" if len(usable) >= MIN_CASES else f" This run has {len(usable)} usable cases: nothing is flagged."))
    columns = list(REPORT_COLUMNS)
    report.heading("Flagged cases", id="flagged-cases")
    if len(flagged):
        report.table(flagged[columns], id="flagged", caption="cases far from the cohort, with the reasons")
        if montages:
            report.gallery(_cards(flagged, True), id="flagged-montages", width=420)
    else:
        report.paragraph("No case is flagged.")
    if len(failed):
        report.heading("Failed cases", id="failed-cases")
        report.table(failed[[Columns.CASE_ID, "error", "source"]], id="failed", caption="cases without a bag, with the reason")
    report.heading("Cases", id="all-cases")
    report.table(usable[columns], id="cases", caption="every usable case (flagged ones too)")
    if not montages:
        report.paragraph("Montages were turned off for this run (ctmil preprocess --no-montages), so none is shown.")
    elif len(rest):
        cards = _cards(rest, False)
        if len(cards) > max_montages:
            report.paragraph(f"The montages of the first {max_montages} of {len(cards)} unflagged cases are shown; all are under qc/.")
        report.gallery(cards[:max_montages], id="montages", width=420)
    return report.write(Path(out_dir) / "qc.html")
