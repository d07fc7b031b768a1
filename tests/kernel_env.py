"""Where the Triton backend runs in this test session: CUDA when present, else the CPU interpreter."""

from __future__ import annotations

import pytest
import torch


def triton_device() -> str:
    """CUDA when present; otherwise CPU tensors through Triton's interpreter (set in tests/conftest.py)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def interpreting() -> bool:
    from crocnet.ops._checks import interpreting as kernels_interpreted

    return kernels_interpreted()


def skip_fp64_on_gpu(backend: str, dtype: torch.dtype) -> None:
    if backend == "triton" and dtype == torch.float64 and not interpreting():
        pytest.skip("the compiled GPU kernels take fp16/bf16/fp32; float64 runs through the interpreter only")
