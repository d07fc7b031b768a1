"""Checkpoints: written atomically (temporary file + rename), self-describing, exportable to safetensors.

A checkpoint (``last.pt``, ``best.pt``) holds ``model`` (timm name), ``model_kwargs``, ``preprocess``
(image size, spacing), ``stage``, ``fold``, ``epoch``, the weights, and for resuming the optimizer,
scheduler, RNG states and the best score. :func:`export_safetensors` writes only the weights, with the
description as safetensors metadata, which :func:`load_model` reads too.

A CroCNet model is two checkpoints, a stage-1 and a stage-2 one (``crocnet predict --checkpoint S1
--stage2 S2``, ``crocnet evaluate --stage1 S1 --stage2 S2``); stage 2's ``preprocess`` holds its crop size
and margin, stage 1's the frame size and spacing. Wherever a checkpoint is asked for, a run folder works
too: :func:`resolve_checkpoint` picks its ``best.pt`` (or ``best.safetensors``, or ``fold0/best.pt``).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
from safetensors.torch import save

from crocnet.arguments import is_int
from crocnet.atomic import replacing


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: a kill never leaves a torn file."""
    with replacing(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


DESCRIPTION_KEYS = ("model", "model_kwargs", "preprocess", "stage", "fold", "epoch")


def export_safetensors(checkpoint: dict, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the weights of ``checkpoint`` to ``path`` (safetensors) with its description as metadata.

    ``dtype=torch.float16`` halves the file (floating-point weights only; :func:`load_model` casts them back
    to the model's dtype), e.g. to keep a base-width-16 E-2AUNet under 10 MB. A tensor with a finite value
    that the narrower type cannot hold (a BatchNorm ``running_var`` above float16's 65504 is the usual one)
    keeps its own dtype instead of turning into ``inf``; :func:`narrowed_out_of_range` names them.
    """
    path = Path(path)
    meta = {k: json.dumps(checkpoint[k]) for k in DESCRIPTION_KEYS if k in checkpoint}
    keep = set(narrowed_out_of_range(checkpoint["state_dict"], dtype)) if dtype is not None else set()
    tensors = {}
    for k, v in checkpoint["state_dict"].items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point() and k not in keep:
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    if path.is_dir():
        raise ValueError(f"the safetensors output must be a file path, got the folder {str(path)!r}")
    with replacing(path, "wb") as f:
        f.write(save(tensors, metadata=meta))
    return path


def narrowed_out_of_range(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> list[str]:
    """Names of the floating-point tensors with a finite value whose cast to ``dtype`` would be ``±inf``."""
    limit = torch.finfo(dtype).max
    return [k for k, v in state_dict.items()
            if v.is_floating_point() and bool((torch.isfinite(v) & (v.abs() > limit)).any())]


def nonfinite_tensors(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or ±inf."""
    return [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the best checkpoint of a run folder (``best.pt``, ``best.safetensors``, ``fold0/...``),
    or the one ``.safetensors`` file of a folder of exported weights (``results/acdc/cv_*/fold<k>/``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "best.safetensors", "fold0/best.pt", "fold0/best.safetensors"):
            if (path / name).is_file():
                return path / name
        exported = sorted(path.glob("*.safetensors"))
        if len(exported) == 1:
            return exported[0]
        found = f"; it has {len(exported)} .safetensors files: name one" if exported else ""
        raise FileNotFoundError(f"no checkpoint (best.pt, best.safetensors, fold0/best.pt, or a single .safetensors file) "
                                f"in the folder {str(path)!r}{found}")
    return path


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint as a dict with the description keys and ``state_dict`` (``.pt`` or ``.safetensors``, or a run folder)."""
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state_dict = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001  (safetensors raises its own error type)
            raise ValueError(f"checkpoint {str(path)!r} could not be read ({type(exc).__name__}: {exc})") from exc
        out = {}
        for key, value in meta.items():
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:  # metadata written by other tools (e.g. {"format": "pt"})
                out[key] = value
        out["state_dict"] = state_dict
    else:
        out = load_torch_file(path, f"checkpoint {str(path)!r}")
    if not isinstance(out, dict):
        raise ValueError(f"{path} is not a crocnet checkpoint: expected a dict with the model description and "
                         f"state_dict, got {type(out).__name__}")
    missing = [k for k in ("model", "model_kwargs", "state_dict") if k not in out]
    if missing:
        raise ValueError(f"{path} is not a crocnet checkpoint: missing {', '.join(missing)}")
    check_description(out, path)
    return out


def _is_positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def check_description(ckpt: dict, path: str | Path) -> None:
    """Raise a ``ValueError`` naming ``path`` and the field unless the description of ``ckpt`` is one inference can
    use: ``model`` a name, ``model_kwargs`` a dict, ``stage`` 1 or 2, ``state_dict`` a dict of tensors, and
    ``preprocess`` a dict with a positive ``image_size`` (stage 1: a ``target_spacing``, ``None`` or positive;
    stage 2: an optional ``crop_from`` of ``"frame"``/``"native"`` and a ``margin`` >= 0)."""
    if not isinstance(ckpt["model"], str) or not ckpt["model"]:
        raise ValueError(f"{path}: expected a model name (a string) in 'model', got {ckpt['model']!r}")
    kwargs = ckpt["model_kwargs"]
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"{path}: expected a dict of keyword arguments in 'model_kwargs', got {kwargs!r}")
    sd = ckpt["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        got = type(sd).__name__ if not isinstance(sd, dict) else "a dict holding " + ", ".join(
            sorted({type(v).__name__ for v in sd.values() if not isinstance(v, torch.Tensor)}))
        raise ValueError(f"{path}: expected a dict of tensors in 'state_dict', got {got}")
    stage = ckpt.get("stage", 1)
    if not is_int(stage) or stage not in (1, 2):
        raise ValueError(f"{path}: expected 'stage' 1 or 2, got {stage!r}")
    if "preprocess" not in ckpt:
        raise ValueError(f"{path}: expected a model description with 'preprocess', got keys "
                         f"{', '.join(map(str, ckpt))}")
    pre = ckpt["preprocess"]
    if not isinstance(pre, dict):
        raise ValueError(f"{path}: expected 'preprocess' to be a dict (image_size, ...), got {pre!r}")
    if "image_size" not in pre:
        raise ValueError(f"{path}: expected 'preprocess' with 'image_size', got keys {', '.join(map(str, pre)) or 'none'}")
    size = pre["image_size"]
    if not is_int(size) or size < 1:
        raise ValueError(f"{path}: expected 'preprocess' 'image_size' to be a positive integer, got {size!r}")
    if stage == 1:
        if "target_spacing" not in pre:
            raise ValueError(f"{path}: expected 'preprocess' with 'target_spacing' (null or mm), got keys "
                             f"{', '.join(map(str, pre))}")
        ts = pre["target_spacing"]
        pair = isinstance(ts, (list, tuple)) and len(ts) == 2 and all(_is_positive_number(v) for v in ts)
        if ts is not None and not _is_positive_number(ts) and not pair:
            raise ValueError(f"{path}: expected 'preprocess' 'target_spacing' to be null or a positive number of mm "
                             f"(or a pair), got {ts!r}")
    else:
        if pre.get("crop_from", "frame") not in ("frame", "native"):
            raise ValueError(f"{path}: expected 'preprocess' 'crop_from' to be 'frame' or 'native', got {pre['crop_from']!r}")
        margin = pre.get("margin", 15)
        if not is_int(margin) or margin < 0:
            raise ValueError(f"{path}: expected 'preprocess' 'margin' to be an integer >= 0, got {margin!r}")


_RESUME_KEYS = ("state_dict", "optimizer", "scheduler", "history", "best", "epoch")


def load_torch_file(path: Path, name: str, fix: str = "") -> object:
    """``torch.load`` of ``path`` on the CPU, or a ``ValueError``: ``{name} could not be read (Error: ...); {fix}``
    when it is torn, empty or no torch file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001  (a torn file raises EOFError, RuntimeError, UnpicklingError, OSError...)
        raise ValueError(f"{name} could not be read ({type(exc).__name__}: {exc}){'; ' + fix if fix else ''}") from exc


def read_resume_state(path: str | Path) -> dict:
    """The training state in ``last.pt`` (``path``), or a ``ValueError`` naming it and saying what to do when it is
    unreadable (truncated, empty) or not a resumable checkpoint (e.g. a copy of ``best.pt``, which has no optimizer)."""
    path = Path(path)
    fix = f"Delete or rename {path} to start this run from epoch 1, or train into another --out"
    state = load_torch_file(path, f"--resume: {path}", fix)
    if not isinstance(state, dict):
        raise ValueError(f"--resume: {path} is not a training checkpoint: expected a dict with {', '.join(_RESUME_KEYS)}, "
                         f"got {type(state).__name__}. {fix}.")
    missing = [k for k in _RESUME_KEYS if k not in state]
    if missing:
        hint = " (a copy of best.pt? best.pt holds only the model)" if "optimizer" in missing and "state_dict" in state else ""
        raise ValueError(f"--resume: {path} is not a training checkpoint: expected {', '.join(_RESUME_KEYS)}, "
                         f"missing {', '.join(missing)}{hint}. {fix}.")
    return state


def build_model(name: str, kwargs: dict):
    import timm

    import crocnet.models  # noqa: F401  (registers the models)

    return timm.create_model(name, **kwargs)


def build_described_model(ckpt: dict, path: str | Path):
    """``build_model`` of a checkpoint's description; a ``ValueError`` naming ``path`` and the field when the model
    name is unknown or ``model_kwargs`` are not that model's arguments."""
    import timm

    import crocnet.models  # noqa: F401  (registers the models)

    name, kwargs = ckpt["model"], ckpt["model_kwargs"]
    if not timm.is_model(name):
        ours = ", ".join(sorted(n for n in timm.list_models() if "e2aunet" in n or "crocnet" in n))
        raise ValueError(f"{path}: expected a known model in 'model' (e.g. {ours}), got {name!r}")
    try:
        return build_model(name, kwargs)
    except TypeError as exc:
        raise ValueError(f"{path}: the 'model_kwargs' {kwargs} are not arguments of {name} ({exc})") from exc


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint describes and load its weights; returns ``(model.eval(), checkpoint)``."""
    ckpt = read_checkpoint(path)
    bad = nonfinite_tensors(ckpt["state_dict"])
    if bad:
        warnings.warn(f"checkpoint {str(path)!r} holds NaN or inf in {', '.join(bad)}: the model is loaded as it is, but "
                      "its outputs may differ from the trained network's (re-export it from the float32 checkpoint)",
                      stacklevel=2)
    model = build_described_model(ckpt, path)
    check_weights_fit(model, ckpt["state_dict"], f"checkpoint {str(path)!r} ({ckpt['model']} {ckpt['model_kwargs']})")
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt


def check_weights_fit(model: torch.nn.Module, state_dict: dict, what: str) -> None:
    """Raise a short ``ValueError`` (instead of ``load_state_dict``'s page of keys) when the weights do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(lst)} {name} (first: {lst[0]})" for name, lst in
                 (("missing weights", missing), ("unexpected weights", unexpected), ("shape mismatches, saved vs model", shapes)) if lst]
        raise ValueError(f"the weights of {what} do not fit that model: {'; '.join(parts)}")
