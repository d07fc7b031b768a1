"""Issue 8's performance targets, checked against benchmark JSONs: one table, each target met, not met or not
measured, with the number behind it.

    python tools/perf_targets.py runs/device/bench-*.json [--out targets.md]

Targets (B = 8 at 128²×32, 64²×64 and 32²×128; bf16 and fp32 where the JSON has them):

- core forward at ≥ 80 % of the measured copy rate, forward+backward at ≥ 60 % (``share_of_copy`` of the
  fused core, from the device time where the JSON has it: ``benchmarks/README.md``);
- the whole module's forward+backward ≥ 3× faster than timm's eager module and ≥ 1.5× faster than
  ``torch.compile`` of it, peak memory ≤ 0.5× the eager module's;
- 3-stream cross-E2A likewise against the authors' eager module (≥ 3×, memory ≤ 0.5×);
- the E2AUNet training step ≥ 1.5× faster with the fused op than with the reference op.

Speed-ups compare the benchmarks' medians (wall clock of a call and its synchronisation, what a user
waits); where the JSON has device times the device-time ratio is shown beside it. A target whose cases
are missing from the JSONs is listed as not measured, never as met. JSONs of several devices give one table
per device (no ratio across devices).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

ISSUE_SIZES = ("128x128x32", "64x64x64", "32x32x128")
MET, NOT_MET, NOT_MEASURED = "met", "**not met**", "not measured"
NAMES = {"timm": "timm eager", "timm_compile": "timm compiled", "authors": "the authors'"}


def _groups(data: list[dict]) -> dict[str, dict[str, dict]]:
    """{group: {impl: benchmark}} over every JSON's benchmarks."""
    groups = defaultdict(dict)
    for d in data:
        for b in d.get("benchmarks", []):
            groups[b.get("group") or ""][b.get("extra_info", {}).get("impl", b["name"])] = b
    return groups


def _ratio(slow: dict | None, fast: dict | None) -> tuple[float | None, float | None]:
    """(wall-clock ratio, device-time ratio) of two benchmarks; None where either lacks the figure."""
    if slow is None or fast is None:
        return None, None
    wall = slow["stats"]["median"] / fast["stats"]["median"]
    s, f = slow.get("extra_info", {}).get("device_us"), fast.get("extra_info", {}).get("device_us")
    return wall, (s / f if s and f else None)


def _status(value: float | None, goal: float, at_least: bool) -> str:
    if value is None:
        return NOT_MEASURED
    return MET if (value >= goal if at_least else value <= goal) else NOT_MET


def rows(data: list[dict]) -> list[dict]:
    """One row a target and case: ``target``, ``case``, ``measured`` (text), ``goal`` (text), ``status``."""
    groups = _groups(data)
    out = []

    def add(target, case, value, goal, at_least=True, fmt="{:.2f}×", extra=""):
        text = (fmt.format(value) + extra) if value is not None else "—"
        out.append({"target": target, "case": case, "measured": text, "goal": ("≥ " if at_least else "≤ ") + fmt.format(goal),
                    "status": _status(value, goal, at_least)})

    for mode, goal in (("forward", 0.80), ("forward_backward", 0.60)):
        for dtype in ("bf16", "fp32"):
            for size in ISSUE_SIZES:
                b = groups.get(f"core B8 {size} {dtype} {mode}", {}).get("core_fused")
                share = b.get("extra_info", {}).get("share_of_copy") if b else None
                add(f"core {mode.replace('_', '+')} share of copy rate", f"{size} {dtype}", share, goal, fmt="{:.0%}")
    def speed_up(target, case, impls, theirs, goal):
        wall, device = _ratio(impls.get(theirs), impls.get("crocnet"))
        add(f"{target} fwd+bwd speed-up over {NAMES[theirs]}", case, wall, goal, extra=f" (device {device:.2f}×)" if device else "")

    def versus(target, case, impls, theirs, goal):
        """The speed-up and memory rows of ours (``crocnet``) against ``theirs`` in one group's implementations."""
        speed_up(target, case, impls, theirs, goal)
        mine, ref = impls.get("crocnet"), impls.get(theirs)
        mem = (mine["extra_info"].get("memory_bytes") / ref["extra_info"]["memory_bytes"]
               if mine and ref and ref["extra_info"].get("memory_bytes") else None)
        add(f"{target} peak memory / {NAMES[theirs]}", case, mem, 0.5, at_least=False)

    for dtype in ("bf16", "fp32"):
        for size in ISSUE_SIZES:
            impls = groups.get(f"unet B8 {size} {dtype} forward_backward", {})
            versus("module", f"{size} {dtype}", impls, "timm", 3.0)
            speed_up("module", f"{size} {dtype}", impls, "timm_compile", 1.5)
    for dtype in ("bf16", "fp32"):
        for size in ISSUE_SIZES:
            versus("cross-E2A", f"{size} {dtype}", groups.get(f"cross3 B8 {size} {dtype} forward_backward", {}), "authors", 3.0)
    steps = sorted(g for g in groups if re.match(r"e2aunet B\d+ \S+ train_step$", g))
    for group in steps or ["e2aunet (no case) train_step"]:
        impls = groups.get(group, {})
        wall, device = _ratio(impls.get("e2aunet_reference_op"), impls.get("e2aunet_fused"))
        add("E2AUNet training step speed-up, fused over reference op", " ".join(group.split()[1:3]) if steps else "—",
            wall, 1.5, extra=f" (device {device:.2f}×)" if device else "")
    return out


def table(data: list[dict]) -> str:
    """One table per device: a ratio is only ever formed between cases measured on the same device."""
    by_device = defaultdict(list)
    for d in data:
        by_device[d["crocnet"]["device"]].append(d)
    sections = []
    for device, mine in sorted(by_device.items()):
        found = rows(mine)
        counts = {s: sum(r["status"] == s for r in found) for s in (MET, NOT_MET, NOT_MEASURED)}
        lines = [f"Issue 8 targets on {device}: {counts[MET]} met, {counts[NOT_MET]} not met, "
                 f"{counts[NOT_MEASURED]} not measured.", "", "| target | case | measured | goal | status |",
                 "|---|---|---:|---:|---|"]
        lines += [f"| {r['target']} | {r['case']} | {r['measured']} | {r['goal']} | {r['status']} |" for r in found]
        if device.startswith("CPU"):
            lines += ["", "On a CPU the fused kernels do not run (`backend=\"auto\"` takes the PyTorch path) and memory is "
                      "the saved-activation measure: the targets are the GPU's."]
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json outputs of benchmarks/")
    ap.add_argument("--out", help="also write the table here (markdown)")
    args = ap.parse_args(argv)
    data = []
    for name in args.json:
        try:
            d = json.loads(Path(name).read_text())
        except (OSError, ValueError) as exc:
            ap.error(f"{name}: not a readable benchmark JSON ({exc})")
        if not isinstance(d, dict) or not isinstance(d.get("benchmarks"), list) or "device" not in d.get("crocnet", {}):
            ap.error(f"{name}: expected a pytest-benchmark JSON of benchmarks/ (keys 'benchmarks' and 'crocnet' with "
                     f"the device), got {'keys ' + ', '.join(map(str, d)) if isinstance(d, dict) else type(d).__name__}")
        data.append(d)
    text = table(data)
    if args.out:  # first: a reader that stops early (`| head`) must not cost the file
        Path(args.out).write_text(text + "\n")
    try:
        print(text)
    except BrokenPipeError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
