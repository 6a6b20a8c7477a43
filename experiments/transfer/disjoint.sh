#!/usr/bin/env bash
# One row of the class-disjoint table (issue: generalise): pretrain `tiny` on the SHREC'16 train
# split of classes A (the 15 alphabetically first), then the linear SVM (train -> test split) on
# classes B (the other 15, never seen in pretraining: the headline) and on classes A.
# usage: disjoint.sh NAME SEED EPOCHS [extra `i2p pretrain` options...]
# env: XFER (root with shrecA/, shrecB/ class folders and cacheA-train/), RUNS (output root)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
XFER=${XFER:-/work/runs}; export RUNS=${RUNS:-$XFER/xfer}
mkdir -p "$RUNS"
CACHE=$XFER/cacheA-train SHREC=$XFER/shrecB "$here/../balance/run.sh" "$@"
name=$1; seed=$2; epochs=$3
out=$RUNS/$name-s$seed-e$epochs
[[ -e $out/svm-shrec/result.json ]] || { echo "skip $out: not finished (another queue runs it)"; exit 0; }
[[ -e $out/svm-A/result.json ]] || i2p eval svm --ckpt "$out/last.ckpt" --data "meshes:$XFER/shrecA" --out "$out/svm-A" >> "$out.log" 2>&1
python - "$out" "$name" "$seed" <<'PY'
import json, sys
out, name, seed = sys.argv[1:]
r = json.load(open(f"{out}/svm-A/result.json"))
best = max((r.get("C_selection") or {}).get("grid") or [{"cv_mean": None}], key=lambda g: g["cv_mean"] or 0)
row = {"name": name, "seed": int(seed), "eval": "A", "val_cv": best["cv_mean"], "test": r["accuracy"]}
open(f"{out}/../results-A.jsonl", "a").write(json.dumps(row) + "\n")
print(json.dumps(row))
PY
