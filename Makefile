# The two quickstart commands (README) and what they need. Both build .venv on first use.
#   make train [DATA=path/to/cifar-10-batches-py or its parent] [ARGS="--epochs 5 ..."]
#   make test [JOBS=n: pytest workers, default one per core up to 8; JOBS=0 runs in one process]
#   (make test-gpu-path: the GPU's test cases with CuPy faked on the CPU; see below)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# nvrtc: cupy + the NVRTC wheel, so every kernel is compile-checked even without a GPU.
# On a GPU machine with a CUDA 12 driver use EXTRAS=dev,cuda12.
EXTRAS ?= dev,nvrtc
JOBS ?= $(shell $(PYTHON) -c 'import os; print(min(8, os.cpu_count() or 1))')

.PHONY: install train test test-gpu-path clean gpu-data gpu-cache

# The stamp holds the extras installed. A changed pyproject.toml installs those again; `make install`
# with other extras (EXTRAS=dev,cuda12 after a first `make train` installed nvrtc's CUDA 13 CuPy)
# replaces them, CuPy's wheels first (two CuPy builds cannot share one environment).
INSTALLED = $(shell cat $(VENV)/.installed 2>/dev/null)
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(or $(INSTALLED),$(EXTRAS))]'
	echo '$(or $(INSTALLED),$(EXTRAS))' > $@

install: $(VENV)/.installed
	@if [ "$$(cat $(VENV)/.installed)" != '$(EXTRAS)' ]; then \
		echo "replacing the installed extras [$$(cat $(VENV)/.installed)] with [$(EXTRAS)]"; \
		$(PY) -m pip uninstall -q -y cupy-cuda12x cupy-cuda13x 2>/dev/null; \
		$(PY) -m pip install -q -e '.[$(EXTRAS)]' && echo '$(EXTRAS)' > $(VENV)/.installed; \
	fi

train: $(VENV)/.installed
	$(VENV)/bin/gpuconv train $(if $(DATA),--data $(DATA)) $(ARGS)

# One BLAS (and OpenMP) thread per pytest-xdist worker: the workers fill the cores, and a
# multithreaded OpenBLAS on oversubscribed cores spins (test_three_layer_convnet_learns_on_real_images
# on 2 cores: 6 s alone, 27 s beside a second worker, 6 s with one thread each). A value in the
# environment wins; JOBS=0 (one process) leaves BLAS its default.
ONE_THREAD := $(if $(filter 0,$(JOBS)),,$(foreach v,OPENBLAS_NUM_THREADS OMP_NUM_THREADS MKL_NUM_THREADS,$(v)=$${$(v):-1}))

# worksteal: a worker out of tests takes the tail of the other's queue; with the slow tests first
# (tests/conftest.py) the two workers end together instead of one running a long test alone.
# --durations: the slowest tests named in every run's log, to keep the suite's time in view.
test: $(VENV)/.installed
	$(ONE_THREAD) $(PY) -m pytest -q -n $(JOBS) --dist worksteal --durations=20 $(ARGS)

# The GPU's test cases ('cupy' and 'cuda') on a CPU stand-in for CuPy (tests/fake_cupy.py, the kernels
# on the simulator): what a GPU's test stage would fail on in gpuconv's Python path or a test's own,
# found before a GPU runs it. No GPU run; the cases that need what the stand-in lacks skip, saying so.
test-gpu-path: $(VENV)/.installed
	GPUCONV_FAKE_CUPY=1 $(ONE_THREAD) $(PY) -m pytest -q -n $(JOBS) --dist worksteal -k "cupy or cuda" $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info

# The real CIFAR-10 subset, to carry to a lent GPU (its machine has no ../shared): run_gpu.sh
# points the tests and the parity run at .gpu-data when it is there.
SUBSET ?= ../shared/data/cifar10-subset
gpu-data:
	rm -rf .gpu-data
	mkdir -p .gpu-data
	cp -r $(SUBSET)/cifar-10-batches-py .gpu-data/

# Every kernel build for the lent GPUs (Hopper) compiled here by their NVRTC release, so the
# battery's precompile stage finds them cached (benchmarks/gpu_cache.sh; needs PyPI for the NVRTC
# wheel): carry ".gpu-cache" with ".gpu-data".
gpu-cache: $(VENV)/.installed
	PYTHON=$(PY) bash benchmarks/gpu_cache.sh
