#!/usr/bin/env bash
# One call on a lent CUDA machine: build memlens with its CUDA backend for that card, run the
# GPU tests, then the GPU checks and benchmarks. Each step has its own time limit and writes its
# log under $OUT, so a step that fails or runs long costs only itself.
#
#   bash benchmarks/gpu_session.sh [steps...]
#   steps: build tests search flow topk inversion topktests flowtests
#
# Steps default to all, in that order. Needs python3 with torch, triton, pybind11,
# scikit-build-core, cmake and nvcc (the lent machine's image has them).
set -uo pipefail
OUT=${OUT:-/tmp/memlens-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(build tests search flow topk inversion)
cap=$(python3 -c 'import torch; p = torch.cuda.get_device_capability(); print(f"{p[0]}{p[1]}")')
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv \
  | tee "$OUT/nvidia-smi.txt"

run() {  # run NAME SECONDS CMD...: log to $OUT/NAME.log, keep the tail on stdout
  local name=$1 secs=$2
  shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s"
  tail -n 25 "$OUT/$name.log"
  return $rc
}

for s in "${steps[@]}"; do
  case $s in
    build)
      MEMLENS_CUDA=ON CMAKE_ARGS="-DMEMLENS_CUDA_ARCHS=$cap" CMAKE_BUILD_PARALLEL_LEVEL=16 \
        run build 240 python3 -m pip install --no-build-isolation --no-deps -e . || exit 1
      python3 -c 'import memlens, json; print(json.dumps(memlens.build_info()))' ;;
    tests)
      run tests 150 python3 -m pytest -q -p no:cacheprovider -m "cuda or triton" tests ;;
    search)
      run search 200 python3 benchmarks/gpu_bench_search.py --json "$OUT/search-gpu.json" ;;
    flow)
      run flow 150 python3 benchmarks/gpu_check_flow.py --json "$OUT/flow-gpu.json" ;;
    topk)
      run topk 120 python3 benchmarks/gpu_check_topk.py --small ;;
    topktests)
      run topktests 200 python3 -m pytest -q -p no:cacheprovider -rf --tb=line -m "cuda or triton" \
        tests/test_topk_cuda.py tests/test_cuda_backend.py tests/test_topk_triton.py tests/test_triton_topk.py ;;
    flowtests)
      run flowtests 200 python3 -m pytest -q -p no:cacheprovider -rf --tb=line -m "cuda or triton" \
        tests/test_flow_sim_cuda.py tests/test_flow_sim_triton.py tests/test_flow_sim.py ;;
    inversion)
      [ -f benchmarks/gpu_check_inversion.py ] &&
        run inversion 200 python3 benchmarks/gpu_check_inversion.py --json "$OUT/inversion-gpu.json" ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
