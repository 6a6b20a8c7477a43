"""Markdown tables of docs/RESULTS.md "Generalisation" from the raw probe lines.

usage: python experiments/transfer/summarise.py experiments/transfer/results-probe.jsonl

Rows are (encoder, data, points, pool) with the encoder tag NAME-sSEED; seeds are averaged
(mean ± std, ddof=1) and paired differences are taken per seed against ``--base`` (3donly).
"""

from __future__ import annotations

import argparse
import json
import statistics as st
from collections import defaultdict


def fmt(xs: list[float]) -> str:
    if not xs:
        return ""
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{st.mean(xs):.1f} ± {st.stdev(xs):.1f}"


SETTINGS = ("1024 max", "2048 max", "1024 levels", "2048 levels", "2048 meanmax")


def protocol_table(lines: str) -> None:
    """One row per (encoder, data): val / test of every probe setting measured, and the
    validation gain of the default (2048 levels) over the paper's (1024 max)."""
    got = defaultdict(dict)
    for line in open(lines):
        r = json.loads(line)
        got[(r["ckpt"], r["data"])][f"{r['points']} {r['pool']}"] = (r["val_cv"], r["test"])
    print("| encoder | data | " + " | ".join(f"{s}: val / test" for s in SETTINGS) + " | Δ val, 2048 levels vs 1024 max |")
    print("|---|---|" + "---|" * (len(SETTINGS) + 1))
    for (ck, data), by in sorted(got.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if "1024 max" not in by or "2048 levels" not in by:
            continue
        cells = [f"{by[s][0]:.1f} / {by[s][1]:.1f}" if s in by else "" for s in SETTINGS]
        print(f"| {ck} | {data} | " + " | ".join(cells) + f" | {by['2048 levels'][0] - by['1024 max'][0]:+.1f} |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("lines")
    p.add_argument("--protocol", action="store_true", help="the probe-protocol table instead")
    p.add_argument("--data", default="B")
    p.add_argument("--setting", default="2048 levels")
    p.add_argument("--base", default="3donly")
    a = p.parse_args()
    if a.protocol:
        return protocol_table(a.lines)
    pts, pool = a.setting.split()
    rows = defaultdict(dict)  # name -> seed -> (val, test)
    for line in open(a.lines):
        r = json.loads(line)
        if r["data"] != a.data or r["points"] != int(pts) or r["pool"] != pool:
            continue
        name, _, seed = r["ckpt"].rpartition("-s")
        rows[name][int(seed) if seed.isdigit() else 0] = (r["val_cv"], r["test"])
    base = rows.get(a.base, {})
    print(f"| encoder ({a.data}, {a.setting}) | seeds | val | test | Δ val vs {a.base} (paired) | Δ test vs {a.base} (paired) |")
    print("|---|---|---|---|---|---|")
    for name, by_seed in sorted(rows.items(), key=lambda kv: -st.mean(v[0] for v in kv[1].values())):
        seeds = sorted(by_seed)
        vals = [by_seed[s][0] for s in seeds]
        tests = [by_seed[s][1] for s in seeds]
        paired = [s for s in seeds if s in base]
        dv = [by_seed[s][0] - base[s][0] for s in paired] if name != a.base else []
        dt = [by_seed[s][1] - base[s][1] for s in paired] if name != a.base else []
        print(f"| {name} | {','.join(map(str, seeds))} | {fmt(vals)} | {fmt(tests)} | {fmt(dv)} | {fmt(dt)} |")


if __name__ == "__main__":
    main()
