"""Turn a pytest-benchmark JSON of ``benchmarks/`` into a markdown table and a log-log scaling plot.

    python tools/bench_report.py benchmarks/results/NAME.json      # writes NAME.md and NAME.png beside it

The table has one row per benchmark: group, implementation, median and IQR time (wall clock), on CUDA the
host and device times, memory (CUDA peak or the CPU saved-activation measure), GB/s and share of the copy
rate where measured; skipped cases (CPU caps,
out of memory) are listed with their reason. The plot shows time and memory against tokens for the
token sweep (E2A linear vs MHSA quadratic).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_bytes(b) -> str:
    if b is None:
        return ""
    return f"{b / 2**20:.1f} MiB"


def table(data: dict) -> str:
    info = data.get("crocnet", {})
    lines = [f"Device: **{info.get('device', '?')}**, torch {info.get('torch')}, triton {info.get('triton')}, "
             f"crocnet {info.get('crocnet')}, {info.get('threads')} threads, {info.get('date')}.", ""]
    lines += ["| group | impl | median | IQR | host | device | memory | GB/s (share of copy) |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    rows = sorted(data["benchmarks"], key=lambda b: (b.get("group") or "", b["stats"]["median"]))
    for b in rows:
        e = b.get("extra_info", {})
        gbs = f"{e['gbs']:.0f} ({100 * e['share_of_copy']:.0f} %)" if "gbs" in e else ""
        host, device = (f"{e[key]:.0f} µs" if key in e else "" for key in ("host_us", "device_us"))
        if device and e.get("device_timing", "cuda_graph") != "cuda_graph":
            device += " †"
        lines.append(f"| {b.get('group')} | {e.get('impl', b['name'])} | {_fmt_time(b['stats']['median'])} | "
                     f"{_fmt_time(b['stats']['iqr'])} | {host} | {device} | {_fmt_bytes(e.get('memory_bytes'))} | {gbs} |")
    measure = {b.get("extra_info", {}).get("memory_measure") for b in rows} - {None}
    lines += ["", f"Memory measure: {', '.join(sorted(measure)) or 'n/a'} (see benchmarks/README.md)."]
    if any("device_us" in b.get("extra_info", {}) for b in rows):
        lines += ["median: wall clock of a call and its synchronisation; host: until the call returns; device: the "
                  "kernels alone (CUDA graph replay after an L2 flush; † eager calls, capture failed); GB/s from the "
                  "device time."]
    skipped = data.get("skipped", [])
    if skipped:
        lines += ["", f"Not run ({len(skipped)}):", ""] + [f"- `{s['test']}`: {s['reason']}" for s in skipped]
    return "\n".join(lines)


def plot(data: dict, path: Path) -> bool:
    """The token sweep's time and memory, log-log, as a PNG at ``path``; False (nothing written) without one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = defaultdict(list)
    for b in data["benchmarks"]:
        e = b.get("extra_info", {})
        if (b.get("group") or "").startswith("sweep"):
            series[e["impl"]].append((e["tokens"], b["stats"]["median"], e.get("memory_bytes")))
    if not series:
        return False
    fig, (a, m) = plt.subplots(1, 2, figsize=(10, 4))
    for impl, pts in sorted(series.items()):
        pts.sort()
        a.loglog([p[0] for p in pts], [p[1] * 1e3 for p in pts], "o-", label=impl)
        mem = [(p[0], p[2] / 2**20) for p in pts if p[2]]
        if mem:
            m.loglog(*zip(*mem), "o-", label=impl)
    device = data.get("crocnet", {}).get("device", "")
    a.set(xlabel="tokens (H·W)", ylabel="forward+backward median (ms)", title=f"time, D=64 — {device}")
    m.set(xlabel="tokens (H·W)", ylabel="memory (MiB)", title="memory")
    a.legend(), m.legend()
    for ax in (a, m):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="pytest-benchmark --benchmark-json output")
    args = ap.parse_args(argv)
    path = Path(args.json)
    data = json.loads(path.read_text())
    md = path.with_suffix(".md")
    md.write_text(table(data) + "\n")
    png = path.with_suffix(".png")
    print(f"wrote {md} and {png}" if plot(data, png) else f"wrote {md} (no token sweep in it: no plot)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
