"""Re-run the real-data results of docs/results.md: cross-validation of settings A-D and Q on the Per-COVID-19 sample.

    python docs/make_results.py                      # what `make results` runs
    python docs/make_results.py --set max_epochs=8   # a longer protocol (bundle #-id overrides)
    python docs/make_results.py --report-only        # rewrite the report and results.md from the saved predictions

The protocol is the bundle's ``train.json`` + ``cv.json`` + ``results.json`` (what a 2-core machine finishes in
about an hour); the sample is ``../shared/data/percovid_sample`` (73 patients, one folder of slice PNGs each,
``severe`` = mean infection > 25 %). Writes ``<out>/datalist.csv``, the CV into ``<out>/cv`` and, from its report,
``docs/results.md`` (every number in it comes from that report; nothing is typed in by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
FILES = ("train.json", "cv.json", "results.json")


def datalist(sample: Path, out: Path) -> Path:
    labels = pd.read_csv(sample / "labels.csv", dtype={"subject_id": str})
    table = pd.DataFrame({"case_id": labels["subject_id"], "image": [str((sample / "subjects" / s).resolve()) for s in labels["subject_id"]],
                          "label": labels["severe"].astype(int)})  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "datalist.csv", index=False)
    return out / "datalist.csv"


def _load() -> str:
    load = os.getloadavg()
    return f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"


def _machine(load: str) -> str:
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU; load average at the end "
            f"of the run {load} (1 / 5 / 15 min)")


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def results_md(cv_dir: Path, run: dict, command: str, overrides: dict) -> str:
    report = (cv_dir / "report.md").read_text()
    body = report.split("\n", 1)[1]  # drop the report's own title
    seconds, commit = run["seconds"], run["commit"]
    rewritten = "" if run.get("report_commit", commit) == commit else f"; report rewritten from its predictions at commit {run['report_commit']}"
    return "\n".join([
        "# Results on real CT: the Per-COVID-19 sample", "",
        "Settings A-D (paper Table IV) and the quantitative baseline Q (lung-density histogram + logistic regression) "
        "cross-validated on the 73 patients of `../shared/data/percovid_sample` "
        "(Per-COVID-19 folds 1-2: real CT slices in a lung window, one folder per patient; severe = mean infection "
        "> 25 %, 23 of 73). Made by `docs/make_results.py`; the tables below are its `report.md`, unedited.", "",
        "## Protocol", "",
        f"* Command: `{command}` (what `make results` runs).",
        f"* Configs: `{' + '.join(FILES)}`, overrides {overrides or 'none'}: see `bundles/covid19_severity_mil/configs/results.json`. "
        "It is the largest protocol this 2-core machine finishes in about an hour beside other work: 3 folds x 1 repeat, "
        "6 epochs (virtual bags from epoch 3), at most 12 slices per patient. The paper's protocol is 10 folds x 5 repeats, "
        "50 epochs; with one repeat there is no test over repeats, so settings are compared over folds (Nadeau-Bengio) "
        "and by bootstrap CIs.",
        f"* Network and bags: {_network(cv_dir)}.",
        f"* Operating point: each run learns a Platt map on 20 % of its training folds (inner validation, never its test "
        f"fold) and its threshold by the `{_rule()}` rule (docs/operating_point.md).",
        f"* Run started {run['started']} UTC at commit {commit}{rewritten}; {_machine(run['load'])}; wall time {seconds / 60:.1f} min.",
        "", body,
    ])  # fmt: skip


def _bags_patch_norm(cv_dir: Path) -> "str | None":
    """The ``patch_norm`` the run's bags were made with (recorded in each bag; a default then is the default of that
    day, which the configs alone do not say), or ``None`` without bags."""
    from ctmil.data.bag_settings import bag_preprocessing

    bag = next(iter(sorted((cv_dir / "bags" / "bags").glob("*.pt"))), None)
    made = bag_preprocessing(bag) if bag is not None else None
    return made["patch_norm"] if made else None


def _network(cv_dir: Path) -> str:
    """What the run's configs (``cv_dir/config.json``: the merged configs and overrides it ran with) built: the bags'
    intensity channels, where attention is scored, the attention form and the density fusion."""
    from monai.bundle import ConfigParser

    config = json.loads((cv_dir / "config.json").read_text())
    parser = ConfigParser(config["configs"])
    for key, value in config["overrides"].items():
        parser[key] = value
    patch_norm = _bags_patch_norm(cv_dir) or parser.get_parsed_content("preprocessing_args")["patch_norm"]
    network = parser.get_parsed_content("network_def").hparams
    channels = {"both": "two channels per patch (per-patch min-max, then the lung window scaled over the volume)",
                "minmax": "one channel per patch (the paper's per-patch min-max)",
                "window": "one channel per patch (the lung window scaled over the volume)"}[patch_norm]
    attention = ("scored by a second encoder on the min-max channel" if network.get("attention_channels")
                 else "scored on the instance features")
    form = "gated" if network.get("gated") else "plain (the paper's Eq. 2)"
    fusion = "fused with the lung-density model" if parser["density_fusion"] else "not fused with the lung-density model"
    return f"{channels}; {form} attention, {attention}; the logit {fusion} (`patch_norm` {patch_norm!r}, settings A-D alike)"


def _rule() -> str:
    """The operating-point rule the protocol's configs give the runs (``train#operating_point#rule``)."""
    from monai.bundle import ConfigParser

    from ctmil.bundle import config_paths

    parser = ConfigParser(ConfigParser.load_config_files(config_paths(list(FILES))))
    return str(parser["train"]["operating_point"]["rule"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "percovid_sample"))
    parser.add_argument("--out", default=str(ROOT / "out" / "results"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report and --doc from <out>/cv/predictions.csv")
    args = parser.parse_args(argv)
    from ctmil.cli import parse_overrides
    from ctmil.evaluate.cv import fused_descriptions, run_cv
    from ctmil.evaluate.report import read_predictions, write_report

    sample, out = Path(args.data), Path(args.out)
    overrides = parse_overrides(args.set)
    command = "python docs/make_results.py" + (f" --set {' '.join(args.set)}" if args.set else "")
    record = out / "cv" / "results_run.json"
    if args.report_only:
        run = {**json.loads(record.read_text()), "report_commit": _commit()}
        predictions, config = read_predictions(out / "cv" / "predictions.csv"), json.loads((out / "cv" / "config.json").read_text())
        fused = bool(config["overrides"].get("density_fusion", config["configs"].get("density_fusion", False)))
        write_report(out / "cv", predictions, descriptions=fused_descriptions(predictions["setting"].unique(), fused))
    else:
        if not (sample / "labels.csv").is_file():
            raise SystemExit(f"no Per-COVID sample at {sample} (labels.csv missing)")
        run, start = {"started": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}", "commit": _commit()}, time.perf_counter()
        run_cv(datalist(sample, out), out / "cv", files=FILES, overrides=overrides, progress=True)
        record.write_text(json.dumps({**run, "seconds": time.perf_counter() - start, "load": _load()}))
        run = json.loads(record.read_text())
    Path(args.doc).write_text(results_md(out / "cv", run, command, overrides))
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
