#!/usr/bin/env bash
# One row of docs/RESULTS.md (issue: 2D/3D balance): pretrain `tiny` on the SHREC'16 train
# cache, then the linear SVM on SHREC'16 (C by 5-fold CV on train: that CV accuracy is the
# validation score used to choose defaults; test accuracy is only reported).
# usage: run.sh NAME SEED EPOCHS [cache=PATH] [extra `i2p pretrain` options...]
# env: CACHE (SHREC'16 train cache), RUNS (output root), SHREC (data dir)
set -euo pipefail
name=$1; seed=$2; epochs=$3; shift 3
if [[ ${1:-} == cache=* ]]; then CACHE=${1#cache=}; shift; fi
CACHE=${CACHE:-/work/runs/cache-shrec-train}; RUNS=${RUNS:-/work/runs}; SHREC=${SHREC:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/data/shrec16}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=$RUNS/$name-s$seed-e$epochs
[[ -e $out.log ]] && { echo "skip $out: it has a log (run or running)"; exit 0; }
i2p pretrain --cache "$CACHE" --out "$out" --config tiny --epochs "$epochs" --seed "$seed" --workers 0 "$@" > "$out.log" 2>&1
i2p eval svm --ckpt "$out/last.ckpt" --data "meshes:$SHREC" --out "$out/svm-shrec" >> "$out.log" 2>&1
python - "$out" "$name" "$seed" "$epochs" "$* (cache $CACHE)" <<'PY'
import json, sys
out, name, seed, epochs, args = sys.argv[1:]
r = json.load(open(f"{out}/svm-shrec/result.json"))
sel = r.get("C_selection") or {}
best = max(sel.get("grid") or [{"cv_mean": None}], key=lambda g: g["cv_mean"] or 0)
row = {"name": name, "seed": int(seed), "epochs": int(epochs), "args": args,
       "val_cv": best["cv_mean"], "test": r["accuracy"], "C": r.get("C")}
open(f"{out}/../results.jsonl", "a").write(json.dumps(row) + "\n")
print(json.dumps(row))
PY
