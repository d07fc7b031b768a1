"""The training loop's validation score is the Dice of the labels inference outputs."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from crocnet.models import stage1_targets
from crocnet.train.config import TrainConfig
from crocnet.train.engine import check_new_run, decode_labels, evaluate_tensors, label_dice


class _Fixed(nn.Module):
    """Returns fixed logits whatever the input; sigmoid activation like the project's heads."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, x):
        return self.logits[: len(x)]

    def activation(self, logits):
        return torch.sigmoid(logits)


def _truth() -> torch.Tensor:
    labels = torch.zeros(2, 8, 8, dtype=torch.uint8)
    labels[:, 1:3, 1:3] = 1  # LV
    labels[:, 3:5, 3:5] = 2  # MYO
    labels[:, 5:7, 5:7] = 3  # RV
    return labels


def test_overlapping_sigmoid_channels_are_scored_as_the_argmax_labels_them():
    truth = _truth()
    targets = stage1_targets(truth)  # (2, 4, 8, 8): LV, MYO, RV, background
    logits = (targets * 2 - 1) * 4.0  # confident and right ...
    lv = truth == 1
    logits[:, 2][lv] = 6.0  # ... but the RV channel fires on the LV too, more strongly
    cfg = TrainConfig(batch_size=1, loss="dice")
    _, dice = evaluate_tensors(_Fixed(logits), torch.zeros(2, 1, 8, 8), targets, torch.device("cpu"), cfg)
    assert dice.shape == (3,)
    assert dice[0] == 0.0  # the LV is labelled RV: no LV left
    assert dice[1] == 1.0
    assert math.isclose(dice[2], 2 * 8 / (16 + 8))  # RV: 8 true pixels, 16 predicted


def test_decode_labels_stage2_threshold_and_label_dice():
    probs = torch.zeros(1, 3, 2, 2)
    probs[0, 0, 0, 0] = 0.9
    probs[0, 2, 0, 0] = 0.95  # overlap: most probable wins
    probs[0, 1, 1, 1] = 0.4  # below threshold: background
    labels = decode_labels(probs)
    assert labels.tolist() == [[[3, 0], [0, 0]]]
    d = label_dice(labels, torch.tensor([[[3, 0], [0, 2]]]))
    assert math.isnan(d[0]) and d[1] == 0.0 and d[2] == 1.0


def test_check_new_run_refuses_a_folder_with_a_run_and_says_how_far_it_got(tmp_path):
    check_new_run(tmp_path / "fold0")  # nothing there yet
    (tmp_path / "config.json").write_text("{}")  # a run killed in its first epoch saved nothing to keep
    check_new_run(tmp_path)
    fix = "; pass --resume to continue it, or choose another --out"
    torch.save({"epoch": 3, "config": {"epochs": 10}}, tmp_path / "best.pt")
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path))} already holds a run \\(best.pt\\){fix}$"):
        check_new_run(tmp_path)
    torch.save({"epoch": 3, "config": {"epochs": 10}}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=f"already holds a run \\(last.pt at epoch 3 of 10\\){fix}$"):
        check_new_run(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"torn")
    with pytest.raises(ValueError, match=f"already holds a run \\(last.pt\\){fix}$"):
        check_new_run(tmp_path)
