"""``crocnet predict``: segment NIfTI files with trained checkpoints.

Writes uint8 labels in the M&Ms-2 convention (0 background, 1 LV, 2 MYO, 3 RV) with the input's affine,
header and array shape; long-axis files ``(H, W)`` or ``(H, W, 1)`` and short-axis stacks ``(H, W, Z)``,
slice by slice. With ``--stage2`` the whole CroCNet pipeline runs; ``--probabilities`` also writes the
stage-1 probabilities ``(H, W, Z, 4)`` (LV, MYO, RV, background) as NIfTI; ``--overlay`` a PNG of the
middle labelled slice. Every output path is checked before the models run: an output may not be the input,
a checkpoint or another output. CPU by default.

    crocnet predict --checkpoint stage1/best.pt [--stage2 stage2/best.pt] --input 001_LA_ED.nii.gz --output seg.nii.gz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from crocnet.data import DataError, Record, read_nifti, write_nifti
from crocnet.data.validation import check_image
from crocnet.outputs import check_distinct, check_output_file
from crocnet.postprocess import POSTPROCESS_MODES

from .checkpoint import resolve_checkpoint
from .devices import DEVICE_HELP, resolve_device
from .inference import Segmenter
from .report import overlay_png


def predict_file(segmenter: Segmenter, src: Path, dst: Path, probabilities: Path | None = None, overlay: Path | None = None):
    """Segment one NIfTI file and write the labels (and optionally probabilities and an overlay); returns the Segmentation."""
    vol = read_nifti(src)
    data = check_image(vol.array, src)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise DataError(f"{src}: expected a 2D image (H, W) or (H, W, 1) or a stack (H, W, Z), got shape {data.shape}")
    record = Record.from_nifti(vol, data, None, subject=src.name, phase=None, view=None, dataset="nifti")
    seg = segmenter.segment(record)
    labels = seg.labels.reshape(vol.header.get_data_shape())  # the input file's own shape: (H, W) stays (H, W)
    for path in (dst, probabilities, overlay):  # a kill below leaves this run's outputs or none, not another run's
        if path is not None:
            Path(path).unlink(missing_ok=True)
    write_nifti(dst, labels.astype(np.uint8), vol.affine, vol.header)
    if probabilities is not None:
        write_nifti(probabilities, seg.probabilities.astype(np.float32), vol.affine, vol.header)
    if overlay is not None:
        z = int(np.argmax((seg.labels > 0).sum((0, 1))))
        overlay_png(data[:, :, z], seg.stage1[:, :, z], seg.labels[:, :, z], overlay, f"{src.name}: stage 1 (left), final (right)")
    return seg


def check_outputs(args) -> None:
    """Every output path of ``args`` is a file path of its format, in a folder that can be made, and none is
    the input, a checkpoint or another output: checked before the models load, so nothing is overwritten."""
    nifti = (".nii.gz", ".nii")
    check_output_file(args.output, "--output", nifti, "NIfTI")
    if args.probabilities is not None:
        check_output_file(args.probabilities, "--probabilities", nifti, "NIfTI")
    if args.overlay is not None:
        check_output_file(args.overlay, "--overlay", (".png",), "PNG")
    inputs = [("the --input file", args.input)]
    for flag in ("--checkpoint", "--stage2"):
        for path in getattr(args, flag[2:]) or []:
            try:
                inputs.append((f"the {flag} file", resolve_checkpoint(path)))
            except (FileNotFoundError, ValueError):
                pass  # the Segmenter says what is wrong with it
    check_distinct([("--output", args.output), ("--probabilities", args.probabilities), ("--overlay", args.overlay)], inputs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="crocnet predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, nargs="+",
                    help="stage-1 checkpoint (.pt or .safetensors) or its run folder; several: an ensemble (their probabilities averaged)")
    ap.add_argument("--stage2", nargs="+", help="stage-2 checkpoint or run folder: run the whole CroCNet pipeline; several: "
                                                "one stage 2 averaging their probabilities (trained on the same crops)")
    ap.add_argument("--input", required=True, help="input NIfTI image")
    ap.add_argument("--output", required=True, help="output label NIfTI (uint8)")
    ap.add_argument("--probabilities", help="also write stage-1 probabilities (H, W, Z, 4) here")
    ap.add_argument("--overlay", help="also write an overlay PNG here")
    ap.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default cpu)")
    ap.add_argument("--postprocess", default="none", choices=POSTPROCESS_MODES,
                    help="remove islands: keep the largest component of the heart, of each structure, or both (default none)")
    ap.add_argument("--tta", action="store_true", help="test-time augmentation: average the probabilities over the four flips (4x the time)")
    args = ap.parse_args(argv)
    try:
        src = Path(args.input)
        if src.is_dir():
            raise ValueError(f"--input {args.input!r} is a folder; expected one NIfTI file (.nii or .nii.gz)")
        if not src.is_file():
            raise FileNotFoundError(f"--input {args.input!r} not found")
        check_outputs(args)
        resolve_device(args.device)
        segmenter = Segmenter(args.checkpoint, args.stage2, device=args.device, postprocess=args.postprocess, tta=args.tta)
        seg = predict_file(segmenter, src, Path(args.output),
                           Path(args.probabilities) if args.probabilities else None,
                           Path(args.overlay) if args.overlay else None)
    except (ValueError, FileNotFoundError, DataError) as exc:
        print(f"crocnet predict: error: {exc}", file=sys.stderr)
        return 2
    counts = {name: int((seg.labels == v).sum()) for v, name in ((1, "LV"), (2, "MYO"), (3, "RV"))}
    print(f"wrote {args.output} {nib.load(args.output).shape}: " + ", ".join(f"{k} {v} px" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
