#!/usr/bin/env bash
# One call on a lent GPU for issue 8: the kernels at real sizes, then the benchmark suites, each under its
# own time limit and all under one deadline (DEADLINE seconds from the start, 560 by default, so the cut step
# still gets SIGINT and writes its JSON before the device tool's own limit kills everything). Steps run in
# order of value for issue 8's targets; what does not fit runs in a second call, e.g. ONLY="models ab host unet tune".
#
# The device tool copies the working tree (at most 64 MiB; results/ alone is ~340 MiB) and brings back at
# most 8 files from $OUT, so:
#   here, once:  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                  --implementation cp --platform manylinux2014_x86_64 -d .whl nibabel   # not on the image
#                bash tools/device_tree.sh slim      # results/ leaves the tree that travels (restore after!)
#   device tool: run(command="bash tools/device_check.sh", carry=[".whl"], timeout_s=590)
#   here, after: bash tools/device_tree.sh restore
#                tar xzf <files_at>/device-check.tgz -C runs/device   # every step's log, JSON, table, PNG
#                copy bench-*.json to benchmarks/results/<device>-<date>-<suite>.json, run tools/bench_report.py
#                on each, fill benchmarks/NOTES.md ($OUT/targets.md: issue 8's targets, tools/perf_targets.py)
# $OUT receives three files: device-check.tgz (rewritten after every step, so a cut call keeps every finished
# step), targets.md and summary.txt.
#
# Environment: OUT (default runs/device), WORK (where the steps write, default /tmp/device-check), DEADLINE,
# ONLY (space-separated subset of: env tests core module cross fp32 models ab host unet tune), T_TESTS / T_E2A /
# T_MODULE / T_CROSS / T_FP32 / T_MODELS / T_AB / T_HOST / T_TUNE (seconds per step).
# "core", "module" (the module cases the targets read) and "cross" run bf16; "fp32" what issue 8's targets need
# in float32 (core, module and cross-E2A forward+backward at the issue's sizes); "ab" times each change built
# without a GPU against its off switch (benchmarks/NOTES.md items 5-6, 8, 10, 12); "host" the host time per
# call (item 11); "unet" the rest of the module suite (no target reads it).
set -u
OUT=${OUT:-runs/device}
WORK=${WORK:-/tmp/device-check}
DEADLINE=${DEADLINE:-560}
mkdir -p "$OUT" "$WORK"
ONLY=${ONLY:-"env tests core module cross fp32 models ab host unet tune"}
want() { [[ " $ONLY " == *" $1 "* ]]; }
declare -A STATUS
FAILED=0

pack() {  # everything written so far, as one archive in $OUT (the tool returns at most 8 files)
    tar czf "$OUT/device-check.tgz.part" -C "$WORK" . && mv "$OUT/device-check.tgz.part" "$OUT/device-check.tgz"
}
targets() {  # issue 8's table from every benchmark JSON so far
    compgen -G "$WORK/bench-*.json" >/dev/null || return 0
    python3 tools/perf_targets.py "$WORK"/bench-*.json --out "$WORK/targets.md" >/dev/null 2>&1 \
        && cp "$WORK/targets.md" "$OUT/targets.md"
}

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$WORK/install.log" 2>&1 \
    || { echo "install failed:"; tail -20 "$WORK/install.log"; pack; exit 1; }

step() {  # step NAME SECONDS CMD...: run with a time limit (SIGINT first, so pytest still writes its JSON)
    local name=$1 limit=$2; shift 2
    local left=$((DEADLINE - SECONDS - 5))
    if [ "$left" -lt 20 ]; then
        STATUS[$name]="not run: $((DEADLINE - SECONDS)) s left of the deadline"
        echo "== $name: ${STATUS[$name]}"
        FAILED=1
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS
    timeout -s INT -k 20 "$limit" "$@" >"$WORK/$name.log" 2>&1
    local rc=$?
    STATUS[$name]="rc=$rc, $((SECONDS - t0)) s (limit $limit s)"
    [ "$rc" -eq 0 ] || FAILED=1
    echo "== $name: ${STATUS[$name]}"
    tail -n 4 "$WORK/$name.log"
    pack
}

if want env; then
    { nvidia-smi; nvidia-smi -q -d CLOCK; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"; } >"$WORK/env.txt" 2>&1
    head -n 15 "$WORK/env.txt"
    pack
fi
bench() {  # bench NAME SECONDS FILE... [-k EXPR]
    local name=$1 limit=$2; shift 2
    step "$name" "$limit" python3 -m pytest "$@" --benchmark-only -q -p no:cacheprovider \
        --benchmark-json "$WORK/bench-$name.json" || return
    [ -s "$WORK/bench-$name.json" ] && python3 tools/bench_report.py "$WORK/bench-$name.json" >/dev/null 2>&1
    targets
    pack
}
# the tests check numbers, not which config is fastest: without autotuning (one default config a kernel, no
# compile-and-time of every candidate) they all fit in the step
want tests && step gpu-tests "${T_TESTS:-150}" env CROCNET_AUTOTUNE=0 python3 -m pytest -m gpu tests/ops tests/nn tests/models \
    -q -p no:cacheprovider -k "not autotune_results_persist"
want core && bench core "${T_E2A:-120}" benchmarks/test_bench_e2a.py -k "test_core and bf16"
# the module cases issue 8's targets read (ours, timm eager and compiled; forward+backward at the issue's sizes),
# before the rest of the module suite, whose torch.compile cases compile for every shape and mode
ISSUE_SIZES="8-128-32 or 8-64-64 or 8-32-128"
MODULE_TARGETS="test_unet_shapes and forward_backward and (crocnet or timm) and ($ISSUE_SIZES)"
want module && bench module "${T_MODULE:-120}" benchmarks/test_bench_e2a.py -k "bf16 and $MODULE_TARGETS"
want cross && bench cross "${T_CROSS:-60}" benchmarks/test_bench_cross.py -k bf16
want fp32 && bench fp32 "${T_FP32:-120}" benchmarks/test_bench_e2a.py benchmarks/test_bench_cross.py \
    -k "fp32 and (test_core or $MODULE_TARGETS or (test_cross and forward_backward))"
want models && bench models "${T_MODELS:-90}" benchmarks/test_bench_models.py
AB_TESTS="test_packed_qk or test_row_alignment or test_fused_weight_grad or test_recompute_qk or test_fold_final or test_fused_input"
want ab && bench ab "${T_AB:-90}" benchmarks/test_bench_e2a.py -k "$AB_TESTS"
want host && step host "${T_HOST:-45}" env CROCNET_AUTOTUNE=0 python3 tools/host_overhead.py --rounds 300 --json "$WORK/host.json"
want unet && bench unet "${T_E2A:-120}" benchmarks/test_bench_e2a.py \
    -k "not (test_core or $AB_TESTS) and not fp32 and not ($MODULE_TARGETS)"
# last: three fresh processes tune from an empty Triton cache
want tune && step autotune-cache "${T_TUNE:-90}" python3 -m pytest -m gpu tests/ops/test_e2a_gpu.py -q -p no:cacheprovider \
    -k autotune_results_persist

{
    echo "== summary ($SECONDS s)"
    for k in "${!STATUS[@]}"; do echo "$k: ${STATUS[$k]}"; done
    for f in "$WORK"/bench-*.md; do [ -f "$f" ] && { echo "-- $f"; grep -E "^\| (core|unet|cross3|e2aunet)" "$f" | head -n 30; }; done
    [ -s "$WORK/targets.md" ] && head -n 45 "$WORK/targets.md"
} | tee "$WORK/summary.txt"
cp "$WORK/summary.txt" "$OUT/summary.txt"
pack
exit $FAILED
