"""Draw docs/layers.svg: ctmil's layers as setup.cfg's import-linter contract states them, top to bottom.

Run: .venv/bin/python docs/make_layers.py

The picture is drawn from the contract itself, and records it in the SVG's description, so
``tests/test_layers.py`` can check that the picture in docs/design.md is the contract CI enforces.
"""

from __future__ import annotations

import configparser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROLES = {  # what each package is, in a few words (the table in docs/design.md says more)
    "cli": "one module per command", "demo": "ctmil demo", "evaluate": "cross-validation,\nheld-out evaluation",
    "infer": "batch inference,\nwriter, export", "train": "steps, engines,\nhandlers, DDP", "bundle": "configs → workflows",
    "data": "bags, epochs,\npreprocess", "networks": "MILNet,\nprediction path", "stats": "metrics, calibration,\nQ",
    "transforms": "MONAI transforms", "report": "HTML, plots", "pacs": "DICOMweb, DIMSE", "synthetic": "phantoms",
    "io": "DICOM, NIfTI,\ndiscovery", "words": "counted nouns", "keys": "column names",
}


def contract_layers(setup_cfg: Path = ROOT / "setup.cfg") -> list[list[str]]:
    """The layers of the ``[importlinter:contract:layers]`` section, top first, each a list of sibling packages."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    lines = [line.strip() for line in parser["importlinter:contract:layers"]["layers"].splitlines() if line.strip()]
    return [[name.strip().removeprefix("ctmil.") for name in line.split("|")] for line in lines]


def describe(layers: list[list[str]]) -> str:
    """One line naming the layers, top first (``" / "`` between layers, ``" | "`` between siblings)."""
    return " / ".join(" | ".join(row) for row in layers)


def main(path: Path = Path(__file__).with_name("layers.svg")) -> Path:
    layers = contract_layers()
    width, row_h, gap = 10.0, 0.62, 0.22
    fig, ax = plt.subplots(figsize=(8.4, 0.62 * len(layers) + 1.0), dpi=110)
    top = len(layers) * (row_h + gap)
    for i, row in enumerate(layers):
        y = top - (i + 1) * (row_h + gap)
        w = (width - 0.3 * (len(row) - 1)) / len(row)
        for j, name in enumerate(row):
            x = j * (w + 0.3)
            ax.add_patch(FancyBboxPatch((x, y), w, row_h, boxstyle="round,pad=0.03", fc="#dbe9f6" if len(row) > 1 else "#e4f2dc",
                                        ec="#555555", lw=1))
            ax.text(x + w / 2, y + row_h - 0.12, f"ctmil.{name}", ha="center", va="top", fontsize=8.5, weight="bold")
            ax.text(x + w / 2, y + 0.08, ROLES.get(name, "").replace("\n", " "), ha="center", va="bottom", fontsize=6.8)
        if i:
            ax.add_patch(FancyArrowPatch((width + 0.35, y + row_h + gap + row_h / 2), (width + 0.35, y + row_h / 2),
                                         arrowstyle="-|>", mutation_scale=10, color="#333333", lw=1))
    ax.text(width + 0.55, top / 2, "imports only\ndownwards", rotation=90, va="center", fontsize=8)
    ax.set_title("ctmil's layers (setup.cfg's import-linter contract; siblings in a row never import each other)", fontsize=9)
    ax.set_xlim(-0.1, width + 0.9)
    ax.set_ylim(-0.1, top + 0.05)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, metadata={"Description": describe(layers), "Date": None})
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(main())
