#!/usr/bin/env bash
# Sets up, builds and runs every test, then the same suite under ASan+UBSan (clang) with the fuzz targets'
# regression inputs and a 30-second fuzz run each (scripts/sanitize.sh asan; DWS_SANITIZE=0 skips it).
# DWS_SOAK=1 runs the long soaks instead of their short forms: crash-safety kill -9 trials (150 per mode
# instead of 12), two-writer publish kills (120 instead of 12), and SeaweedFS kill/restart fault trials
# (10 per scenario instead of 1). The long fuzz run: bash fuzz/run.sh SECONDS; ThreadSanitizer:
# bash scripts/sanitize.sh tsan (docs/hardening.md).
set -euo pipefail
cd "$(dirname "$0")/.."
# PyTorch for the Python end-to-end test: Debian's CPU build for /usr/bin/python3 (seconds; the PyPI
# wheel would pull in gigabytes of CUDA libraries).
if ! dpkg -s python3-torch >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-torch >/dev/null
fi
bash scripts/setup.sh
cd build
# The S3 cases must run (the fixture starts SeaweedFS); a missing server fails them instead of skipping.
DWS_REQUIRE_S3=1 ctest -j "$(nproc)" --output-on-failure --timeout 900
cd ..
if [ "${DWS_SANITIZE:-1}" != "0" ]; then
  bash scripts/sanitize.sh asan
fi
