r"""``crocnet compare``: is model B better than model A on the same cases?

Reads two ``cases.csv`` reports of ``crocnet evaluate`` (the same cases, e.g. one validation fold or one
whole cross-validation) and, per structure and for the structure average, pairs the per-case metric
:math:`d_i = m^B_i - m^A_i` and reports its mean with a 95 % bootstrap interval that resamples *subjects*
(the ED and ES volumes of one patient are not independent), the Wilcoxon signed-rank p-value of the
:math:`d_i`, and how many cases B wins, loses and ties. Dice in %, HD95 in the report's unit; a case whose
metric is undefined (NaN) in either report is left out of that row and counted::

    crocnet compare results/acdc/cv_e2aunet_noattn/cases.csv results/acdc/cv_e2aunet_l234/cases.csv
    crocnet compare results/acdc/crocnet_l234/cases.csv results/acdc/crocnet_l234/cases.csv --method-b CroCNet

Each test treats the two trained models as given: training-seed variance is not in it (train another seed to
see that); the Wilcoxon test also counts the ED and ES volumes of a patient as independent.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from crocnet.atomic import atomic_write_text
from crocnet.data.validation import not_text
from crocnet.outputs import check_distinct, check_output_file

from .report import METRICS, TABLE_ORDER, strict_json


def read_cases(path: str | Path, method: str = "stage 1", metrics: tuple[str, ...] = METRICS) -> dict[str, dict]:
    """The rows of ``method`` in a ``cases.csv``, keyed by case name, their ``<structure>_<metric>`` cells of
    ``metrics`` as floats (``nan`` where undefined).

    Raises:
        ValueError: naming the file and what is wrong: missing columns, a cell that is not a number (its case,
            line and column), a case listed twice for ``method``, no row of ``method``, bytes that are not text.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (a cases.csv written by crocnet evaluate)")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = ["case", "subject", "method"] + [f"{s}_{m}" for s in TABLE_ORDER for m in metrics]
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: expected the columns of a crocnet evaluate cases.csv "
                                 f"({', '.join(columns)}), missing {', '.join(missing)}")
            rows, lines = {}, {}
            for row in reader:
                if row["method"] != method:
                    continue
                case = row["case"]
                if case in lines:
                    raise ValueError(f"{path}: expected one row per case and method, got case {case!r} of method "
                                     f"{method!r} twice (lines {lines[case]} and {reader.line_num})")
                lines[case] = reader.line_num
                rows[case] = {**row, **{c: _number(row[c], path, case, reader.line_num, c) for c in columns[3:]}}
    except UnicodeDecodeError as exc:
        raise ValueError(not_text(path, "a cases.csv written by crocnet evaluate", exc)) from None
    if not rows:
        raise ValueError(f"{path}: no rows for method {method!r}")
    return rows


def _number(cell: str | None, path: Path, case: str, line: int, column: str) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: expected a number (or nan) in column {column} of case {case!r} (line {line}), "
                         f"got {cell!r}") from None


def _bootstrap_mean(diffs: np.ndarray, subjects: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    ids, inverse = np.unique(subjects, return_inverse=True)
    sums = np.bincount(inverse, weights=diffs, minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    pick = np.random.default_rng(seed).integers(0, len(ids), size=(n_boot, len(ids)))
    means = sums[pick].sum(1) / counts[pick].sum(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def compare(a: dict[str, dict], b: dict[str, dict], metric: str = "dice", n_boot: int = 10_000, seed: int = 0) -> list[dict]:
    """Paired comparison of two reports (:func:`read_cases`) on ``metric`` (``dice``, ``hd`` or ``hd95``).

    Returns one dict per structure (LV, RV, MYO) and one for their per-case average (``avg``): ``cases``
    (paired and defined), ``undefined`` (left out), the means of A and B, ``diff`` (mean of B − A), ``ci``
    (95 % subject-bootstrap interval of ``diff``), ``p`` (two-sided Wilcoxon signed-rank; 1.0 when every
    difference is 0) and ``wins`` / ``losses`` / ``ties`` of B. Dice is scaled to %.
    """
    if metric not in ("dice", "hd", "hd95"):
        raise ValueError(f"metric must be dice, hd or hd95, got {metric!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot (bootstrap resamples) must be an integer >= 1, got {n_boot!r}")
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        some = lambda cases: f" (e.g. {', '.join(cases[:3])})" if cases else ""  # noqa: E731
        raise ValueError(f"the reports must cover the same cases: {len(only_a)} only in the first{some(only_a)}, "
                         f"{len(only_b)} only in the second{some(only_b)}")
    cases = sorted(a)
    if metric != "dice":
        units = [{r.get("unit") for r in x.values()} - {None, ""} for x in (a, b)]  # reports before 2026-12 have none
        if units[0] and units[1] and units[0] != units[1]:
            raise ValueError(f"{metric}: the first report's distances are in {'/'.join(sorted(units[0]))}, the second's "
                             f"in {'/'.join(sorted(units[1]))}; expected one unit (evaluate both on data with, or both "
                             f"without, voxel sizes)")
    scale = 100.0 if metric == "dice" else 1.0
    values = {s: (np.array([float(a[c][f"{s}_{metric}"]) for c in cases]) * scale,
                  np.array([float(b[c][f"{s}_{metric}"]) for c in cases]) * scale) for s in TABLE_ORDER}
    values["avg"] = tuple(np.mean([values[s][i] for s in TABLE_ORDER], axis=0) for i in (0, 1))
    subjects = np.array([a[c]["subject"] for c in cases])
    out = []
    for name, (va, vb) in values.items():
        ok = ~(np.isnan(va) | np.isnan(vb))
        d = vb[ok] - va[ok]
        row = {"structure": name, "cases": int(ok.sum()), "undefined": int((~ok).sum())}
        if d.size == 0:
            out.append({**row, "a": float("nan"), "b": float("nan"), "diff": float("nan"), "ci": (float("nan"),) * 2,
                        "p": float("nan"), "wins": 0, "losses": 0, "ties": 0})
            continue
        gain = d if metric == "dice" else -d  # positive where B is better (higher Dice, lower distance)
        p = 1.0 if not np.any(d) else float(wilcoxon(d).pvalue)
        out.append({**row, "a": float(va[ok].mean()), "b": float(vb[ok].mean()), "diff": float(d.mean()),
                    "ci": _bootstrap_mean(d, subjects[ok], n_boot, seed), "p": p,
                    "wins": int((gain > 0).sum()), "losses": int((gain < 0).sum()), "ties": int((d == 0).sum())})
    return out


def comparison_table(rows: list[dict], metric: str, name_a: str, name_b: str) -> str:
    """Markdown table of :func:`compare`'s rows."""
    unit = " (%)" if metric == "dice" else ""
    lines = [f"| {metric}{unit} | cases | A: {name_a} | B: {name_b} | B − A | 95 % CI (bootstrap by subject) | Wilcoxon p "
             "| B better / worse / tied |",
             "|---|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        cases = f"{r['cases']}" + (f" ({r['undefined']} undefined)" if r["undefined"] else "")
        lines.append(f"| {r['structure']} | {cases} | {r['a']:.2f} | {r['b']:.2f} | {r['diff']:+.2f} | "
                     f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}] | {r['p']:.3g} | {r['wins']} / {r['losses']} / {r['ties']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="crocnet compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="cases.csv of model A (the reference)")
    ap.add_argument("b", help="cases.csv of model B")
    ap.add_argument("--metric", nargs="+", default=["dice", "hd95"], choices=("dice", "hd", "hd95"),
                    help="metrics to compare (default dice hd95)")
    ap.add_argument("--method", default="stage 1", help="the method column to compare: 'stage 1' (default) or 'CroCNet'")
    ap.add_argument("--method-b", help="B's method column, when it differs from A's (CroCNet against its own stage 1: "
                                       "the same cases.csv twice, --method-b CroCNet)")
    ap.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    ap.add_argument("--out", help="also write the comparison as JSON here (not one of the reports)")
    args = ap.parse_args(argv)
    method_b = args.method_b or args.method
    try:
        if args.bootstrap < 1:
            raise ValueError(f"--bootstrap must be >= 1, got {args.bootstrap}")
        if args.out:
            check_output_file(args.out, "--out", (".json",), "JSON")
            check_distinct([("--out", args.out)], [("report A", args.a), ("report B", args.b)])
        metrics = tuple(dict.fromkeys(args.metric))
        a, b = read_cases(args.a, args.method, metrics), read_cases(args.b, method_b, metrics)
        results = {m: compare(a, b, m, args.bootstrap, args.seed) for m in args.metric}
    except (ValueError, FileNotFoundError) as exc:
        print(f"crocnet compare: error: {exc}", file=sys.stderr)
        return 2
    name_a, name_b = Path(args.a).parent.name or args.a, Path(args.b).parent.name or args.b
    if method_b != args.method:
        name_a, name_b = f"{name_a} ({args.method})", f"{name_b} ({method_b})"
    for m, rows in results.items():
        print(comparison_table(rows, m, name_a, name_b) + "\n")
    key = "dice" if "dice" in results else args.metric[0]
    d = results[key][-1]
    print(f"{len(a)} paired cases; B − A on the {key} average: {d['diff']:+.2f}, "
          f"95 % CI [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}], Wilcoxon p = {d['p']:.3g}")
    if args.out:
        atomic_write_text(args.out, strict_json({"a": args.a, "b": args.b, "method": args.method,
                                                "method_b": method_b, "bootstrap": args.bootstrap,
                                                "seed": args.seed, "metrics": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
