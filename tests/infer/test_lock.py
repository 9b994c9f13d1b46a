"""One live run per output folder (issue 21 point 4): a second run into an --out that a live run holds refuses with
one line and exit 2, a different shard goes ahead, and a killed run's lock is taken over."""

import json
import socket
import subprocess
import sys

import pytest

from ctmil.infer.lock import OutputInUse, output_lock


@pytest.fixture
def live_pid():
    """A process that is alive for the test."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def hold(folder, pid, name="infer", host=None):
    (folder / f".ctmil-{name}.lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "t"}))


def test_a_live_run_holds_the_folder(tmp_path, live_pid):
    hold(tmp_path, live_pid)
    with pytest.raises(OutputInUse, match=f"is in use by pid {live_pid} on .*; wait for it$"):
        with output_lock(tmp_path):
            pass


def test_another_shard_and_a_killed_run_do_not_block(tmp_path, live_pid):
    hold(tmp_path, live_pid, name="infer.shard-0-of-2")
    with output_lock(tmp_path, "infer.shard-1-of-2") as path:  # another shard: its own lock
        assert path.is_file()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    hold(tmp_path, int(dead.stdout))
    with output_lock(tmp_path) as path:  # the pid is gone: taken over
        assert json.loads(path.read_text())["pid"] != int(dead.stdout)
    assert not path.exists()  # released at the end


def test_another_hosts_lock_names_the_file_to_remove(tmp_path):
    hold(tmp_path, 12345, host="node-17")
    with pytest.raises(OutputInUse, match=r"pid 12345 on node-17 .*or remove .*\.ctmil-infer\.lock if that run is gone"):
        with output_lock(tmp_path):
            pass


def test_cli_infer_refuses_a_held_out_with_exit_2(tmp_path, live_pid, capsys):
    import torch

    from ctmil.cli import main
    from ctmil.networks import MILNet
    from ctmil.synthetic.phantoms import make_phantom, write_nifti
    from ctmil.train.handlers import save_model
    from tests.train._bags import TINY_NET

    vol, _, info = make_phantom(0, shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0))
    write_nifti(vol, info["spacing"], tmp_path / "in" / "c.nii.gz")
    model = save_model(MILNet(**TINY_NET), tmp_path / "m")
    (tmp_path / "out").mkdir()
    hold(tmp_path / "out", live_pid)
    assert main(["infer", str(tmp_path / "in"), "--model", str(model), "--out", str(tmp_path / "out"), "-q", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is in use by pid" in err[0] and not (tmp_path / "out" / "predictions.csv").exists()


def test_a_lock_holding_our_own_pid_is_a_leftover(tmp_path):
    """A restarted container reuses its pid: a lock naming this very process cannot be a live other run."""
    import os

    hold(tmp_path, os.getpid())
    with output_lock(tmp_path) as path:
        assert path.is_file()


@pytest.mark.parametrize("guard", [True, False])
def test_runs_that_find_the_same_dead_lock_take_it_over_one_at_a_time(tmp_path, guard):
    """Six processes start together on a folder whose lock names a dead run, each checking the dead pid slowly (1 s,
    which widens the race window), and a holder keeps the folder until every process has answered: with the guard
    exactly one holds it and the others are told it is in use; without it (the check and the take-over not
    serialised) several take it over at once."""
    import time

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    hold(tmp_path, int(dead.stdout))
    release = tmp_path / "release"
    script = ("import sys, time, contextlib\nfrom pathlib import Path\nimport ctmil.infer.lock as L\n"
              + ("" if guard else "L._guarded = lambda p: contextlib.nullcontext()\n")
              + "alive = L._alive\nL._alive = lambda pid: (time.sleep(1.0), alive(pid))[1]\n"
              "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
              "try:\n    with L.output_lock(Path(sys.argv[1])):\n        print('held', flush=True)\n"
              "        while not Path(sys.argv[3]).exists():\n            time.sleep(0.05)\n"
              "except L.OutputInUse:\n    print('refused', flush=True)\n")  # fmt: skip
    start = str(time.time() + 5.0)  # every process is past its imports by then (a few 100 ms each)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), start, str(release)], stdout=subprocess.PIPE,
                              text=True) for _ in range(6)]  # fmt: skip
    answers = [p.stdout.readline().strip() for p in procs]  # each has held or been refused; holders still hold
    release.touch()
    for p in procs:
        p.communicate(timeout=60)
    held = answers.count("held")
    assert held == 1 if guard else held > 1, answers
    assert (tmp_path / ".ctmil-infer.lock.guard").exists() == guard
