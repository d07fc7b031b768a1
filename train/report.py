"""Evaluation reports: per-case CSV, summary JSON, a Table-1 style table, overlay PNGs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from crocnet.metrics import summarize

STRUCTURES = ("LV", "MYO", "RV")
METRICS = ("dice", "hd", "hd95")
COLOURS = {1: (1.0, 0.2, 0.2), 2: (0.2, 1.0, 0.2), 3: (0.3, 0.5, 1.0)}


def write_cases_csv(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0])
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def summary(rows: list[dict], methods: list[str]) -> dict:
    out: dict = {}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        out[m] = {f"{s}_{k}": summarize([float(r[f"{s}_{k}"]) for r in mine]).as_dict() for s in STRUCTURES for k in METRICS}
        out[m]["cases"] = len(mine)
    return out


def _cell(stat: dict, digits: int) -> str:
    if math.isnan(stat["mean"]):
        return f"n/a ({stat['n_undefined']} undef.)"
    text = f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return text + (f" ({stat['n_undefined']} undef.)" if stat["n_undefined"] else "")


def table(summ: dict, unit: str) -> str:
    """Markdown table shaped like the paper's Table 1: Dice and HD95 per structure, one row per method."""
    head = "| method | cases | " + " | ".join(f"Dice {s}" for s in STRUCTURES) + " | " + " | ".join(f"HD95 {s} ({unit})" for s in STRUCTURES) + " |"
    lines = [head, "|---|---:|" + "---:|" * 6]
    for m, stats in summ.items():
        cells = [_cell(stats[f"{s}_dice"], 3) for s in STRUCTURES] + [_cell(stats[f"{s}_hd95"], 2) for s in STRUCTURES]
        lines.append(f"| {m} | {stats['cases']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(summ: dict, extra: dict, path: Path) -> Path:
    path.write_text(json.dumps({"summary": summ, **extra}, indent=2, default=float))
    return path


def overlay_png(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, path: Path, title: str) -> Path:
    """Image with the truth (left) and the prediction (right) outlined per structure, one 2D slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    for ax, lab, name in zip(axes, (gt, pred), ("truth", "prediction")):
        ax.imshow(image, cmap="gray")
        for value, colour in COLOURS.items():
            if (lab == value).any():
                ax.contour(lab == value, levels=[0.5], colors=[colour], linewidths=1.2)
        ax.set_title(name), ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
