"""``crocnet export SRC DST.safetensors [--half]``: write a checkpoint's weights and description as
safetensors, which ``evaluate``, ``predict`` and ``load_model`` read like the ``.pt``. With ``--half``
floating-point tensors are stored as float16, except those with values beyond float16's range (BatchNorm
running variances can reach 1e7), which stay float32. DST must end in ``.safetensors`` and may not be the
checkpoint SRC reads (checked before anything is read or written)."""

from __future__ import annotations

import argparse
import sys

import torch

from crocnet.outputs import check_distinct, check_output_file

from .checkpoint import export_safetensors, narrowed_out_of_range, read_checkpoint, resolve_checkpoint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="crocnet export", description=__doc__)
    ap.add_argument("src", help="checkpoint (.pt / .safetensors) or run folder")
    ap.add_argument("dst", help="output .safetensors file")
    ap.add_argument("--half", action="store_true", help="store floating-point weights as float16 (half the size)")
    args = ap.parse_args(argv)
    dtype = torch.float16 if args.half else None
    try:
        check_output_file(args.dst, "DST", (".safetensors",), "safetensors")
        src = resolve_checkpoint(args.src)  # a run folder: the checkpoint in it, which DST must not replace
        named = "" if str(src) == args.src else f" ({src}, in SRC {args.src})"
        check_distinct([("DST", args.dst)], [(f"the SRC checkpoint{named}", src)])
        ckpt = read_checkpoint(src)
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
