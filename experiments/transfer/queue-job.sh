#!/usr/bin/env bash
# One line of a queue file (e.g. queue-bs4.txt): KIND NAME SEED [extra `i2p pretrain` options...]
#   KIND=xfer: class-disjoint (disjoint.sh: pretrain on A, SVM on B and A);
#   KIND=full: all SHREC'16 train classes (balance/run.sh: SVM on SHREC'16), then the probe on
#              `builtin:primitives` (probe_eval.sh, 2048 levels).
# Two lanes on two cores: xargs -P 2 -L 1 experiments/transfer/queue-job.sh < queue-bs4.txt
# env: XFER (as disjoint.sh), FULL_RUNS, CACHE, SHREC (as balance/run.sh), PROBE (as probe_eval.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kind=$1; name=$2; seed=$3; shift 3
if [[ $kind == xfer ]]; then
  "$here/disjoint.sh" "$name" "$seed" 30 "$@"
else
  runs=${FULL_RUNS:-runs/s2p}
  RUNS=$runs "$here/../balance/run.sh" "$name" "$seed" 30 "$@"
  VARIANTS="2048 levels" "$here/probe_eval.sh" "$runs/$name-s$seed-e30/last.ckpt" \
    "full-$name-s$seed" builtin:primitives prims
fi
