"""Compile every kernel ahead of time for a GPU target (no GPU needed) and report its resources.

    python tools/compile_check.py [--arch 90] [--dims 32 48 64 ...] [--layouts packed plain] [--all-configs]

Each case runs the launchers of ``crocnet._triton.e2a`` (forward, then backward) on small CPU tensors with
the five kernels swapped for recorders, and compiles every recorded launch the way Triton's own launcher
would on the GPU: the same pointer dtypes, constexprs and specialisation (integer arguments divisible by
16 and 16-byte aligned pointers marked as such, which is what lets Triton emit vector loads). Layouts:
``packed`` is the modules' path on a GPU (one ``qk (S, B, N, 2D)`` with the input linears' bias added in
the kernels), ``plain`` the functional op's (separate ``q``, ``k``, no bias), ``folded`` the modules' inference forward
(packed, with the output linear folded into the key interaction, ``fold_final``), ``tokens`` the one-stream
launches that make q and k from the tokens inside the kernels: the inference forward and the training
forward and backward (D ≤ 128; S = 1 only).

Per kernel, width D, dtype, stream count S and config: registers per thread, spilled bytes and shared
memory (from the bundled ``ptxas -v``), and the global-memory instructions of the PTX by access width:
``16B`` and ``8B`` count vector loads and stores of 16 and 8 bytes, ``2B`` scalar 16-bit ones. The token
and weight rows are accessed as wide as their alignment allows (the launchers pass it as ``VEC``): 16 bytes
when D is a multiple of 8 (bf16/fp16) or 4 (fp32), 8 bytes for D = 100 or 220 in bf16. At D ≤ 128 with
D % 16 == 0 a 16-bit kernel has no 2-byte access at all; elsewhere some (D,) parameter vectors (``w_g``,
biases) are read one element per thread. ``tc`` names the tensor-core instructions of the GEMMs (``wgmma``
or ``mma``; ``-`` for none: fp32 at the default ``ieee`` precision runs on FMA units).

Exits non-zero when a default config fails to compile, spills more than ``--max-spill`` bytes, or, at
D ≤ 128 with D % 16 == 0, a 16-bit kernel makes a 2-byte global access (token rows read or written one
element at a time: a fraction of the bandwidth).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402

from crocnet._triton import e2a  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ACCESS = re.compile(r"\b(?:ld|st)\.global(?:\.\w+)*?\.(v[248]\.)?[bfsu](8|16|32|64)\b")
TENSOR_CORE = re.compile(r"\b(wgmma|mma)\.")


def _ptxas(arch: int) -> str:
    from triton.backends.nvidia import compiler

    try:
        return compiler.get_ptxas(arch).path
    except TypeError:  # older triton: no arch argument
        return compiler.get_ptxas().path


def launches(D: int, dtype: torch.dtype, S: int, layout: str, token_norm: str):
    """``[(autotuner, args, kwargs)]``: the five launches of one forward and backward, as the launchers make them
    (``folded``: the two of an inference forward with the output linear folded in; ``tokens``: those of the
    inference forward and the training forward and backward from the tokens)."""
    recorded = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: recorded.append((self.kernel, args, kwargs))

    kernels = {name: getattr(e2a, name) for name in e2a.KERNELS}
    B, N = 2, 48  # B, N and the program counts are not specialised on: any small values do
    gen = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
    packed = layout in ("packed", "folded", "tokens")
    q = rand(S, B, N, 2 * D if packed else D)
    k = None if packed else rand(S, B, N, D)
    w_g, weight, bias = rand(S, D), rand(S, S, D, D), rand(S, S, D)
    qk_bias = rand(S, 2 * D) if packed else None
    try:
        for name, kernel in kernels.items():
            setattr(e2a, name, Recorder(kernel))
        if layout == "tokens":  # one stream, from a (B, C, N) map's token view, C = D
            x = rand(B, D, N).transpose(1, 2)
            e2a.e2a_forward_from_tokens(x, rand(2 * D, D), qk_bias[0], w_g[0], weight[0, 0], bias[0, 0], 1.0, token_norm,
                                        1e-12, final_weight=rand(D, D))  # inference, final folded in
            w_qk = rand(2 * D, D)
            y, G, stats, nk = e2a.e2a_forward_from_tokens(x, w_qk, qk_bias[0], w_g[0], weight[0, 0], bias[0, 0], 1.0,
                                                          token_norm, 1e-12)  # training
            e2a.e2a_backward_from_tokens(rand(*y.shape), x, w_qk, qk_bias[0], w_g[0], weight[0, 0], G, stats, nk, 1.0,
                                         token_norm, 1e-12)
        elif layout == "folded":
            e2a.e2a_forward(q, k, w_g, weight, bias[:, 0], 1.0, token_norm, 1e-12, qk_bias=qk_bias, final_weight=rand(S, D, D))
        else:
            y, G, stats, nk = e2a.e2a_forward(q, k, w_g, weight, bias, 1.0, token_norm, 1e-12, qk_bias=qk_bias)
            e2a.e2a_backward(rand(*y.shape), q, k, w_g, weight, G, stats, nk, 1.0, token_norm, 1e-12, qk_bias=qk_bias)
    finally:
        for name, kernel in kernels.items():
            setattr(e2a, name, kernel)
    return recorded


def configs(autotuner, args, kwargs):
    """The configs the autotuner would try for these arguments, best guess (the default) first."""
    named = dict(zip(autotuner.fn.arg_names, args))
    return autotuner.early_config_prune(autotuner.configs, named, **kwargs)


def compile_launch(autotuner, args, kwargs, config, arch: int):
    """Compile one launch with one config for ``sm_<arch>``: (registers, spilled bytes, shared memory, access
    widths, tensor-core instruction family or "-")."""
    try:  # Triton's launcher internals: what makes the compile match a real launch
        from triton.runtime.jit import create_function_from_signature

        fn = autotuner.fn
        fn._pack_args  # noqa: B018
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"compile_check needs Triton's launcher internals (create_function_from_signature, "
                           f"JITFunction._pack_args; Triton 3.x as bundled with torch), missing in Triton "
                           f"{triton.__version__}: {exc}") from exc
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    call = {**kwargs, **config.all_kwargs()}
    bound, specialization, options = create_function_from_signature(fn.signature, fn.params, backend)(*args, **call)
    options, signature, constexprs, attrs = fn._pack_args(backend, call, bound, specialization, options)
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=target, options=options.__dict__)
    widths = collections.Counter()
    tensor_core = sorted(set(TENSOR_CORE.findall(compiled.asm["ptx"])), reverse=True)
    for vector, bits in ACCESS.findall(compiled.asm["ptx"]):
        widths[(int(vector[1]) if vector else 1) * int(bits) // 8] += 1
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
    return regs, spill, compiled.metadata.shared, widths, (tensor_core or ["-"])[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--dims", type=int, nargs="+", default=[32, 48, 64, 100, 128, 220, 256, 512])
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 3], help="S: 1 is E2A, 3 is CroCNet's cross-E2A")
    ap.add_argument("--layouts", nargs="+", choices=["packed", "plain", "folded", "tokens"], default=["packed"],
                    help="packed: the modules' qk with its bias in the kernels; plain: separate q and k, no bias; "
                         "folded: packed, inference forward with the output linear folded in; tokens: the launches "
                         "(inference forward, training forward and backward) that make q and k from the tokens "
                         "(one stream, D <= 128)")
    ap.add_argument("--token-norm", choices=list(e2a.TOKEN_NORM_CODES), default="softmax")
    ap.add_argument("--max-spill", type=int, default=0, help="spilled bytes per thread tolerated before flagging")
    ap.add_argument("--all-configs", action="store_true", help="every config the autotuner may try, not only the default")
    args = ap.parse_args(argv)
    os.environ["CROCNET_AUTOTUNE"] = "1" if args.all_configs else "0"
    bad = 0
    print(f"{'kernel':26s} {'dtype':5s} {'D':>4s} {'S':>2s} {'layout':6s} {'config':38s} {'regs':>4s} {'spill':>5s} "
          f"{'smem':>6s} {'16B':>4s} {'8B':>3s} {'2B':>3s} {'tc':>5s}")
    for dtype in args.dtypes:
        for D in args.dims:
            for S in args.streams:
                for layout in args.layouts:
                    if layout == "tokens" and S != 1:  # one stream only
                        continue
                    for autotuner, launch_args, kwargs in launches(D, DTYPES[dtype], S, layout, args.token_norm):
                        name = autotuner.fn.__name__
                        for config in configs(autotuner, launch_args, kwargs):
                            label = ",".join(f"{k}={v}" for k, v in config.kwargs.items()) + f",w{config.num_warps},s{config.num_stages}"
                            head = f"{name:26s} {dtype:5s} {D:4d} {S:2d} {layout:6s} {label:38s}"
                            try:
                                regs, spill, smem, widths, tc = compile_launch(autotuner, launch_args, kwargs, config, args.arch)
                            except Exception as exc:  # noqa: BLE001 - report every failure, keep going
                                print(f"{head} FAILED: {str(exc).splitlines()[0][:120]}")
                                bad += 1
                                continue
                            flags = []
                            if spill > args.max_spill:
                                flags.append("spills")
                            if dtype != "fp32" and D % 16 == 0 and D <= 128 and widths[2]:
                                flags.append("scalar 16-bit access")
                            bad += bool(flags) and not args.all_configs
                            note = f"  <-- {', '.join(flags)}" if flags else ""
                            print(f"{head} {regs:4d} {spill:5d} {smem:6d} {widths[16]:4d} {widths[8]:3d} {widths[2]:3d} {tc:>5s}{note}", flush=True)
    print(f"\n{bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
