"""Test-time augmentation by flips: the mean of a model's probabilities over mirrored copies of the input."""

from __future__ import annotations

import torch
from torch import nn

FLIPS = ((), (-1,), (-2,), (-2, -1))


def _check_output(out, x: torch.Tensor) -> None:
    """The model's output must be ``(4B, K, H, W)`` on the input's grid, or it cannot be flipped back."""
    n = len(FLIPS) * x.shape[0]
    if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[0] == n and out.shape[-2:] == x.shape[-2:]:
        return
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    raise ValueError(f"FlipTTA: the model must predict probabilities on the input's grid, ({n}, K, {x.shape[-2]}, "
                     f"{x.shape[-1]}) for the {len(FLIPS)} mirrored copies of {tuple(x.shape)}, got {got}")


class FlipTTA(nn.Module):
    """Wrap a segmentation model (one with ``predict``: ``(B, C, H, W)`` → probabilities ``(B, K, H, W)``) so
    that ``predict`` (and calling the wrapper) returns the mean over the four in-plane mirrorings of the
    input, each output flipped back:

        p(x) = 1/4 · Σ_{f ∈ {id, flip W, flip H, flip H and W}} f⁻¹(model.predict(f(x)))

    Valid for models trained with random flips of both axes (as :class:`~crocnet.data.Augment` does by
    default). Costs four forward passes, run as one batch of ``4B`` images. Drops into
    :class:`~crocnet.models.CroCNet` for either stage: ``size_divisor`` and the wrapped model's other
    attributes pass through.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not callable(getattr(model, "predict", None)):
            raise TypeError(f"FlipTTA wraps a model with a predict method, got {type(model).__name__}")
        self.model = model

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected images (B, C, H, W), got {tuple(x.shape)}")
        out = self.model.predict(torch.cat([x.flip(dims) if dims else x for dims in FLIPS]))
        _check_output(out, x)
        probs = out.chunk(len(FLIPS))
        mean = sum((p.flip(dims) if dims else p).float() for p, dims in zip(probs, FLIPS)) / len(FLIPS)
        return mean.to(probs[0].dtype)
