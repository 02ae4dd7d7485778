#!/usr/bin/env bash
# Runs on a lent GPU machine over the bundle of scripts/gpu_bundle.sh: the device tests (bit-for-bit
# against the CPU references), the same tests under compute-sanitizer memcheck and racecheck, and the
# GPU benchmark (API errors are not reported: NCCL probes kernel images with calls that fail by design;
# dws checks every CUDA status itself). Writes logs and bench JSON to $OUT (or ./gpu-out).
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
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$O/device.txt"
echo "== tests ($FILTER)"
"$BIN/dws_tests" --gtest_filter="$FILTER" --gtest_brief=1 2>&1 | tee "$O/tests.log" || rc=1
if [ "${DWS_GPU_SANITIZE:-1}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer $tool"
    timeout 300 compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 3 "$BIN/dws_tests" --gtest_filter="$FILTER" --gtest_brief=1 \
      >"$O/sanitizer-$tool.log" 2>&1 || rc=1
    tail -3 "$O/sanitizer-$tool.log"
  done
fi
echo "== bench"
"$BIN/dws_bench" --gpu --runs "${DWS_GPU_RUNS:-7}" --json "$O/gpu.json" 2>&1 | tee "$O/bench.log" || rc=1
exit $rc
