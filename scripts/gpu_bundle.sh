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
# The lent machines' python3 (the one with PyTorch) is Python 3.12, and a native module only imports into the
# Python version it was built for: build one more _core for that version (in build-device-py/, with a venv of
# that Python holding nanobind) and bundle both. DWS_DEVICE_PYTHON names the interpreter (any pythonX.Y here of
# the device's version); without one found here, only the module of $B is bundled and gpu_check.sh says so.
DEVPY="${DWS_DEVICE_PYTHON:-}"
if [ -z "$DEVPY" ]; then
  for c in "$(command -v python3.12 2>/dev/null || true)" "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if [ -n "$c" ] && [ -x "$c" ] && "$c" -c '' 2>/dev/null; then DEVPY="$c"; break; fi
  done
fi
if [ -n "$DEVPY" ] && [ -d .devlibs/python/dws ]; then
  DB=build-device-py
  # The nanobind of $B's build (scripts/setup.sh pins it), so both modules come from the same binding code.
  NB=$("$(sed -n 's/^DWS_PYTHON:FILEPATH=//p' "$B/CMakeCache.txt")" -c 'import nanobind; print(nanobind.__version__)')
  if [ ! -x "$DB/venv/bin/python" ] || ! "$DB/venv/bin/python" -c "import nanobind; assert nanobind.__version__ == '$NB'" 2>/dev/null; then
    "$DEVPY" -m venv "$DB/venv"
    "$DB/venv/bin/pip" install -q --disable-pip-version-check "nanobind==$NB"
  fi
  cmake -S . -B "$DB" -DCMAKE_BUILD_TYPE=Release -DDWS_BUILD_TESTS=OFF -DDWS_BUILD_BENCH=OFF -DDWS_PYTHON_MODULE=ON \
    -DDWS_PYTHON="$PWD/$DB/venv/bin/python" >/dev/null
  cmake --build "$DB" -j "$(nproc)" --target _core >/dev/null
  cp "$DB"/python/dws/_core.cpython-*.so .devlibs/python/dws/
else
  echo "gpu_bundle: no Python 3.12 here (set DWS_DEVICE_PYTHON): the PyTorch CUDA test will be skipped on the device" >&2
fi
for so in $(ldd .devlibs/bin/* .devlibs/python/dws/*.so 2>/dev/null | awk '/=> \//{print $3}' | sort -u); do
  case "$(basename "$so")" in
    libc.so.*|libm.so.*|libstdc++.so.*|libgcc_s.so.*|libdl.so.*|libpthread.so.*|librt.so.*|libresolv.so.*|ld-linux*) ;;  # the device's own (newer, compatible)
    *) cp -L "$so" .devlibs/lib/ ;;
  esac
done
grep -qx '/.devlibs/' .git/info/exclude 2>/dev/null || echo '/.devlibs/' >> .git/info/exclude
du -sh .devlibs
