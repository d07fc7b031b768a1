"""Compile every kernel ahead of time for a GPU target (no GPU needed) and report its resources.

    python tools/compile_check.py [--arch 90] [--dims 32 48 64 ...] [--all-configs]

For each kernel, D, dtype and config: registers per thread, spilled bytes and shared memory, from the
bundled ``ptxas -v``. Exits non-zero when a default config fails to compile or spills more than ``--max-spill`` bytes.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from crocnet._triton import _config, e2a  # noqa: E402

DTYPES = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16}
TORCH = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _ptxas(arch: int) -> str:
    from triton.backends.nvidia import compiler

    try:
        return compiler.get_ptxas(arch).path
    except TypeError:  # older triton: no arch argument
        return compiler.get_ptxas().path


def _signature(fn, constexprs, ptr_dtype):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("scale", "eps_arg"):
            sig[name] = "fp32"
        elif name in ("B", "N", "D", "LDQ", "P", "SPLIT"):
            sig[name] = "i32"
        else:
            sig[name] = f"*{ptr_dtype}"
    return sig


def compile_one(kernel, constexprs, config, in_dtype, arch):
    fn = kernel.fn
    consts = {**constexprs, **config.kwargs}
    ptr = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}[in_dtype]
    src = ASTSource(fn=fn, signature=_signature(fn, consts, ptr), constexprs=consts)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        out = subprocess.run([_ptxas(arch), "-v", f"--gpu-name={gpu}", ptx, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    report = out.stderr
    regs = int(re.search(r"Used (\d+) registers", report).group(1))
    spill = sum(int(x) for x in re.findall(r"(\d+) bytes spill stores", report))
    return regs, spill, compiled.metadata.shared


def cases(dims, streams=(1, 3), dtypes=tuple(DTYPES)):
    for dtype in dtypes:
        for D in dims:
            BLOCK_D = _config.block_d(D)
            for S in streams:
                common = dict(ACC=tl.float32, BLOCK_D=BLOCK_D, HAS_QKB=True)  # the modules' path: the heavier one
                dot = dict(IN_DTYPE=DTYPES[dtype], DOT_IN_ACC=dtype == "fp32", DOT_PREC="ieee")
                yield dtype, D, S, e2a._pool_partials_kernel, dict(TOKEN_NORM=1, **common), _config.prune_rows
                yield dtype, D, S, e2a._key_interaction_kernel, dict(S=S, HAS_BIAS=True, TOKEN_NORM=0, **common, **dot), _config.prune_out
                yield dtype, D, S, e2a._key_grad_kernel, dict(S=S, S_PAD=triton.next_power_of_2(S), BLOCK_O=_config.key_grad_block_o(BLOCK_D, TORCH[dtype]), **common, **dot), _config.prune_rows
                yield dtype, D, S, e2a._query_grad_kernel, dict(S=S, TOKEN_NORM=1, **common), _config.prune_rows
                yield dtype, D, S, e2a._proj_weight_grad_kernel, dict(S=S, **common, **dot), _config.prune_weight_grad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--dims", type=int, nargs="+", default=[32, 48, 64, 100, 128, 220, 256, 512])
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 3], help="S: 1 is E2A, 3 is CroCNet's cross-E2A")
    ap.add_argument("--max-spill", type=int, default=0, help="spilled bytes per thread tolerated before flagging")
    ap.add_argument("--all-configs", action="store_true", help="every config the autotuner may try, not only the default")
    args = ap.parse_args(argv)
    os.environ["CROCNET_AUTOTUNE"] = "1" if args.all_configs else "0"
    bad = 0
    print(f"{'kernel':28s} {'dtype':5s} {'D':>4s} {'S':>2s} {'config':38s} {'regs':>4s} {'spill':>6s} {'smem':>7s}")
    for dtype, D, S, kernel, consts, prune in cases(args.dims, tuple(args.streams), tuple(args.dtypes)):
        probe = torch.empty(0, dtype=TORCH[dtype])  # the prune functions read the dtype off the tensors
        named = {"K": probe, "DY": probe, "W": probe} if kernel is not e2a._pool_partials_kernel else {}
        if kernel is e2a._query_grad_kernel:
            named = {"DY": probe}
        configs = prune(kernel.configs, named, BLOCK_D=consts["BLOCK_D"])
        for config in configs:
            label = ",".join(f"{k}={v}" for k, v in config.kwargs.items()) + f",w{config.num_warps},s{config.num_stages}"
            try:
                regs, spill, smem = compile_one(kernel, consts, config, dtype, args.arch)
            except Exception as exc:  # noqa: BLE001 - report every failure, keep going
                print(f"{kernel.fn.__name__:28s} {dtype:5s} {D:4d} {S:2d} {label:38s} FAILED: {str(exc).splitlines()[0][:120]}")
                bad += 1
                continue
            flag = "  <-- spills" if spill > args.max_spill else ""
            bad += bool(flag) and not args.all_configs
            print(f"{kernel.fn.__name__:28s} {dtype:5s} {D:4d} {S:2d} {label:38s} {regs:4d} {spill:6d} {smem:7d}{flag}")
    print(f"\n{bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
