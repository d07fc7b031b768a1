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
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save


def _umask_mode() -> int:
    """The mode ``open`` would give a new file (``mkstemp`` makes them private, 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files a killed atomic write left in ``folder``; returns them."""
    stale = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextmanager
def _replacing(path: str | Path, mode: str):
    """A file object on a temporary file beside ``path``, synced and renamed onto ``path`` when the block
    ends without error (deleted otherwise): readers see the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: a kill never leaves a torn file."""
    with _replacing(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then ``os.replace`` it."""
    with _replacing(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_savefig(fig, path: str | Path, **kwargs) -> Path:
    """``fig.savefig`` as PNG to a temporary file beside ``path``, then ``os.replace`` it."""
    with _replacing(path, "wb") as f:
        fig.savefig(f, format="png", **kwargs)
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
    with _replacing(path, "wb") as f:
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
    bad = nonfinite_tensors(ckpt["state_dict"])
    if bad:
        warnings.warn(f"checkpoint {str(path)!r} holds NaN or inf in {', '.join(bad)}: the model is loaded as it is, but "
                      "its outputs may differ from the trained network's (re-export it from the float32 checkpoint)",
                      stacklevel=2)
    model = build_model(ckpt["model"], ckpt["model_kwargs"])
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


def main(argv: list[str] | None = None) -> int:
    """``crocnet export SRC DST.safetensors [--half]``: write a checkpoint's weights and description as
    safetensors, which ``evaluate``, ``predict`` and ``load_model`` read like the ``.pt``. With ``--half``
    floating-point tensors are stored as float16, except those with values beyond float16's range (BatchNorm
    running variances can reach 1e7), which stay float32."""
    import argparse

    ap = argparse.ArgumentParser(prog="crocnet export", description=main.__doc__)
    ap.add_argument("src", help="checkpoint (.pt / .safetensors) or run folder")
    ap.add_argument("dst", help="output .safetensors file")
    ap.add_argument("--half", action="store_true", help="store floating-point weights as float16 (half the size)")
    args = ap.parse_args(argv)
    dtype = torch.float16 if args.half else None
    try:
        ckpt = read_checkpoint(args.src)
        out = export_safetensors(ckpt, args.dst, dtype)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"crocnet export: error: {exc}", file=sys.stderr)
        return 2
    kept = narrowed_out_of_range(ckpt["state_dict"], dtype) if dtype is not None else []
    note = f"; kept in float32, beyond float16's range: {', '.join(kept)}" if kept else ""
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB){note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
