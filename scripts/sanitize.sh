#!/usr/bin/env bash
# Sanitizer builds of the test suite (clang, separate build trees; the Python module is left out, as a
# sanitized extension cannot load into an unsanitized interpreter).
#   bash scripts/sanitize.sh asan   ASan+UBSan (+ libFuzzer coverage) build of everything in build-asan/:
#                                   the whole ctest suite (SeaweedFS and interop tests included), then
#                                   the fuzz targets' regression inputs and a short fuzz run (fuzz/run.sh,
#                                   DWS_FUZZ_SECONDS per target, default 30, one target per core).
#                                   scripts/test.sh runs this.
#   bash scripts/sanitize.sh tsan   ThreadSanitizer build in build-tsan/ of the suites that run threads:
#                                   diff/hash/encode pools, crash-safe apply, publish/pull/follow and the
#                                   notification listener, several writers, the S3 driver's parallel parts.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-asan}"
if ! command -v clang++ >/dev/null || [ ! -e "$(clang++ -print-resource-dir)/lib/linux/libclang_rt.fuzzer-x86_64.a" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clang libclang-rt-dev >/dev/null
fi
PY="${DWS_PYTHON:-$PWD/.venv/bin/python}"  # scripts/setup.sh made it (SeaweedFS, boto3, safetensors)
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# A build tree configured with another compiler cannot switch; start it over.
fresh() { if [ -f "$1/CMakeCache.txt" ] && ! grep -q '^CMAKE_CXX_COMPILER:[A-Z]*=.*clang' "$1/CMakeCache.txt"; then rm -rf "$1"; fi; }
case "$MODE" in
  asan)
    B=build-asan
    fresh "$B"
    CC=clang CXX=clang++ cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDWS_FUZZ=ON -DDWS_CUDA=OFF \
      -DDWS_PYTHON_MODULE=OFF -DDWS_BUILD_BENCH=OFF -DDWS_PYTHON="$PY" >/dev/null
    cmake --build "$B" -j "$(nproc)"
    export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1}"
    (cd "$B" && DWS_REQUIRE_S3=1 ctest -j "$(nproc)" --output-on-failure --timeout 1800)
    # One target per core: each still gets DWS_FUZZ_SECONDS of its own core.
    DWS_FUZZ_BUILD="$B" DWS_FUZZ_PARALLEL="${DWS_FUZZ_PARALLEL:-$(nproc)}" bash fuzz/run.sh "${DWS_FUZZ_SECONDS:-30}"
    ;;
  tsan)
    B=build-tsan
    fresh "$B"
    CC=clang CXX=clang++ cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDWS_TSAN=ON -DDWS_CUDA=OFF \
      -DDWS_PYTHON_MODULE=OFF -DDWS_BUILD_BENCH=OFF -DDWS_PYTHON="$PY" >/dev/null
    cmake --build "$B" -j "$(nproc)" --target dws_tests dws_cli
    export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}"
    (cd "$B" && DWS_REQUIRE_S3=1 ctest -j "$(nproc)" --output-on-failure --timeout 1800 \
      -R 'Diff|Digest|Trajectory|RoundTrip|Native|Codec|Track|CrashSafety|Sync|Notify|S3|Store|Simulate|Auth|s3.server')
    ;;
  *) echo "usage: scripts/sanitize.sh asan|tsan" >&2; exit 2 ;;
esac
