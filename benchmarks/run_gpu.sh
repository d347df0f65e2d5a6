#!/usr/bin/env bash
# The two commands a session with a lent GPU runs, from the repository root (two device calls,
# each within the device tool's 10 minutes a command):
#
#     PYTHONPATH=. bash benchmarks/run_gpu.sh                              # GPU tests, benchmarks
#     STAGES="sanitizer parity" PYTHONPATH=. bash benchmarks/run_gpu.sh    # sanitizers, parity
#
# STAGES picks the stage groups: tests, sanitizer, bench, parity (default "tests bench"; "all"
# for every one, past the 10 minutes). In order, each stage bounded in time so that each of the
# two calls fits in GPU_RUN_BUDGET_S (about 8 minutes of an H100):
#   1. versions: nvidia-smi, python, numpy, cupy, CUDA runtime/driver, torch, cuDNN, compute-sanitizer
#   2. the GPU tests:              pytest -m gpu -q
#   3. compute-sanitizer (when on the PATH or in /usr/local/cuda*/bin): memcheck, racecheck,
#      initcheck, synccheck over benchmarks/sanitize_gpu.py (every kernel, small shapes, CuPy's
#      memory pool off so bounds are exact)
#   4. the benchmarks, each validating first, with --save: bench_ops, bench_step, bench_epoch,
#      bench_conv2d
#   5. parity: benchmarks/parity.py --save, three_layer_convnet trained for 8 epochs
#      with seeds 0 and 1 on the GPU and on the CPU on the real subset (about 2-3 minutes)
# Records land in benchmarks/results/ (<date>-<device>-<name>.json; conv2d-<device>-<date>.json);
# the logs in benchmarks/results/logs/<stamp>/. With $OUT set (the device tool), $OUT receives the
# records of this run, the whole log (run_gpu.log), summary.txt and logs.tar.gz (at most 8 files:
# the device tool's limit). Exit status: 0 when every stage passed, 1 otherwise (all stages run).
#
# The device image has cupy, numpy, pytest, nvidia-ml-py and torch but not hypothesis, tqdm or
# nbclient (its notebook tests skip), no network and no ../shared: build both first with
# `make gpu-site gpu-data` (pure-Python packages into .gpu-site/, the real CIFAR-10 subset into
# .gpu-data/) and carry both (device tool: carry=[".gpu-site", ".gpu-data"]).
#
# Environment: PYTHON (default python3: the device image's interpreter holding torch and cupy),
# GPUCONV_BENCH_RESULTS (default benchmarks/results), GPU_RUN_BUDGET_S (default 500; the tests and
# sanitizers never eat into the 350 s kept for the benchmarks), SKIP_TESTS=1 / SKIP_SANITIZER=1.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-.}"
if [ -d .gpu-site ]; then export PYTHONPATH=".gpu-site:$PYTHONPATH"; fi
# The real CIFAR-10 subset (`make gpu-data`, carried as .gpu-data): the device machine has no ../shared.
if [ -d .gpu-data/cifar-10-batches-py ]; then
    export GPUCONV_DATA="$PWD/.gpu-data" GPUCONV_TEST_DATA="$PWD/.gpu-data/cifar-10-batches-py"
fi
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
STAGES="${STAGES:-tests bench}"
want() { [ "$STAGES" = all ] || case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
reserve_for() {  # the seconds kept back for the groups named that this run includes
    RESERVE=0
    for g in "$@"; do
        want "$g" && case "$g" in bench) RESERVE=$((RESERVE + 350)) ;; parity) RESERVE=$((RESERVE + 240)) ;; esac
    done
    return 0
}
BUDGET="${GPU_RUN_BUDGET_S:-500}"
RESERVE=0  # seconds kept back for the later stages: 350 for the benchmarks, 240 for parity
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS="${GPUCONV_BENCH_RESULTS:-benchmarks/results}"  # the scripts honour the same variable
LOGS="$RESULTS/logs/$STAMP"
mkdir -p "$LOGS"
MARK="$LOGS/.start"
touch "$MARK"
SUMMARY="$LOGS/summary.txt"
: >"$SUMMARY"
FAILED=0
START=$SECONDS

log() { echo "[run_gpu $(date -u +%H:%M:%S)] $*" | tee -a "$LOGS/run_gpu.log"; }

# stage NAME CAP_SECONDS COMMAND... : runs with min(CAP, time left) as its limit, logs, records status.
stage() {
    local name="$1" cap="$2"
    shift 2
    local left=$((BUDGET - RESERVE - (SECONDS - START)))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 15 ]; then
        log "SKIP $name: only ${left}s of the ${BUDGET}s budget left"
        echo "SKIPPED  $name (budget)" >>"$SUMMARY"
        FAILED=1
        return
    fi
    log "START $name (limit ${limit}s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    cat "$LOGS/$name.log" >>"$LOGS/run_gpu.log"
    tail -n 40 "$LOGS/$name.log"
    local status="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT"; elif [ "$rc" -ne 0 ]; then status="FAILED(rc=$rc)"; fi
    [ "$status" = "ok" ] || FAILED=1
    printf '%-8s %-28s %4ds\n' "$status" "$name" $((SECONDS - t0)) | tee -a "$SUMMARY"
}

# ---------------------------------------------------------------- 1. versions
log "versions"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi: not found"
    "$PY" - <<'EOF' 2>&1
import platform, numpy
print("python", platform.python_version(), "numpy", numpy.__version__)
try:
    import cupy as cp
    print("cupy", cp.__version__, "CUDA runtime", cp.cuda.runtime.runtimeGetVersion(),
          "driver", cp.cuda.runtime.driverGetVersion(), "devices", cp.cuda.runtime.getDeviceCount())
except Exception as exc:
    print("cupy: unusable:", type(exc).__name__, exc)
try:
    import torch
    print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version(),
          "GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
except Exception as exc:
    print("torch: not usable:", type(exc).__name__, exc)
import gpuconv
from gpuconv import backend
print("gpuconv", gpuconv.__version__, "|", backend.cuda_status())
EOF
    git rev-parse --short HEAD 2>/dev/null | sed 's/^/git commit /'
} | tee "$LOGS/versions.log" | tee -a "$LOGS/run_gpu.log"

if ! "$PY" -c "from gpuconv import backend; raise SystemExit(0 if backend.cuda_available() else 1)"; then
    log "no usable GPU: $("$PY" -c 'from gpuconv import backend; print(backend.cuda_status())' 2>&1)"
    echo "FAILED   no usable GPU" >>"$SUMMARY"
    FAILED=1
fi

# ---------------------------------------------------------------- 2. GPU tests
reserve_for bench parity
if want tests && [ "${SKIP_TESTS:-0}" != "1" ]; then
    stage pytest_gpu 100 "$PY" -m pytest -m gpu -q --maxfail=5 -p no:cacheprovider \
        --continue-on-collection-errors  # without .gpu-site, files importing hypothesis are not collected
fi

# ---------------------------------------------------------------- 3. compute-sanitizer
SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)"
if want sanitizer && [ "${SKIP_SANITIZER:-0}" != "1" ]; then
    if [ -n "$SANITIZER" ]; then
        "$SANITIZER" --version 2>&1 | tail -n 1 | tee -a "$LOGS/versions.log"
        stage sanitize_plain 40 "$PY" benchmarks/sanitize_gpu.py  # also fills the kernel cache
        # No --leak-check: CuPy frees some arrays only at interpreter exit, which would read as leaks.
        for tool in memcheck racecheck initcheck synccheck; do
            stage "sanitizer_$tool" 45 "$SANITIZER" --tool "$tool" --error-exitcode 99 \
                --print-limit 20 "$PY" benchmarks/sanitize_gpu.py
        done
    else
        log "compute-sanitizer not found (PATH, /usr/local/cuda*/bin): sanitizer stage skipped"
        echo "SKIPPED  compute-sanitizer (not installed)" >>"$SUMMARY"
    fi
fi

# ---------------------------------------------------------------- 4. benchmarks
reserve_for parity
if want bench; then
    stage bench_ops 75 "$PY" benchmarks/bench_ops.py --save --warmup 3 --repeat 20
    stage bench_step 75 "$PY" benchmarks/bench_step.py --save --warmup 10 --repeat 40
    stage bench_epoch 110 "$PY" benchmarks/bench_epoch.py --save --warmup 5 --repeat 1
    stage bench_conv2d 90 "$PY" benchmarks/bench_conv2d.py --layers fast_net --warmup 2 --repeat 10  # v1-v3, every fast_net conv
fi

# ---------------------------------------------------------------- 5. accuracy parity
reserve_for
if want parity; then
    stage parity 480 "$PY" benchmarks/parity.py --save
fi

# ---------------------------------------------------------------- results
log "done in $((SECONDS - START))s; summary:"
cat "$SUMMARY" | tee -a "$LOGS/run_gpu.log"
NEW=$(find "$RESULTS" -maxdepth 1 -name '*.json' -newer "$MARK" | sort)
log "records written: ${NEW:-none}"
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$LOGS/run_gpu.log" "$SUMMARY" "$OUT/"
    tar -czf "$OUT/logs.tar.gz" -C "$RESULTS/logs" "$STAMP" 2>/dev/null
    n=3
    for f in $NEW; do
        [ "$n" -lt 8 ] && cp "$f" "$OUT/" && n=$((n + 1))
    done
    log "copied to \$OUT: $(ls "$OUT" | tr '\n' ' ')"
fi
exit "$FAILED"
