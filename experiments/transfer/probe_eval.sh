#!/usr/bin/env bash
# The probe-protocol comparison (docs/RESULTS.md, "The probe protocol"): one checkpoint, one data
# spec, the linear SVM under several (points, pooling) settings; one JSON line per setting in
# $PROBE/results.jsonl (val = 5-fold CV accuracy on the train split, test = test split).
# usage: probe_eval.sh CKPT TAG DATA DTAG      env: PROBE (output root),
#        VARIANTS="1024 max,2048 levels,..." (default: the five settings compared)
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${OMP_NUM_THREADS:-1}
ckpt=$1; tag=$2; data=$3; dtag=$4
PROBE=${PROBE:-runs/probe}; mkdir -p "$PROBE"
VARIANTS=${VARIANTS:-"1024 max,2048 max,1024 levels,2048 levels,2048 meanmax"}
IFS=, read -ra PVS <<< "$VARIANTS"
for pv in "${PVS[@]}"; do
  set -- $pv; pts=$1; pool=$2
  out=$PROBE/$tag-$dtag-$pts-$pool
  [[ -e $out/result.json ]] || i2p eval svm --ckpt "$ckpt" --data "$data" --points "$pts" --pool "$pool" --out "$out" > "$out.log" 2>&1
  python - "$out" "$tag" "$dtag" "$pts" "$pool" "$PROBE" <<'PY'
import json, sys
out, tag, dtag, pts, pool, root = sys.argv[1:]
r = json.load(open(f"{out}/result.json"))
best = max(r["C_selection"]["grid"], key=lambda g: g["cv_mean"])
row = {"ckpt": tag, "data": dtag, "points": int(pts), "pool": pool, "val_cv": round(best["cv_mean"] * 100, 2),
       "test": round(r["accuracy"] * 100, 2)}
open(f"{root}/results.jsonl", "a").write(json.dumps(row) + "\n")
print(json.dumps(row))
PY
done
