"""The wheel ships the Triton sources as ``crocnet._triton``; the kernels compile for Hopper without a GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_wheel_contains_the_kernels(tmp_path):
    pytest.importorskip("build", reason="the dev extra installs 'build'")
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", "results"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("crocnet_kernels-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("crocnet/_triton/e2a.py", "crocnet/_triton/_config.py", "crocnet/ops/e2a.py",
                     "crocnet/train/__init__.py", "crocnet/cli.py"):
        assert required in names, f"{required} missing from {wheel.name}"
    assert not any(n.startswith(("tests/", "csrc_triton/")) for n in names)


def test_kernels_compile_for_sm90_without_spills_with_vector_access_and_tensor_cores():
    """AOT compile (Triton + bundled ptxas) for H100 of every kernel's default config, with the arguments the
    launchers pass (the modules' packed layout, E2A and 3-stream cross-E2A, bf16 and fp32, widths 32/64/128):
    no register spills, no scalar 16-bit global access (token rows moved as 16-byte vectors), and tensor cores
    for the bf16 GEMMs. fp32 at D = 512 spills, and D = 1024 (above the kernels' limit) spills heavily: see
    tools/compile_check.py and benchmarks/NOTES.md."""
    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except Exception as exc:  # pragma: no cover
        pytest.skip(f"triton's NVIDIA backend is not importable: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "compile_check.py"), "--dims", "32", "64", "128", "--dtypes", "bf16", "fp32",
         "--streams", "1", "3", "--layouts", "packed"],
        capture_output=True, text=True, env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "0 problem(s)" in out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("_")]
    # every (D, dtype, S) compiled its five kernels; four at D = 32, where the key-gradient kernel also
    # computes the projection's weight gradient
    assert len(rows) == (4 + 5 + 5) * 2 * 2, out.stdout[-3000:]
    assert not [r for r in rows if r[0] == "_proj_weight_grad_kernel" and r[2] == "32"], out.stdout[-3000:]
    gemms = ("_key_interaction_kernel", "_key_grad_kernel", "_proj_weight_grad_kernel")
    for kernel, dtype, *_, tensor_cores in rows:  # bf16 GEMMs on tensor cores; fp32 ones at ieee on FMA units
        assert (tensor_cores in ("wgmma", "mma")) == (kernel in gemms and dtype == "bf16"), (kernel, dtype, tensor_cores)


def test_from_tokens_and_folded_kernels_compile_for_sm90_without_spills_with_vector_access():
    """bf16, widths 32/64/128: the inference forward with ``final`` folded into the key interaction (E2A and
    3-stream cross-E2A), and one stream's q and k made from the tokens in the kernels (the inference forward,
    the training forward and backward), reading a feature map's token view: no spill, no scalar 16-bit
    access (the token loads included), the projections on tensor cores."""
    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except Exception as exc:  # pragma: no cover
        pytest.skip(f"triton's NVIDIA backend is not importable: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "compile_check.py"), "--dims", "32", "64", "128", "--dtypes", "bf16",
         "--streams", "1", "3", "--layouts", "folded", "tokens"],
        capture_output=True, text=True, env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "0 problem(s)" in out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("_")]
    folded = [r for r in rows if r[4] == "folded"]
    tokens = [r for r in rows if r[4] == "tokens"]
    # tokens (S = 1 only): two forwards of two launches, the backward's three (at D = 32 the weight gradient
    # is fused into the key gradient's kernel: two)
    assert len(folded) == 2 * 3 * 2 and len(tokens) == 4 * 3 + 2 + 3 + 3, out.stdout[-3000:]
    assert all(r[-1] in ("wgmma", "mma") for r in tokens), out.stdout[-3000:]  # pooling makes q with a GEMM too
