#!/usr/bin/env bash
# Runs on a lent GPU machine over the bundle of scripts/gpu_bundle.sh: the device tests (bit-for-bit
# against the CPU references), the same tests under compute-sanitizer memcheck and racecheck, the PyTorch
# end-to-end test on CUDA tensors (when the machine's python3 has torch and the bundled module's Python
# version), and the GPU benchmark (API errors are not reported: NCCL probes kernel images with calls that fail by design;
# dws checks every CUDA status itself). Writes logs and bench JSON to $OUT (or ./gpu-out).
#   bash scripts/gpu_check.sh [PHASE...]   phases: tests sanitize python bench (default: all four, in order).
#   A device call is limited to 10 minutes; the sanitizer phase alone may take most of that, so a session
#   short of time runs the phases in separate calls. Each phase prints its wall time.
#   DWS_GPU_RUNS (default 7)        timed runs per figure (medians)
#   DWS_GPU_SANITIZE=0              skip compute-sanitizer
#   DWS_GPU_FILTER (default Gpu*)   which tests
set -uo pipefail
cd "$(dirname "$0")/.."
O="${OUT:-$PWD/gpu-out}"; mkdir -p "$O"
export LD_LIBRARY_PATH="$PWD/.devlibs/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
BIN=.devlibs/bin
FILTER="${DWS_GPU_FILTER:-Gpu*}"
rc=0
PHASES=("$@"); ((${#PHASES[@]})) || PHASES=(tests sanitize python bench)
for phase in "${PHASES[@]}"; do
  case "$phase" in tests|sanitize|python|bench) ;; *) echo "gpu_check: unknown phase '$phase' (tests, sanitize, python, bench)" >&2; exit 2 ;; esac
done
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$O/device.txt"

phase_tests() {
  "$BIN/dws_tests" --gtest_filter="$FILTER" --gtest_brief=1 2>&1 | tee "$O/tests.log" || rc=1
}
phase_sanitize() {
  if [ "${DWS_GPU_SANITIZE:-1}" != 1 ] || ! command -v compute-sanitizer >/dev/null; then
    echo "skipped: DWS_GPU_SANITIZE=${DWS_GPU_SANITIZE:-1}, compute-sanitizer $(command -v compute-sanitizer || echo 'not found')"
    return
  fi
  for tool in memcheck racecheck; do
    echo "-- compute-sanitizer $tool"
    timeout 280 compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 3 "$BIN/dws_tests" --gtest_filter="$FILTER" --gtest_brief=1 \
      >"$O/sanitizer-$tool.log" 2>&1 || rc=1
    tail -3 "$O/sanitizer-$tool.log"
  done
}
phase_python() {
  # gpu_bundle.sh bundles a module for its build's Python and one for the device's (3.12); python3 here must match one.
  local built have memory
  built=$(ls .devlibs/python/dws/_core.cpython-*.so 2>/dev/null | sed -E 's/.*cpython-([0-9])([0-9]+)-.*/\1.\2/' | tr '\n' ' ')
  have=$(python3 -c 'import sys, torch, numpy; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
  if [ -n "$have" ] && [[ " $built" == *" $have "* ]]; then
    for memory in device host; do
      DWS_E2E_DEVICE=cuda DWS_E2E_SNAPSHOT_MEMORY=$memory PYTHONPATH="$PWD/.devlibs/python" python3 tests/python/torch_e2e_test.py \
        2>&1 | tee "$O/python-cuda-$memory.log" || rc=1
    done
  else
    echo "skipped: modules bundled for Python '${built:-none}', python3 with torch and numpy here is '${have:-none}'" | tee "$O/python-cuda.log"
  fi
}
phase_bench() {
  "$BIN/dws_bench" --gpu --runs "${DWS_GPU_RUNS:-7}" --json "$O/gpu.json" 2>&1 | tee "$O/bench.log" || rc=1
}

for phase in "${PHASES[@]}"; do
  echo "== $phase"
  start=$SECONDS
  "phase_$phase"
  echo "== $phase: $((SECONDS - start)) s" | tee -a "$O/phases.txt"
done
exit $rc
