#!/usr/bin/env bash
# Sets up, builds and runs a demo sync over the reference trajectory (../shared/data/trajectory-small):
# one step in every encoding, then a trainer publishing steps 0..8 to a local directory store and
# receivers pulling from it; checks they end bit-identical to step 8.
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
echo "== trainer publishes steps 000..008 to a local directory store; a receiver pulls after each"
STORE="$WORK/store"
for i in 0 1 2 3 4 5 6 7 8; do
  cur=$(printf "%03d" "$i")
  $DWS publish "$STORE" "$DATA/step$cur.safetensors" --snapshot "$WORK/publisher" --anchor-every 4
  $DWS pull "$STORE" "$WORK/receiver.safetensors"
done
echo
echo "== the store"
$DWS log "$STORE"
$DWS verify "$STORE"
echo
echo "== a receiver that joins late starts from the newest anchor"
$DWS pull "$STORE" "$WORK/late.safetensors"
echo
want=$($DWS verify "$DATA/step008.safetensors" | sed 's/.*state digest \([0-9a-f]*\).*/\1/')
got=$($DWS verify "$WORK/receiver.safetensors" | sed 's/.*state digest \([0-9a-f]*\).*/\1/')
late=$($DWS verify "$WORK/late.safetensors" | sed 's/.*state digest \([0-9a-f]*\).*/\1/')
echo "trainer  step 008 state digest: $want"
echo "receiver after 8 pulls        : $got"
echo "late receiver                 : $late"
if [ "$want" = "$got" ] && [ "$want" = "$late" ]; then echo "OK: the receivers are bit-identical to the trainer"; else echo "MISMATCH"; exit 1; fi
