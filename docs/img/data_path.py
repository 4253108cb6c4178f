"""Draws docs/img/data-path.png, the picture of a batch job's data path in docs/architecture.md.

python docs/img/data_path.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

STAGES = [
    ("plan", "Source → Units\nshard or key range,\nstable id", "pictag.pipeline.plan"),
    ("decode", "Records → crops\nDataLoader workers,\nuint8 H×W×3", "pictag.pipeline.runner"),
    ("encoder", "Encoder\nnormalise on device,\nencode_image", "pictag.models"),
    ("head", "Head\nfeatures → logits\n→ scores / rows", "pictag.heads"),
    ("parts", "Parts\none per unit, tmp →\nfsync → rename", "pictag.storage"),
    ("merge", "Output\nmerge to CSV/Parquet,\nerrors, config", "the command"),
]


def main() -> None:
    fig, ax = plt.subplots(figsize=(13, 3.6), dpi=110)
    ax.set_xlim(0, len(STAGES) * 2.2)
    ax.set_ylim(0, 3.6)
    ax.axis("off")
    for i, (title, body, module) in enumerate(STAGES):
        x = 0.15 + i * 2.2
        ax.add_patch(FancyBboxPatch((x, 1.1), 1.8, 1.7, boxstyle="round,pad=0.05", fc="#e8f0fe", ec="#3367d6"))
        ax.text(x + 0.9, 2.55, title, ha="center", va="center", fontsize=12, weight="bold")
        ax.text(x + 0.9, 1.75, body, ha="center", va="center", fontsize=9)
        ax.text(x + 0.9, 0.85, module, ha="center", va="center", fontsize=8, family="monospace", color="#555")
        if i:
            ax.add_patch(FancyArrowPatch((x - 0.4, 1.95), (x - 0.05, 1.95), arrowstyle="-|>", mutation_scale=15))
    ax.text(
        0.15,
        0.25,
        "skip units whose part exists (resume) · bad records travel as (key, reason) to errors.parts/ · "
        "an executor runs the units: in process today, a Ray actor pool next · progress and stage timings",
        fontsize=9,
        color="#333",
    )
    ax.text(
        0.15,
        3.35,
        "A batch job's data path: classify and embed are Jobs; an embedding store replaces decode + encoder",
        fontsize=11,
    )
    out = Path(__file__).with_name("data-path.png")
    fig.savefig(out, bbox_inches="tight")
    print(out)


if __name__ == "__main__":
    main()
