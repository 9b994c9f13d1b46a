"""Draw docs/architecture.svg: ctmil's layers, the data flow, and the configs every entry point builds from.

Run: .venv/bin/python docs/make_architecture.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

LAYERS = [  # (x, y, w, h, title, body, colour)
    (0.2, 4.6, 2.2, 1.0, "files", "DICOM export trees\nNIfTI, slice folders\ndatalist CSVs", "#eeeeee"),
    (2.8, 4.6, 2.2, 1.0, "ctmil.io", "headers, series choice,\nvalidation, volumes,\ndiscovery → cases", "#dbe9f6"),
    (5.4, 4.6, 2.2, 1.0, "ctmil.transforms", "lung mask, slices,\nlung-box crop,\n12 patches per slice", "#dbe9f6"),
    (8.0, 4.6, 2.2, 1.0, "ctmil.data", "bag files, BagDataset,\nEpochBags (+ virtual,\n+ rank shard)", "#dbe9f6"),
    (8.0, 2.9, 2.2, 1.0, "ctmil.networks", "MILNet: LeNet encoder,\nattention pooling,\nSSL heads", "#e4f2dc"),
    (5.4, 2.9, 2.2, 1.0, "ctmil.train", "steps + BagInferer,\nMONAI Trainer/Evaluator,\nhandlers, DDP", "#e4f2dc"),
    (2.8, 2.9, 2.2, 1.0, "ctmil.evaluate", "folds, CV driver,\nreport, statistics,\ncalibration", "#fbe5d6"),
    (0.2, 2.9, 2.2, 1.0, "ctmil.infer", "infer workflow, writer,\nattention maps,\nONNX / TorchScript", "#fbe5d6"),
    (2.8, 0.9, 4.8, 1.1, "bundle configs (ctmil/configs = bundles/…/configs)",
     "train.json (every setting, once) · cv.json · demo.json\nmulti_gpu_train.json · evaluate.json · inference.json", "#fff2cc"),
    (8.0, 0.9, 2.2, 1.1, "entry points", "ctmil train / cv / demo\nctmil infer / export\nmonai.bundle run", "#f2f2f2"),
]
FLOWS = [(0, 1), (1, 2), (2, 3), (3, 5), (4, 5), (5, 6)]


def main(path: Path = Path(__file__).with_name("architecture.svg")) -> Path:
    fig, ax = plt.subplots(figsize=(10.6, 6.0), dpi=110)
    centres = []
    for x, y, w, h, title, body, colour in LAYERS:
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.04", fc=colour, ec="#555555", lw=1))
        ax.text(x + w / 2, y + h - 0.16, title, ha="center", va="top", fontsize=9.5, weight="bold")
        ax.text(x + w / 2, y + h - 0.42, body, ha="center", va="top", fontsize=7.6, linespacing=1.25)
        centres.append((x + w / 2, y + h / 2, w, h))
    for a, b in FLOWS:
        (xa, ya, wa, ha), (xb, yb, wb, hb) = centres[a], centres[b]
        start = (xa + wa / 2, ya) if ya == yb and xb > xa else (xa - wa / 2, ya) if ya == yb else (xa, ya - ha / 2)
        end = (xb - wb / 2, yb) if ya == yb and xb > xa else (xb + wb / 2, yb) if ya == yb else (xb, yb + hb / 2)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="#333333", lw=1.2))
    ax.add_patch(FancyArrowPatch((6.5, 3.9), (1.3, 3.9), arrowstyle="-|>", mutation_scale=12, color="#333333", lw=1.2,
                                 connectionstyle="arc3,rad=0.25"))  # train → infer, over evaluate
    ax.add_patch(FancyArrowPatch((8.0, 1.45), (7.6, 1.45), arrowstyle="-|>", mutation_scale=12, color="#b07d00", lw=1.2))
    for x in (1.3, 3.9, 6.5):
        ax.add_patch(FancyArrowPatch((min(max(x, 3.0), 7.4), 2.0), (x, 2.9), arrowstyle="-|>", mutation_scale=10,
                                     color="#b07d00", lw=1, ls="--"))
    ax.text(5.2, 5.85, "data flows one way: files → bags → network → train / evaluate / infer", ha="center", fontsize=9)
    ax.text(5.2, 0.55, "every entry point builds its objects from the same configs (dashed: built from)", ha="center",
            fontsize=8, color="#7a5a00")
    ax.set_xlim(0, 10.4)
    ax.set_ylim(0.4, 6.1)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(main())
