#!/usr/bin/env bash
# The two extra evaluations of a 30-epoch run in docs/RESULTS.md (issue: 2D/3D balance):
# SHREC'16 at the teacher's protocol (2048 points, mean+max pooling) and builtin:primitives
# (data that played no part in choosing any default). One JSON line each in extra.jsonl.
# usage: extra_evals.sh RUN_DIR [RUN_DIR...]   env: SHREC (data dir), RUNS (where extra.jsonl goes)
set -euo pipefail
SHREC=${SHREC:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/data/shrec16}; RUNS=${RUNS:-/work/runs}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for run in "$@"; do
  [[ -d $run/svm-p2048-meanmax ]] || i2p eval svm --ckpt "$run/last.ckpt" --data "meshes:$SHREC" --points 2048 \
      --pool meanmax --out "$run/svm-p2048-meanmax" > "$run/extra-evals.log" 2>&1
  [[ -d $run/svm-prims ]] || i2p eval svm --ckpt "$run/last.ckpt" --data builtin:primitives \
      --out "$run/svm-prims" >> "$run/extra-evals.log" 2>&1
  python - "$run" >> "$RUNS/extra.jsonl" <<'PY'
import json, sys
run = sys.argv[1]
row = {"run": run.rstrip("/").split("/")[-1]}
for key, sub in (("shrec_2048_meanmax", "svm-p2048-meanmax"), ("primitives", "svm-prims")):
    r = json.load(open(f"{run}/{sub}/result.json"))
    best = max((r.get("C_selection") or {}).get("grid") or [{"cv_mean": None}], key=lambda g: g["cv_mean"] or 0)
    row[key] = {"val_cv": best["cv_mean"], "test": r["accuracy"]}
print(json.dumps(row))
PY
done
