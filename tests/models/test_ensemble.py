"""MeanEnsemble: the mean of its members' probabilities, a drop-in for either CroCNet stage."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crocnet.models import CroCNet, E2AUNet, FlipTTA, MeanEnsemble, SpecialistNets


class Scaled(nn.Module):
    """'Predicts' ``scale`` times a fixed map, whatever the input."""

    def __init__(self, scale: float, size_divisor: int = 1, channels: int = 3, dtype=torch.float32):
        super().__init__()
        self.scale, self.size_divisor, self.channels, self.dtype = scale, size_divisor, channels, dtype

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        base = torch.linspace(0, 1, self.channels * x.shape[-2] * x.shape[-1]).reshape(1, self.channels, *x.shape[-2:])
        return (self.scale * base).expand(x.shape[0], -1, -1, -1).to(self.dtype)


def test_the_mean_of_the_members_predictions():
    x = torch.zeros(2, 4, 6, 8)
    members = [Scaled(0.2), Scaled(0.5), Scaled(0.8)]
    out = MeanEnsemble(members).predict(x)
    torch.testing.assert_close(out, Scaled(0.5).predict(x), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(MeanEnsemble(members)(x), out, rtol=0, atol=0)
    torch.testing.assert_close(MeanEnsemble([Scaled(0.3)]).predict(x), Scaled(0.3).predict(x), rtol=0, atol=0)
    assert MeanEnsemble([Scaled(1, 4), Scaled(1, 6), Scaled(1)]).size_divisor == 12

    half = MeanEnsemble([Scaled(0.25, dtype=torch.float16), Scaled(0.75, dtype=torch.float16)]).predict(x)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half, Scaled(0.5, dtype=torch.float16).predict(x), rtol=1e-3, atol=1e-3)


def test_real_networks_average_and_drop_into_crocnet():
    torch.manual_seed(0)
    nets = [SpecialistNets(base_width=4, depth=2).eval() for _ in range(2)]
    x = torch.randn(3, 4, 16, 16)
    with torch.no_grad():
        expected = (nets[0].predict(x) + nets[1].predict(x)) / 2
        torch.testing.assert_close(MeanEnsemble(nets).predict(x), expected, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(nets[0].predict(x), expected, atol=1e-3)  # the two members differ
        torch.testing.assert_close(FlipTTA(MeanEnsemble(nets)).predict(x), MeanEnsemble([FlipTTA(n) for n in nets]).predict(x),
                                   rtol=1e-5, atol=1e-6)
    ensemble = MeanEnsemble(nets)
    assert len(list(ensemble.parameters())) == 2 * len(list(nets[0].parameters()))
    model = CroCNet(E2AUNet(base_width=4, depth=2), ensemble, crop_size=16).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 1, 24, 28))
    assert out.labels.shape == (2, 24, 28) and out.probabilities.shape == (2, 3, 24, 28)


def test_bad_members_are_clear_errors():
    with pytest.raises(ValueError, match="at least one model, got none"):
        MeanEnsemble([])
    with pytest.raises(TypeError, match="member 1 is a Conv2d"):
        MeanEnsemble([Scaled(1), nn.Conv2d(1, 1, 1)])
    with pytest.raises(ValueError, match=r"member 1 predicts \(2, 4, 6, 8\), member 0 \(2, 3, 6, 8\)"):
        MeanEnsemble([Scaled(1), Scaled(1, channels=4)]).predict(torch.zeros(2, 1, 6, 8))
    with pytest.raises(TypeError, match=r"MeanEnsemble takes a list of models, got one Scaled; pass \[model\]"):
        MeanEnsemble(Scaled(1))
    with pytest.raises(TypeError, match="member 1 must predict a floating-point tensor of probabilities, got a tuple"):
        MeanEnsemble([Scaled(1), Pair()]).predict(torch.zeros(2, 1, 6, 8))
    with pytest.raises(TypeError, match="member 0 must predict a floating-point tensor of probabilities, got a torch.int64 tensor"):
        MeanEnsemble([Scaled(1, dtype=torch.int64)]).predict(torch.zeros(2, 1, 6, 8))


class Pair(Scaled):
    def __init__(self):
        super().__init__(1)

    def predict(self, x: torch.Tensor):
        return super().predict(x), None
