"""Model ensembles: the mean of several models' probabilities on the same input."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def _checked(p, i: int) -> torch.Tensor:
    if not isinstance(p, torch.Tensor) or not p.is_floating_point():
        got = f"a {p.dtype} tensor" if isinstance(p, torch.Tensor) else f"a {type(p).__name__}"
        raise TypeError(f"MeanEnsemble: member {i} must predict a floating-point tensor of probabilities, got {got}")
    return p


class MeanEnsemble(nn.Module):
    """Wrap models that share one input and one output layout (each with ``predict``: ``(B, C, H, W)`` →
    probabilities ``(B, K, H, W)``) so that ``predict`` (and calling the wrapper) returns their mean:

        p(x) = 1/M · Σ_m model_m.predict(x)

    averaged in float32 and returned in the first member's dtype. For stage 2 of CroCNet, several specialist
    networks (e.g. seeds) trained on the same crops; drops into :class:`~crocnet.models.CroCNet` for either
    stage, and :class:`~crocnet.models.FlipTTA` may wrap it or its members. ``size_divisor`` is the least
    common multiple of the members'. (Stage-1 models of different input sizes are ensembled on the native
    grid instead, by :class:`crocnet.train.inference.Segmenter`.)
    """

    def __init__(self, models: Iterable[nn.Module]):
        super().__init__()
        if isinstance(models, nn.Module) and not isinstance(models, (nn.ModuleList, nn.Sequential)):
            raise TypeError(f"MeanEnsemble takes a list of models, got one {type(models).__name__}; pass [model]")
        models = list(models)
        if not models:
            raise ValueError("MeanEnsemble needs at least one model, got none")
        for i, m in enumerate(models):
            if not callable(getattr(m, "predict", None)):
                raise TypeError(f"MeanEnsemble averages models with a predict method; member {i} is a {type(m).__name__}")
        self.members = nn.ModuleList(models)

    @property
    def size_divisor(self) -> int:
        return math.lcm(*(int(getattr(m, "size_divisor", 1)) for m in self.members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        first = _checked(self.members[0].predict(x), 0)
        total = first.float()
        for i, m in enumerate(self.members[1:], start=1):
            p = _checked(m.predict(x), i)
            if p.shape != first.shape:
                raise ValueError(f"MeanEnsemble: member {i} predicts {tuple(p.shape)}, member 0 {tuple(first.shape)}; "
                                 f"the members must share one output layout")
            total = total + p.float()
        return (total / len(self.members)).to(first.dtype)
