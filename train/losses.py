"""Losses: soft Dice over sigmoid channels (the paper's), optionally plus cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 − mean_c (2 Σ p t + s) / (Σ p + Σ t + s)`` with ``p = sigmoid(logits)``, per image and channel.

    ``logits``, ``target``: ``(B, C, H, W)``; target in {0, 1}.
    """
    p = torch.sigmoid(logits.float())
    t = target.float()
    inter = (p * t).sum((2, 3))
    denom = p.sum((2, 3)) + t.sum((2, 3))
    return 1.0 - ((2 * inter + smooth) / (denom + smooth)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "dice") -> torch.Tensor:
    """``"dice"``: :func:`soft_dice_loss`; ``"dice_ce"``: plus binary cross-entropy per channel."""
    loss = soft_dice_loss(logits, target)
    if kind == "dice_ce":
        loss = loss + F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return loss
