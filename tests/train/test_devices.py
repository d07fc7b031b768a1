"""``--device``: one parser for train, evaluate, predict, demo and ``Segmenter``, with the same messages."""

import pytest
import torch

from crocnet.train import devices, evaluate, predict, train
from crocnet.train.config import TrainConfig
from crocnet.train.inference import Segmenter


def test_cpu_and_auto_resolve_on_any_machine():
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", ["gpu", "mps", "meta", "", "cuda:x", "cpu:1", "CUDA"])
def test_names_that_are_no_cpu_or_cuda_device_are_refused(name):
    with pytest.raises(ValueError, match=f"--device must be auto, cpu, cuda or cuda:N, got {name!r}"):
        devices.resolve_device(name)


def test_cuda_without_cuda_names_the_way_out(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=f"--device {name}: no CUDA device is available here; use --device cpu or auto"):
            devices.resolve_device(name)


def test_a_cuda_index_the_machine_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.resolve_device("cuda:1") == torch.device("cuda:1")
    assert devices.resolve_device("cuda") == torch.device("cuda")
    assert devices.resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\), cuda:0 \.\. cuda:1"):
        devices.resolve_device("cuda:2")


def test_every_command_gives_the_same_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    message = "--device cuda:3: this machine has 1 CUDA device(s), cuda:0 .. cuda:0"
    data = tmp_path / "data"
    data.mkdir()
    image = tmp_path / "image.nii.gz"
    image.write_bytes(b"")
    with pytest.raises(ValueError, match=r"--device cuda:3: this machine has 1 CUDA device"):
        TrainConfig(device="cuda:3").validate()
    assert train.main(["--data", str(data), "--device", "cuda:3", "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert evaluate.main(["--stage1", str(tmp_path / "none.pt"), "--data", str(data), "--device", "cuda:3",
                          "--out", str(tmp_path / "eval")]) == 2
    assert message in capsys.readouterr().err
    assert predict.main(["--checkpoint", str(tmp_path / "none.pt"), "--input", str(image), "--output",
                         str(tmp_path / "seg.nii.gz"), "--device", "cuda:3"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()
    with pytest.raises(ValueError, match=r"device must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        Segmenter(tmp_path / "none.pt", device="tpu")
