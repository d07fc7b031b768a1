"""The training loop shared by both stages: Adam, the paper's step schedule, augmentation, AMP, DDP,
per-epoch JSON-lines log, learning curves, atomic ``last``/``best`` checkpoints and exact resumption.

Randomness is re-seeded at the start of every epoch from ``(seed, epoch)`` (weights' dropout / drop path,
shuffling, augmentation), so a run resumed from its last checkpoint ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from crocnet.atomic import atomic_savefig, atomic_write_text, exclusive, remove_stale_temporaries
from crocnet.data import Augment
from crocnet.metrics import dice as mask_dice
from crocnet.models import merge_binary_maps, stage1_to_labels

from .checkpoint import (atomic_save, build_model, check_weights_fit, export_safetensors, load_torch_file,
                         nonfinite_tensors, read_checkpoint, read_resume_state, resolve_checkpoint)
from .config import TrainConfig
from .devices import resolve_device
from .losses import segmentation_loss


def versions() -> dict:
    import crocnet

    out = {"python": platform.python_version(), "torch": torch.__version__, "crocnet": crocnet.__version__,
           "platform": platform.platform(), "argv": sys.argv}
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:  # pragma: no cover
        out["triton"] = None
    out["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return out


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


def is_main_process() -> bool:
    """Whether this process writes the run's files: the only one, or rank 0 of a DDP run."""
    return not dist.is_initialized() or dist.get_rank() == 0


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch; each process of a DDP run its own (rank 0's is the one-process run's)."""
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % 2**31


def shard(order: torch.Tensor, ddp: "Distributed") -> torch.Tensor:
    """This process's share of an epoch's sample order: padded with its first samples to a multiple of the
    process count (as ``DistributedSampler``), so every sample is seen and every process gets the same
    number (else DDP's all-reduce waits forever), even with fewer samples than processes."""
    if ddp.world == 1:
        return order
    pad = (-len(order)) % ddp.world
    order = torch.cat([order, order.repeat(pad // len(order) + 1)[:pad]])
    return order[ddp.rank :: ddp.world]


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict:
    """The global random states (python, numpy, torch, CUDA), saved in ``last.pt`` for resuming."""
    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict) -> None:
    """Restore what :func:`rng_states` saved (missing entries are left alone)."""
    if "python" in states:
        random.setstate(states["python"])
    if "numpy" in states:
        np.random.set_state(states["numpy"])
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def milestones(cfg: TrainConfig) -> list[int]:
    return sorted({max(1, round(f * cfg.epochs)) for f in cfg.lr_milestones})


def decode_labels(probs: torch.Tensor) -> torch.Tensor:
    """Probabilities (or one-hot targets) ``(B, K, H, W)`` → labels ``(B, H, W)``, by the rule inference uses:
    K = 4 (stage 1: LV, MYO, RV, background): :func:`~crocnet.models.stage1_to_labels` (argmax);
    K = 3 (stage 2: LV, MYO, RV binary maps): :func:`~crocnet.models.merge_binary_maps` (threshold 0.5)."""
    if probs.shape[1] == 4:
        return stage1_to_labels(probs)
    if probs.shape[1] == 3:
        return merge_binary_maps(probs)
    raise ValueError(f"expected 4 (stage 1) or 3 (stage 2) channels, got {tuple(probs.shape)}")


def label_dice(pred: torch.Tensor, truth: torch.Tensor, structures: int = 3) -> torch.Tensor:
    """Dice of label maps ``(B, H, W)`` per structure 1..``structures``, pooled over the batch: ``(structures,)``;
    NaN where the structure is absent from both."""
    out = []
    for value in range(1, structures + 1):
        p, t = pred == value, truth == value
        out.append(mask_dice(p, t) if bool((p | t).any()) else float("nan"))  # NaN, not metrics' 1.0: nanmean skips it
    return torch.tensor(out, dtype=torch.float64)


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    if any("val_loss" in h for h in history):
        a.plot([h["epoch"] for h in history if "val_loss" in h], [h["val_loss"] for h in history if "val_loss" in h], label="validation")
    a.set_xlabel("epoch"), a.set_ylabel("Dice loss"), a.legend(), a.set_title(title)
    names = [k[len("val_dice_"):] for k in history[-1] if k.startswith("val_dice_")]
    for name in names:
        pts = [(h["epoch"], h[f"val_dice_{name}"]) for h in history if f"val_dice_{name}" in h]
        b.plot(*zip(*pts), label=name)
    b.set_xlabel("epoch"), b.set_ylabel("validation Dice"), b.set_ylim(0, 1)
    if names:
        b.legend()
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def init_weights(model: torch.nn.Module, source: str | Path, name: str, kwargs: dict, fold: int) -> Path:
    """Load the weights of ``source`` into ``model`` (fine-tuning); returns the checkpoint used.

    ``source`` is a checkpoint (file or run folder) or a cross-validation folder with ``fold<k>/`` subfolders,
    of which fold ``fold``'s is used: it never trained on this fold's validation subjects. The checkpoint must
    describe the same model with the same arguments (any input size: the networks are fully convolutional).
    """
    source = Path(source)
    if source.is_dir() and (source / f"fold{fold}").is_dir():
        source = source / f"fold{fold}"
    path = resolve_checkpoint(source)
    ckpt = read_checkpoint(path)
    if ckpt["model"] != name or ckpt["model_kwargs"] != kwargs:
        theirs = ckpt["model_kwargs"]
        differ = [f"{k} {theirs.get(k, 'default')} (this run: {kwargs.get(k, 'default')})"
                  for k in sorted(set(theirs) | set(kwargs)) if theirs.get(k) != kwargs.get(k)]
        differ = ([f"model {ckpt['model']} (this run: {name})"] if ckpt["model"] != name else []) + differ
        raise ValueError(f"--init {str(path)!r} holds {ckpt['model']} {theirs}, but this run trains {name} {kwargs}; "
                         f"the file has {', '.join(differ)}: pass the same --model, --base-width, --depth and "
                         f"--attention-levels")
    if ckpt.get("fold") is not None and int(ckpt["fold"]) != fold:
        warnings.warn(f"--init {str(path)!r} was trained as fold {ckpt['fold']}, this run is fold {fold}: if both use "
                      f"the same split, fold {fold}'s validation subjects were in its training set (give a folder "
                      f"with fold<k>/ subfolders to start each fold from its own weights)", stacklevel=2)
    bad = nonfinite_tensors(ckpt["state_dict"])
    if bad:
        raise ValueError(f"--init {str(path)!r} holds NaN or inf in {', '.join(bad)}")
    check_weights_fit(model, ckpt["state_dict"], f"--init {str(path)!r} ({ckpt['model']} {ckpt['model_kwargs']})")
    model.load_state_dict(ckpt["state_dict"])  # copied into the model's dtype (float16 exports too)
    return path


def fit(cfg: TrainConfig, run_dir: Path, *args, **kwargs) -> dict:
    """:func:`train_fold` holding ``run_dir``'s lock (the writing process only): a second process training
    into the same fold folder at once is refused instead of interleaving its log and checkpoints."""
    lock = exclusive(run_dir, "training") if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
    with lock:
        return train_fold(cfg, run_dir, *args, **kwargs)


def train_fold(
    cfg: TrainConfig,
    run_dir: Path,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    val_inputs: torch.Tensor | None,
    val_targets: torch.Tensor | None,
    channel_names: list[str],
    fold: int,
    preprocess: dict,
    label_fill: float | tuple[float, ...] = 0.0,
) -> dict:
    """Train one model on ``inputs (M, C, S, S)`` / ``targets (M, K, S, S)``; returns the final checkpoint dict.

    ``channel_names`` names the structures (LV, MYO, RV) scored on validation: the pooled Dice of the labels
    inference would output (:func:`evaluate_tensors`), which also picks the ``best`` checkpoint. (Scoring
    each sigmoid channel on its own, as this loop once did, can rate a model well whose RV channel also
    fires on the LV: the argmax at inference then labels the LV as RV.) ``label_fill``: the target value
    augmentation gives pixels moved in from outside the field of view (one per channel; see
    :class:`crocnet.data.Augment`).
    """
    device = resolve_device(cfg.device)
    ddp = init_distributed(device)
    if device.type == "cuda" and ddp.world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    run_dir = Path(run_dir)
    name, kwargs = cfg.resolved_model(), cfg.model_kwargs()
    seed_everything(cfg.seed)
    model = build_model(name, kwargs).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones(cfg), gamma=0.1)
    history: list[dict] = []
    best = -math.inf
    start = 1
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if ddp.main:
        remove_stale_temporaries(run_dir)
    resuming = cfg.resume and last_path.is_file()
    if cfg.resume and not resuming:
        check_restart_keeps_best(run_dir)
        if ddp.main:
            print(f"{run_dir}: no last.pt to resume from yet, starting at epoch 1")
    if resuming:
        state = read_resume_state(last_path)  # a ValueError naming last.pt and the fix when it is torn or foreign
        check_resumable(state, cfg, name, kwargs, last_path, ddp.world)
        check_weights_fit(model, state["state_dict"], f"--resume checkpoint {str(last_path)!r}")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, start = state["history"], state["best"], state["epoch"] + 1
        set_rng_states(state.get("rng", {}))
        if ddp.main:
            # a kill between the log line and last.pt leaves that epoch in the log; it is trained again
            atomic_write_text(run_dir / "log.jsonl", "".join(json.dumps(row) + "\n" for row in history))
            print(f"resuming {run_dir} after epoch {state['epoch']} (best validation Dice {best:.4f})")
    elif cfg.init:
        source = init_weights(model, cfg.init, name, kwargs, fold)
        if ddp.main:
            print(f"{run_dir}: starting from the weights of {source}")
    if not resuming and ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_json(), indent=2))
        atomic_write_text(run_dir / "versions.json", json.dumps(versions(), indent=2))
        (run_dir / "log.jsonl").unlink(missing_ok=True)
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp.world > 1 else model
    if cfg.compile:  # the checkpoints and validation keep to ``model``: its parameter names, eager
        net = torch.compile(net, backend=cfg.compile)
    augment = Augment(intensity_channels=(0,), label_fill=label_fill) if cfg.augment else None
    amp = cfg.amp and device.type == "cuda"
    scored = len(channel_names)

    def describe(epoch: int) -> dict:
        return {"model": name, "model_kwargs": kwargs, "preprocess": preprocess, "stage": cfg.stage,
                "fold": fold, "epoch": epoch, "state_dict": model.state_dict()}

    if start > cfg.epochs and ddp.main:
        print(f"{run_dir}: already trained for {cfg.epochs} epochs")
    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        # the order is shared; dropout and augmentation draw per process, rank 0 exactly as a one-process run
        # (its augmentation continues the order's generator), the others from seeds of their own
        seed_everything(epoch_seed(cfg.seed, epoch, ddp.rank))
        gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch) + 1)
        order = shard(torch.randperm(len(inputs), generator=gen), ddp)
        if ddp.rank:
            gen.manual_seed(epoch_seed(cfg.seed, epoch, ddp.rank) + 1)
        batches = list(order.split(cfg.batch_size))
        if cfg.max_train_batches:
            batches = batches[: cfg.max_train_batches]
        net.train()
        lr = optimizer.param_groups[0]["lr"]
        total, seen = 0.0, 0
        bar = tqdm(batches, desc=f"{run_dir.name} epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=not (cfg.progress and ddp.main), unit="batch")
        for idx in bar:
            x, y = inputs[idx].to(device), targets[idx].to(device).float()
            if augment is not None:
                x, y = augment(x, y, generator=gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x)
            loss = segmentation_loss(logits, y, cfg.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.1f}")
        scheduler.step()
        if ddp.world > 1:  # the logged loss is the mean over all processes' samples
            sums = torch.tensor([total, float(seen)], dtype=torch.float64, device=device)
            dist.all_reduce(sums)
            total, seen = float(sums[0]), int(sums[1])
        row = {"epoch": epoch, "lr": lr, "train_loss": total / max(seen, 1)}
        # validation on the main process only: the others' scores would go unused (and differ, by their
        # BatchNorm statistics); they wait for it at the next step's all-reduce
        validate = val_inputs is not None and len(val_inputs) and (epoch % cfg.val_every == 0 or epoch == cfg.epochs)
        if validate and ddp.main:
            val_loss, dice = evaluate_tensors(model, val_inputs, val_targets, device, cfg, amp)
            row["val_loss"] = val_loss
            for c, n in enumerate(channel_names):
                row[f"val_dice_{n}"] = float(dice[c])
            score = float(np.nanmean(dice[:scored])) if not np.all(np.isnan(dice[:scored])) else 0.0
            row["val_dice_mean"] = score
        else:
            score = -row["train_loss"]
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if ddp.main:
            with open(run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if score > best:
                best = score
                atomic_save(describe(epoch), best_path)
            state = describe(epoch) | {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                       "history": history, "best": best, "config": cfg.to_json(),
                                       "world_size": ddp.world,
                                       "rng": rng_states()}
            atomic_save(state, last_path)
            if epoch % 10 == 0 or epoch == cfg.epochs:
                plot_curves(history, run_dir / "curves.png", run_dir.parent.name + "/" + run_dir.name)
            extra = f", val Dice {row['val_dice_mean']:.4f}" if "val_dice_mean" in row else ""
            line = f"{run_dir.name} epoch {epoch}/{cfg.epochs}: loss {row['train_loss']:.4f}{extra} ({row['seconds']:.1f} s)"
            if cfg.progress:
                tqdm.write(line)
            else:
                print(line, flush=True)
    if ddp.world > 1:
        dist.barrier()
    if ddp.main and best_path.is_file():
        export_safetensors(torch.load(best_path, map_location="cpu", weights_only=False), run_dir / "best.safetensors")
        if history:
            plot_curves(history, run_dir / "curves.png", run_dir.parent.name + "/" + run_dir.name)
    return describe(cfg.epochs) | {"history": history, "best": best}


#: Settings a resumed run must share with the run that wrote its checkpoint (the others, such as --out,
#: --device or --no-progress, may change between the two).
#: settings a resumed run must share with the checkpoint: the model, the optimisation, and what it trains and
#: validates on (another view, dataset or crop would mix two trainings in one set of weights, and compare
#: validation scores of two different sets when picking the best epoch)
RESUME_KEYS = ("stage", "model", "base_width", "depth", "attention_levels", "epochs", "batch_size", "lr",
               "lr_milestones", "loss", "image_size", "target_spacing", "augment", "outside_label", "seed", "weight_decay",
               "dataset", "views", "crop_margin", "crop_from", "stage1_run", "max_train_batches")


def check_resumable(state: dict, cfg: TrainConfig, name: str, kwargs: dict, path: Path, world: int = 1) -> None:
    """Refuse to resume ``path`` under other model arguments or training settings, or another number of
    processes (``--batch-size`` is per process: the effective batch and the data order would change), naming
    each difference."""
    # a key the checkpoint's version did not write yet had that version's behaviour: today's default
    saved = TrainConfig().to_json() | state.get("config", {})
    current = cfg.to_json()
    diffs = []
    if state.get("world_size", 1) != world:
        diffs.append(f"{state.get('world_size', 1)} training process(es) (now {world})")
    if state.get("model") != name or state.get("model_kwargs") != kwargs:
        diffs.append(f"model {state.get('model')} {state.get('model_kwargs')} (now {name} {kwargs})")
    for key in RESUME_KEYS:
        if "config" in state and _plain(saved[key]) != _plain(current[key]):
            diffs.append(f"{key} {saved[key]!r} (now {current[key]!r})")
    if diffs:
        raise ValueError(f"--resume: {path} was written with other settings: {'; '.join(diffs)}. "
                         f"Resume with the original settings, or train into another --out.")


def check_new_run(run_dir: Path) -> None:
    """Refuse to train ``run_dir`` from epoch 1 over a run already there (its ``last.pt`` or ``best.pt``)."""
    found = earlier_run(Path(run_dir))
    if found:
        raise ValueError(f"{run_dir} already holds a run ({found}); pass --resume to continue it, or choose another --out")


def check_restart_keeps_best(run_dir: Path) -> None:
    """``--resume`` without ``last.pt`` starts at epoch 1, whose checkpoint replaces ``best.pt``: fine when
    ``best.pt`` is epoch 1's (a kill between writing it and ``last.pt``), refused when it is a later epoch's
    (``last.pt`` removed), which that restart would lose."""
    best = Path(run_dir) / "best.pt"
    if not best.is_file():
        return
    fix = "move it away to train this run again from epoch 1, or train into another --out (--init can start from it)"
    state = load_torch_file(best, f"--resume: {best}", fix)
    epoch = state.get("epoch") if isinstance(state, dict) else None
    if epoch != 1:
        which = f"from epoch {epoch}" if epoch is not None else "without a recorded epoch"
        raise ValueError(f"--resume: {run_dir} has no last.pt (the training state a run continues from) but has best.pt "
                         f"{which}, which starting again at epoch 1 would overwrite; {fix}")


def earlier_run(run_dir: Path) -> str | None:
    """What ``run_dir`` holds of an earlier run, for messages (``last.pt at epoch 3 of 10``, ``best.pt``), or None."""
    last = run_dir / "last.pt"
    if last.is_file():
        try:
            state = load_torch_file(last, str(last))
            return f"last.pt at epoch {state['epoch']} of {state['config']['epochs']}"
        except (ValueError, LookupError, TypeError):  # torn, or not a training checkpoint: still someone's run
            return "last.pt"
    return "best.pt" if (run_dir / "best.pt").is_file() else None


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


@torch.no_grad()
def evaluate_tensors(model, inputs, targets, device, cfg: TrainConfig, amp: bool = False) -> tuple[float, np.ndarray]:
    """Mean loss of ``model`` on tensors, in eval mode, and the pooled Dice per structure (LV, MYO, RV) of the
    labels inference would output (:func:`decode_labels` of the model's probabilities) against the targets'."""
    model.eval()
    losses, preds = [], []
    for idx in torch.arange(len(inputs)).split(max(1, cfg.batch_size)):
        x, y = inputs[idx].to(device), targets[idx].to(device).float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        losses.append(segmentation_loss(logits, y, cfg.loss).item() * len(idx))
        preds.append(decode_labels(model.activation(logits.float())).cpu())
    model.train()
    dice = label_dice(torch.cat(preds), decode_labels(targets.float()))
    return sum(losses) / len(inputs), dice.numpy()
