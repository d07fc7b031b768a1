"""FlipTTA: the mean over the four flips, flip-equivariant, and a drop-in for either CroCNet stage."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crocnet.models import CroCNet, E2AUNet, FlipTTA, SpecialistNets


class FixedMap(nn.Module):
    """'Predicts' the same position-dependent map whatever the input: shows which flips were averaged."""

    size_divisor = 4

    def __init__(self, h: int, w: int):
        super().__init__()
        self.map = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w) ** 2

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.map.expand(x.shape[0], 1, -1, -1)


def test_mean_over_the_four_flips():
    m = FixedMap(4, 6)
    out = FlipTTA(m).predict(torch.zeros(2, 1, 4, 6))
    M = m.map[0, 0]
    expected = (M + M.flip(-1) + M.flip(-2) + M.flip(-2, -1)) / 4
    torch.testing.assert_close(out, expected.expand(2, 1, 4, 6), rtol=0, atol=0)
    assert FlipTTA(m).size_divisor == 4


def test_flip_equivariant_and_exact_for_equivariant_models():
    torch.manual_seed(0)
    net = E2AUNet(base_width=4, depth=2).eval()
    tta = FlipTTA(net)
    x = torch.randn(2, 1, 16, 20)
    with torch.no_grad():
        p = tta.predict(x)
        assert p.shape == (2, 4, 16, 20)
        torch.testing.assert_close(tta(x), p)
        for dims in ((-1,), (-2,), (-2, -1)):  # float32: the four passes are summed in another order
            torch.testing.assert_close(tta.predict(x.flip(dims)), p.flip(dims), rtol=1e-5, atol=1e-6)
        pointwise = nn.Conv2d(1, 3, 1)
        pointwise.predict = lambda z: torch.sigmoid(pointwise(z))
        torch.testing.assert_close(FlipTTA(pointwise).predict(x), pointwise.predict(x), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(p, net.predict(x), atol=1e-4)  # the UNet itself is not flip-equivariant


def test_drops_into_crocnet_and_rejects_bad_input():
    model = CroCNet(FlipTTA(E2AUNet(base_width=4, depth=2)), FlipTTA(SpecialistNets(base_width=4, depth=2)), crop_size=16).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 1, 24, 28))
    assert out.labels.shape == (2, 24, 28) and out.probabilities.shape == (2, 3, 24, 28)
    with pytest.raises(TypeError, match="predict"):
        FlipTTA(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        FlipTTA(FixedMap(4, 4)).predict(torch.zeros(4, 4))


def test_outputs_that_cannot_be_flipped_back_are_refused():
    """A map on another grid would be mirrored about the wrong centre, and averaged without a word."""
    with pytest.raises(ValueError, match=r"FlipTTA: the model must predict probabilities on the input's grid, \(8, K, 4, 6\) .* of \(2, 1, 4, 6\), got \(8, 1, 4, 4\)"):
        FlipTTA(FixedMap(4, 4)).predict(torch.zeros(2, 1, 4, 6))
    with pytest.raises(ValueError, match=r"got \(4, 4, 4\)"):
        FlipTTA(Squeezed()).predict(torch.zeros(1, 1, 4, 4))


class Squeezed(nn.Module):
    """'Predicts' (B, H, W): no channel axis."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]
