#!/usr/bin/env bash
# The GPU battery's kernel cache, built here without a GPU: every gpuconv kernel build compiled for
# Hopper (sm_90, sm_90a for the wgmma files, and their sm_90 builds without wgmma) by the NVRTC
# release the lent machines run, into .gpu-cache/caches.tar.gz. Carried to the device
# (carry=[".gpu-data", ".gpu-cache"]), the battery unpacks it into $HOME first and its precompile
# stage finds every build cached: the device's minutes go to measurements, not to NVRTC.
#
#     make gpu-cache                     # or: bash benchmarks/gpu_cache.sh
#
# The cache's key holds NVRTC's major.minor release (gpuconv.kernels._cached_binary), so the builds
# are found only by the same release: the NVRTC wheel of GPU_NVRTC (default the one the lent
# machines' cupy-cuda13x 14.2 reported, the battery's versions log says which) is installed into a
# temporary directory and preloaded in place of the NVRTC of this environment; its release is
# checked before anything is compiled. A release the device does not run costs nothing there but
# the carried bytes (every build misses and compiles as before). A previous battery run's own
# caches.tar.gz (it also holds CuPy's kernels) serves as well: keep that one where there is one.
#
# Environment: PYTHON (default .venv/bin/python: gpuconv and CuPy importable), GPU_NVRTC (the
# nvidia-cuda-nvrtc wheel version, e.g. 13.0.88), GPU_ARCH (default sm_90), PIP_ARGS (extra pip
# arguments, e.g. an index). Needs PyPI (or PIP_ARGS's index) for the wheel, about 200 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
NVRTC="${GPU_NVRTC:-13.0.88}"
ARCH="${GPU_ARCH:-sm_90}"
DEST=.gpu-cache
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

say() { echo "[gpu-cache] $*"; }
say "installing NVRTC $NVRTC (nvidia-cuda-nvrtc) into a temporary directory"
# shellcheck disable=SC2086
"$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$tmp/nvrtc" ${PIP_ARGS:-} \
    "nvidia-cuda-nvrtc==$NVRTC"
lib=$(find "$tmp/nvrtc" -name 'libnvrtc.so.*' ! -name '*builtins*' ! -name '*.alt.*' | sort | head -n 1)
if [ -z "$lib" ]; then
    say "no libnvrtc.so.* in the nvidia-cuda-nvrtc==$NVRTC wheel (a Linux wheel of NVRTC is needed)" >&2
    exit 1
fi
# python with that NVRTC loaded first (CuPy's loader then takes the one already loaded)
py() { LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}" LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$PY" "$@"; }
export GPUCONV_CUDA_CACHE="$tmp/home/.cache/gpuconv/cuda"  # the battery's own default, under its $HOME
want="${NVRTC%.*}"  # 13.0.88 -> 13.0: what the cache's key holds
got=$(py -c "from cupy_backends.cuda.libs import nvrtc; print('.'.join(map(str, nvrtc.getVersion())))")
if [ "$got" != "$want" ]; then
    say "CuPy loaded NVRTC $got, not the $want of $lib: the builds would carry the wrong key; nothing built" >&2
    exit 1
fi
say "NVRTC $got: compiling every kernel build for $ARCH"
py -m gpuconv precompile --arch "$ARCH"
# conv2d_tc's builds without the wgmma tiles too (sm_90 instead of sm_90a): the battery builds
# those when the tiles fail their probe on the device
GPUCONV_WGMMA=0 py -m gpuconv precompile --arch "$ARCH" | tail -n 1
mkdir -p "$DEST"
tar -czf "$DEST/caches.tar.gz.tmp" -C "$tmp/home" .cache/gpuconv/cuda
mv "$DEST/caches.tar.gz.tmp" "$DEST/caches.tar.gz"
say "$(find "$GPUCONV_CUDA_CACHE" -type f | wc -l) kernel builds (NVRTC $got, $ARCH) in $DEST/caches.tar.gz" \
    "($(du -h "$DEST/caches.tar.gz" | cut -f1)): carry it with carry=[\".gpu-data\", \".gpu-cache\"]"
