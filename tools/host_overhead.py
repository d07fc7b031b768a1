"""Host (CPU) time per call of the E2A op and module: the Python, dispatch and autograd work around the
kernels, which at the UNet sizes can take longer than the kernels themselves.

    python tools/host_overhead.py [--batch 2 --side 4 --dim 32] [--rounds 2000] [--json FILE]

On a CPU the five kernels are swapped for no-ops (the launchers, allocations, partial reductions and
autograd still run), so the Triton rows are the host cost alone; ``TRITON_INTERPRET=1`` is set so the Triton
backend accepts CPU tensors. On a GPU the real kernels run and the time is measured until the call
returns, the device idle before each call: the enqueue time, launches included. The reference rows
(timm's eager module, our PyTorch backend) run their real ops; at the tiny default size that is their
dispatch cost on a CPU, and their enqueue time on a GPU. Median of ``--rounds`` calls, in µs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():  # before triton is imported: the Triton backend then takes CPU tensors
    os.environ["TRITON_INTERPRET"] = "1"

def stub_kernels() -> None:
    """Swap the kernels for launches that do nothing (CPU only: the host work is what is measured)."""
    from crocnet._triton import e2a as kernels

    class _NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    for name in kernels.KERNELS:
        setattr(kernels, name, _NoLaunch())


def host_time(fn, rounds: int, cuda: bool) -> float:
    """Median µs from the call to its return (the device drained first on CUDA, so nothing queues)."""
    for _ in range(20):
        fn()
    times = []
    for _ in range(rounds):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    if cuda:
        torch.cuda.synchronize()
    return statistics.median(times) * 1e6


def cases(batch: int, side: int, dim: int, device: str):
    from timm.models.swiftformer import EfficientAdditiveAttention as TimmE2A

    from crocnet.nn import EfficientAdditiveAttention2d
    from crocnet.ops import e2a, e2a_packed

    g = torch.Generator().manual_seed(0)
    N = side * side
    q, k = (torch.randn(batch, N, dim, generator=g).to(device).requires_grad_(True) for _ in range(2))
    qk = torch.cat([q, k], -1).detach().requires_grad_(True)
    w_g = torch.randn(dim, 1, generator=g).to(device).requires_grad_(True)
    W = (torch.randn(dim, dim, generator=g) / dim**0.5).to(device).requires_grad_(True)
    b, qkb = (torch.randn(n, generator=g).to(device).requires_grad_(True) for n in (dim, 2 * dim))
    x = torch.randn(batch, dim, side, side, generator=g).to(device).requires_grad_(True)
    modules = {
        "module: timm eager": TimmE2A(dim, dim),
        "module: ours, torch backend": EfficientAdditiveAttention2d(dim, dim, backend="torch"),
        "module: ours, triton": EfficientAdditiveAttention2d(dim, dim, backend="triton"),
        "module: ours, triton, recompute_qk=False": EfficientAdditiveAttention2d(dim, dim, backend="triton",
                                                                                recompute_qk=False),
        "module: ours, triton, fuse_qk=False": EfficientAdditiveAttention2d(dim, dim, backend="triton", fuse_qk=False),
    }
    yield "op: e2a, torch backend", lambda: e2a(q, k, w_g, W, b, backend="torch")
    yield "op: e2a, triton", lambda: e2a(q, k, w_g, W, b, backend="triton")
    yield "op: e2a_packed, triton", lambda: e2a_packed(qk, w_g, W, b, qk_bias=qkb, backend="triton")
    for name, module in modules.items():
        yield name, lambda m=module.to(device): m(x)
    # CroCNet's 3-stream cross attention: ours against the transcription of the authors' module in tests/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from e2a_reference import AuthorsCrossAttention

    from crocnet.nn import CrossEfficientAdditiveAttention

    xs = [torch.randn(batch, N, dim, generator=g).to(device).requires_grad_(True) for _ in range(3)]
    cross = {"cross module: authors eager": AuthorsCrossAttention(dim, dim),
             "cross module: ours, triton": CrossEfficientAdditiveAttention(dim, dim, streams=3, backend="triton"),
             "cross module: ours, triton, recompute_qk=False": CrossEfficientAdditiveAttention(
                 dim, dim, streams=3, backend="triton", recompute_qk=False),
             "cross module: ours, triton, fuse_qk=False": CrossEfficientAdditiveAttention(
                 dim, dim, streams=3, backend="triton", fuse_qk=False)}
    for name, module in cross.items():
        yield name, lambda m=module.to(device): torch.stack(m(*xs))


def measure(batch: int, side: int, dim: int, rounds: int, rows: list | None = None, after_each=None) -> list[dict]:
    """One row a case appended to ``rows`` (a new list by default), ``after_each()`` called after each."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda:
        stub_kernels()
    rows = [] if rows is None else rows
    for name, call in cases(batch, side, dim, device):
        def backward(call=call):
            call().sum().backward()

        def forward(call=call):
            with torch.no_grad():
                call()

        rows.append({"case": name, "forward_us": host_time(forward, rounds, cuda),
                     "forward_backward_us": host_time(backward, rounds, cuda)})
        print(f"{name:47s} forward {rows[-1]['forward_us']:7.1f} µs   forward+backward {rows[-1]['forward_backward_us']:7.1f} µs",
              flush=True)
        if after_each is not None:
            after_each()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--side", type=int, default=4, help="tokens N = side²")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU, kernels stubbed"
    print(f"host time per call, B = {args.batch}, N = {args.side}², D = {args.dim}, {device}, median of {args.rounds}")
    rows = []

    def save():  # after every case: a run cut at its time limit keeps what it measured
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": device, "batch": args.batch, "side": args.side, "dim": args.dim, "rows": rows}, f,
                          indent=2)

    measure(args.batch, args.side, args.dim, args.rounds, rows, save)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
