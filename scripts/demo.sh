#!/usr/bin/env bash
# Sets up, builds and runs a demo sync over the reference trajectory (../shared/data/trajectory-small):
# diff every step against the previous one, apply each patch in place to a local copy of step 0, and
# check the copy ends bit-identical to step 8.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
DWS=./build/dws
DATA="${DWS_TRAJECTORY:-../shared/data/trajectory-small}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/dws-demo.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "== the model: $DATA/step000.safetensors"
summary=$($DWS inspect "$DATA/step000.safetensors"); echo "${summary%%$'\n'*}"
echo
echo "== one step (000 -> 001) in every encoding"
for enc in native indices gaps gaps_zstd xor_zstd; do
  $DWS diff "$DATA/step000.safetensors" "$DATA/step001.safetensors" -o "$WORK/p001.$enc" --encoding "$enc" 2>&1
done
echo
echo "== receiver: a copy of step 000, patched in place step by step (default encoding: auto)"
cp "$DATA/step000.safetensors" "$WORK/receiver.safetensors"
for i in 1 2 3 4 5 6 7 8; do
  prev=$(printf "%03d" $((i - 1))); cur=$(printf "%03d" "$i")
  $DWS --quiet diff "$DATA/step$prev.safetensors" "$DATA/step$cur.safetensors" -o "$WORK/p$cur"
  size=$(stat -c %s "$WORK/p$cur")
  $DWS --quiet apply --in-place "$WORK/receiver.safetensors" "$WORK/p$cur"
  echo "step $prev -> $cur: patch $size bytes, applied in place"
done
echo
want=$($DWS verify "$DATA/step008.safetensors" | sed 's/.*state digest \([0-9a-f]*\).*/\1/')
got=$($DWS verify "$WORK/receiver.safetensors" | sed 's/.*state digest \([0-9a-f]*\).*/\1/')
echo "trainer  step 008 state digest: $want"
echo "receiver after 8 patches      : $got"
if [ "$want" = "$got" ]; then echo "OK: the receiver is bit-identical to the trainer"; else echo "MISMATCH"; exit 1; fi
