#!/usr/bin/env bash
# Packs a CUDA build for a lent GPU machine, which has the driver but none of dws's build dependencies
# and no package registry: copies build/'s test, bench and CLI binaries and the shared libraries they need
# (all but glibc's own) into .devlibs/ (ignored by git), for the device tool's `carry`; and the Python package
# as built (build/python/dws, its native module for this build's Python) into .devlibs/python.
#   bash scripts/gpu_bundle.sh [BUILD_DIR]     then on the device: bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
B="${1:-build}"
cmake --build "$B" -j "$(nproc)" >/dev/null
rm -rf .devlibs && mkdir -p .devlibs/bin .devlibs/lib
cp "$B/tests/dws_tests" "$B/dws_bench" "$B/dws" .devlibs/bin/
if [ -d "$B/python/dws" ]; then
  mkdir -p .devlibs/python && cp -r "$B/python/dws" .devlibs/python/
fi
for so in $(ldd .devlibs/bin/* .devlibs/python/dws/*.so 2>/dev/null | awk '/=> \//{print $3}' | sort -u); do
  case "$(basename "$so")" in
    libc.so.*|libm.so.*|libstdc++.so.*|libgcc_s.so.*|libdl.so.*|libpthread.so.*|librt.so.*|libresolv.so.*|ld-linux*) ;;  # the device's own (newer, compatible)
    *) cp -L "$so" .devlibs/lib/ ;;
  esac
done
grep -qx '/.devlibs/' .git/info/exclude 2>/dev/null || echo '/.devlibs/' >> .git/info/exclude
du -sh .devlibs
