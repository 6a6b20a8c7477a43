#!/usr/bin/env bash
# Run the rows of a job file (NAME SEED EPOCHS [pretrain options...] per line) two at a time,
# each single-threaded, against the code of snapshot directory SNAP (a git worktree at the
# commit the rows are reported for).
# usage: SNAP=/path/to/worktree queue.sh JOBS
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH=${SNAP:?set SNAP to a worktree of the commit to measure}
cd "$SNAP"
grep -v '^\s*#' "$1" | grep -v '^\s*$' | xargs -P 2 -L 1 bash "$here/run.sh"
