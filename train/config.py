"""Training configuration: one dataclass, filled from the command line and an optional JSON/YAML file."""

from __future__ import annotations

import argparse
import json
import math
import types
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

from .devices import DEVICE_HELP, resolve_device

DATASET_CHOICES = ("mnm2", "acdc", "acdc_h5", "nnunet", "phantom")
STAGE1_MODELS = ("e2aunet", "e2aunet_mhsa", "e2aunet_noattn")
STAGE2_MODELS = ("crocnet_specialists", "crocnet_single")
#: ``--outside-label``: what the stage-1 one-hot targets say where augmentation moved in pixels from outside
#: the image: no class at all (every channel 0) or background.
OUTSIDE_LABELS = ("none", "background")
CROP_SOURCES = ("frame", "native")


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` in the run folder."""

    data: str = "data/phantom"
    dataset: str = "phantom"
    stage: int = 1
    model: str | None = None  # default: e2aunet (stage 1), crocnet_specialists (stage 2)
    base_width: int | None = None  # default: the model's (32 for stage 1, 16 for stage 2)
    depth: int = 4
    attention_levels: tuple[int, ...] | None = None  # stage 1: levels with an attention block (default: all)
    fold: str = "0"  # "k" or "all"
    folds: int = 5
    split_seed: int = 0
    test_fraction: float = 0.0  # subjects held out of cross-validation (a test split), by subject
    split_file: str | None = None  # a `crocnet splits` JSON: its folds (and official test split) are used
    views: tuple[str, ...] = ("LA",)
    epochs: int = 500
    batch_size: int = 8
    lr: float = 1e-4
    lr_milestones: tuple[float, ...] = (0.2, 0.4)  # the paper's 100 and 200 of 500 epochs
    weight_decay: float = 0.0
    loss: str = "dice"  # "dice" or "dice_ce"
    image_size: int = 128
    target_spacing: float | None = None  # mm; None: fit the whole field of view into image_size
    crop_margin: int = 15
    crop_from: str | None = None  # stage 2: crops of the native image (default, the paper's) or of stage 1's frame
    augment: bool = True
    outside_label: str = "none"  # stage 1: target of pixels augmentation brings in from outside the image
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA
    compile: str | None = None  # torch.compile the training step's network with this backend (e.g. inductor)
    out: str = "runs/train"
    resume: bool = False
    init: str | None = None  # start from these weights (fine-tuning): a checkpoint, or a folder with fold<k>/ per fold
    seed: int = 0
    val_every: int = 1
    max_train_batches: int | None = None  # cap per epoch (smoke tests)
    progress: bool = True
    stage1_run: str | None = None  # stage 2: the stage-1 run folder holding out-of-fold predictions

    extra: dict = field(default_factory=dict)

    def resolved_model(self) -> str:
        if self.model:
            return self.model
        return STAGE1_MODELS[0] if self.stage == 1 else STAGE2_MODELS[0]

    def model_kwargs(self) -> dict:
        kwargs: dict = {"depth": self.depth}
        if self.base_width is not None:
            kwargs["base_width"] = self.base_width
        if self.stage == 1:
            kwargs.update(in_chans=1, num_classes=4)
            if self.attention_levels is not None:
                kwargs["attention_levels"] = list(self.attention_levels)
        else:
            kwargs.update(in_chans=4)
            if self.resolved_model() == "crocnet_single":
                kwargs["num_classes"] = 3
        return kwargs

    def to_json(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        resolve_device(self.device)
        if self.dataset not in DATASET_CHOICES:
            raise ValueError(f"--dataset must be one of {', '.join(DATASET_CHOICES)}, got {self.dataset!r}")
        if self.stage not in (1, 2):
            raise ValueError(f"--stage must be 1 or 2, got {self.stage!r}")
        if not self.views or not set(self.views) <= {"LA", "SA"}:
            raise ValueError(f"--views must be LA and/or SA, got {' '.join(map(str, self.views)) or 'none'}")
        allowed = STAGE1_MODELS if self.stage == 1 else STAGE2_MODELS
        if self.resolved_model() not in allowed:
            raise ValueError(f"stage {self.stage} trains one of {', '.join(allowed)}, got --model {self.model!r}")
        if self.split_file:
            from crocnet.data import read_splits

            if not Path(self.split_file).is_file():
                raise FileNotFoundError(f"--split-file {self.split_file!r} not found")
            self.folds = len(read_splits(self.split_file)["folds"])
        if self.fold != "all" and not (self.fold.isdigit() and int(self.fold) < self.folds):
            raise ValueError(f"--fold must be 'all' or an integer in 0..{self.folds - 1}, got {self.fold!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"--epochs and --batch-size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.outside_label not in OUTSIDE_LABELS:
            raise ValueError(f"--outside-label must be one of {', '.join(OUTSIDE_LABELS)}, got {self.outside_label!r}")
        if self.stage == 2 and self.outside_label != "none":
            raise ValueError("--outside-label applies to stage 1 (stage-2 targets have no background channel)")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a number >= 0 (Adam's learning rate, e.g. 1e-4), got {self.lr}")
        if self.val_every < 1:
            raise ValueError(f"--val-every must be >= 1, got {self.val_every}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"--test-fraction must be in [0, 1): the fraction of subjects held out as a test split, "
                             f"got {self.test_fraction}")
        if self.max_train_batches is not None and self.max_train_batches < 1:
            raise ValueError(f"--max-train-batches must be >= 1 (or left out for every batch), got {self.max_train_batches}")
        milestones = tuple(self.lr_milestones or ())  # none: a constant learning rate
        if not all(0.0 < m < 1.0 for m in milestones) or any(a >= b for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"--lr-milestones must be fractions of --epochs in (0, 1), strictly ascending "
                             f"(e.g. 0.2 0.4), got {' '.join(map(str, milestones))}")
        if self.depth < 0:
            raise ValueError(f"--depth must be >= 0 (the number of down-samplings), got {self.depth}")
        if self.compile is not None:
            import torch._dynamo

            backends = torch._dynamo.list_backends(exclude_tags=())
            if self.compile not in backends:
                raise ValueError(f"--compile must name a torch.compile backend ({', '.join(backends)}), got {self.compile!r}")
        if self.target_spacing is not None and not (isinstance(self.target_spacing, (int, float))
                                                    and math.isfinite(self.target_spacing) and self.target_spacing > 0):
            raise ValueError(f"--target-spacing must be a finite number of mm > 0 (or left out to fit the field of "
                             f"view), got {self.target_spacing!r}")
        divisor = 2**self.depth  # every stage-1 and stage-2 model needs H and W divisible by it
        if self.image_size < 1 or self.image_size % divisor:
            raise ValueError(f"--image-size must be a positive multiple of 2**depth = {divisor}, got {self.image_size}")
        if self.attention_levels is not None:
            if self.stage != 1:
                raise ValueError("--attention-levels applies to stage-1 models only")
            if not all(0 <= lv <= self.depth for lv in self.attention_levels):
                raise ValueError(f"--attention-levels must lie in 0..depth = 0..{self.depth}, got {list(self.attention_levels)}")
        if self.loss not in ("dice", "dice_ce"):
            raise ValueError(f"--loss must be 'dice' or 'dice_ce', got {self.loss!r}")
        if not Path(self.data).exists():
            raise FileNotFoundError(f"--data {self.data!r} does not exist (for the synthetic default run `crocnet phantom --out {self.data}` first)")
        if self.crop_from is not None and self.crop_from not in CROP_SOURCES:
            raise ValueError(f"--crop-from must be one of {', '.join(CROP_SOURCES)}, got {self.crop_from!r}")
        if self.stage == 1 and self.crop_from not in (None, "frame"):  # older stage-1 configs say "frame"
            raise ValueError("--crop-from applies to stage 2 (the crops stage 2 trains on)")
        if self.stage == 2 and self.crop_from is None:
            self.crop_from = "native"
        if self.stage == 2 and not self.stage1_run:
            raise ValueError("--stage 2 needs --stage1-run, the stage-1 run folder with out-of-fold predictions")

    def folds_to_run(self) -> list[int]:
        return list(range(self.folds)) if self.fold == "all" else [int(self.fold)]


#: keys older run configs hold that no longer mean anything: read with a warning, not refused
RETIRED = {"workers": "batches are indexed from tensors in memory, there is no data loader to give workers"}


def load_config_file(path: str | Path) -> dict:
    """Read a JSON (or, with PyYAML installed, YAML) file of :class:`TrainConfig` fields, checking that it is a
    mapping of known field names to values of the field's type."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover
            raise ImportError("YAML config files need PyYAML (pip install pyyaml); or use JSON") from exc
        kind, parse, errors = "YAML", yaml.safe_load, (yaml.YAMLError, UnicodeDecodeError)
    else:
        kind, parse, errors = "JSON", json.loads, (json.JSONDecodeError, UnicodeDecodeError)
    try:
        values = parse(path.read_text())
    except errors as exc:
        raise ValueError(f"config file {path} is not valid {kind}: {exc}") from None
    if values is None and kind == "YAML":  # an empty YAML file: no options
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of option names to values (e.g. {{\"epochs\": 10}}), "
                         f"got {values!r:.80}")
    names = {f.name for f in fields(TrainConfig)}
    for key in sorted(set(values) & set(RETIRED)):
        warnings.warn(f"{path}: ignoring {key!r}: {RETIRED[key]}", stacklevel=2)
        values = {k: v for k, v in values.items() if k != key}
    unknown = sorted(map(str, set(values) - names))
    if unknown:
        raise ValueError(f"unknown keys in {path}: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    hints = get_type_hints(TrainConfig)
    for key, value in values.items():
        hint = str | int if key == "fold" else hints[key]  # a fold may be written as a number
        if isinstance(value, str) and float in (hint, *get_args(hint)):
            try:  # PyYAML reads 1e-4 (no dot) as a string
                values[key] = value = float(value)
            except ValueError:
                pass
        if not _has_type(value, hint):
            raise ValueError(f"config file {path}: {key} must be {_describe(hint)}, got {value!r:.80}")
    return values


_TYPE_NAMES = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
               str: ("a string", "strings"), dict: ("a mapping", "mappings"), type(None): ("null", "nulls")}


def _has_type(value, hint) -> bool:
    """Whether a config-file ``value`` fits the field type ``hint``; a ``tuple[X, ...]`` field takes a list of X
    (or one X); a ``float`` one an integer too; ``int`` and ``float`` ones no booleans."""
    if get_origin(hint) is types.UnionType:
        return any(_has_type(value, h) for h in get_args(hint))
    if get_origin(hint) is tuple:
        return all(_has_type(v, get_args(hint)[0]) for v in (value if isinstance(value, list) else [value]))
    if isinstance(value, bool) and hint is not bool:
        return False
    return isinstance(value, (int, float) if hint is float else hint)


def _describe(hint, plural: bool = False) -> str:
    """``int | None`` → ``an integer or null``; ``tuple[str, ...]`` → ``a list of strings``."""
    if get_origin(hint) is types.UnionType:
        return " or ".join(_describe(h, plural) for h in get_args(hint))
    if get_origin(hint) is tuple:
        return f"a list of {_describe(get_args(hint)[0], plural=True)}"
    return _TYPE_NAMES[hint][plural]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    ap.add_argument("--config", help="JSON/YAML file with any of these options (command-line flags win)")
    ap.add_argument("--data", help=f"dataset folder (default {d.data})")
    ap.add_argument("--dataset", choices=DATASET_CHOICES, help="layout of --data; phantom = M&Ms-2 layout (default phantom)")
    ap.add_argument("--stage", type=int, choices=(1, 2), help="1: E-2AUNet on the image; 2: specialists on stage-1 crops")
    ap.add_argument("--model", help=f"stage 1: {', '.join(STAGE1_MODELS)}; stage 2: {', '.join(STAGE2_MODELS)}")
    ap.add_argument("--base-width", type=int, help="width of the first stage (default: the model's, 32 / 16)")
    ap.add_argument("--depth", type=int, help="number of down-samplings (default 4)")
    ap.add_argument(
        "--attention-levels", type=int, nargs="+",
        help="stage 1: U-Net levels (0 = full resolution .. depth) that carry the attention block (default: all)",
    )
    ap.add_argument("--fold", help="cross-validation fold to train, 0..folds-1, or 'all' (default 0)")
    ap.add_argument("--folds", type=int, help="number of cross-validation folds, by subject (default 5)")
    ap.add_argument("--split-seed", type=int, help="seed of the subject-level fold assignment (default 0)")
    ap.add_argument("--test-fraction", type=float, help="fraction of subjects held out of the folds as a test split (default 0)")
    ap.add_argument("--split-file", help="folds from a `crocnet splits` JSON (e.g. the official M&Ms-2 pool) instead of --folds/--split-seed")
    ap.add_argument("--views", nargs="+", choices=("LA", "SA"), help="M&Ms-2 views to use (default LA)")
    ap.add_argument("--epochs", type=int, help="epochs; lr /10 at 20%% and 40%% of them (paper: 500, at 100 and 200)")
    ap.add_argument("--batch-size", type=int, help="images per step (per process under torchrun) (default 8)")
    ap.add_argument("--lr", type=float, help="Adam learning rate (default 1e-4, the paper's)")
    ap.add_argument("--lr-milestones", type=float, nargs="+", help="fractions of --epochs where lr drops /10 (default 0.2 0.4)")
    ap.add_argument("--loss", choices=("dice", "dice_ce"), help="dice (paper) or dice + cross-entropy")
    ap.add_argument("--image-size", type=int, help="network input size in pixels (stage 2: the crop size) (default 128)")
    ap.add_argument("--target-spacing", type=float, help="resample to this pixel size in mm (default: fit the field of view)")
    ap.add_argument("--no-augment", dest="augment", action="store_const", const=False, help="switch augmentation off")
    ap.add_argument("--outside-label", choices=OUTSIDE_LABELS,
                    help="stage 1: the target of pixels that rotation or zoom bring in from outside the image: no class "
                         "(none, the default: the per-channel sigmoid targets allow it) or background")
    ap.add_argument("--device", help=f"{DEVICE_HELP} (default auto)")
    ap.add_argument("--no-amp", dest="amp", action="store_const", const=False, help="no bf16 autocast on CUDA")
    ap.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                    help="torch.compile the network for training (backend inductor unless named; validation and "
                         "checkpoints use the network itself); on CUDA the E2A layers stay the fused kernels")
    ap.add_argument("--out", help=f"run folder root (default {d.out})")
    ap.add_argument("--resume", action="store_const", const=True, help="continue the run in --out from its last checkpoint")
    ap.add_argument(
        "--init",
        help="start from these weights instead of random ones (fine-tuning; optimizer and schedule start afresh): "
             "a checkpoint of the same model and arguments, or a cross-validation folder whose fold<k>/ holds "
             "fold k's checkpoint",
    )
    ap.add_argument("--seed", type=int, help="seed of weights, shuffling and augmentation (default 0)")
    ap.add_argument("--stage1-run", help="stage 2: the stage-1 run folder (its out-of-fold predictions make the crops)")
    ap.add_argument(
        "--crop-from", choices=CROP_SOURCES,
        help="stage 2: cut the crops from the native image at its full resolution, as the paper does (default; "
             "the margin is in native pixels), or from stage 1's network frame (the image resampled for stage 1)",
    )
    ap.add_argument("--val-every", type=int, help="validate every N epochs (and at the last) (default 1)")
    ap.add_argument("--max-train-batches", type=int, help="cap on training batches per epoch (smoke tests)")
    ap.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no progress bars")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = load_config_file(args.config) if args.config else {}
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    for key in ("views", "lr_milestones", "attention_levels"):
        if values.get(key) is not None:
            value = values[key]
            values[key] = (value,) if isinstance(value, (str, int, float)) else tuple(value)
    if "fold" in values:
        values["fold"] = str(values["fold"])
    return TrainConfig(**values)
