#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan, build-fuzz/), seeds their corpora from
# trajectory-small (fuzz/make_seeds.cc), replays every past crash in fuzz/regressions/<target>/, then
# fuzzes each target for SECONDS (default 30; scripts/test.sh runs this short form, DWS_FUZZ_SECONDS or
# the argument sets the long one, e.g. `bash fuzz/run.sh 3600`). The corpus grows in build-fuzz/corpus/
# across runs. Prints executions and crashes per target (build-fuzz/fuzz-report.json); exits 1 on any
# crash, leaving the input in build-fuzz/crashes/ (add it to fuzz/regressions/<target>/ with the fix).
# DWS_FUZZ_RUNS=N stops each target after N executions; DWS_FUZZ_TARGETS="a b" picks targets;
# DWS_FUZZ_PARALLEL=N fuzzes N targets at a time; DWS_FUZZ_JOBS=N runs N processes per target.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-${DWS_FUZZ_SECONDS:-30}}"
JOBS="${DWS_FUZZ_JOBS:-1}"  # parallel fuzzing processes per target
RUNS="${DWS_FUZZ_RUNS:--1}"  # stop a target after this many executions (-1: only the time limit)
PARALLEL="${DWS_FUZZ_PARALLEL:-1}"  # targets fuzzed at the same time
read -r -a TARGETS <<< "${DWS_FUZZ_TARGETS:-fuzz_safetensors fuzz_patch fuzz_apply fuzz_decode fuzz_manifest}"
B="${DWS_FUZZ_BUILD:-build-fuzz}"  # scripts/sanitize.sh asan reuses its build-asan (configured with DWS_FUZZ)
if ! command -v clang++ >/dev/null || [ ! -e "$(clang++ -print-resource-dir)/lib/linux/libclang_rt.fuzzer-x86_64.a" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clang libclang-rt-dev >/dev/null
fi
if [ ! -f "$B/CMakeCache.txt" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDWS_FUZZ=ON -DDWS_CUDA=OFF \
    -DDWS_PYTHON_MODULE=OFF -DDWS_BUILD_TESTS=OFF -DDWS_BUILD_BENCH=OFF >/dev/null
fi
cmake --build "$B" -j "$(nproc)" --target "${TARGETS[@]}" make_seeds
rm -rf "$B/seeds"
"$B/fuzz/make_seeds" "$B/seeds"
mkdir -p "$B/crashes" "$B/logs"
B_ABS="$(cd "$B" && pwd)"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

# Fuzzes one target; prints its line and writes $B/logs/<target>.json. Returns 1 on a crash. Runs in
# its own working directory ($B/logs/<target>.work) because libFuzzer's -jobs writes fuzz-<n>.log there.
fuzz_one() {
  local t="$1" status=0 rc=0 log="$B_ABS/logs/$1.txt" work="$B_ABS/logs/$1.work"
  # Past crashes first: each must now run clean.
  if compgen -G "fuzz/regressions/$t/*" >/dev/null; then
    if ! "$B/fuzz/$t" fuzz/regressions/"$t"/* >"$B/logs/$t-regressions.txt" 2>&1; then
      echo "fuzz: $t: a regression input crashes again (see $B/logs/$t-regressions.txt)"
      status=1
    fi
  fi
  mkdir -p "$B/corpus/$t"
  rm -rf "$work" && mkdir -p "$work"
  touch "$log.start"
  (cd "$work" && "$B_ABS/fuzz/$t" -max_total_time="$SECONDS_PER_TARGET" -runs="$RUNS" -print_final_stats=1 \
    -timeout=20 -rss_limit_mb=2048 -max_len=65536 -jobs="$JOBS" -workers="$JOBS" \
    -artifact_prefix="$B_ABS/crashes/$t-" "$B_ABS/corpus/$t" "$B_ABS/seeds/$t") >"$log" 2>&1 || rc=$?
  local execs crashes corpus
  # With -jobs the workers' stats are in their fuzz-<n>.log; with one job libFuzzer also copies that log into
  # its own output, so count the workers' logs when there are any, and the main log only otherwise.
  local stats=("$log")
  if compgen -G "$work/fuzz-*.log" >/dev/null; then stats=("$work"/fuzz-*.log); fi
  execs=$(cat "${stats[@]}" | awk '/stat::number_of_executed_units/ {s += $2} END {print s + 0}')
  crashes=$(find "$B/crashes" -name "$t-*" -newer "$log.start" 2>/dev/null | wc -l || true)
  [ "$rc" -eq 0 ] || crashes=$((crashes > 0 ? crashes : 1))
  corpus=$(find "$B/corpus/$t" -type f | wc -l)
  printf 'fuzz: %-17s %12d executions in %ss, %d crashes, corpus %d inputs\n' "$t" "$execs" "$SECONDS_PER_TARGET" "$crashes" "$corpus"
  echo "{\"target\":\"$t\",\"seconds\":$SECONDS_PER_TARGET,\"executions\":$execs,\"crashes\":$crashes,\"corpus\":$corpus}" > "$B/logs/$t.json"
  if [ "$crashes" -ne 0 ]; then
    echo "fuzz: $t crashed; the input is in $B/crashes/, the log in $log:"
    grep -m1 -A12 -E "ERROR|runtime error|deadly signal" "$log" || tail -20 "$log"
    status=1
  fi
  return $status
}

# DWS_FUZZ_PARALLEL targets at a time, started in the order given as earlier ones finish.
status=0
running=0
for t in "${TARGETS[@]}"; do
  rm -f "$B/logs/$t.json"
  if [ "$running" -ge "$PARALLEL" ]; then
    wait -n || status=1
    running=$((running - 1))
  fi
  fuzz_one "$t" &
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
  wait -n || status=1
  running=$((running - 1))
done
report=""
for t in "${TARGETS[@]}"; do report+="$(cat "$B/logs/$t.json" 2>/dev/null || echo "{\"target\":\"$t\",\"error\":\"no report\"}"),"; done
echo "[${report%,}]" > "$B/fuzz-report.json"
exit $status
