"""The layers of docs/design.md, kept by the code: import-linter's contract in setup.cfg (issue 20)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("importlinter", reason="import-linter (the test extra) checks the layers")


def _lint(config: Path) -> subprocess.CompletedProcess:
    script = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", script, "--config", str(config), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_no_package_imports_one_above_it():
    done = _lint(ROOT / "setup.cfg")
    assert done.returncode == 0 and "3 kept, 0 broken" in done.stdout, done.stdout[-3000:]


def test_every_package_is_in_the_layers():
    """A new package must be placed in the layers (an unlisted one would escape the contract)."""
    text = (ROOT / "setup.cfg").read_text()
    layers = text.split("[importlinter:contract:layers]", 1)[1].split("\n[", 1)[0]
    listed = set(re.findall(r"ctmil\.(\w+)", layers))
    packages = {p.stem if p.is_file() else p.name for p in (ROOT / "ctmil").iterdir()
                if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert packages <= listed, sorted(packages - listed)


@pytest.mark.parametrize("module, forbidden", [("ctmil.train.steps", "ctmil.synthetic.chest"),
                                               ("ctmil.networks.milnet", "ctmil.io.readers")])
def test_forbidden_contracts_can_break(tmp_path, module, forbidden):
    """An import the forbidden contracts exclude, added to a copy of the package, breaks them."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "ctmil", copy / "ctmil", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", copy / "setup.cfg")
    path = copy / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\nimport {forbidden}  # noqa: E402\n")
    script = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    done = subprocess.run([sys.executable, "-c", script, "--config", str(copy / "setup.cfg"), "--no-cache"], cwd=copy,
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and "BROKEN" in done.stdout and forbidden in done.stdout, done.stdout[-3000:]


def test_the_contract_can_break(tmp_path):
    """The same contract with train drawn above evaluate is broken (evaluate's cross-validation trains): the check
    is live, not a formality."""
    text = (ROOT / "setup.cfg").read_text()
    swapped = re.sub(r"(\n\s+)ctmil\.evaluate(\n\s+)ctmil\.infer(\n\s+)ctmil\.train\n", r"\1ctmil.train\2ctmil.infer\3ctmil.evaluate\n", text)
    assert swapped != text
    config = tmp_path / "setup.cfg"
    config.write_text(swapped)
    done = _lint(config)
    assert done.returncode == 1 and "BROKEN" in done.stdout and "ctmil.evaluate" in done.stdout, done.stdout[-3000:]


def test_the_picture_draws_the_contract():
    """docs/layers.svg (in docs/design.md) is drawn from the contract and records it: a contract changed without
    redrawing the picture (``python docs/make_layers.py``) fails here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_layers", ROOT / "docs" / "make_layers.py")
    make_layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_layers)
    layers = make_layers.contract_layers(ROOT / "setup.cfg")
    assert layers[0] == ["cli"] and ["io", "words"] in layers  # the parse reads the real contract
    drawn = re.search(r"<dc:description>([^<]*)</dc:description>", (ROOT / "docs" / "layers.svg").read_text())
    assert drawn and drawn.group(1) == make_layers.describe(layers), "redraw it: python docs/make_layers.py"


def test_no_library_module_imports_ctmil_inside_a_function():
    """Imports of ctmil modules sit at the top of each module, where the layers contract sees them plainly; only the
    command line imports lazily, so that ``ctmil --help`` starts without torch
    (tests/test_cli.py::test_building_the_parser_imports_no_torch)."""
    import ast

    found = []
    for path in sorted((ROOT / "ctmil").rglob("*.py")):
        if "cli" in path.relative_to(ROOT / "ctmil").parts:
            continue
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(fn)
                          if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "ctmil"
                          or isinstance(n, ast.Import) and any(a.name.split(".")[0] == "ctmil" for a in n.names)]  # fmt: skip
    assert not found, found
