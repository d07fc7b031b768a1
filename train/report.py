"""Evaluation reports: per-case CSV, summary JSON, a Table-1 style table, overlay PNGs."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from crocnet.atomic import atomic_write_text
from crocnet.metrics import summarize

from crocnet.atomic import atomic_savefig

STRUCTURES = ("LV", "MYO", "RV")
METRICS = ("dice", "hd", "hd95")
COLOURS = {1: (1.0, 0.2, 0.2), 2: (0.2, 1.0, 0.2), 3: (0.3, 0.5, 1.0)}


def write_cases_csv(rows: list[dict], path: Path) -> Path:
    """One CSV row per case and method (identifiers, then ``<structure>_<metric>`` columns)."""
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return atomic_write_text(path, text.getvalue())


def summary(rows: list[dict], methods: list[str]) -> dict:
    """Per method, :func:`crocnet.metrics.summarize` of every ``<structure>_<metric>`` column (mean, std, undefined ...)."""
    out: dict = {}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        out[m] = {f"{s}_{k}": summarize([float(r[f"{s}_{k}"]) for r in mine]).as_dict() for s in STRUCTURES for k in METRICS}
        out[m]["cases"] = len(mine)
    return out


TABLE_ORDER = ("LV", "RV", "MYO")  # the paper's column order
MODEL_NAMES = {"e2aunet": "E-2AUNet", "e2aunet_mhsa": "MHSA-UNet", "e2aunet_noattn": "UNet, no attention",
               "crocnet_specialists": "specialists", "crocnet_single": "single network"}


def display_name(model: str, kwargs: dict | None = None) -> str:
    """The name a report gives a registered model (``e2aunet`` → ``E-2AUNet``; unknown names unchanged),
    with the attention levels when ``kwargs`` restrict them (``E-2AUNet, attention on levels 2-4``)."""
    name = MODEL_NAMES.get(model, model)
    levels = (kwargs or {}).get("attention_levels")
    if levels is not None:
        levels = sorted(levels)
        contiguous = len(levels) > 2 and levels == list(range(levels[0], levels[-1] + 1))
        span = f"{levels[0]}-{levels[-1]}" if contiguous else ", ".join(map(str, levels))
        name += f", attention on levels {span}" if levels else ", no attention block"
    return name


def _cell(stat: dict, digits: int, scale: float = 1.0) -> str:
    if math.isnan(stat["mean"]):
        return "n/a"
    text = f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"
    return text + (f" ({stat['n_undefined']}†)" if stat["n_undefined"] else "")


def _average(stats: dict, metric: str, scale: float, digits: int) -> str:
    means = [stats[f"{s}_{metric}"]["mean"] for s in TABLE_ORDER]
    if any(math.isnan(m) for m in means):
        return "n/a"
    return f"{np.mean(means) * scale:.{digits}f}"


def table(summ: dict, unit: str, names: dict[str, str] | None = None) -> str:
    """Markdown table shaped like the paper's Table 1: one row per method (stage 1, CroCNet), Dice (%) and
    HD95 per structure (LV, RV, Myo) and their average; mean ± std over cases. A dagger counts the cases
    where the HD95 is undefined (exactly one of prediction and truth empty); they are left out of its mean.
    """
    head = ("| method | cases | " + " | ".join(f"Dice {s} (%)" for s in TABLE_ORDER) + " | Dice avg (%) | "
            + " | ".join(f"HD95 {s} ({unit})" for s in TABLE_ORDER) + f" | HD95 avg ({unit}) |")
    lines = [head, "|---|---:|" + "---:|" * 8]
    undefined = 0
    for m, stats in summ.items():
        cells = [_cell(stats[f"{s}_dice"], 2, 100) for s in TABLE_ORDER] + [_average(stats, "dice", 100, 2)]
        cells += [_cell(stats[f"{s}_hd95"], 2) for s in TABLE_ORDER] + [_average(stats, "hd95", 1, 2)]
        undefined += sum(stats[f"{s}_hd95"]["n_undefined"] for s in TABLE_ORDER)
        lines.append(f"| {(names or {}).get(m, m)} | {stats['cases']} | " + " | ".join(cells) + " |")
    if undefined:
        lines.append("")
        lines.append("(n†) = n cases with an undefined HD95 (a structure empty in the prediction or the truth only), left out of the mean.")
    return "\n".join(lines)


def fold_table(per_fold: list[dict], unit: str, method: str = "stage 1") -> str:
    """Markdown table of a cross-validation: one row per fold (mean Dice (%) per structure and their average,
    mean HD95), then the mean ± std of those fold means."""
    head = ("| fold | cases | " + " | ".join(f"Dice {s} (%)" for s in TABLE_ORDER) + f" | Dice avg (%) | HD95 avg ({unit}) |")
    lines = [head, "|---:|---:|" + "---:|" * 5]
    cols = []
    for f in per_fold:
        stats = f["summary"][method]
        values = [stats[f"{s}_dice"]["mean"] * 100 for s in TABLE_ORDER]
        values += [float(np.mean(values)), float(np.mean([stats[f"{s}_hd95"]["mean"] for s in TABLE_ORDER]))]
        cols.append(values)
        lines.append(f"| {f['fold']} | {f['cases']} | " + " | ".join("n/a" if math.isnan(v) else f"{v:.2f}" for v in values) + " |")
    arr = np.array(cols)
    sds = arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(arr.shape[1])
    spread = " | ".join("n/a" if math.isnan(m) else f"{m:.2f} ± {sd:.2f}" for m, sd in zip(arr.mean(0), sds))
    lines.append(f"| mean ± std of folds | {sum(f['cases'] for f in per_fold)} | {spread} |")
    return "\n".join(lines)


def case_table(rows: list[dict], unit: str) -> str:
    """Plain-text per-case table: Dice and HD95 per structure (LV, MYO, RV), one line per case and method."""
    lines = [f"{'case':<24} {'method':<8} " + " ".join(f"{'Dice ' + s:>9}" for s in STRUCTURES)
             + " " + " ".join(f"{'HD95 ' + s:>9}" for s in STRUCTURES) + f"  (HD95 in {unit})"]
    for r in rows:
        lines.append(f"{r['case']:<24} {r['method']:<8} " + " ".join(f"{r[f'{s}_dice']:9.4f}" for s in STRUCTURES)
                     + " " + " ".join(f"{r[f'{s}_hd95']:9.2f}" for s in STRUCTURES))
    return "\n".join(lines)


def _finite(value):
    """``value`` with every NaN or infinity (an undefined mean, a p-value of all ties) as ``None``."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_finite(v) for v in value]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def strict_json(value, indent: int | None = 2) -> str:
    """JSON that every parser reads: NaN and infinities (which ``json.dumps`` writes as bare ``NaN`` and
    ``Infinity`` tokens, outside the standard) become ``null``."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


def write_summary(summ: dict, extra: dict, path: Path) -> Path:
    """``summary.json``: the summary plus ``extra`` (unit, counts); undefined values are ``null``."""
    return atomic_write_text(path, strict_json({"summary": summ, **extra}))


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
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return path


OVERLAY_TAGS = ("worst", "best")


def remove_stale_overlays(folder: Path, keep: list[Path]) -> list[Path]:
    """Delete the overlay PNGs (``worst_*.png``, ``best_*.png``) an earlier report left in ``folder`` that are
    not in ``keep`` (this report's), so that a re-run into the same folder shows only its own; other files stay."""
    keep = {Path(p).resolve() for p in keep}
    stale = [p for tag in OVERLAY_TAGS for p in sorted(Path(folder).glob(f"{tag}_*.png"))
             if p.is_file() and p.resolve() not in keep]
    for p in stale:
        p.unlink()
    return stale
