"""Checkpoints: written atomically (temporary file + rename), self-describing, exportable to safetensors.

A checkpoint (``last.pt``, ``best.pt``) holds ``model`` (timm name), ``model_kwargs``, ``preprocess``
(image size, spacing), ``stage``, ``fold``, ``epoch``, the weights, and for resuming the optimizer,
scheduler, RNG states and the best score. :func:`export_safetensors` writes only the weights, with the
description as safetensors metadata, which :func:`load_model` reads too.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: a kill never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


DESCRIPTION_KEYS = ("model", "model_kwargs", "preprocess", "stage", "fold", "epoch")


def export_safetensors(checkpoint: dict, path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    meta = {k: json.dumps(checkpoint[k]) for k in DESCRIPTION_KEYS if k in checkpoint}
    tensors = {k: v.detach().cpu().contiguous() for k, v in checkpoint["state_dict"].items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint as a dict with the description keys and ``state_dict`` (``.pt`` or ``.safetensors``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        out = {k: json.loads(v) for k, v in meta.items()}
        out["state_dict"] = load_file(str(path))
    else:
        try:
            out = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"checkpoint {str(path)!r} could not be read ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in ("model", "model_kwargs", "state_dict") if k not in out]
    if missing:
        raise ValueError(f"{path} is not a crocnet checkpoint: missing {', '.join(missing)}")
    return out


def build_model(name: str, kwargs: dict):
    import timm

    import crocnet.models  # noqa: F401  (registers the models)

    return timm.create_model(name, **kwargs)


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint describes and load its weights; returns ``(model.eval(), checkpoint)``."""
    ckpt = read_checkpoint(path)
    model = build_model(ckpt["model"], ckpt["model_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt
