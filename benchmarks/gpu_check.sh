#!/usr/bin/env bash
# The GPU run: CUDA tests, self-test, benchmark, CUDA-graph replay, device profile and the cost
# model's comparison, in one command and under 8 minutes.
#
#   benchmarks/gpu_check.sh [OUTDIR] [--wheels DIR] [--dry-run]
#
# OUTDIR (default: $OUT) receives one file per step, written as soon as the step ends, each
# named gpu_<commit>_<step>.* and starting with the commit, the device and the command:
#   env.txt nvidia-smi.txt pip.log                      machine, versions, offline installs
#   tests_cuda_graphs.log/.xml tests_triton_cuda.log/.xml   tests/test_cuda_graphs.py, test_triton_cuda.py
#   selftest_u1.txt selftest_u2.txt                     python -m staa selftest at the layer shapes
#   bench.log neuron.md neuron.json                     benchmarks/bench_gpu.py (user shapes, fp32/bf16)
#   graph.log graph.md                                  benchmarks/graph_gpu.py (eager vs CUDA-graph replay)
#   profile.log profile.md                              benchmarks/profile_gpu.py (device vs wall time)
#   host_cost.log host_cost.md host_cost.json          benchmarks/host_cost.py on this machine's CPU
#   cost_model.txt                                      benchmarks/cost_model.py --compare (when it exists)
#   summary.md                                          one line per step, appended as each ends
# Every step runs under `timeout` within an overall budget (STAA_GPU_CHECK_BUDGET, default 485 s); a
# step that fails or times out does not stop the next. The commit is $STAA_COMMIT when set (a copy of
# the tree without .git), else git's; the device is torch's name for it.
#
# The GPU machine has torch and triton but no network: the wheels listed in
# benchmarks/gpu_wheels.txt are installed offline from DIR (default: $STAA_GPU_WHEELS, else ./wheels)
# for each module that does not import there; prepare DIR beforehand with registry access by
#   pip download --no-deps --only-binary=:all: -d wheels -r benchmarks/gpu_wheels.txt
# staa itself is not installed: a copy of src/staa with kernels/ as staa/kernels goes on PYTHONPATH.
# SJ_LIF_CUDA_IMPLEMENTATION=triton makes spikingjelly's LIF use its Triton kernel.
# Without a CUDA device the run stops before doing anything (exit 6). --dry-run checks the
# arguments and the wheel folder (every wheel must be there) and prints the plan; it needs no GPU.
# STAA_GPU_CHECK_REHEARSE=1 runs the steps without a GPU (they fail or skip): a test of the script.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEEL_LIST="$ROOT/benchmarks/gpu_wheels.txt"
PY="${PYTHON:-python}"
BUDGET="${STAA_GPU_CHECK_BUDGET:-485}"

usage() { echo "usage: benchmarks/gpu_check.sh [OUTDIR] [--wheels DIR] [--dry-run]  (OUTDIR defaults to \$OUT)" >&2; exit 2; }

OUTDIR=""
WHEELS="${STAA_GPU_WHEELS:-$ROOT/wheels}"
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --wheels) [ $# -ge 2 ] || usage; WHEELS="$2"; shift ;;
        --wheels=*) WHEELS="${1#--wheels=}" ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        -*) echo "unknown option: $1" >&2; usage ;;
        *) [ -z "$OUTDIR" ] || { echo "more than one OUTDIR: $OUTDIR, $1" >&2; usage; }; OUTDIR="$1" ;;
    esac
    shift
done
OUTDIR="${OUTDIR:-${OUT:-}}"
[ -n "$OUTDIR" ] || { echo "missing OUTDIR (give it, or set \$OUT)" >&2; usage; }

# The wheel list: pinned name==version lines.
REQS=()
while IFS= read -r line; do
    line="${line%%#*}"; line="$(echo "$line" | tr -d '[:space:]')"
    [ -n "$line" ] || continue
    if ! [[ "$line" =~ ^[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+$ ]]; then
        echo "gpu_wheels.txt: '$line' is not pinned as name==version" >&2; exit 3
    fi
    REQS+=("$line")
done < "$WHEEL_LIST"
[ ${#REQS[@]} -gt 0 ] || { echo "gpu_wheels.txt lists no wheels" >&2; exit 3; }

wheel_for() {  # the wheel file in $WHEELS for name==version, or nothing
    local req="$1" name ver norm f base fnorm fver
    name="${req%%==*}"; ver="${req##*==}"
    norm="$(echo "$name" | tr '[:upper:]-.' '[:lower:]__')"
    [ -d "$WHEELS" ] || return 0
    for f in "$WHEELS"/*.whl; do
        [ -e "$f" ] || continue
        base="$(basename "$f")"
        fnorm="$(echo "${base%%-*}" | tr '[:upper:]-.' '[:lower:]__')"
        fver="$(echo "$base" | cut -d- -f2)"
        if [ "$fnorm" = "$norm" ] && [ "$fver" = "$ver" ]; then echo "$f"; fi
    done
}
module_of() { echo "${1%%==*}" | tr '[:upper:]-' '[:lower:]_'; }

# Budgets in seconds (each step also stops at the overall budget).
T_TESTS_GRAPHS=100
T_TESTS_TRITON=80
T_SELFTEST=30
T_BENCH=125
T_GRAPH=30
T_PROFILE=25
T_HOST=30
T_COST=15
# The CUDA tests of tests/test_cuda_graphs.py (its CPU checks run in CI).
GRAPH_TESTS="graphed or captured or reduce_overhead"
STEPS=(
    "copy src/staa and kernels/ (as staa/kernels) to a temporary folder on PYTHONPATH"
    "$PY -m pip install --no-index --no-deps --find-links WHEELS <each listed wheel whose module does not import> > pip.log"
    "nvidia-smi > nvidia-smi.txt; versions > env.txt"
    "timeout $T_TESTS_GRAPHS $PY -m pytest -v tests/test_cuda_graphs.py -k '$GRAPH_TESTS' > tests_cuda_graphs.log"
    "SJ_LIF_CUDA_IMPLEMENTATION=triton timeout $T_TESTS_TRITON $PY -m pytest -v tests/test_triton_cuda.py > tests_triton_cuda.log"
    "timeout $T_SELFTEST $PY -m staa selftest --shape 4,32,128,32,32 > selftest_u1.txt"
    "timeout $T_SELFTEST $PY -m staa selftest --shape 4,64,512,4,4 > selftest_u2.txt"
    "SJ_LIF_CUDA_IMPLEMENTATION=triton timeout $T_BENCH $PY benchmarks/bench_gpu.py --out OUTDIR --name gpu_<commit>_neuron --shapes user > bench.log"
    "timeout $T_GRAPH $PY benchmarks/graph_gpu.py --out OUTDIR --name gpu_<commit>_graph > graph.log"
    "timeout $T_PROFILE $PY benchmarks/profile_gpu.py --out OUTDIR --name gpu_<commit>_profile > profile.log"
    "timeout $T_HOST $PY benchmarks/host_cost.py --trees ROOT --rounds 2 --samples 10 --warmup 1 --out OUTDIR/gpu_<commit>_host_cost > host_cost.log (the launchers' host cost on this machine's CPU)"
    "timeout $T_COST $PY benchmarks/cost_model.py --compare <this run's neuron.json graph.md profile.md> [--host <this run's host_cost.json>] > cost_model.txt (skipped if the script does not exist)"
    "summary.md, a line per step as it ends; overall budget ${BUDGET}s"
)

if [ "$DRY" = 1 ]; then
    missing=()
    for req in "${REQS[@]}"; do [ -n "$(wheel_for "$req")" ] || missing+=("$req"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "missing wheels in $WHEELS: ${missing[*]}" >&2
        echo "prepare them with: pip download --no-deps --only-binary=:all: -d $WHEELS -r benchmarks/gpu_wheels.txt" >&2
        exit 4
    fi
    mkdir -p "$OUTDIR"
    OUTDIR="$(cd "$OUTDIR" && pwd)"
    {
        echo "gpu_check dry run: OUTDIR=$OUTDIR WHEELS=$WHEELS"
        echo "wheels: ${REQS[*]} (all present)"
        echo "env: SJ_LIF_CUDA_IMPLEMENTATION=triton (for the steps that name it)"
        i=1; for s in "${STEPS[@]}"; do echo "step $i: $s"; i=$((i + 1)); done
    } | tee "$OUTDIR/dry_run.txt"
    "$PY" "$ROOT/benchmarks/bench_gpu.py" --out "$OUTDIR" --shapes user --budget $((T_BENCH - 25)) --dry-run \
        | tee -a "$OUTDIR/dry_run.txt"
    exit 0
fi

# No GPU: stop here, before writing or installing anything. STAA_GPU_CHECK_REHEARSE=1 runs every
# step anyway (on the CPU the GPU steps fail or skip at once): a rehearsal of the machinery.
if [ "${STAA_GPU_CHECK_REHEARSE:-0}" = 1 ]; then
    GPU_MSG="rehearsal without a GPU (STAA_GPU_CHECK_REHEARSE=1)"
elif ! GPU_MSG="$("$PY" -c 'import torch, sys
ok = torch.cuda.is_available()
print(torch.cuda.get_device_name() if ok else f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)")
sys.exit(0 if ok else 1)' 2>&1)"; then
    echo "gpu_check: no GPU: ${GPU_MSG##*$'\n'}" >&2
    echo "gpu_check: nothing was run. This script needs a CUDA device; --dry-run prints the plan without one." >&2
    exit 6
fi

START=$(date +%s)
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
COMMIT="${STAA_COMMIT:-}"
if [ -z "$COMMIT" ]; then
    COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if [ "$COMMIT" != unknown ] && [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
        COMMIT="$COMMIT+dirty"
    fi
fi
DEVICE="${GPU_MSG##*$'\n'}"
FAILED=0
export STAA_COMMIT="$COMMIT" STAA_DEVICE="$DEVICE"
P="$OUTDIR/gpu_$(echo "$COMMIT" | tr -c 'A-Za-z0-9_.\n-' '-')_"
SUMMARY="${P}summary.md"
{
    echo "# gpu_check summary"
    echo
    echo "commit $COMMIT, device $DEVICE, started $(date -u '+%Y-%m-%d %H:%M:%S UTC'), overall budget ${BUDGET}s"
    echo
} > "$SUMMARY"

header() {  # header FILE WHAT: the first lines of a result file
    { echo "# $2"; echo "# commit $COMMIT, device $DEVICE, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"; } > "$1"
}

# step NAME BUDGET FILE CMD...: run CMD under timeout (its budget, or what is left of the overall
# one), output appended to FILE after a header; one line in the summary when it ends.
step() {
    local name="$1" budget="$2" file="$3"; shift 3
    local left=$(( START + BUDGET - $(date +%s) - 5 )) t rc t0
    t=$budget; [ "$left" -lt "$t" ] && t=$left
    if [ "$t" -lt 10 ]; then
        header "$file" "$name: skipped, the overall budget of ${BUDGET}s is spent"
        echo "- $name: skipped (overall budget spent)" >> "$SUMMARY"
        return 0
    fi
    header "$file" "$name: $* (timeout ${t}s)"
    t0=$(date +%s)
    set +e
    timeout --kill-after=5 "$t" "$@" >> "$file" 2>&1
    rc=$?
    set -e
    local how="exit $rc"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then how="timed out after ${t}s (exit $rc)"; fi
    [ "$rc" = 0 ] || FAILED=$((FAILED + 1))
    echo "# $how, $(( $(date +%s) - t0 )) s" >> "$file"
    echo "- $name: $how, $(( $(date +%s) - t0 )) s; $(basename "$file"): $(grep -v '^#' "$file" | tail -n 1 | cut -c1-160)" \
        >> "$SUMMARY"
    return 0
}

PKG="$(mktemp -d)/pkg"
mkdir -p "$PKG"
cp -r "$ROOT/src/staa" "$PKG/staa"
rm -rf "$PKG/staa/kernels"; cp -r "$ROOT/kernels" "$PKG/staa/kernels"
export PYTHONPATH="$PKG:$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET || true

header "${P}pip.log" "offline installs from $WHEELS"
for req in "${REQS[@]}"; do
    mod="$(module_of "$req")"
    if "$PY" -c "import $mod" > /dev/null 2>&1; then
        echo "$req: module $mod imports, not installed" >> "${P}pip.log"
        continue
    fi
    whl="$(wheel_for "$req")"
    if [ -z "$whl" ]; then
        echo "$req: module $mod missing and no wheel in $WHEELS; steps that need it will fail" >> "${P}pip.log"
        continue
    fi
    "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" "$req" >> "${P}pip.log" 2>&1 \
        || echo "$req: offline install failed" >> "${P}pip.log"
done
echo "- install: $(grep -c 'missing and no wheel\|install failed' "${P}pip.log" || true) problem(s), see $(basename "${P}pip.log")" >> "$SUMMARY"
header "${P}nvidia-smi.txt" "nvidia-smi"
nvidia-smi >> "${P}nvidia-smi.txt" 2>&1 || true
header "${P}env.txt" "versions"
"$PY" - >> "${P}env.txt" 2>&1 <<'PYEOF' || true
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
for mod in ("triton", "spikingjelly", "pytest", "hypothesis"):
    try:
        m = __import__(mod)
        print(mod, getattr(m, "__version__", "installed"))
    except Exception as exc:
        print(mod, "import failed:", exc)
PYEOF

cd "$ROOT"
step "CUDA-graph tests" "$T_TESTS_GRAPHS" "${P}tests_cuda_graphs.log" \
    "$PY" -m pytest -v -p no:cacheprovider tests/test_cuda_graphs.py -k "$GRAPH_TESTS" \
    --junitxml="${P}tests_cuda_graphs.xml"
step "Triton CUDA tests" "$T_TESTS_TRITON" "${P}tests_triton_cuda.log" \
    env SJ_LIF_CUDA_IMPLEMENTATION=triton "$PY" -m pytest -v -p no:cacheprovider tests/test_triton_cuda.py \
    --junitxml="${P}tests_triton_cuda.xml"
step "self-test [4,32,128,32,32]" "$T_SELFTEST" "${P}selftest_u1.txt" \
    "$PY" -m staa selftest --shape 4,32,128,32,32
step "self-test [4,64,512,4,4]" "$T_SELFTEST" "${P}selftest_u2.txt" \
    "$PY" -m staa selftest --shape 4,64,512,4,4
step "benchmark" "$T_BENCH" "${P}bench.log" \
    env SJ_LIF_CUDA_IMPLEMENTATION=triton "$PY" benchmarks/bench_gpu.py --out "$OUTDIR" \
    --name "$(basename "${P}neuron")" --shapes user --budget $((T_BENCH - 25))
step "CUDA-graph replay" "$T_GRAPH" "${P}graph.log" \
    "$PY" benchmarks/graph_gpu.py --out "$OUTDIR" --name "$(basename "${P}graph")" --budget $((T_GRAPH - 15))
step "device profile" "$T_PROFILE" "${P}profile.log" \
    "$PY" benchmarks/profile_gpu.py --out "$OUTDIR" --name "$(basename "${P}profile")" --budget $((T_PROFILE - 15))
# The host cost per layer on this machine's CPU: what the cost model's eager predictions take as the
# launchers' share of host time (the committed table was measured on a CPU without a GPU).
step "host cost" "$T_HOST" "${P}host_cost.log" \
    "$PY" benchmarks/host_cost.py --trees "$ROOT" --rounds 2 --samples 10 --warmup 1 --out "${P}host_cost"
if [ -f benchmarks/cost_model.py ]; then
    compare=()
    for f in "${P}neuron.json" "${P}graph.md" "${P}profile.md"; do [ -f "$f" ] && compare+=("$f"); done
    host=()
    [ -f "${P}host_cost.json" ] && host=(--host "${P}host_cost.json")
    step "cost model comparison" "$T_COST" "${P}cost_model.txt" "$PY" benchmarks/cost_model.py --compare "${compare[@]}" \
        "${host[@]}"
else
    header "${P}cost_model.txt" "cost model comparison: skipped, benchmarks/cost_model.py does not exist at this commit"
    echo "- cost model comparison: skipped (benchmarks/cost_model.py does not exist at this commit)" >> "$SUMMARY"
fi
echo "- wall time: $(( $(date +%s) - START )) s; $FAILED step(s) failed or timed out" >> "$SUMMARY"
cat "$SUMMARY"
[ "$FAILED" = 0 ]
