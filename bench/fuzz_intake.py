"""Long fuzz run of DICOM intake: mutated valid files (bytes, lengths, VRs, nesting) through read_header,
discovery and loading, under a 1 GiB address-space headroom. Prints a Markdown table, one row per seed.

Run: ``.venv/bin/python bench/fuzz_intake.py [--n 20000] [--seeds 0 1 2 3]`` (about 1 ms per file). The CI
version is tests/io/test_fuzz_intake.py (250 files per seed). A non-zero exit means something escaped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="mutated files per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--limit-gib", type=float, default=1.0)
    args = parser.parse_args()
    print("| seed | files | read | rejected | studies | slices decoded | slowest file (s) | discovery (s) | peak RSS (MiB) | escaped |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed = False
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "tests.io._fuzz", str(Path(tmp) / "f"), "--n", str(args.n), "--seed", str(seed),
                   "--limit-gib", str(args.limit_gib)]
            run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"| {seed} | crashed: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode} |")
            failed = True
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        failed |= r["n_escaped"] > 0 or r["too_slow"]
        print(f"| {seed} | {r['files']} | {r['read']} | {r['rejected']} | {r['studies']} | {r['slices_decoded']} | "
              f"{r['slowest_file_s']} | {r['discovery_s']} | {r['peak_rss_mib']} | {r['n_escaped']} {'; '.join(r['escaped'][:3])} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
