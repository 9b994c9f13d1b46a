"""The ctmil command line: subcommands, exit codes and the raw-datalist path of ``ctmil cv``."""

from pathlib import Path

import pandas as pd
import pytest

from ctmil.cli import build_parser, main
from ctmil.synthetic.phantoms import generate_cohort


@pytest.mark.parametrize("command", ["preprocess", "phantoms", "cv", "infer", "demo"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([command, "--help"])
    assert stop.value.code == 0 and command in capsys.readouterr().out


def test_preprocess_exit_codes(tmp_path):
    generate_cohort(tmp_path / "c", n=2, seed=1, formats=("nifti",), shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0), progress=False)
    assert main(["preprocess", str(tmp_path / "c" / "nifti"), "--out", str(tmp_path / "ok"), "-q"]) == 0
    assert main(["preprocess", str(tmp_path / "c" / "nifti"), str(tmp_path / "missing"), "--out", str(tmp_path / "some"), "-q"]) == 3
    manifest = pd.read_csv(tmp_path / "some" / "manifest.csv")
    assert manifest["status"].tolist().count("failed") == 1 and manifest["status"].tolist().count("ok") == 2


def test_cv_preprocesses_a_datalist_of_ct_files(tmp_path, capsys):
    table = generate_cohort(tmp_path / "c", n=6, seed=2, formats=("nifti",), shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0), progress=False)
    datalist = tmp_path / "c" / "ct_datalist.csv"
    pd.DataFrame({"case_id": table["case_id"], "image": table["nifti_path"], "label": table["label"]}).to_csv(datalist, index=False)
    sets = ["train.epochs=1", "cv.n_folds=2", "cv.n_repeats=1", 'cv.settings=["A"]', "cv.progress=false",
            "train.tensorboard=false", 'network={"feature_dim": 16, "attention_dim": 8, "ssl_hidden": 8}']
    assert main(["cv", "--datalist", str(datalist), "--out", str(tmp_path / "cv"), "--set", *sets]) == 0
    assert len(pd.read_csv(tmp_path / "cv" / "bags" / "datalist.csv")) == 6
    predictions = pd.read_csv(tmp_path / "cv" / "predictions.csv")
    assert sorted(predictions["case_id"]) == sorted(table["case_id"])
    assert "| (A) MIL only |" in capsys.readouterr().out


def test_relative_output_folder_gives_a_usable_datalist(tmp_path, monkeypatch):
    """`--out` relative to the working directory (as `make demo` passes it): the datalist must still resolve."""
    from ctmil.evaluate.cv import load_datalist

    generate_cohort(tmp_path / "c", n=2, seed=1, formats=("nifti",), shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0), progress=False)
    pd.read_csv(tmp_path / "c" / "labels.csv").assign(image=lambda t: "c/" + t["nifti_path"])[["case_id", "image", "label"]].to_csv(tmp_path / "dl.csv", index=False)
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", "dl.csv", "--out", "rel/out", "-q"]) == 0
    table = load_datalist(tmp_path / "rel" / "out" / "datalist.csv")
    assert len(table) == 2 and all(Path(p).is_file() for p in table["bag"])
