"""Benchmark harness: devices, size sets, timing, memory, the correctness gate, result metadata.

Run: ``pytest benchmarks/ --benchmark-only --benchmark-json benchmarks/results/NAME.json``, then
``python tools/bench_report.py benchmarks/results/NAME.json`` (markdown table + log-log plot).
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the parity references

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

#: (B, side, D) where a UNet runs attention: the issue's B = 8 set, on GPU and CPU alike.
UNET_SHAPES = [(8, 128, 32), (8, 64, 64), (8, 32, 128), (8, 16, 256), (8, 8, 512)]
#: token sweep at D = 64, B = 8: sides 16..256 (MHSA on CPU only up to MHSA_CPU_MAX_TOKENS).
SWEEP = [(8, s, 64) for s in (16, 32, 64, 128, 256)]
#: quadratic attention above this many tokens is not run on CPU (seconds per call); recorded as skipped
MHSA_CPU_MAX_TOKENS = 64 * 64
# a compiled baseline that ran out of recompiles would be timed eagerly under its compiled label: fail instead
torch._dynamo.config.fail_on_recompile_limit_hit = True

#: timed calls per case; CROCNET_BENCH_ROUNDS overrides (the smoke test uses 1)
ROUNDS = int(os.environ.get("CROCNET_BENCH_ROUNDS", 20 if CUDA else 10))


def sync():
    if CUDA:
        torch.cuda.synchronize()


def dtype_for_device():
    return torch.bfloat16 if CUDA else torch.float32


#: the dtypes of the issue's targets, by name: bf16 and float32 on a GPU; float32 only on a CPU
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32} if CUDA else {"fp32": torch.float32}


#: (test id, reason) of every benchmark skipped in this session: CPU caps, out of memory, failed parity
SKIPPED: list[tuple[str, str]] = []


def pytest_runtest_logreport(report):
    if report.skipped and isinstance(report.longrepr, tuple):
        SKIPPED.append((report.nodeid.split("::", 1)[-1], str(report.longrepr[2]).removeprefix("Skipped: ")))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """Before pytest-benchmark writes its JSON: drop a benchmark cut inside its timed rounds (SIGINT at a device
    step's time limit), which has no data; the writer fails on it and loses every other case of the session."""
    bench_session = getattr(session.config, "_benchmarksession", None)
    if bench_session is not None:
        bench_session.benchmarks[:] = [b for b in bench_session.benchmarks if b]
    yield


def pytest_benchmark_update_json(config, benchmarks, output_json):
    import crocnet

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if CUDA else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "crocnet": crocnet.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # pragma: no cover
        info["triton"] = None
    output_json["crocnet"] = info
    output_json["skipped"] = [{"test": t, "reason": r} for t, r in SKIPPED]


@pytest.fixture(scope="session")
def copy_rate_gbs():
    """Measured device copy rate (GB/s, read + write counted) of a 1 GiB tensor; None on CPU."""
    if not CUDA:
        return None
    x = torch.empty(2**28, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / 10
    return 2 * x.numel() * x.element_size() / seconds / 1e9


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for backward during ``fn()`` plus its output:
    the activation memory of a training step, our documented CPU memory measure (deterministic)."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for o in outs:
        storages[o.untyped_storage().data_ptr()] = o.untyped_storage().nbytes()
    return sum(storages.values())


def peak_memory(fn) -> tuple[str, int]:
    """(measure, bytes): CUDA peak allocated during ``fn()`` above what was allocated before; on CPU the
    saved-for-backward bytes (see :func:`saved_bytes`)."""
    if CUDA:
        sync()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        sync()
        return "cuda_max_memory_allocated", torch.cuda.max_memory_allocated() - before
    return "cpu_saved_activations", saved_bytes(fn)


#: bytes zeroed before each device-timed call, so that no input is still in L2 (50 MiB on an H100)
L2_FLUSH_BYTES = 256 * 2**20


def host_time_us(fn, rounds: int = ROUNDS) -> float:
    """Median µs until ``fn()`` returns, the device idle before each call: the host's work (Python,
    dispatch, launches), which at the UNet sizes can exceed the kernels' time."""
    times = []
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    sync()
    return statistics.median(times) * 1e6


def device_time_us(fn, rounds: int = ROUNDS) -> tuple[float, str]:
    """(median µs, method): the device's time for ``fn()`` alone. ``fn`` is captured once in a CUDA graph
    and each replay timed with events, after a 256 MiB memset that empties L2 and gives the host a head
    start, so neither launch overhead nor cached inputs enter the figure. Where capture fails, eager calls
    between the same events (launch overhead longer than the memset then shows)."""
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    sync()
    run, method = fn, "cuda_graph"
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        run = graph.replay
    except Exception as exc:  # noqa: BLE001 - recorded with the result; the eager timing still stands
        method = f"eager events (capture failed: {type(exc).__name__}: {str(exc)[:120]})"
    sync()
    events = []
    for _ in range(rounds):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        events.append((start, end))
    sync()
    return statistics.median(s.elapsed_time(e) for s, e in events) * 1e3, method


def run_benchmark(benchmark, fn, *, extra: dict, bytes_moved: int | None = None, copy_rate=None, memory_fn=None):
    """Time ``fn`` (synchronised on CUDA, warmed up, autotuning done), record memory and bandwidth.

    The benchmark's own time is the wall clock of a call and its synchronisation (what a user waits).
    On CUDA the extra info adds ``host_us`` (until the call returns) and ``device_us`` (the kernels alone,
    see :func:`device_time_us`); the share of the copy rate is computed from ``device_us`` (bytes over
    kernel time, as the copy rate itself), and from the wall clock as ``share_of_copy_wall``."""
    def call():
        fn()
        sync()

    for _ in range(2):  # warm-up: autotune, compile, allocator
        call()
    try:
        # CUDA: the peak of the whole call (a training step's includes its backward; ``forward_memory_bytes``
        # the forward's alone); CPU: the activation memory, which only the forward shows
        measure, peak = peak_memory(fn if CUDA else memory_fn or fn)
        extra.update(memory_measure=measure, memory_bytes=peak)
        if CUDA and memory_fn is not None:
            extra["forward_memory_bytes"] = peak_memory(memory_fn)[1]
    except torch.cuda.OutOfMemoryError:
        extra.update(status="out of memory")
        pytest.skip("out of memory")
    if CUDA:
        extra["host_us"] = host_time_us(fn)
        extra["device_us"], extra["device_timing"] = device_time_us(fn)
    benchmark.extra_info.update(extra)
    benchmark.pedantic(call, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    if bytes_moved is not None and copy_rate:
        wall = benchmark.stats.stats.median
        seconds = extra["device_us"] / 1e6 if "device_us" in extra else wall
        gbs = bytes_moved / seconds / 1e9
        benchmark.extra_info.update(bytes=bytes_moved, gbs=gbs, copy_rate_gbs=copy_rate, share_of_copy=gbs / copy_rate,
                                    share_of_copy_wall=bytes_moved / wall / 1e9 / copy_rate)
