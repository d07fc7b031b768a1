"""tools/perf_targets.py: issue 8's targets read off benchmark JSONs, met exactly at the goal, never met when missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import perf_targets  # noqa: E402


def _bench(group, impl, median, **extra):
    return {"group": group, "name": f"test[{impl}]", "stats": {"median": median}, "extra_info": {"impl": impl, **extra}}


def _status(found, target, case):
    (row,) = [r for r in found if r["target"] == target and r["case"] == case]
    return row["status"], row["measured"]


def test_targets_are_met_at_the_goal_and_not_below_it():
    gpu = {"crocnet": {"device": "NVIDIA H100"}, "benchmarks": [
        _bench("core B8 128x128x32 bf16 forward", "core_fused", 1e-5, share_of_copy=0.80),
        _bench("core B8 128x128x32 fp32 forward", "core_fused", 1e-5, share_of_copy=0.79),
        _bench("core B8 64x64x64 bf16 forward_backward", "core_fused", 1e-5, share_of_copy=0.61),
        _bench("core B8 64x64x64 bf16 forward_backward", "core_eager", 1e-5, share_of_copy=0.99),  # not ours: ignored
        _bench("unet B8 64x64x64 bf16 forward_backward", "crocnet", 1.0, memory_bytes=50, device_us=10.0),
        _bench("unet B8 64x64x64 bf16 forward_backward", "timm", 3.0, memory_bytes=100, device_us=40.0),
        _bench("unet B8 64x64x64 bf16 forward_backward", "timm_compile", 1.4, memory_bytes=80),
        _bench("unet B8 32x32x128 bf16 forward_backward", "crocnet", 1.0, memory_bytes=51),
        _bench("unet B8 32x32x128 bf16 forward_backward", "timm", 2.9, memory_bytes=100),
        _bench("cross3 B8 64x64x64 bf16 forward_backward", "crocnet", 1.0, memory_bytes=10),
        _bench("cross3 B8 64x64x64 bf16 forward_backward", "authors", 3.5, memory_bytes=30),
        _bench("e2aunet B8 128x128 train_step", "e2aunet_fused", 2.0),
        _bench("e2aunet B8 128x128 train_step", "e2aunet_reference_op", 2.9),
    ]}
    found = perf_targets.rows([gpu])
    share = "core {} share of copy rate"
    assert _status(found, share.format("forward"), "128x128x32 bf16") == ("met", "80%")
    assert _status(found, share.format("forward"), "128x128x32 fp32")[0] == "**not met**"
    assert _status(found, share.format("forward+backward"), "64x64x64 bf16") == ("met", "61%")
    assert _status(found, share.format("forward+backward"), "128x128x32 bf16")[0] == "not measured"
    assert _status(found, "module fwd+bwd speed-up over timm eager", "64x64x64 bf16") == ("met", "3.00× (device 4.00×)")
    assert _status(found, "module fwd+bwd speed-up over timm compiled", "64x64x64 bf16") == ("**not met**", "1.40×")
    assert _status(found, "module peak memory / timm eager", "64x64x64 bf16") == ("met", "0.50×")
    assert _status(found, "module fwd+bwd speed-up over timm eager", "32x32x128 bf16")[0] == "**not met**"
    assert _status(found, "module peak memory / timm eager", "32x32x128 bf16")[0] == "**not met**"
    assert _status(found, "module fwd+bwd speed-up over timm eager", "128x128x32 bf16")[0] == "not measured"
    assert _status(found, "module fwd+bwd speed-up over timm eager", "64x64x64 fp32")[0] == "not measured"
    assert _status(found, "cross-E2A fwd+bwd speed-up over the authors'", "64x64x64 bf16") == ("met", "3.50×")
    assert _status(found, "cross-E2A peak memory / the authors'", "64x64x64 bf16")[0] == "met"
    assert _status(found, "E2AUNet training step speed-up, fused over reference op", "B8 128x128") == ("**not met**", "1.45×")
    assert sum(r["status"] == "met" for r in found) == 6
    assert "6 met" in perf_targets.table([gpu]).splitlines()[0]


def test_no_json_case_means_not_measured_never_met(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"crocnet": {"device": "NVIDIA H200"}, "benchmarks": []}))
    run = subprocess.run([sys.executable, str(REPO / "tools" / "perf_targets.py"), str(empty), "--out", str(tmp_path / "t.md")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    first = run.stdout.splitlines()[0]
    assert first.startswith("Issue 8 targets on NVIDIA H200: 0 met, 0 not met,") and "not measured" in first
    assert (tmp_path / "t.md").read_text().strip() == run.stdout.strip()
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    run = subprocess.run([sys.executable, str(REPO / "tools" / "perf_targets.py"), str(broken)], capture_output=True, text=True)
    assert run.returncode == 2 and "broken.json: not a readable benchmark JSON" in run.stderr


def test_devices_are_never_mixed_and_every_cross_case_is_listed(tmp_path):
    """Our cases from one GPU and the baselines from another gave speed-ups across the two; now one table per
    device. Cross-E2A is listed at each issue size and dtype, measured or not (a bf16-only JSON had shown no
    fp32 row at all), and a JSON that is not a benchmark JSON is refused."""
    ours = {"crocnet": {"device": "NVIDIA H100"}, "benchmarks": [
        _bench("unet B8 64x64x64 bf16 forward_backward", "crocnet", 1.0, memory_bytes=10),
        _bench("cross3 B8 64x64x64 bf16 forward_backward", "crocnet", 1.0, memory_bytes=10)]}
    theirs = {"crocnet": {"device": "NVIDIA H200"}, "benchmarks": [
        _bench("unet B8 64x64x64 bf16 forward_backward", "timm", 5.0, memory_bytes=100),
        _bench("cross3 B8 64x64x64 bf16 forward_backward", "authors", 5.0, memory_bytes=100)]}
    text = perf_targets.table([ours, theirs])
    assert "Issue 8 targets on NVIDIA H100: 0 met" in text and "Issue 8 targets on NVIDIA H200: 0 met" in text
    found = perf_targets.rows([ours])
    cross = [r for r in found if r["target"] == "cross-E2A fwd+bwd speed-up over the authors'"]
    assert [r["case"] for r in cross] == [f"{s} {d}" for d in ("bf16", "fp32") for s in perf_targets.ISSUE_SIZES]
    assert all(r["status"] == "not measured" for r in cross)
    other = tmp_path / "host.json"
    other.write_text(json.dumps({"cases": []}))
    run = subprocess.run([sys.executable, str(REPO / "tools" / "perf_targets.py"), str(other)], capture_output=True, text=True)
    assert run.returncode == 2 and "host.json: expected a pytest-benchmark JSON of benchmarks/" in run.stderr
