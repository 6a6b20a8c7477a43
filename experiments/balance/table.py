"""Markdown table of the balance experiments from RUNS/results.jsonl (written by run.sh):
mean ± std over seeds (ddof=1) of the validation score (5-fold CV accuracy of the linear SVM on
SHREC'16 train, the number defaults are chosen on) and of the SHREC'16 test accuracy (reported
only), and the paired difference to the 3D-only run of the same seed and epochs.

usage: python experiments/balance/table.py RUNS/results.jsonl [EPOCHS] [NAME=SAME ...]

``NAME=SAME`` counts the runs of NAME as runs of SAME (for runs whose options spell out the
default, e.g. ``auto-r0.1=default``).
"""

from __future__ import annotations

import json
import statistics
import sys


def fmt(xs: list[float]) -> str:
    xs = [100 * x for x in xs]
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def main(path: str, epochs: int | None = None, same: dict | None = None) -> None:
    rows: dict = {}
    for line in open(path):
        r = json.loads(line)
        if epochs is not None and r["epochs"] != epochs:
            continue
        name = (same or {}).get(r["name"], r["name"])
        rows.setdefault((name, r["epochs"]), {})[r["seed"]] = r  # a re-run replaces its seed
    base = {k[1]: v for k, v in rows.items() if k[0] == "3donly"}
    print("| variant | epochs | seeds | val (CV on train) | test | Δ test vs 3D-only (paired) | options |")
    print("|---|---|---|---|---|---|---|")
    for (name, ep), by_seed in sorted(rows.items(), key=lambda kv: (kv[0][1], -statistics.mean(
            r["val_cv"] for r in kv[1].values()))):
        seeds = sorted(by_seed)
        val = [by_seed[s]["val_cv"] for s in seeds]
        test = [by_seed[s]["test"] for s in seeds]
        ref = base.get(ep, {})
        diffs = [by_seed[s]["test"] - ref[s]["test"] for s in seeds if s in ref]
        d = fmt(diffs) if diffs and name != "3donly" else ""
        args = " / ".join(sorted({f"`{by_seed[x]['args']}`" for x in seeds}))
        print(f"| {name} | {ep} | {','.join(map(str, seeds))} | {fmt(val)} | {fmt(test)} | {d} | {args} |")


if __name__ == "__main__":
    ep = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else None
    pairs = dict(a.split("=", 1) for a in sys.argv[2:] if "=" in a)
    main(sys.argv[1], ep, pairs)
