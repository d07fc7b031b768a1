"""Launch configuration shared by the kernels: autotune lists, the off switch, grid sizing."""

from __future__ import annotations

import functools
import os

import torch
import triton

from crocnet.ops._checks import interpret_requested

#: Token tiles are never smaller than this; the grid is sized from it so it never depends on a config.
MIN_BLOCK_N = 16


#: Whether ``triton.jit`` built the kernels for Triton's CPU interpreter. Triton decides it once, when it
#: decorates them at import (reading ``TRITON_INTERPRET`` with its own parsing: 1, true, on, yes), and so
#: does this: setting the variable later changes nothing.
INTERPRETING = interpret_requested()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "1") not in ("0", "false", "False", "")


def autotune_enabled() -> bool:
    """``CROCNET_AUTOTUNE=0`` turns autotuning off (one default config); the interpreter never tunes."""
    return _env_flag("CROCNET_AUTOTUNE") and not INTERPRETING


#: Whether the tuning results go to Triton's disk cache (beside its compiled kernels, ``TRITON_CACHE_DIR``),
#: so a new process reuses them instead of benchmarking every config again; ``CROCNET_AUTOTUNE_CACHE=0``
#: keeps them in memory only. Read once, when the kernels are decorated. Triton keys each entry on its own
#: version, the target GPU, the kernel source, the tuning key and the configs tried.
AUTOTUNE_CACHE = _env_flag("CROCNET_AUTOTUNE_CACHE")


#: Elements of one [BLOCK_N, BLOCK_D] tile per thread: the kernels hold three or four such tiles at once,
#: and more than this spills registers (checked with ``tools/compile_check.py`` for sm_90).
MAX_ELEMENTS_PER_THREAD = 16


def _fits(rows: int, cols: int, warps: int, budget: int = MAX_ELEMENTS_PER_THREAD) -> bool:
    return rows * cols <= budget * 32 * warps


def _dot_budget(named_args, *names) -> int:
    """fp32 GEMMs at ``ieee`` precision run on FMA units with operands in registers: half the budget."""
    for name in names:
        t = named_args.get(name)
        if t is not None and getattr(t, "dtype", None) == torch.float32:
            return MAX_ELEMENTS_PER_THREAD // 2
    return MAX_ELEMENTS_PER_THREAD


def _smallest(configs: list[triton.Config]) -> list[triton.Config]:
    """Fallback for the widest rows, where no tile fits the budget: the smallest tiles on 8 warps."""
    return sorted(configs, key=lambda c: (sorted(c.kwargs.values()), -c.num_warps, c.num_stages))[:1]


def _ordered(keep: list[triton.Config], tile_key) -> list[triton.Config]:
    """Best guess first: the largest tiles on the fewest warps. The first survivor is the default."""
    def key(c):
        size = tile_key(c)
        size = size if isinstance(size, tuple) else (size,)
        return tuple(-x for x in size) + (c.num_warps, c.num_stages)

    return sorted(keep, key=key)


def row_configs() -> list[triton.Config]:
    """Configs for the token-row kernels (one [BLOCK_N, BLOCK_D] tile of whole rows at a time)."""
    if INTERPRETING:
        return [triton.Config({"BLOCK_N": MIN_BLOCK_N}, num_warps=4)]
    return [
        triton.Config({"BLOCK_N": block_n}, num_warps=warps, num_stages=stages)
        for block_n in (16, 32, 64, 128)
        for warps in (4, 8)
        for stages in (1, 2)
    ]


def prune_rows(configs, named_args, **kwargs):
    block_d = named_args.get("BLOCK_D", kwargs.get("BLOCK_D"))
    budget = _dot_budget(named_args, "DY") if "W" in named_args else MAX_ELEMENTS_PER_THREAD
    keep = [c for c in configs if _fits(c.kwargs["BLOCK_N"], block_d, c.num_warps, budget)] or _smallest(configs)
    keep = _ordered(keep, lambda c: c.kwargs["BLOCK_N"])
    return keep if autotune_enabled() else keep[:1]


def out_configs() -> list[triton.Config]:
    """Configs for the forward key-interaction kernel (token tile x output-column tile)."""
    if INTERPRETING:  # the interpreter pays per program: the widest tile that fits, small token tiles
        return [triton.Config({"BLOCK_N": MIN_BLOCK_N, "BLOCK_O": o}, num_warps=4) for o in (128, 64, 32, 16)]
    return [
        triton.Config({"BLOCK_N": block_n, "BLOCK_O": block_o}, num_warps=warps, num_stages=stages)
        for block_n in (16, 32, 64, 128)
        for block_o in (16, 32, 64, 128)
        for warps in (4, 8)
        for stages in (1, 2)
    ]


def prune_out(configs, named_args, **kwargs):
    block_d = named_args.get("BLOCK_D", kwargs.get("BLOCK_D"))
    budget = _dot_budget(named_args, "K")
    keep = [
        c
        for c in configs
        if c.kwargs["BLOCK_O"] <= block_d
        and _fits(c.kwargs["BLOCK_N"], block_d, c.num_warps, budget)
        and _fits(c.kwargs["BLOCK_O"], block_d, c.num_warps, budget)
    ] or _smallest(configs)
    if block_d <= 128:  # one output tile covers the row: no column re-reads
        keep = [c for c in keep if c.kwargs["BLOCK_O"] == block_d] or keep
    if kwargs.get("FROM_X", named_args.get("FROM_X")):  # q and k made in the kernel: one tile, made once
        keep = [c for c in keep if c.kwargs["BLOCK_O"] == block_d] or _smallest(
            [c for c in configs if c.kwargs["BLOCK_O"] == block_d])
    keep = _ordered(keep, lambda c: (c.kwargs["BLOCK_O"], c.kwargs["BLOCK_N"]))
    return keep if autotune_enabled() else keep[:1]


def weight_grad_configs() -> list[triton.Config]:
    if INTERPRETING:
        return [
            triton.Config({"BLOCK_N": MIN_BLOCK_N, "BLOCK_O": o, "BLOCK_I": o}, num_warps=4) for o in (64, 32, 16)
        ]
    return [
        triton.Config({"BLOCK_N": block_n, "BLOCK_O": block, "BLOCK_I": block}, num_warps=warps, num_stages=stages)
        for block_n in (32, 64, 128)
        for block in (32, 64, 128)
        for warps in (4, 8)
        for stages in (2, 3)
    ]


def prune_weight_grad(configs, named_args, **kwargs):
    block_d = named_args.get("BLOCK_D", kwargs.get("BLOCK_D"))
    budget = _dot_budget(named_args, "K")
    keep = [
        c
        for c in configs
        if c.kwargs["BLOCK_O"] <= block_d
        and _fits(c.kwargs["BLOCK_O"], c.kwargs["BLOCK_I"], c.num_warps, budget)
        and _fits(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_O"], c.num_warps, budget)
    ] or _smallest(configs)
    keep = _ordered(keep, lambda c: (c.kwargs["BLOCK_O"], c.kwargs["BLOCK_N"]))
    return keep if autotune_enabled() else keep[:1]


def dot_precision(dtype: torch.dtype) -> str:
    """Triton ``input_precision`` for float32 GEMMs, following ``torch.set_float32_matmul_precision``:
    highest → ieee (the default, as exact as cuBLAS fp32), high → tf32x3, medium → tf32."""
    if INTERPRETING or dtype != torch.float32:
        return "ieee"
    return {"highest": "ieee", "high": "tf32x3", "medium": "tf32"}[torch.get_float32_matmul_precision()]


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def programs_per_row(tokens: int, rows: int, device: torch.device) -> int:
    """Programs that split the tokens of one (stream, image) row: enough to fill the device, at most one per
    ``MIN_BLOCK_N`` tokens. Independent of the tile config, so the partial buffers never change shape."""
    target = 4 * _sm_count(device.index or 0) if device.type == "cuda" else 4
    return max(1, min(cdiv(tokens, MIN_BLOCK_N), cdiv(target, rows)))


def key_grad_block_o(block_d: int, dtype: torch.dtype) -> int:
    """Output-column chunk of the key-gradient GEMM (its reduction axis); small for fp32 FMA GEMMs."""
    if dtype == torch.float32 and not INTERPRETING:
        return 16 if block_d >= 256 else 32
    return min(block_d, 64)


#: Widest access the kernels promise Triton for token and weight rows (see ``e2a._vector_width``); the
#: row-alignment benchmark sets 1 to compare with rows accessed one element at a time.
MAX_VECTOR_BYTES = 16


#: Widest row block (BLOCK_D) at which the key-gradient kernel also computes the projection's weight
#: gradient: it saves ``_proj_weight_grad_kernel``'s second read of dy and k (2 BND), but writes a D × D
#: partial per program, which outgrows that saving past D = 32 at the UNet sizes (benchmarks/NOTES.md,
#: item 10). The fused-weight-gradient benchmark sets 0 to compare with the separate kernel.
FUSED_WEIGHT_GRAD_MAX_BLOCK_D = 32


#: Widest attention width at which the one-stream inference path makes q and k from the tokens inside the
#: kernels (``e2a.e2a_forward_from_tokens``): up to one output tile, so no program makes them twice. 0
#: turns it off (the fused-input benchmark's comparison: qk made by a GEMM and read back).
FUSED_INPUT_MAX_D = 128

#: Whether the training backward of that path makes q and k from the tokens in its kernels too
#: (``e2a.e2a_backward_from_tokens``); False makes qk again with a GEMM and reads it back (the A/B
#: benchmark's other side, benchmarks/NOTES.md item 19).
FUSED_INPUT_BACKWARD = True


def block_d(dim: int) -> int:
    return max(16, next_power_of_2(dim))


# Host-side arithmetic in plain Python: ``triton.cdiv`` and ``triton.next_power_of_2`` are constexpr
# functions whose host call costs microseconds, several times a launch.
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()
