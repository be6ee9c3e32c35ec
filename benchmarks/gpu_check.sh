#!/usr/bin/env bash
# GPU check of the Triton kernels: CUDA tests and the neuron GPU benchmark, under 8 minutes.
#
#   benchmarks/gpu_check.sh OUTDIR [--wheels DIR] [--dry-run]
#
# OUTDIR receives env.txt, nvidia-smi.txt, pip.log, pytest_cuda.log/.xml, the benchmark's
# gpu_neuron.md/.json and summary.md. The GPU machine has torch and triton but no network and
# no spikingjelly: the wheels listed in benchmarks/gpu_wheels.txt are installed offline from
# DIR (default: $STAA_GPU_WHEELS, else ./wheels), prepared beforehand with registry access by
#   pip download --no-deps --only-binary=:all: -d wheels -r benchmarks/gpu_wheels.txt
# staa itself is not installed: a copy of src/staa with kernels/ as staa/kernels goes on
# PYTHONPATH. SJ_LIF_CUDA_IMPLEMENTATION=triton makes spikingjelly's LIF use its Triton kernel.
# --dry-run checks the arguments and the wheel folder and prints the plan; it needs no GPU.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEEL_LIST="$ROOT/benchmarks/gpu_wheels.txt"
PY="${PYTHON:-python}"
TEST_TIMEOUT=200
BENCH_TIMEOUT=240

usage() { echo "usage: benchmarks/gpu_check.sh OUTDIR [--wheels DIR] [--dry-run]" >&2; exit 2; }

OUTDIR=""
WHEELS="${STAA_GPU_WHEELS:-$ROOT/wheels}"
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --wheels) [ $# -ge 2 ] || usage; WHEELS="$2"; shift ;;
        --wheels=*) WHEELS="${1#--wheels=}" ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        -*) echo "unknown option: $1" >&2; usage ;;
        *) [ -z "$OUTDIR" ] || { echo "more than one OUTDIR: $OUTDIR, $1" >&2; usage; }; OUTDIR="$1" ;;
    esac
    shift
done
[ -n "$OUTDIR" ] || { echo "missing OUTDIR" >&2; usage; }

# The wheel list: pinned name==version lines; each needs a wheel in $WHEELS.
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

missing=()
for req in "${REQS[@]}"; do
    name="${req%%==*}"; ver="${req##*==}"
    norm="$(echo "$name" | tr '[:upper:]-.' '[:lower:]__')"
    found=""
    if [ -d "$WHEELS" ]; then
        for f in "$WHEELS"/*.whl; do
            [ -e "$f" ] || continue
            base="$(basename "$f")"
            fnorm="$(echo "${base%%-*}" | tr '[:upper:]-.' '[:lower:]__')"
            fver="$(echo "$base" | cut -d- -f2)"
            if [ "$fnorm" = "$norm" ] && [ "$fver" = "$ver" ]; then found="$f"; fi
        done
    fi
    [ -n "$found" ] || missing+=("$req")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "missing wheels in $WHEELS: ${missing[*]}" >&2
    echo "prepare them with: pip download --no-deps --only-binary=:all: -d $WHEELS -r benchmarks/gpu_wheels.txt" >&2
    exit 4
fi

mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
PKG="$OUTDIR/pkg"
export SJ_LIF_CUDA_IMPLEMENTATION=triton
unset TRITON_INTERPRET || true

STEPS=(
    "copy src/staa and kernels/ (as staa/kernels) to $PKG; PYTHONPATH=$PKG"
    "$PY -m pip install --no-index --no-deps --find-links $WHEELS <each listed wheel whose module does not import>  > pip.log"
    "nvidia-smi > nvidia-smi.txt; versions > env.txt"
    "SJ_LIF_CUDA_IMPLEMENTATION=triton timeout $TEST_TIMEOUT $PY -m pytest -q tests/test_triton_cuda.py > pytest_cuda.log"
    "SJ_LIF_CUDA_IMPLEMENTATION=triton timeout $BENCH_TIMEOUT $PY benchmarks/bench_gpu.py --out $OUTDIR > bench.log"
    "summary.md"
)
if [ "$DRY" = 1 ]; then
    {
        echo "gpu_check dry run: OUTDIR=$OUTDIR WHEELS=$WHEELS"
        echo "wheels: ${REQS[*]} (all present)"
        echo "env: SJ_LIF_CUDA_IMPLEMENTATION=$SJ_LIF_CUDA_IMPLEMENTATION"
        i=1; for s in "${STEPS[@]}"; do echo "step $i: $s"; i=$((i + 1)); done
    } | tee "$OUTDIR/dry_run.txt"
    "$PY" "$ROOT/benchmarks/bench_gpu.py" --out "$OUTDIR" --dry-run | tee -a "$OUTDIR/dry_run.txt"
    exit 0
fi

START=$(date +%s)
rm -rf "$PKG"; mkdir -p "$PKG"
cp -r "$ROOT/src/staa" "$PKG/staa"
rm -rf "$PKG/staa/kernels"; cp -r "$ROOT/kernels" "$PKG/staa/kernels"
export PYTHONPATH="$PKG:$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}"

TO_INSTALL=()
for req in "${REQS[@]}"; do
    mod="$(echo "${req%%==*}" | tr '[:upper:]-' '[:lower:]_')"
    "$PY" -c "import $mod" > /dev/null 2>&1 || TO_INSTALL+=("$req")
done
echo "installing (module missing): ${TO_INSTALL[*]:-nothing}" > "$OUTDIR/pip.log"
if [ ${#TO_INSTALL[@]} -gt 0 ]; then
    "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" "${TO_INSTALL[@]}" >> "$OUTDIR/pip.log" 2>&1 \
        || { echo "offline wheel install failed, see $OUTDIR/pip.log" >&2; exit 5; }
fi
nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1 || true
"$PY" - > "$OUTDIR/env.txt" 2>&1 <<'PYEOF' || true
import platform, torch, triton
print("python", platform.python_version(), "torch", torch.__version__, "triton", triton.__version__)
print("cuda", torch.version.cuda, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
try:
    import spikingjelly
    print("spikingjelly", getattr(spikingjelly, "__version__", "installed"))
except Exception as exc:
    print("spikingjelly import failed:", exc)
PYEOF

cd "$ROOT"
set +e
timeout "$TEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider tests/test_triton_cuda.py \
    --junitxml="$OUTDIR/pytest_cuda.xml" > "$OUTDIR/pytest_cuda.log" 2>&1
TEST_RC=$?
timeout "$BENCH_TIMEOUT" "$PY" benchmarks/bench_gpu.py --out "$OUTDIR" > "$OUTDIR/bench.log" 2>&1
BENCH_RC=$?
set -e
{
    echo "# gpu_check summary"
    echo
    echo "- machine: $(head -n 2 "$OUTDIR/env.txt" | tr '\n' ' ')"
    echo "- CUDA tests: exit $TEST_RC; $(tail -n 1 "$OUTDIR/pytest_cuda.log")"
    echo "- benchmark: exit $BENCH_RC (table: gpu_neuron.md)"
    echo "- wall time: $(( $(date +%s) - START )) s"
} > "$OUTDIR/summary.md"
cat "$OUTDIR/summary.md"
[ "$TEST_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
