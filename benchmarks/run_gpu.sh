#!/usr/bin/env bash
# The GPU battery: every check of gpuconv on a real GPU, in ONE call of the device tool (at most
# 10 minutes a command, 15 minutes of device time a session, machine start included). From the
# repository root, after `make gpu-data` here (the real CIFAR-10 subset, which the device machine
# lacks), with carry=[".gpu-data"] (and ".gpu-cache" when a previous run's caches are kept):
#
#     PYTHONPATH=. bash benchmarks/run_gpu.sh          # run it under a 540 s limit
#
# Stages, in order, each capped in time inside one overall budget (GPU_RUN_BUDGET_S, default 480 s);
# a stage gets min(its cap, what is left), and is skipped (a failure) when under 15 s are left. The
# order is what a first look at a GPU needs most, first: a run cut short (a slow machine start, a
# stage at its cap) loses the stages measured before, last. A group name (STAGES) in brackets.
#   [smoke]   versions (and the Python modules the battery imports that are missing); every kernel
#             build compiled at once (gpuconv precompile, in parallel); on a
#             Hopper GPU the wgmma tiles against NumPy in a process of their own, the rest of the
#             battery without them (GPUCONV_WGMMA=0, conv2d_tc built again without wgmma) if they
#             fail; every
#             kernel file loads; every kernel launched once against
#             NumPy (benchmarks/sanitize_gpu.py), family by family. A failed check is reported and
#             the battery goes on. On a machine without a usable GPU it ends here, in seconds.
#   [tests]   pytest -m gpu in parallel (xdist), tests/test_graphs.py, test_wgmma.py and
#             test_autotune.py first, every test named as it ends, a per-test timeout,
#             GPUCONV_REQUIRE_GPU=1: a GPU test that skips counts as failed
#   [conv]    bench_conv2d: every conv2d variant and direction at every fast_net layer, batch 512, vs
#             cuDNN through PyTorch in the same precision and layout (fp32 NCHW with TF32 off; TF32
#             and bf16 channels_last, where the tensor-core kernels run); then compare_conv: each
#             layer's speedup over this GPU's previous conv2d record (another GPU's where it has
#             none), and the cells at 0.8x cuDNN
#   [airbench] bench_airbench: the airbench94 recipe's seconds on 50,000 synthetic images, fp32 and
#             bf16, eager and with every step replayed as a CUDA graph (after checking the two train
#             alike), against the same recipe in PyTorch eager (benchmarks/airbench_torch.py); then
#             `gpuconv train --recipe airbench94` (bf16 here) end to end on the real subset (GELU,
#             the reflect translation, lookahead, TTA level 2): its log holds seconds per epoch and
#             the accuracy; then the same with --cuda-graph
#   [conv]    the airbench94 network's layers as bench_conv2d's above, in bf16 at its batch 1024,
#             and compare_conv on them; then bench_conv2d_grouped: the grouped/dilated kernels at
#             MobileNetV2's depthwise and ResNeXt29's grouped 3x3s, and ResNet-18's stride-2 3x3s (the
#             dense tiles' strided data gradient; batch 128, fp32 NCHW and bf16 channels_last) against
#             cuDNN, GB/s and TFLOP/s
#   [step]    bench_step: images/s of a training step vs PyTorch eager, eager and replayed as a
#             CUDA graph (checked bit for bit against eager steps first); no host transfer, no sync
#             (syncguard), the memory pool stops growing; the fast_net bf16 step again with its
#             convolutions autotuned (GPUCONV_AUTOTUNE=1: every tensor-core tile timed per layer,
#             wgmma's included; the record, *-autotune.json, holds the choices and their times)
#   [sanitizer] compute-sanitizer memcheck and racecheck over every kernel at small shapes
#   then what was measured before, in what time is left:
#   [step]    profile_step: the step's milliseconds per layer kind, forward and backward (CUDA
#             events), of fast_net and of the airbench94 network
#   [conv]    bench_ops --skip-conv (pooling, ReLU, batch and group norm, the channel gate, the layout
#             conversions: GB/s against a device-to-device copy); bench_conv2d --precisions bf16_nchw
#             tf32_nchw: the tensor-core tiles on NCHW arrays (conversions included) vs cuDNN in NCHW
#   [step]    bench_cs231n: seconds per iteration of a student-style CS231n ThreeLayerConvNet, CPU
#             vs use_device('cuda'), NumPy in and out
#   [epoch]   bench_epoch: one device-resident epoch of 50,000 synthetic CIFAR-shaped images
#   [sanitizer] initcheck and synccheck, when 150 s are left
#   [parity]  CPU vs GPU training on the real subset (benchmarks/parity.py), shortened to fit
#   [ncu]     Nsight Compute over one fast_net layer's three conv directions, gpuconv's kernels and
#             cuDNN's (benchmarks/profile_kernels.py): throughput, occupancy, stalls, bank conflicts
#   [airbench] bench_airbench --recipe airbench96: one bf16 epoch of 25,000 synthetic images,
#             validated against and timed beside the same recipe in PyTorch eager; then
#             bench_airbench --recipe airbench94_muon: two bf16 epochs of 20,000 images, eager, as
#             a CUDA graph (Muon's lrs on the device, its Newton-Schulz GEMMs on gpuconv's kernels)
#             and PyTorch's
#             bench_airbench --recipe airbench96_faster: one bf16 epoch of 25,000 images, the proxy's
#             pass over them and the main network on the half it selects, against PyTorch's
#   [step]    bench_models: the training step of a few `gpuconv train --model` networks (ResNet18,
#             MobileNetV2, ShuffleNetV2, DenseNet121) at batch 128, bf16 and fp32, against the same
#             network in PyTorch eager, each validated against float64 first (the record saved after
#             each network)
#   [caches]  CuPy's and gpuconv's kernel caches, tarred for the next run
# STAGES="tests conv" (say) runs the smoke stage and those groups; default: all of them.
#
# What comes back: $OUT (the device tool's folder, at most 8 files) is rewritten after EVERY stage,
# so a run cut short still returns what finished (and the running stage's output so far, in
# running_stage.log, every GPU_RUN_PUBLISH_EVERY_S=10 s): summary.txt (one line a stage; a stage that did
# not pass with its log's last line: pytest's counts, the exception, where a cut stage was),
# run_gpu.log (all output), records.tar.gz (the JSON records of this run and the per-stage logs,
# to unpack into benchmarks/results/), caches.tar.gz (last stage). Exit status 0 when every stage
# passed.
#
# Environment: PYTHON (default python3, the image's interpreter with cupy and torch),
# GPU_RUN_BUDGET_S, GPUCONV_BENCH_RESULTS (default benchmarks/results), STAGES, GPU_RUN_CACHES (the
# compiled kernels to unpack into $HOME first, default .gpu-cache/caches.tar.gz); GPUCONV_WGMMA=0
# runs everything without the wgmma tiles (tcwg, tcwg256, tcwgn64, tcwgm64), as the battery itself
# does when they fail their probe; GPU_RUN_CAPS="NAME=SECONDS ..." sets those stages' caps for this
# run (a cap a GPU showed too short, e.g. GPU_RUN_CAPS="bench_models=120", without editing the script).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-.}" PYTHONUNBUFFERED=1 GPUCONV_REQUIRE_GPU=1
if [ -d .gpu-data/cifar-10-batches-py ]; then
    export GPUCONV_DATA="$PWD/.gpu-data" GPUCONV_TEST_DATA="$PWD/.gpu-data/cifar-10-batches-py"
fi
export GPUCONV_CUDA_CACHE="${GPUCONV_CUDA_CACHE:-$HOME/.cache/gpuconv/cuda}"
export CUPY_CACHE_DIR="${CUPY_CACHE_DIR:-$HOME/.cupy/kernel_cache}"
CACHES="${GPU_RUN_CACHES:-.gpu-cache/caches.tar.gz}"  # compiled kernels (a previous run's, or make gpu-cache's)
CARRIED="none (no $CACHES: make gpu-cache builds one without a GPU)"
if [ -f "$CACHES" ]; then  # no NVRTC time here for what it holds
    mkdir -p "$GPUCONV_CUDA_CACHE" "$CUPY_CACHE_DIR"
    tar -xzf "$CACHES" -C "$HOME" 2>/dev/null || true
    CARRIED="$(find "$GPUCONV_CUDA_CACHE" -type f 2>/dev/null | wc -l) gpuconv and $(find "$CUPY_CACHE_DIR" -type f \
2>/dev/null | wc -l) CuPy kernel files ($CACHES; the precompile stage says which builds it found)"
fi
PY="${PYTHON:-python3}"
STAGES="${STAGES:-all}"
CAPS="${GPU_RUN_CAPS:-}"
for c in $CAPS; do  # checked before anything runs: a typo would otherwise leave a cap as it was, silently
    [[ "$c" =~ ^[a-z0-9_]+=[0-9]+$ ]] || {
        echo "run_gpu.sh: GPU_RUN_CAPS holds '$c', not NAME=SECONDS (a stage's name as summary.txt shows it, e.g." \
             "GPU_RUN_CAPS=\"bench_models=120 tests=200\")" >&2
        exit 2
    }
done
CAPPED=" "  # the stages GPU_RUN_CAPS named that ran, to name the ones it named in vain at the end
BUDGET="${GPU_RUN_BUDGET_S:-480}"
KEEP_FOR_CACHES=10
EVERY="${GPU_RUN_PUBLISH_EVERY_S:-10}"  # seconds between copies of a running stage's output into $OUT
START=$SECONDS
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS="${GPUCONV_BENCH_RESULTS:-benchmarks/results}"  # the benchmark scripts honour the same variable
LOGS="$RESULTS/logs/$STAMP"
mkdir -p "$LOGS"
MARK="$LOGS/.start"
touch "$MARK"
SUMMARY="$LOGS/summary.txt"
: >"$SUMMARY"
FAILED=0

want() { [ "$STAGES" = all ] || case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
log() { echo "[run_gpu $(date -u +%H:%M:%S) +$((SECONDS - START))s] $*" | tee -a "$LOGS/run_gpu.log"; }
left() { echo $((BUDGET - KEEP_FOR_CACHES - (SECONDS - START))); }
# why STATUS LOG: for a stage that did not pass, its log's last line (pytest's counts, an exception,
# where a cut stage was), so that summary.txt alone says what went wrong; nothing for one that passed.
why() {
    [ "$1" = ok ] && return 0
    local last
    last=$(grep -v '^[[:space:]]*$' "$2" 2>/dev/null | tail -n 1 | tr -s ' \t=' ' ' | sed 's/^ //; s/ $//' | cut -c1-160)
    [ "$1" = TIMEOUT ] && last="last output: ${last:-none}"
    echo "  ${last:-(no output)}"
}

publish() {  # everything so far into $OUT: called after every stage
    [ -n "${OUT:-}" ] || return 0
    mkdir -p "$OUT"
    cp "$SUMMARY" "$LOGS/run_gpu.log" "$OUT/" 2>/dev/null
    local records
    records=$(cd "$RESULTS" && find . -maxdepth 1 -name '*.json' -newer "logs/$STAMP/.start" | sort)
    # shellcheck disable=SC2086
    tar -czf "$OUT/records.tar.gz.tmp" -C "$RESULTS" $records "logs/$STAMP" 2>/dev/null &&
        mv "$OUT/records.tar.gz.tmp" "$OUT/records.tar.gz"
}

# CuPy's and gpuconv's kernel caches into $OUT/caches.tar.gz (whole, or the previous one kept): after
# the precompile stage, which builds every gpuconv kernel, so a call cut short still hands them on,
# and again at the end with CuPy's kernels of every stage.
save_caches() {
    want caches && [ -n "${OUT:-}" ] || return 0
    mkdir -p "$OUT" "$CUPY_CACHE_DIR" "$GPUCONV_CUDA_CACHE"
    (cd "$HOME" && tar -czf "$OUT/caches.tar.gz.tmp" --ignore-failed-read \
        "${CUPY_CACHE_DIR#"$HOME"/}" "${GPUCONV_CUDA_CACHE#"$HOME"/}" 2>/dev/null) &&
        mv "$OUT/caches.tar.gz.tmp" "$OUT/caches.tar.gz"
    rm -f "$OUT/caches.tar.gz.tmp"
    log "caches: $(du -h "$OUT/caches.tar.gz" 2>/dev/null | cut -f1) (carry as .gpu-cache/caches.tar.gz next time)"
}

# stage NAME CAP COMMAND...: runs with min(CAP, time left) as its limit; one summary line.
stage() {
    local name="$1" cap="$2"
    shift 2
    local limit rc t0=$SECONDS status="ok" c
    for c in $CAPS; do
        [ "${c%%=*}" = "$name" ] && cap="${c#*=}" && CAPPED+="$name "
    done
    limit=$(left)
    [ "$cap" -lt "$limit" ] && limit=$cap
    if [ "$limit" -lt 15 ]; then
        log "SKIP $name: only $(left)s of the ${BUDGET}s budget left"
        printf '%-14s %-28s %4ds  %s\n' "SKIPPED" "$name" 0 "$(left)s of the budget left" >>"$SUMMARY"
        FAILED=1
        publish
        return 1
    fi
    log "START $name (limit ${limit}s): $*"
    # The stage's output so far into $OUT/running_stage.log every few seconds: a call cut by the
    # device's own limit (a slow machine start leaves less than the budget) returns the stage it
    # was in as far as it got (pytest's tests that ran, bench_airbench's sides timed).
    # Ended by TERM: during its sleep at once (the sleep with it: one left running would hold the
    # battery's stdout open), during a copy once the copy is done (a copy landing after the stage's
    # end would leave a running_stage.log of a stage that has ended).
    local watcher=""
    if [ -n "${OUT:-}" ]; then
        (nap=""
         trap 'kill "$nap" 2>/dev/null; wait "$nap" 2>/dev/null; exit 0' TERM
         while sleep "$EVERY" & nap=$!; wait "$nap"; do
            { echo "== $name, running (limit ${limit}s): $*"; cat "$LOGS/$name.log"; } >"$OUT/running_stage.log.tmp" 2>/dev/null &&
                mv "$OUT/running_stage.log.tmp" "$OUT/running_stage.log"
        done) &
        watcher=$!
    fi
    timeout --kill-after=5 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    if [ -n "$watcher" ]; then
        kill "$watcher" 2>/dev/null
        wait "$watcher" 2>/dev/null
        rm -f "$OUT/running_stage.log" "$OUT/running_stage.log.tmp"
    fi
    cat "$LOGS/$name.log" >>"$LOGS/run_gpu.log"
    tail -n 25 "$LOGS/$name.log"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT"; elif [ "$rc" -ne 0 ]; then status="FAILED(rc=$rc)"; fi
    [ "$status" = "ok" ] || FAILED=1
    printf '%-14s %-28s %4ds%s\n' "$status" "$name" $((SECONDS - t0)) "$(why "$status" "$LOGS/$name.log")" | tee -a "$SUMMARY"
    publish
    [ "$status" = "ok" ]
}

# ---------------------------------------------------------------- smoke
log "versions"
{
    timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 ||
        echo "nvidia-smi: not found or no answer"
    timeout -k 5 60 "$PY" - <<'EOF' 2>&1
import importlib.util, platform, numpy
print("python", platform.python_version(), "numpy", numpy.__version__)
# What the battery imports (nothing is pip-installed on a lent GPU: the image's packages are all there is)
needed = ("cupy", "torch", "ml_dtypes", "pytest", "xdist", "pytest_timeout", "hypothesis", "tqdm", "pynvml",
          "matplotlib", "PIL")
print("python modules missing:", ", ".join(m for m in needed if importlib.util.find_spec(m) is None) or "none")
try:
    import cupy as cp
    from cupy_backends.cuda.libs import nvrtc
    print("cupy", cp.__version__, "CUDA runtime", cp.cuda.runtime.runtimeGetVersion(),
          "driver", cp.cuda.runtime.driverGetVersion(), "devices", cp.cuda.runtime.getDeviceCount(),
          "NVRTC", ".".join(map(str, nvrtc.getVersion())), "(the release make gpu-cache must build with)")
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
    echo "kernel caches carried: $CARRIED"
    echo "data: ${GPUCONV_DATA:-none: no .gpu-data/cifar-10-batches-py (make gpu-data, carry .gpu-data); the real-subset \
stages and tests will fail}"
    [ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || echo "git: tracked files differ from that commit"
} 2>&1 | tee "$LOGS/versions.log" >>"$LOGS/run_gpu.log"
cat "$LOGS/versions.log"
publish  # the versions, before anything can hang
# (nothing before the first stage runs untimed: a driver that hangs ends the battery with a reason)
if ! timeout -k 5 60 "$PY" -c "from gpuconv import backend; raise SystemExit(0 if backend.cuda_available() else 1)" \
    2>/dev/null; then
    reason=$(timeout -k 5 60 "$PY" -c 'from gpuconv import backend; print(backend.cuda_status())' 2>&1 | tail -n 1)
    [ -n "$reason" ] || reason="no answer from CUDA in 60 s"
    log "no usable GPU: $reason"
    printf '%-14s %-28s %4ds  %s\n' "FAILED" "smoke: no usable GPU" $((SECONDS - START)) "$(echo "$reason" | cut -c1-160)" >>"$SUMMARY"
    publish
    log "stopping: nothing after the smoke stage can pass"
    exit 1
fi
# Every kernel build for this GPU at once, in parallel (NVRTC, one compile per core): the stages
# below then load binaries instead of compiling module by module (nothing when the carried caches
# have them). Its time is its longest build's, whatever the cores: conv2d_tc's sm_90a builds, with
# every wgmma tile in them, took 53 to 93 s each with NVRTC 13.5 on a shared 2-core host (the sm_80
# builds, without wgmma, 20 s all 59); cut short, the wgmma probe below would compile them inside
# its own 45 s, time out, and switch the tiles off for the whole battery.
stage precompile 150 "$PY" -m gpuconv precompile || log "precompile failed; each module compiles at first use"
save_caches
# The Hopper wgmma tiles first, in a process of their own: an illegal instruction there would end
# every later stage that reaches them (bench_conv2d times them, autotuning tries them). If they
# fail, the rest of the battery runs without them (GPUCONV_WGMMA=0: tc128 where one is asked for).
HOPPER="from gpuconv import kernels; raise SystemExit(0 if kernels.wgmma_available('cuda', 0) else 1)"
if [ "${GPUCONV_WGMMA:-1}" != 0 ] && timeout -k 5 60 "$PY" -c "$HOPPER" 2>/dev/null; then
    if ! stage wgmma_probe 45 "$PY" benchmarks/sanitize_gpu.py --only conv_tc \
        --variants tcwg tcwg256 tcwgn64 tcwgm64; then
        export GPUCONV_WGMMA=0
        log "the wgmma tiles failed (wgmma_probe.log): every later stage runs without them (GPUCONV_WGMMA=0)"
        # which builds conv2d_tc for sm_90, without wgmma: its builds at once, not one by one inside
        # the first stages that launch them
        stage precompile_without_wgmma 90 "$PY" -m gpuconv precompile && save_caches
    fi
fi
if ! stage smoke 90 "$PY" benchmarks/sanitize_gpu.py; then
    # Every kernel family is checked on its own (one crash does not hide the rest), so a failed
    # check is a finding, not a dead GPU: the later stages still say what works.
    log "the smoke stage failed (above); going on: each later stage stands on its own"
fi

# The stages in the order of what a first look at this GPU most needs, so that a run cut short (a
# slow machine start, a stage at its cap) loses the nice-to-haves, not the first measurements: the
# GPU tests (CUDA-graph capture first), conv2d against cuDNN and against the last record, the
# airbench94 recipe eager, as CUDA graphs and in PyTorch; then the step, the sanitizers, the rest.

# ---------------------------------------------------------------- the GPU tests
has_module() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }
if want tests; then
    # Verbose, so that a stage cut at its cap still names each test that ran; every test reported
    # (no --maxfail: one kernel's sticky CUDA error fails the rest of its worker's tests, and
    # stopping there would hide every other file's results). A hung test is ended by a thread
    # (a hang inside a CUDA call never returns to a signal handler) and named as its worker's crash.
    PYTEST=(-m gpu -v --tb=short -p no:cacheprovider -o addopts=-ra)
    # BLAS threads: the cores shared among the workers (as `make test` does; NumPy's references on
    # OpenBLAS's default, a thread per core in each of 8 workers, spin against each other: one test
    # 6 s alone, 27 s beside a second worker on 2 cores), unless the environment says
    BLAS=()
    if has_module xdist; then
        PYTEST+=(-n 8)
        per=$(($(nproc 2>/dev/null || echo 8) / 8))
        [ "$per" -ge 1 ] || per=1
        for v in OPENBLAS_NUM_THREADS OMP_NUM_THREADS MKL_NUM_THREADS; do BLAS+=("$v=${!v:-$per}"); done
    else
        log "pytest-xdist missing: the GPU tests run in one process"
    fi
    if has_module pytest_timeout; then PYTEST+=(--timeout 60 --timeout-method thread)
    else log "pytest-timeout missing: no per-test timeout (only the stage's cap)"; fi
    # the first hardware runs first (collection order is the order xdist hands tests out in)
    FIRST=()
    for f in tests/test_graphs.py tests/test_wgmma.py tests/test_autotune.py; do [ ! -f "$f" ] || FIRST+=("$f"); done
    REST=()
    for f in tests/test_*.py; do case " ${FIRST[*]} " in *" $f "*) ;; *) REST+=("$f") ;; esac; done
    stage tests 150 env "${BLAS[@]}" "$PY" -m pytest "${PYTEST[@]}" "${FIRST[@]}" "${REST[@]}"
fi

# ---------------------------------------------------------------- benchmarks (each validates first, then times)
# compare_conv KIND: what each layer and direction of the conv2d record this run just wrote gained
# since the last one of this GPU (or, on a GPU with none, of the newest other GPU: its columns
# against cuDNN still compare). A report, not a pass/fail stage.
compare_conv() {
    local new_conv
    if [ "$1" = airbench94 ]; then
        new_conv=$(find "$RESULTS" -maxdepth 1 -name 'conv2d-*-airbench94.json' -newer "$MARK" | sort | tail -n 1)
    else
        new_conv=$(find "$RESULTS" -maxdepth 1 -name 'conv2d-*.json' ! -name '*-airbench*.json' -newer "$MARK" |
            sort | tail -n 1)
    fi
    [ -n "$new_conv" ] || return 0
    timeout 30 "$PY" benchmarks/compare_conv.py "$new_conv" --other-gpu-ok >"$LOGS/compare_conv_$1.log" 2>&1 || true
    tail -n 40 "$LOGS/compare_conv_$1.log"
    cat "$LOGS/compare_conv_$1.log" >>"$LOGS/run_gpu.log"
    publish
}
if want conv; then
    stage bench_conv2d 110 "$PY" benchmarks/bench_conv2d.py --layers fast_net --warmup 2 --repeat 10
    compare_conv fast_net
fi
# ---------------------------------------------------------------- the airbench94 recipe end to end
if want airbench; then
    # bf16 first (the recipe's precision, and a third of fp32's time): a run cut at the cap keeps it;
    # each side's seconds are in the log as they come, the record at the end
    stage bench_airbench 200 "$PY" benchmarks/bench_airbench.py --precisions bf16,fp32 --save
    # out of the records, in a fresh directory of our own (a fixed name under /tmp could be another
    # user's, with links planted in it), removed afterwards
    airbench_out=$(mktemp -d "${TMPDIR:-/tmp}/gpuconv-airbench.XXXXXX")
    stage airbench 120 "$PY" -m gpuconv train --recipe airbench94 --device cuda --data "${GPUCONV_DATA:-.gpu-data}" \
        --out "$airbench_out/eager" --no-progress
    # the same run with every step replayed as a CUDA graph, through the command line's flag
    stage airbench_graph 120 "$PY" -m gpuconv train --recipe airbench94 --device cuda --data "${GPUCONV_DATA:-.gpu-data}" \
        --out "$airbench_out/graph" --no-progress --cuda-graph
    rm -rf "$airbench_out"
fi
if want conv; then
    stage bench_conv2d_airbench 45 "$PY" benchmarks/bench_conv2d.py --layers airbench94 --batch 1024 --precisions bf16 \
        --variants tc tc128 tc128w tcwg tcwg256 tcwgn64 tcwgm64 --warmup 2 --repeat 10
    compare_conv airbench94
    stage bench_conv2d_grouped 50 "$PY" benchmarks/bench_conv2d_grouped.py --save --warmup 3 --repeat 20
fi
if want step; then
    stage bench_step 70 "$PY" benchmarks/bench_step.py --save --warmup 5 --repeat 20
    stage bench_step_autotune 45 env GPUCONV_AUTOTUNE=1 \
        "$PY" benchmarks/bench_step.py --save --models fast_net --precisions bf16 --warmup 5 --repeat 20
fi

# ---------------------------------------------------------------- compute-sanitizer
SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)"
# sanitizer TOOL...: each under compute-sanitizer over every kernel at small shapes (no --leak-check:
# CuPy frees some arrays only at interpreter exit, which would read as leaks)
sanitizer() {
    for tool in "$@"; do
        stage "sanitizer_$tool" 40 "$SANITIZER" --tool "$tool" --error-exitcode 99 --print-limit 20 \
            "$PY" benchmarks/sanitize_gpu.py --no-guard
    done
}
if want sanitizer; then
    if [ -n "$SANITIZER" ]; then
        "$SANITIZER" --version 2>&1 | tail -n 1 | tee -a "$LOGS/versions.log"
        sanitizer memcheck racecheck
    else
        log "compute-sanitizer not found (PATH, /usr/local/cuda*/bin)"
        printf '%-14s %-28s %4ds\n' "FAILED" "sanitizer: not installed" 0 >>"$SUMMARY"
        FAILED=1
    fi
fi

# ---------------------------------------------------------------- measured before: again, in what time is left
if want step; then
    stage profile_step 60 "$PY" benchmarks/profile_step.py --models fast_net airbench94 --host-top 25 --save
fi
if want conv; then
    stage bench_ops 40 "$PY" benchmarks/bench_ops.py --save --skip-conv --warmup 3 --repeat 20  # conv: above
    # the tensor-core tiles fed NCHW arrays (each call converting its operands and output) vs cuDNN in NCHW
    stage bench_conv2d_nchw 40 "$PY" benchmarks/bench_conv2d.py --layers cifar --precisions bf16_nchw tf32_nchw \
        --variants tc128 tcwg --warmup 2 --repeat 10
fi
if want step; then
    stage bench_cs231n 30 "$PY" benchmarks/bench_cs231n.py --save --warmup 2 --repeat 5
fi
if want epoch; then
    stage bench_epoch 60 "$PY" benchmarks/bench_epoch.py --save --warmup 3 --repeat 1
fi
if want sanitizer && [ -n "$SANITIZER" ]; then
    if [ "$(left)" -ge 150 ]; then sanitizer initcheck synccheck; else log "no time for initcheck and synccheck"; fi
fi

# ---------------------------------------------------------------- accuracy parity, CPU vs GPU
if want parity; then
    stage parity 100 "$PY" benchmarks/parity.py --save --epochs 4
fi

# ---------------------------------------------------------------- Nsight Compute: one layer, both sides
NCU="$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -n 1)"
if want ncu; then
    if [ -n "$NCU" ]; then
        # What bounds the tensor-core kernels beside cuDNN's: bf16 128->256 at 16x16, batch 512.
        stage ncu 90 bash -c 'for side in gpuconv torch; do "$0" --profile-from-start off --section SpeedOfLight \
            --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis --section WarpStateStats \
            --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
            "$1" benchmarks/profile_kernels.py --layer 128,256,16 --precision bf16 --side "$side" || exit 1; done' \
            "$NCU" "$PY"
    else
        log "ncu not found (PATH, /usr/local/cuda*/bin)"
        printf '%-14s %-28s %4ds\n' "FAILED" "ncu: not installed" 0 >>"$SUMMARY"
        FAILED=1
    fi
fi

# ---------------------------------------------------------------- airbench96, airbench94_muon, airbench96_faster, in what time is left
if want airbench; then
    stage bench_airbench96 60 "$PY" benchmarks/bench_airbench.py --recipe airbench96 --epochs 1 --images 25000 \
        --precisions bf16 --save
    stage bench_airbench_muon 45 "$PY" benchmarks/bench_airbench.py --recipe airbench94_muon --epochs 2 \
        --images 20000 --precisions bf16 --save
    stage bench_airbench96_faster 60 "$PY" benchmarks/bench_airbench.py --recipe airbench96_faster --epochs 1 \
        --images 25000 --precisions bf16 --save
fi

# ---------------------------------------------------------------- the model zoo's step, in what time is left
if want step; then
    stage bench_models 60 "$PY" benchmarks/bench_models.py --models resnet18 mobilenetv2 shufflenetv2 densenet121 \
        --batch 128 --precisions bf16 fp32 --warmup 2 --repeat 5 --save
fi

# ---------------------------------------------------------------- kernel caches for the next run
save_caches

for c in $CAPS; do
    case "$CAPPED" in *" ${c%%=*} "*) ;; *) log "GPU_RUN_CAPS named ${c%%=*}, which is no stage that ran: its cap set nothing" ;; esac
done
log "done in $((SECONDS - START))s; summary:"
tee -a "$LOGS/run_gpu.log" <"$SUMMARY"
publish
[ -n "${OUT:-}" ] && log "in \$OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$FAILED"
