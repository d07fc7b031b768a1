#!/usr/bin/env bash
# One call on a lent GPU for issue 8: the kernels at real sizes, then the benchmark suites, each under its
# own time limit, results under $OUT (the device tool brings them back). Prepared ahead: a session has
# ~15 minutes of device time, so this is sized for one call of ~9 minutes with room to rerun a part. The steps
# are in order of value and their limits add up to more than one call: a call cut at its limit keeps every
# finished step (and the cut one's JSON); the rest runs in a second call, e.g. ONLY="models fp32 tune".
#
#   here, once:  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                  --implementation cp --platform manylinux2014_x86_64 -d .whl nibabel   # not on the image
#   device tool: run(command="bash tools/device_check.sh", carry=[".whl"], timeout_s=590)
#   here, after: copy $OUT's bench-*.json to benchmarks/results/<device>-<date>-<suite>.json, run
#                tools/bench_report.py on each, fill benchmarks/NOTES.md ($OUT/targets.md: issue 8's targets,
#                tools/perf_targets.py)
#
# Environment: OUT (default runs/device), ONLY (space-separated subset of: env tests core ab host module unet cross
# models fp32 tune), T_TESTS / T_E2A / T_AB / T_HOST / T_MODULE / T_CROSS / T_MODELS / T_FP32 / T_TUNE (seconds per step).
# "core", "module" (the module cases the targets read), "unet" (the rest of the module suite) and "cross" run
# bf16; "fp32" runs what issue 8's targets need in float32 (core, module and cross-E2A forward+backward at the
# issue's sizes), late: its autotuning and compilation are new work. "ab" times each change built without
# a GPU against its off switch (benchmarks/NOTES.md items 5-6, 8, 10, 12), early, so a cut call still has them;
# "host" measures the host time per call of the op and modules (item 11).
set -u
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
ONLY=${ONLY:-"env tests core ab host module unet cross models fp32 tune"}
want() { [[ " $ONLY " == *" $1 "* ]]; }
declare -A STATUS
FAILED=0

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
    || { echo "install failed:"; tail -20 "$OUT/install.log"; exit 1; }

step() {  # step NAME SECONDS CMD...: run with a time limit (SIGINT first, so pytest still writes its JSON)
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout -s INT -k 20 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    STATUS[$name]="rc=$rc, $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || FAILED=1
    echo "== $name: ${STATUS[$name]}"
    tail -n 4 "$OUT/$name.log"
}

if want env; then
    { nvidia-smi; nvidia-smi -q -d CLOCK; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"; } >"$OUT/env.txt" 2>&1
    head -n 15 "$OUT/env.txt"
fi
bench() {  # bench NAME SECONDS FILE [-k EXPR]
    local name=$1 limit=$2 file=$3; shift 3
    step "$name" "$limit" python3 -m pytest "$file" --benchmark-only -q -p no:cacheprovider \
        --benchmark-json "$OUT/bench-$name.json" "$@"
    [ -s "$OUT/bench-$name.json" ] && python3 tools/bench_report.py "$OUT/bench-$name.json" >/dev/null 2>&1
}
# the tests check numbers, not which config is fastest: without autotuning (one default config a kernel, no
# compile-and-time of every candidate) they all fit in the step
want tests && step gpu-tests "${T_TESTS:-150}" env CROCNET_AUTOTUNE=0 python3 -m pytest -m gpu tests/ops tests/nn tests/models \
    -q -p no:cacheprovider -k "not autotune_results_persist"
want core && bench core "${T_E2A:-120}" benchmarks/test_bench_e2a.py -k "test_core and bf16"
AB_TESTS="test_packed_qk or test_row_alignment or test_fused_weight_grad or test_recompute_qk or test_fold_final or test_fused_input"
want ab && bench ab "${T_AB:-90}" benchmarks/test_bench_e2a.py -k "$AB_TESTS"
want host && step host "${T_HOST:-45}" env CROCNET_AUTOTUNE=0 python3 tools/host_overhead.py --rounds 300 --json "$OUT/host.json"
# the module cases issue 8's targets read (ours, timm eager and compiled; forward+backward at the issue's sizes),
# before the rest of the module suite, whose torch.compile cases compile for every shape and mode
ISSUE_SIZES="8-128-32 or 8-64-64 or 8-32-128"
MODULE_TARGETS="test_unet_shapes and forward_backward and (crocnet or timm) and ($ISSUE_SIZES)"
want module && bench module "${T_MODULE:-120}" benchmarks/test_bench_e2a.py -k "bf16 and $MODULE_TARGETS"
want unet && bench unet "${T_E2A:-120}" benchmarks/test_bench_e2a.py \
    -k "not (test_core or $AB_TESTS) and not fp32 and not ($MODULE_TARGETS)"
want cross && bench cross "${T_CROSS:-60}" benchmarks/test_bench_cross.py -k bf16
want models && bench models "${T_MODELS:-90}" benchmarks/test_bench_models.py
want fp32 && bench fp32 "${T_FP32:-120}" benchmarks/test_bench_e2a.py benchmarks/test_bench_cross.py \
    -k "fp32 and (test_core or $MODULE_TARGETS or (test_cross and forward_backward))"
# last, so a run cut at the call's limit loses only this: three fresh processes tune from an empty Triton cache
want tune && step autotune-cache "${T_TUNE:-90}" python3 -m pytest -m gpu tests/ops/test_e2a_gpu.py -q -p no:cacheprovider \
    -k autotune_results_persist

echo
echo "== summary"
for k in "${!STATUS[@]}"; do echo "$k: ${STATUS[$k]}"; done
for f in "$OUT"/bench-*.md; do [ -f "$f" ] && { echo "-- $f"; grep -E "^\| (core|unet|cross3|e2aunet)" "$f" | head -n 30; }; done
compgen -G "$OUT/bench-*.json" >/dev/null && python3 tools/perf_targets.py "$OUT"/bench-*.json --out "$OUT/targets.md" | head -n 45
exit $FAILED
