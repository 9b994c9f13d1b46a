"""A seeded mutation fuzzer for DICOM intake: valid files with their bytes, lengths, VRs and nesting mutated.

Contract checked on every mutated file: :func:`read_header` returns or raises :class:`DicomReadError` (nothing
else), each file within ``per_file_s``; then discovery and loading over all of them raise nothing but
``DicomError``/``CaseError``. Run ``python -m tests.io._fuzz --n 300 DIR`` (JSON summary on stdout; with
``--limit-gib`` under that address-space headroom); ``bench/fuzz_intake.py`` runs a long version.
"""

from __future__ import annotations

import argparse
import json
import resource
import struct
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.filereader import data_element_generator
from pydicom.uid import RLELossless

INTERESTING_LENGTHS = [0, 1, 2, 3, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF]
VRS = [b"SQ", b"UN", b"OB", b"OW", b"LO", b"US", b"UT", b"XX", b"\0\0", b"ss"]
NUMBERS = [b"inf", b"-inf", b"nan", b"1e999", b"-0", b"9" * 16, b"\\\\\\", b"1e-999", b"0x10"]


def seed_files() -> list[bytes]:
    """Valid slices to mutate: explicit, implicit, RLE and deflated, one with an undefined-length sequence."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

    from tests.io._hostile import base_dataset

    out = []
    for variant in ("explicit", "implicit", "rle", "deflated", "sequence"):
        ds = base_dataset(rows=16, cols=16)
        if variant == "rle":
            ds.compress(RLELossless, generate_instance_uid=False)
        elif variant == "implicit":
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif variant == "deflated":
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        elif variant == "sequence":
            ds.ReferencedImageSequence = Sequence([Dataset(), Dataset()])
            ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3"
            ds.ReferencedImageSequence.is_undefined_length = True
        import io

        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def _elements(data: bytes) -> list[tuple[int, int, bool, int]]:
    """``(value_start, length_width, explicit, vr_offset)`` of the top-level elements after the file meta."""
    meta_end = 144 + struct.unpack_from("<I", data, 140)[0]
    implicit = b"1.2.840.10008.1.2\0" in data[:meta_end]
    import io

    found = []
    try:
        for raw in data_element_generator(io.BytesIO(data[meta_end:]), implicit, True):
            start = meta_end + raw.value_tell
            if raw.tag >> 16 > 0x7FE0:
                break
            long_vr = implicit or raw.VR in ("OB", "OW", "SQ", "UN", "UT", "UC", "UR", "OF", "OD", "OL", "OV", "SV", "UV")
            found.append((start, 4 if long_vr else 2, not implicit, start - (8 if long_vr and not implicit else 4) - 2))
    except Exception:  # noqa: BLE001 - deflated seeds have no walkable top level here
        pass
    return found


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to three random mutations of ``data`` (length fields, VRs, nesting, numbers, bytes, cuts, splices)."""
    from tests.io._hostile import nested_sequences

    data = bytearray(data)
    elements = _elements(bytes(data))
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(8))
        if kind == 0 and elements:  # a length field
            start, width, _, _ = elements[int(rng.integers(len(elements)))]
            value = int(rng.choice(INTERESTING_LENGTHS)) if rng.random() < 0.7 else int(rng.integers(0, 1 << 32))
            data[start - width : start] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        elif kind == 1 and elements:  # a VR
            _, _, explicit, vr_at = elements[int(rng.integers(len(elements)))]
            if explicit and vr_at > 132:
                data[vr_at : vr_at + 2] = VRS[int(rng.integers(len(VRS)))]
        elif kind == 2 and elements:  # deep nesting at an element boundary
            start, width, explicit, _ = elements[int(rng.integers(len(elements)))]
            at = start - width - (4 if explicit and width == 2 else 8 if explicit else 4)
            data[at:at] = nested_sequences(int(rng.integers(1, 400)), explicit)
        elif kind == 3 and elements:  # a number that is not one
            start, _, _, _ = elements[int(rng.integers(len(elements)))]
            text = NUMBERS[int(rng.integers(len(NUMBERS)))]
            data[start : start + len(text)] = text
        elif kind == 4 and len(data) > 129:  # random bytes
            for at in rng.integers(128, len(data), size=int(rng.integers(1, 9))):
                data[int(at)] = int(rng.integers(256))
        elif kind == 5 and len(data) > 133:  # cut
            del data[int(rng.integers(132, len(data))) :]
        elif kind == 6 and len(data) > 200:  # delete or duplicate a chunk
            a = int(rng.integers(132, len(data) - 1))
            b = min(len(data), a + int(rng.integers(1, 64)))
            data[a:a] = data[a:b] if rng.random() < 0.5 else b""
            if rng.random() < 0.5:
                del data[a:b]
        else:  # the preamble and magic kept, everything else noise
            data[132:] = rng.bytes(max(0, len(data) - 132))
    return bytes(data)


def fuzz(folder: Path, n: int, seed: int = 0, per_file_s: float = 1.0) -> dict:
    """Write ``n`` mutated files to ``folder``, check the contract on each and on discovery over all; a summary."""
    from ctmil.io.dicom_header import DicomReadError, read_header
    from ctmil.io.dicom_series import DicomError, choose_ct_series, load_dicom_series, scan_dicom_tree

    rng = np.random.default_rng(seed)
    seeds = seed_files()
    folder.mkdir(parents=True, exist_ok=True)
    read, rejected, slowest, escaped = 0, 0, 0.0, []
    for i in range(n):
        path = folder / f"f{i:06d}.dcm"
        path.write_bytes(mutate(seeds[i % len(seeds)], rng))
        t0 = time.perf_counter()
        try:
            read_header(path)
            read += 1
        except DicomReadError:
            rejected += 1
        except BaseException as err:  # noqa: BLE001 - exactly what the contract forbids
            escaped.append(f"{path.name}: {type(err).__name__}: {str(err)[:80]}")
        slowest = max(slowest, time.perf_counter() - t0)
    t0 = time.perf_counter()
    studies, skipped = scan_dicom_tree(folder)
    loaded, decoded = 0, 0
    for group in studies.values():
        chosen, _ = choose_ct_series(group, min_slices=1)
        for files in ([chosen.files] if chosen else []) + [[f] for s in group for f in s.files]:  # each slice alone too
            t1 = time.perf_counter()
            try:
                load_dicom_series(files)
                loaded, decoded = loaded + (len(files) > 1), decoded + (len(files) == 1)
            except DicomError:
                pass
            except BaseException as err:  # noqa: BLE001
                escaped.append(f"load {Path(files[0]).name}: {type(err).__name__}: {str(err)[:80]}")
            slowest = max(slowest, (time.perf_counter() - t1) / len(files))
    return {
        "files": n, "read": read, "rejected": rejected, "escaped": escaped[:10], "n_escaped": len(escaped),
        "slowest_file_s": round(slowest, 4), "too_slow": slowest > per_file_s, "studies": len(studies),
        "skipped": len(skipped), "series_loaded": loaded, "slices_decoded": decoded, "discovery_s": round(time.perf_counter() - t0, 2),
        "peak_rss_mib": round(peak_rss_kib() / 1024, 1),
    }


def peak_rss_kib() -> int:
    """This process's own peak resident memory (KiB): ``VmHWM`` of ``/proc/self/status``, which starts afresh at
    ``exec`` (``ru_maxrss`` does not: a child started from a big pytest worker would report the worker's size)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def limit_address_space(headroom_gib: float) -> None:
    """Cap the address space at what the process uses now plus ``headroom_gib``."""
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize"))
    cap = vm + int(headroom_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-gib", type=float, default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import ctmil.io.dicom_series  # noqa: F401 - imported before the limit is set

    if args.limit_gib:
        limit_address_space(args.limit_gib)
    print(json.dumps(fuzz(args.folder, args.n, args.seed)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
