"""Subject-level splits: the official M&Ms-2 split and seeded k-fold lists, written and read as JSON.

Splits are always by subject, so the ED and ES images (and the LA and SA views) of one subject land in
the same part. Use :func:`crocnet.data.select` to pick a part's records.

JSON layout written by :func:`make_splits` / ``crocnet splits``::

    {"dataset": "mnm2", "root": "...", "seed": 0, "k": 5, "stratify": null, "pool": "all",
     "subjects": ["001", ...],                                          # every subject found
     "official": {"train": [...], "val": [...], "test": [...]},        # M&Ms-2 layouts only
     "folds": [{"fold": 0, "train": [...], "val": [...]}, ...]}        # over the pool's subjects
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

from ..atomic import atomic_write_text
from ..outputs import check_output_file
from .datasets import list_subjects
from .mnm2 import find_information_csv, read_dataset_information
from .validation import DataError, name_list, read_text

__all__ = [
    "MNM2_OFFICIAL_RANGES",
    "kfold",
    "main",
    "make_splits",
    "mnm2_official_split",
    "read_splits",
    "write_splits",
]

#: the official M&Ms-2 split by subject number (inclusive ranges)
MNM2_OFFICIAL_RANGES = {"train": (1, 160), "val": (161, 200), "test": (201, 360)}


def mnm2_official_split(subjects: Iterable[str | int] | None = None) -> dict[str, list[str]]:
    """The official M&Ms-2 split: 001–160 train, 161–200 val, 201–360 test.

    Args:
        subjects: the subject codes present (e.g. ``list_subjects("mnm2", root)``); ``None`` lists all 360.
            Integers are taken as subject numbers (``7`` is ``"007"``). Codes outside 001–360 are an error.
    """
    if isinstance(subjects, (str, bytes)):
        raise TypeError(f"subjects must be a list of subject codes like ['001', '002'], got the string {subjects!r}")
    codes = [f"{n:03d}" for n in range(1, 361)] if subjects is None else sorted(map(_subject_code, subjects))
    split: dict[str, list[str]] = {part: [] for part in MNM2_OFFICIAL_RANGES}
    for code in codes:
        number = int(code) if code.isdigit() else -1
        part = next((p for p, (lo, hi) in MNM2_OFFICIAL_RANGES.items() if lo <= number <= hi), None)
        if part is None:
            raise ValueError(f"subject {code!r} is not an M&Ms-2 code 001-360")
        split[part].append(code)
    return split


def _subject_code(subject) -> str:
    """An M&Ms-2 subject code: strings as they are, integers zero-padded to three digits."""
    if isinstance(subject, str):
        return subject
    if isinstance(subject, int) and not isinstance(subject, bool):
        return f"{subject:03d}"
    raise TypeError(f"subject codes must be strings like '001' (or integers like 1), got {type(subject).__name__} {subject!r}")


def kfold(
    subjects: Iterable[str], k: int = 5, seed: int = 0, strata: Mapping[str, str] | None = None
) -> list[dict[str, list[str]]]:
    """Seeded k-fold cross-validation lists by subject.

    Subjects are sorted, shuffled with ``random.Random(seed)`` and dealt to folds round-robin, within each
    stratum when ``strata`` is given (e.g. vendor per subject, so each fold sees every vendor), so fold
    sizes differ by at most one per stratum. The result depends only on the set of subjects, ``k`` and
    ``seed``.

    Returns:
        ``k`` dicts ``{"fold": i, "train": [...], "val": [...]}`` with sorted lists; the ``val`` lists
        partition the subjects.
    """
    subjects = sorted(set(subjects))
    if not 2 <= k <= len(subjects):
        raise ValueError(f"k must be between 2 and the number of subjects ({len(subjects)}), got {k}")
    rng = random.Random(seed)
    groups: dict[str, list[str]] = {}
    for s in subjects:
        groups.setdefault("" if strata is None else str(strata.get(s, "")), []).append(s)
    val: list[list[str]] = [[] for _ in range(k)]
    start = 0
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        for i, s in enumerate(members):
            val[(start + i) % k].append(s)
        start += len(members)  # the next stratum continues where this one stopped: balanced fold sizes
    return [
        {"fold": i, "train": sorted(set(subjects) - set(v)), "val": sorted(v)} for i, v in enumerate(val)
    ]


def make_splits(
    dataset: str, root: str | Path, k: int = 5, seed: int = 0, stratify: str | None = None, pool: str = "all"
) -> dict:
    """Build the JSON-ready split description of a dataset folder (see the module docstring).

    Args:
        dataset: a name of :data:`crocnet.data.DATASETS` (``"mnm2"`` for M&Ms-2 and phantoms).
        root: the dataset folder.
        k, seed: k-fold settings (see :func:`kfold`).
        stratify: ``"vendor"`` or ``"disease"`` to balance folds by that csv column (M&Ms-2 only).
        pool: the subjects the folds are drawn from: ``"all"``, or (M&Ms-2) ``"train"`` / ``"trainval"``
            of the official split, keeping its test subjects out of cross-validation.
    """
    root = Path(root)
    subjects = list_subjects(dataset, root)
    out: dict = {"dataset": dataset, "root": str(root), "seed": seed, "k": k, "stratify": stratify, "pool": pool}
    out["subjects"] = subjects
    strata = None
    if dataset == "mnm2":
        official = mnm2_official_split(subjects)
        out["official"] = official
        pools = {"all": subjects, "train": official["train"], "trainval": official["train"] + official["val"]}
        if stratify is not None:
            csv = find_information_csv(root)
            if csv is None:
                raise ValueError(f"stratify={stratify!r} needs dataset_information.csv in or above {root}")
            strata = {s: row[stratify.upper()] for s, row in read_dataset_information(csv).items()}
    else:
        if stratify is not None:
            raise ValueError("stratify is only available for M&Ms-2 layouts (it reads dataset_information.csv)")
        pools = {"all": subjects}
    if pool not in pools:
        raise ValueError(f"pool (--pool) must be one of {', '.join(pools)} for {dataset}, got {pool!r}")
    n = len(set(pools[pool]))
    if not 2 <= k <= n:
        raise ValueError(f"the number of folds (--folds) must be between 2 and the {n} subjects of the pool {pool!r}, "
                         f"got {k}")
    out["folds"] = kfold(pools[pool], k, seed, strata)
    return out


def write_splits(path: str | Path, splits: dict) -> Path:
    """Write a split description as indented JSON, atomically (parent folders created)."""
    return atomic_write_text(path, json.dumps(splits, indent=2) + "\n")


def read_splits(path: str | Path) -> dict:
    """Read a split description written by :func:`write_splits` or by ``crocnet train`` (``splits.json``).

    Checks that it is a JSON object with ``folds`` (each with ``train`` and ``val`` lists of subject codes);
    that no list repeats a subject; that no subject is in both parts of a fold, in the validation lists of
    two folds, or in two parts of ``official``; and that ``test`` subjects (a training run's) are in no fold.

    Raises:
        DataError: naming the file, what was expected and the offending subjects.
    """
    try:
        splits = json.loads(read_text(Path(path), "a JSON split description"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: expected a JSON split description, got invalid JSON ({exc})") from None
    if not isinstance(splits, dict):
        raise DataError(f"{path}: expected a JSON object with 'folds', got {type(splits).__name__}")
    _require_keys(splits, ("folds",), path, "the split description")
    if not isinstance(splits["folds"], list):
        raise DataError(f"{path}: expected 'folds' to be a list, got {type(splits['folds']).__name__}")
    for part in ("subjects", "test", "pool"):  # a `crocnet splits` "pool" is a name ("all", ...), a run's a list
        if part in splits and (part != "pool" or isinstance(splits[part], list)):
            _subject_list(splits[part], path, f"'{part}'")
    official = splits.get("official")
    if official is not None:
        if not isinstance(official, dict):
            raise DataError(f"{path}: expected 'official' to be an object, got {type(official).__name__}")
        _require_keys(official, tuple(MNM2_OFFICIAL_RANGES), path, "'official'")
        _disjoint({p: _subject_list(official[p], path, f"official {p!r}") for p in MNM2_OFFICIAL_RANGES},
                  path, "the official split")
    validated: dict[str, int] = {}
    for i, fold in enumerate(splits["folds"]):
        if not isinstance(fold, dict):
            raise DataError(f"{path}: expected fold {i} to be an object with 'train' and 'val', got {type(fold).__name__}")
        name = f"fold {fold.get('fold', i)}"
        _require_keys(fold, ("train", "val"), path, name)
        parts = {p: _subject_list(fold[p], path, f"{name} {p!r}") for p in ("train", "val")}
        _disjoint(parts, path, name)
        twice = sorted(s for s in parts["val"] if s in validated)
        if twice:
            raise DataError(f"{path}: expected each subject in the val list of at most one fold, got "
                            f"{name_list(twice)} in both fold {validated[twice[0]]} and {name}")
        validated.update((s, fold.get("fold", i)) for s in parts["val"])
        if "test" in splits:
            leaked = sorted(set(splits["test"]) & (set(parts["train"]) | set(parts["val"])))
            if leaked:
                raise DataError(f"{path}: expected 'test' subjects in no fold, got {name_list(leaked)} "
                                f"in 'test' and {name}")
    return splits


def _require_keys(obj: dict, keys: tuple[str, ...], path, what: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{path}: {what} is missing {', '.join(map(repr, missing))}; expected keys "
                        f"{', '.join(map(repr, keys))}, got {', '.join(map(repr, obj)) or 'none'}")


def _subject_list(value, path, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise DataError(f"{path}: expected {what} to be a list of subject codes (strings), got {value!r:.80}")
    repeated = sorted(s for s, n in Counter(value).items() if n > 1)
    if repeated:
        raise DataError(f"{path}: expected each subject once in {what}, got {name_list(repeated)} more than once")
    return value


def _disjoint(parts: dict[str, list[str]], path, what: str) -> None:
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = sorted(set(parts[a]) & set(parts[b]))
            if both:
                raise DataError(f"{path}: expected disjoint parts in {what}, got {name_list(both)} "
                                f"in both {a} and {b}")


def _check_not_data(out: Path, data: Path) -> None:
    """Refuse an ``out`` that is an existing file inside the ``data`` folder (``dataset.json`` ...), unless it is
    a split description (written by an earlier run, as ``--out MnM2/splits.json`` does)."""
    if not (out.exists() and out.resolve().is_relative_to(data.resolve())):
        return
    try:
        read_splits(out)
    except (DataError, OSError):
        raise ValueError(f"--out {str(out)!r} is a file of the --data folder {str(data)!r}, not a split "
                         f"description; choose another path") from None


def main(argv: list[str] | None = None) -> int:
    """``crocnet splits``: write subject-level split and k-fold lists of a dataset folder as JSON."""
    parser = argparse.ArgumentParser(
        prog="crocnet splits",
        description="Write subject-level split lists (the official M&Ms-2 split and seeded k-fold "
        "cross-validation) as JSON. ED and ES of one subject are never split.",
    )
    parser.add_argument("--data", required=True, type=Path, help="dataset folder (M&Ms-2 / phantom root, ...)")
    parser.add_argument("--dataset", default="mnm2", choices=["mnm2", "acdc", "acdc_h5", "nnunet"],
                        help="layout of --data (default: mnm2, which phantoms use)")
    parser.add_argument("--out", required=True, type=Path, help="output JSON file")
    parser.add_argument("--folds", type=int, default=5, help="number of cross-validation folds (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed of the folds (default: 0)")
    parser.add_argument("--stratify", choices=["vendor", "disease"], default=None,
                        help="balance folds by this dataset_information.csv column (M&Ms-2 only)")
    parser.add_argument("--pool", choices=["all", "train", "trainval"], default="all",
                        help="subjects the folds are drawn from: all found, or the official M&Ms-2 train or "
                        "train+val part (default: all)")
    args = parser.parse_args(argv)
    try:
        if args.folds < 2:
            raise ValueError(f"--folds must be at least 2 (and at most the number of subjects), got {args.folds}")
        check_output_file(args.out, "--out", (".json",), "JSON")
        _check_not_data(args.out, args.data)
        splits = make_splits(args.dataset, args.data, args.folds, args.seed, args.stratify, args.pool)
        path = write_splits(args.out, splits)
    except (ValueError, DataError, OSError) as exc:  # OSError: FileNotFoundError, a file where a folder goes, ...
        print(f"crocnet splits: error: {exc}", file=sys.stderr)
        return 2
    sizes = ", ".join(str(len(f["val"])) for f in splits["folds"])
    print(f"wrote {path}: {len(splits['subjects'])} subjects, {args.folds} folds of {sizes} validation subjects")
    return 0
