"""Shards for any scheduler (issue 21 point 2): ``--shard I/N`` splits the cases by a hash of their ids, and
``ctmil merge-predictions`` joins the shards into the table one process would have written."""

import pandas as pd
import pytest
import torch

from ctmil.cli import main
from ctmil.infer.shards import in_shard, parse_shard
from ctmil.networks import MILNet
from ctmil.synthetic.phantoms import make_phantom, write_nifti
from ctmil.train.handlers import save_model
from tests.train._bags import TINY_NET


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_every_case_is_in_exactly_one_shard(count):
    ids = [f"case_{i:04d}" for i in range(200)] + ["st-1de7b14cd2bb", "S001"]
    owners = [[i for i in range(count) if in_shard(c, i, count)] for c in ids]
    assert all(len(o) == 1 for o in owners)
    if count > 1:
        assert len({o[0] for o in owners}) == count  # no shard left empty by 200 ids


@pytest.mark.parametrize("text, expected", [("0/4", (0, 4)), ("3/4", (3, 4)), (" 1 / 2 ", (1, 2))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1", "a/b", "0/0"])
def test_bad_shards_are_one_line_errors(text):
    with pytest.raises(ValueError, match="--shard must be I/N"):
        parse_shard(text)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    for i in range(6):
        vol, _, info = make_phantom(i, shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0))
        write_nifti(vol, info["spacing"], root / "in" / f"c{i}.nii.gz")
    torch.manual_seed(0)
    return root, save_model(MILNet(**TINY_NET), root / "model")


def comparable(path) -> pd.DataFrame:
    frame = pd.read_csv(path, keep_default_na=False)
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("t_")])
    return frame.sort_values("case_id").reset_index(drop=True)


def test_two_shards_merge_into_the_single_run(batch, tmp_path, capsys):
    root, model = batch
    common = ["--model", str(model), "-q", "--device", "cpu", "--no-maps", "--no-overlays"]
    assert main(["infer", str(root / "in"), "--out", str(tmp_path / "one"), *common]) == 0
    for i in range(2):
        assert main(["infer", str(root / "in"), "--out", str(tmp_path / "sharded"), "--shard", f"{i}/2", *common]) == 0
    assert not (tmp_path / "sharded" / "predictions.csv").exists()
    parts = [pd.read_csv(tmp_path / "sharded" / f"predictions.shard-{i}-of-2.csv") for i in range(2)]
    assert all(len(p) for p in parts) and sum(len(p) for p in parts) == 6
    assert main(["merge-predictions", str(tmp_path / "sharded"), "-q"]) == 0
    pd.testing.assert_frame_equal(comparable(tmp_path / "sharded" / "predictions.csv"), comparable(tmp_path / "one" / "predictions.csv"))
    assert (tmp_path / "sharded" / "report.html").is_file()


def test_a_missing_shard_is_refused(batch, tmp_path, capsys):
    root, model = batch
    assert main(["infer", str(root / "in"), "--out", str(tmp_path / "o"), "--shard", "1/3", "--model", str(model), "-q",
                 "--device", "cpu", "--no-maps", "--no-overlays"]) == 0
    capsys.readouterr()
    assert main(["merge-predictions", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: shard 0 of 3 is missing in {tmp_path / 'o'} (2 of 3 missing): run it, then merge"]
    assert not (tmp_path / "o" / "predictions.csv").exists()
