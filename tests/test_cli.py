"""The ctmil command line: subcommands, exit codes, ``#``-id overrides, ``ctmil train`` and the raw-datalist path of ``ctmil cv``."""

import json
from pathlib import Path

import pandas as pd
import pytest

from ctmil.cli import build_parser, main
from ctmil.synthetic.phantoms import generate_cohort

TINY_SETS = ["network_def#feature_dim=16", "network_def#attention_dim=8", "network_def#ssl_hidden=8", "tensorboard=false"]


@pytest.mark.parametrize("command", ["train", "preprocess", "phantoms", "cv", "infer", "demo", "evaluate", "export"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([command, "--help"])
    assert stop.value.code == 0 and command in capsys.readouterr().out


def test_preprocess_exit_codes(tmp_path):
    generate_cohort(tmp_path / "c", n=2, seed=1, formats=("nifti",), shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0), progress=False)
    assert main(["preprocess", str(tmp_path / "c" / "nifti"), "--out", str(tmp_path / "ok"), "-q"]) == 0
    # a missing input is a usage error: exit 2 before any work, no manifest
    assert main(["preprocess", str(tmp_path / "c" / "nifti"), str(tmp_path / "missing"), "--out", str(tmp_path / "none"), "-q"]) == 2
    assert not (tmp_path / "none" / "manifest.csv").exists()
    # an unreadable case is a partial success: exit 3, every case in the manifest
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti file")
    assert main(["preprocess", str(tmp_path / "c" / "nifti"), str(tmp_path / "junk.nii.gz"), "--out", str(tmp_path / "some"), "-q"]) == 3
    manifest = pd.read_csv(tmp_path / "some" / "manifest.csv")
    assert manifest["status"].tolist().count("failed") == 1 and manifest["status"].tolist().count("ok") == 2


def test_cv_preprocesses_a_datalist_of_ct_files(tmp_path, capsys):
    table = generate_cohort(tmp_path / "c", n=6, seed=2, formats=("nifti",), shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0), progress=False)
    datalist = tmp_path / "c" / "ct_datalist.csv"
    pd.DataFrame({"case_id": table["case_id"], "image": table["nifti_path"], "label": table["label"]}).to_csv(datalist, index=False)
    sets = ["cv#n_folds=2", "cv#n_repeats=1", 'cv#settings=["A"]', "cv#final_model=none", *TINY_SETS]
    assert main(["cv", "--datalist", str(datalist), "--out", str(tmp_path / "cv"), "--epochs", "1", "-q", "--set", *sets]) == 0
    assert len(pd.read_csv(tmp_path / "cv" / "bags" / "datalist.csv")) == 6
    predictions = pd.read_csv(tmp_path / "cv" / "predictions.csv")
    assert sorted(predictions["case_id"]) == sorted(table["case_id"])
    assert "| (A) MIL only, fused with the lung-density model |" in capsys.readouterr().out  # the default fuses


def test_relative_output_folder_gives_a_usable_datalist(tmp_path, monkeypatch):
    """`--out` relative to the working directory (as `make demo` passes it): the datalist must still resolve."""
    from ctmil.bundle import load_bag_datalist as load_datalist

    generate_cohort(tmp_path / "c", n=2, seed=1, formats=("nifti",), shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0), progress=False)
    pd.read_csv(tmp_path / "c" / "labels.csv").assign(image=lambda t: "c/" + t["nifti_path"])[["case_id", "image", "label"]].to_csv(tmp_path / "dl.csv", index=False)
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", "dl.csv", "--out", "rel/out", "-q"]) == 0
    table = load_datalist(tmp_path / "rel" / "out" / "datalist.csv")
    assert len(table) == 2 and all(Path(p).is_file() for p in table["bag"])


def test_train_writes_a_model_and_resumes(tmp_path):
    import json

    generate_cohort(tmp_path / "c", n=6, seed=3, formats=("nifti",), shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0), progress=False)
    args = ["train", str(tmp_path / "c" / "labels.csv"), "--out", str(tmp_path / "m"), "--epochs", "2", "--device", "cpu",
            "-q", "--set", "val_fraction=0.34", "val_interval=1", "train#virtual_bags#start_epoch=1", *TINY_SETS]
    assert main(args) == 0
    info = json.loads((tmp_path / "m" / "model.json").read_text())
    assert info["epochs"] == 2 and info["trained_on"] == 4 and info["setting"] == "D"  # 2 of 6 cases validate
    assert info["preprocessing"]["spatial_size"] == [180, 240] and info["network"]["feature_dim"] == 16
    assert (tmp_path / "m" / "checkpoints" / "checkpoint_2.pt").exists()
    before = (tmp_path / "m" / "model.pt").read_bytes()
    assert main([*args[:5], "3", *args[6:]]) == 0  # --epochs 3: continues from epoch 2
    assert json.loads((tmp_path / "m" / "model.json").read_text())["epochs"] == 3
    assert (tmp_path / "m" / "model.pt").read_bytes() != before


def test_train_refuses_an_out_made_from_other_settings(tmp_path, capsys):
    generate_cohort(tmp_path / "c", n=4, seed=6, formats=("nifti",), shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0), progress=False)
    args = ["train", str(tmp_path / "c" / "labels.csv"), "--out", str(tmp_path / "m"), "--epochs", "1", "-q",
            "--set", "val_fraction=0", *TINY_SETS]
    assert main(args) == 0
    first = (tmp_path / "m" / "model.pt").read_bytes()
    assert main([*args, "--seed", "7"]) == 2  # resuming the seed-0 checkpoint would give seed-0 weights
    assert "--restart" in capsys.readouterr().err
    assert main([*args, "--seed", "7", "--restart"]) == 0
    assert (tmp_path / "m" / "model.pt").read_bytes() != first


@pytest.mark.parametrize("override", ["max_epoch=1", "trian#virtual_bags#start_epoch=3", "train#virtual_bags#startepoch=3"])
def test_misspelt_overrides_exit_2_with_one_line(tmp_path, capsys, override):
    generate_cohort(tmp_path / "c", n=4, seed=6, formats=("nifti",), shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0), progress=False)
    assert main(["train", str(tmp_path / "c" / "labels.csv"), "--out", str(tmp_path / "m"), "--epochs", "1", "-q",
                 "--set", "val_fraction=0", override, *TINY_SETS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]


def test_a_config_item_that_fails_is_a_one_line_error(tmp_path, capsys):
    generate_cohort(tmp_path / "c", n=4, seed=6, formats=("nifti",), shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0), progress=False)
    # 4 patients cannot fill the 5 folds of a 0.2 validation split: MONAI wraps the ValueError in a RuntimeError
    assert main(["train", str(tmp_path / "c" / "labels.csv"), "--out", str(tmp_path / "m"), "--epochs", "1", "-q", *["--set", *TINY_SETS]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: 4 groups cannot fill 5 folds."]


def test_train_with_the_packaged_paper_config(tmp_path):
    import json

    generate_cohort(tmp_path / "c", n=4, seed=5, formats=("nifti",), shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0), progress=False)
    assert main(["train", str(tmp_path / "c" / "labels.csv"), "--out", str(tmp_path / "m"), "--epochs", "1", "-q",
                 "--config", "paper.json", "--set", "val_fraction=0", *TINY_SETS]) == 0
    assert json.loads((tmp_path / "m" / "model.json").read_text())["network"]["gated"] is False  # the paper's Eq. 2
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "x"), "--config", "nosuch.json"]) == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "MISSING.csv", "--out", "{tmp}/o"], "input not found"),
        (["cv", "--datalist", "MISSING.csv", "--out", "{tmp}/o"], "datalist not found"),
        (["train", "{tmp}", "--out", "{tmp}/o", "--set", "novalue"], "not KEY=VALUE"),
        (["train", "{tmp}", "--out", "{tmp}/o", "--device", "tpu:9"], "invalid device"),
        (["train", "{tmp}", "--out", "/proc/ctmil-cannot-write"], "cannot write to --out"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0] and "Traceback" not in err[0]


def test_verbose_anywhere_shows_the_traceback(tmp_path, capsys):
    assert main(["cv", "--datalist", str(tmp_path / "x.csv"), "--out", str(tmp_path / "o"), "-v"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_hostile_export_completes_through_the_cli_with_exit_3(tmp_path, capsys):
    """Issue 11 end to end: junk files and broken series in one export; preprocess and infer both finish, one row
    per case with a truthful status, exit code 3, and nothing is written outside --out."""
    import torch

    from ctmil.networks import MILNet
    from ctmil.train.handlers import save_model
    from tests.io._hostile import HOSTILE_FILES, edit, write_series

    export = tmp_path / "EXPORT"
    write_series(export / "good")
    slope = write_series(export / "slope", seed=3)
    edit(slope, range(12), RescaleSlope=0.0)
    for name, write in HOSTILE_FILES.items():
        write(export / "good" / f"junk_{name}")
    before = {p for p in tmp_path.rglob("*")}
    assert main(["preprocess", str(export), "--out", str(tmp_path / "pre"), "-q"]) == 3
    manifest = pd.read_csv(tmp_path / "pre" / "manifest.csv", dtype=str, keep_default_na=False)
    assert "ok" in manifest["status"].tolist() and "RescaleSlope" in " ".join(manifest["error"])
    assert all(str(export) not in s for s in manifest["source"])  # sources relative to the input root
    torch.manual_seed(0)
    model = save_model(MILNet(feature_dim=16, attention_dim=8, ssl_hidden=8), tmp_path / "model")
    assert main(["infer", str(export), "--model", str(model), "--out", str(tmp_path / "inf"), "-q", "--no-overlays"]) == 3
    predictions = pd.read_csv(tmp_path / "inf" / "predictions.csv", dtype=str, keep_default_na=False)
    assert len(predictions) == len(manifest) and set(predictions["status"]) == {"ok", "failed"}
    err = capsys.readouterr().err
    assert "FAILED" in err and "Traceback" not in err
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(p.is_relative_to(tmp_path / "pre") or p.is_relative_to(tmp_path / "inf") or p.is_relative_to(tmp_path / "model")
               for p in created)


@pytest.mark.parametrize("content, message", [("a,b\n1,2\n", "datalist"), ("case_id,image,label\nx,a.nii.gz,1\nx,b.nii.gz,0\n", "duplicate")])
def test_bad_datalists_exit_2_before_any_work(tmp_path, capsys, content, message):
    (tmp_path / "list.csv").write_text(content)
    assert main(["preprocess", str(tmp_path / "list.csv"), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not (tmp_path / "out" / "manifest.csv").exists()


def test_infer_one_study_prints_its_answer_and_study_uid_on_request(tmp_path, capsys):
    import torch

    from ctmil.networks import MILNet
    from ctmil.train.handlers import save_model
    from tests.io._hostile import write_series

    write_series(tmp_path / "export" / "study")
    torch.manual_seed(0)
    model = save_model(MILNet(feature_dim=16, attention_dim=8, ssl_hidden=8), tmp_path / "model")
    args = ["infer", str(tmp_path / "export"), "--model", str(model), "-q", "--no-overlays", "--no-maps"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "probability of severe" in out and ("-> severe" in out or "-> non-severe" in out)
    assert "study_uid" not in pd.read_csv(tmp_path / "a" / "predictions.csv").columns  # an identifier: off by default
    assert main([*args, "--out", str(tmp_path / "b"), "--with-study-uid"]) == 0
    table = pd.read_csv(tmp_path / "b" / "predictions.csv", dtype=str)
    assert table.columns[1] == "study_uid" and table["study_uid"].iloc[0].startswith("1.")


@pytest.mark.parametrize("pair, key, value", [
    ("use_virtual_bags=False", "use_virtual_bags", False),  # Python literals, as the bundle README writes them
    ("use_virtual_bags=false", "use_virtual_bags", False),  # JSON
    ("cv#settings=['A','D']", "cv#settings", ["A", "D"]),
    ('cv#settings=["A","D"]', "cv#settings", ["A", "D"]),
    ("optimizer#lr=1e-4", "optimizer#lr", 1e-4),
    ("labels=None", "labels", None),
    ("datalist=/data/list.csv", "datalist", "/data/list.csv"),  # not a literal: the string itself
    ("x=$@max_epochs + 1", "x", "$@max_epochs + 1"),
])
def test_set_values_are_read_as_json_or_python_literals(pair, key, value):
    from ctmil.cli import parse_overrides

    assert parse_overrides([pair]) == {key: value}


def test_a_malformed_set_pair_is_one_line_naming_it():
    from ctmil.cli import UsageError, parse_overrides

    with pytest.raises(UsageError, match="'max_epochs' is not KEY=VALUE"):
        parse_overrides(["max_epochs"])


@pytest.mark.parametrize("argv", [
    ["train", "--set", "max_epochs=1", "use_virtual_bags=False", "{data}", "--out", "o"],
    ["train", "{data}", "--set", "max_epochs=1", "use_virtual_bags=False", "--out", "o"],
    ["train", "--out", "o", "--set", "max_epochs=1", "use_virtual_bags=False", "{data}"],
])
def test_set_never_swallows_the_inputs(tmp_path, argv):
    from ctmil.cli import build_parser
    from ctmil.cli.common import set_before_inputs

    data = tmp_path / "data.csv"
    data.write_text("case_id,image,label\n")
    args = build_parser().parse_args(set_before_inputs([a.replace("{data}", str(data)) for a in argv]))
    assert args.inputs == [str(data)] and args.set == ["max_epochs=1", "use_virtual_bags=False"]


@pytest.mark.parametrize("n, noun, nouns, expected", [(1, "case", None, "1 case"), (2, "case", None, "2 cases"),
                                                      (0, "case", None, "0 cases"), (1, "study", "studies", "1 study"),
                                                      (3, "study", "studies", "3 studies")])
def test_plural(n, noun, nouns, expected):
    from ctmil.words import plural

    assert plural(n, noun, nouns) == expected


def test_quiet_prints_no_info_and_no_third_party_notices(tmp_path):
    """-q: warnings and errors only; MONAI's missing-GPU-decoder notices are not the user's business without -v."""
    import subprocess
    import sys

    run = lambda *a: subprocess.run([sys.executable, "-m", "ctmil.cli", *a], capture_output=True, text=True)  # noqa: E731
    done = run("phantoms", "--out", str(tmp_path / "p"), "--n", "1", "-q")
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    done = run("preprocess", str(tmp_path / "p" / "nifti"), "--out", str(tmp_path / "o"), "-q", "--no-montages")
    assert done.returncode == 0 and "nvImageCodec" not in done.stdout + done.stderr and "INFO" not in done.stderr
    done = run("phantoms", "--out", str(tmp_path / "q"), "--n", "1")
    assert "wrote 1 phantom (" in done.stderr


@pytest.mark.parametrize("argv, message", [
    (["train", "{data}", "--out", "{out}", "--set", "max_epoch=1"], "max_epoch"),
    (["cv", "--datalist", "{data}", "--out", "{out}", "--set", "cv#nfolds=2"], "cv#nfolds"),
    (["demo", "--out", "{out}", "--set", "max_epoch=1"], "max_epoch"),
    (["demo", "--out", "{out}", "--config", "nosuch.json"], "config not found"),
    (["infer", "{data}", "--model", "{folder}", "--out", "{out}"], ""),
    (["infer", "{data}", "--model", "{junk}", "--out", "{out}"], "cannot read model file"),
    (["export", "--model", "{junk}", "--out", "{out}/m.ts", "--format", "onnx"], "does not match"),
    (["evaluate", "{data}", "--model", "{junk}", "--out", "{out}", "--set", "optoins#top_slices=5"], "optoins"),
    (["evaluate", "--datalist", "{data}", "--model", "{junk}", "--out", "{out}", "--set", "n_resampels=5"],
     "n_resampels"),  # a bag datalist runs the same evaluation workflow: its ids are checked alike
])
@pytest.mark.parametrize("earlier_run", [False, True])
def test_user_mistakes_are_refused_before_any_output(tmp_path, capsys, argv, message, earlier_run):
    """Exit 2 with one line, and --out left as it was, compared file by file: never created, or (an earlier run's
    folder) the same files with the same bytes."""
    from ctmil.cli import main

    data = tmp_path / "data.csv"
    data.write_text("case_id,image,label\nc,x.nii.gz,1\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07junk")
    out = tmp_path / "out"
    if earlier_run:
        (out / "cases" / "c").mkdir(parents=True)
        (out / "predictions.csv").write_text("case_id,probability\nc,0.5\n")
        (out / "cases" / "c" / "prediction.json").write_text("{}")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} if earlier_run else None
    values = {"{data}": str(data), "{out}": str(out), "{folder}": str(tmp_path / "folder"), "{junk}": str(tmp_path / "junk.onnx")}
    code = main([values.get(a, a.replace("{out}", str(out))) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    if earlier_run:
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == sorted([*before, Path("cases"), Path("cases/c")])
    else:
        assert not out.exists()


@pytest.mark.parametrize("command", ["train", "cv", "demo", "preprocess", "phantoms", "export", "evaluate", "infer"])
def test_every_subcommand_help_has_a_description_and_the_defaults(command, capsys):
    from ctmil.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--help"])
    page = capsys.readouterr().out
    description = page.split("\n\n")[1].strip()
    assert description and not description.startswith(("positional", "options")) and "%%" not in page
    sub = parser._subparsers._group_actions[0].choices[command]
    formatter = sub._get_formatter()
    for action in sub._actions:
        if action.option_strings and action.nargs != 0 and action.default not in (None, "==SUPPRESS=="):
            assert "default" in formatter._get_help_string(action), (command, action.dest)


@pytest.mark.parametrize("argv", [["cv", "{d}", "--out", "o"], ["cv", "--datalist", "{d}", "--out", "o"],
                                  ["train", "{d}", "--out", "o"], ["train", "--datalist", "{d}", "--out", "o"]])
def test_inputs_are_positional_everywhere_with_datalist_as_a_synonym(tmp_path, argv):
    from ctmil.cli import build_parser
    from ctmil.cli.common import given_inputs

    data = tmp_path / "d.csv"
    data.write_text("case_id,bag,label\n")
    args = build_parser().parse_args([a.replace("{d}", str(data)) for a in argv])
    assert given_inputs(args) == [str(data.resolve())]


def test_no_input_at_all_is_one_line(tmp_path, capsys):
    from ctmil.cli import main

    assert main(["cv", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "error: no datalist given: name it as the first argument (or with --datalist)"


@pytest.mark.parametrize("command", ["preprocess", "train", "infer"])
@pytest.mark.parametrize("junk", [False, True])
def test_inputs_without_ct_are_exit_2_before_any_output(tmp_path, capsys, junk, command, untrained_model):
    """No --out (not even an empty one), and for train no bags/ either."""
    from ctmil.cli import main

    (tmp_path / "empty").mkdir()
    if junk:
        (tmp_path / "empty" / "notes.txt").write_text("not a CT")
    extra = ["--model", str(untrained_model)] if command == "infer" else []
    assert main([command, str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "-q", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no CT found in the inputs (no DICOM images") and not (tmp_path / "o").exists()


def test_preprocess_without_labels_says_the_datalist_will_be_empty(tmp_path, capsys):
    from ctmil.cli import main
    from ctmil.synthetic.phantoms import make_phantom, write_nifti

    vol, _, info = make_phantom(0, shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0))
    write_nifti(vol, info["spacing"], tmp_path / "in" / "c.nii.gz")
    assert main(["preprocess", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "-q", "--no-montages"]) == 0
    assert "warning: no case has a label" in capsys.readouterr().err


def test_preprocess_takes_set_and_config_and_names_an_unknown_setting(tmp_path, capsys):
    import torch

    from ctmil.cli import main
    from ctmil.synthetic.phantoms import make_phantom, write_nifti

    vol, _, info = make_phantom(0, shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0))
    write_nifti(vol, info["spacing"], tmp_path / "in" / "c.nii.gz")
    (tmp_path / "cfg.json").write_text(json.dumps({"preprocessing_args": {"max_slices": 4}}))
    assert main(["preprocess", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "-q", "--no-montages",
                 "--config", str(tmp_path / "cfg.json"), "--set", "window_hu=[-1000,400]"]) == 0
    bag = torch.load(next((tmp_path / "o" / "bags").glob("*.pt")), weights_only=True)
    assert bag["meta"]["preprocessing"]["max_slices"] == 4 and bag["meta"]["preprocessing"]["window_hu"] == [-1000, 400]
    capsys.readouterr()
    assert main(["preprocess", str(tmp_path / "in"), "--out", str(tmp_path / "x"), "--set", "max_slice=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: not a preprocessing setting: 'max_slice'") and not (tmp_path / "x").exists()


@pytest.mark.parametrize("configs, channels", [([], 2), (["paper.json"], 1)])
def test_preprocess_then_train_with_the_same_configs(tmp_path, capsys, configs, channels):
    """`ctmil preprocess --config X` makes the bags that `ctmil train --config X` builds its network for: the
    default's two channels, paper.json's one (its flat preprocessing_args#patch_norm); other bags are refused in
    one line before any training."""
    import torch

    generate_cohort(tmp_path / "ph", n=4, seed=0, formats=("nifti",), shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0), progress=False)
    config = ["--config", *configs] if configs else []
    assert main(["preprocess", str(tmp_path / "ph" / "nifti"), "--labels", str(tmp_path / "ph" / "labels.csv"),
                 "--out", str(tmp_path / "bags"), "-q", "--no-montages", "--min-slices", "4", *config]) == 0
    bag = torch.load(next((tmp_path / "bags" / "bags").glob("*.pt")), weights_only=True)
    assert bag["patches"].shape[1] == channels
    datalist = str(tmp_path / "bags" / "datalist.csv")
    assert main(["train", datalist, "--out", str(tmp_path / "t"), "--epochs", "1", "--device", "cpu", "-q", *config,
                 "--set", "val_fraction=0", "checkpoint_every=0", *TINY_SETS]) == 0
    other = [] if configs else ["--config", "paper.json"]
    capsys.readouterr()
    assert main(["train", datalist, "--out", str(tmp_path / "u"), "--epochs", "1", "--device", "cpu", "-q", *other]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the bags of this datalist were made with patch_norm=") and "\n" not in err
    assert not (tmp_path / "u" / "model.pt").exists()


def test_infer_takes_set_and_refuses_an_unknown_id_before_any_output(tmp_path, capsys):
    from ctmil.cli import main
    from ctmil.networks import MILNet
    from ctmil.synthetic.phantoms import make_phantom, write_nifti
    from ctmil.train.handlers import save_model

    vol, _, info = make_phantom(0, shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0))
    write_nifti(vol, info["spacing"], tmp_path / "in" / "c.nii.gz")
    model = save_model(MILNet(feature_dim=16, attention_dim=8, ssl_hidden=8), tmp_path / "m")
    assert main(["infer", str(tmp_path / "in"), "--model", str(model), "--out", str(tmp_path / "o"), "-q", "--device", "cpu",
                 "--set", "options#top_slices=1", "options#save_maps=False"]) == 0
    case = next((tmp_path / "o" / "cases").iterdir())
    assert len(list(case.glob("overlay_*.png"))) == 1 and not (case / "attention.nii.gz").exists()
    assert main(["infer", str(tmp_path / "in"), "--model", str(model), "--out", str(tmp_path / "x"), "--set", "option#top_slices=1"]) == 2
    assert "option#top_slices" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_set_before_inputs_never_hands_an_input_to_config(tmp_path):
    from ctmil.cli import build_parser
    from ctmil.cli.common import set_before_inputs

    data = tmp_path / "d.csv"
    data.write_text("case_id,bag,label\n")
    args = build_parser().parse_args(set_before_inputs(["train", "--config", "paper.json", "--set", "max_epochs=1", str(data),
                                                         "--out", "o"]))
    assert args.inputs == [str(data)] and args.config == ["paper.json"] and args.set == ["max_epochs=1"]


def test_ctrl_c_during_training_is_one_line_and_exit_130(tmp_path):
    """As the ``ctmil`` console script runs it: SIGINT once the first epoch is checkpointed."""
    import signal
    import subprocess
    import sys
    import time

    from ctmil.synthetic.phantoms import generate_cohort

    generate_cohort(tmp_path / "p", n=4, seed=0, formats=("nifti",), shape=(10, 64, 64), spacing=(8.0, 5.0, 5.0), progress=False)
    script = "import sys; from ctmil.cli import main; sys.exit(main())"
    run = subprocess.Popen([sys.executable, "-c", script, "train", str(tmp_path / "p" / "nifti"), "--labels",
                            str(tmp_path / "p" / "labels.csv"), "--out", str(tmp_path / "t"), "--epochs", "200", "-q",
                            "--set", "val_fraction=0", "preprocessing_args#min_slices=4", *TINY_SETS],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    first = tmp_path / "t" / "checkpoints" / "checkpoint_1.pt"
    deadline = time.monotonic() + 120
    while not first.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130 and err.splitlines() == ["interrupted; run the same command to resume"], err


def test_the_old_preprocessing_id_gets_a_hint(tmp_path, capsys):
    """``preprocessing#...`` named the settings in train.json before 0.3.0 (``preprocessing`` is now only the infer
    workflow's Compose): the one-line error says the new id."""
    from ctmil.cli import main

    data = tmp_path / "d.csv"
    data.write_text("case_id,bag,label\n")
    assert main(["train", str(data), "--out", str(tmp_path / "o"), "--set", "preprocessing#max_slices=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown config id 'preprocessing#max_slices'") and "'preprocessing_args#max_slices'" in err


def test_building_the_parser_imports_no_torch():
    """``ctmil --help`` and every usage error come before torch or MONAI is imported: the command modules import
    the library inside ``run`` (the one place ctmil imports its own modules lazily, tests/test_layers.py)."""
    import subprocess
    import sys

    script = "import sys; from ctmil.cli.main import build_parser; build_parser(); print(sorted({'torch', 'monai'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
