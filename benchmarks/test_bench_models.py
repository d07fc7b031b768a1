"""Model level: an E2AUNet training step and inference with the fused op, the reference op, the MHSA UNet
and the no-attention UNet (GPU: B = 8, 128², widths 32 → 512; CPU: B = 8, 64²)."""

from __future__ import annotations

import pytest
import torch
from conftest import CUDA, DEVICE, run_benchmark

from crocnet.models import E2AUNet

B, SIDE = (8, 128) if CUDA else (8, 64)
VARIANTS = {
    "e2aunet_fused": dict(attention="e2a", backend="auto"),
    "e2aunet_reference_op": dict(attention="e2a", backend="torch"),
    "e2aunet_mhsa": dict(attention="mhsa"),
    "e2aunet_noattn": dict(attention="none"),
}


@pytest.mark.parametrize("mode", ["train_step", "inference"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_e2aunet(benchmark, variant, mode):
    torch.manual_seed(0)
    model = E2AUNet(in_chans=1, num_classes=4, base_width=32, **VARIANTS[variant]).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(B, 1, SIDE, SIDE, device=DEVICE)
    target = (torch.rand(B, 4, SIDE, SIDE, device=DEVICE) > 0.5).float()
    amp = CUDA

    def forward():
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            return model(x)

    def step():
        logits = forward()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return logits

    def infer():
        with torch.inference_mode():
            return forward()

    if mode == "train_step":
        model.train()
    else:
        model.eval()
    benchmark.group = f"e2aunet B{B} {SIDE}x{SIDE} {mode}"
    run_benchmark(benchmark, step if mode == "train_step" else infer,
                  extra={"impl": variant, "mode": mode, "B": B, "tokens": SIDE * SIDE, "D": 32, "device": DEVICE},
                  memory_fn=forward if mode == "train_step" else None)


def test_phantom_generation(benchmark, tmp_path):
    """The synthetic phantom's speed (target: under a second per subject)."""
    from crocnet.data import write_phantoms

    benchmark.group = "data"
    benchmark.extra_info.update(impl="phantom", mode="3 subjects, LA", tokens=0, D=0, B=3)
    benchmark.pedantic(lambda: write_phantoms(tmp_path, subjects=3, seed=1), rounds=3, iterations=1)
