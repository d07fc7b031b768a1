"""Print the README's table of parameters and FLOPs of every registered model (batch 1, 128 × 128 input).

    python tools/model_table.py [--size 128]

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2; convolutions,
matrix products and attention only, no element-wise work) for one forward pass. The models are built on
the ``meta`` device, so nothing is computed and no memory is used; on meta tensors the MHSA's
``scaled_dot_product_attention`` is counted, which on CPU tensors (its fused CPU kernel) it is not.
"""

from __future__ import annotations

import argparse

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from crocnet.models import MODEL_NAMES

#: What the paper says about each model's size. Its Fig. 5 plots parameters against Dice, but the text
#: gives no number for any model.
PAPER = {
    "e2aunet": "Fig. 5 only (no number in the text); widths 32 → 512 as here",
    "e2aunet_mhsa": "not reported",
    "e2aunet_noattn": "not reported (Table 1's UNet [3] is a different network)",
    "crocnet_specialists": "Fig. 5 only (no number in the text); widths 16 → 256 as here",
    "crocnet_single": "not reported (Table 2 gives its Dice / HD only)",
}


def measure(name: str, size: int) -> tuple[int, int]:
    with torch.device("meta"):
        model = timm.create_model(name).eval()
        x = torch.empty(1, model.pretrained_cfg["input_size"][0], size, size)
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return params, counter.get_total_flops()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="input height and width")
    args = ap.parse_args(argv)
    print(f"| model | input | params (M) | GFLOPs @ {args.size}² | paper |")
    print("|---|---|---:|---:|---|")
    for name in MODEL_NAMES:
        params, flops = measure(name, args.size)
        chans = timm.get_pretrained_cfg(name).input_size[0]
        size = f"{chans}×{args.size}×{args.size}"
        print(f"| `{name}` | {size} | {params / 1e6:.2f} | {flops / 1e9:.2f} | {PAPER[name]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
