"""``python -m benchmarks [--quick] [--out DIR]``: the i2p performance report.

Sections run in order, each in a fresh Python process by default (so each one's peak RSS is
its own and the cache-read "cold" pass really is the first one of a process):

1. ``stage1``   build_cache end to end + per phase, beside the bare teacher forward;
               leaves the small cache that the next sections read;
2. ``stage2``   training samples/s, cached targets vs online teacher, tiny and paper models;
3. ``reads``    random-sample reads/s from the cache, cold and warm;
4. ``point_ops`` FPS / kNN / Chamfer / projection at paper sizes vs references.

Writes ``results.json`` and ``results.md`` under ``--out`` and prints the Markdown, every
ratio and whether each goal holds. No goal is asserted: the goals are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.common import PRESETS, Sizes, environment, median
from i2p.common.heap import ENV as HEAP_ENV, keep_freed_memory

SECTIONS = ("stage1", "stage2", "reads", "point_ops")

# Every ratio the JSON carries (the smoke test checks each is present).
RATIO_KEYS = (
    "stage1_vs_bare_teacher",
    "cached_vs_online_tiny",
    "cached_vs_online_paper",
    "default_vs_fixed_lambda_tiny",
    "default_vs_fixed_lambda_paper",
    "i2p_vs_3d_only_step_tiny",
    "i2p_vs_3d_only_step_paper",
    "cache_vs_memory_fed_step_paper",
    "reads_cold_vs_consumption",
    "reads_warm_vs_consumption",
    "fps_i2p_vs_fpsample",
    "knn_i2p_vs_ckdtree",
    "chamfer_i2p_vs_ckdtree",
)

# OpenMP threads that wait by sleeping instead of spinning. On a CPU shared with other jobs
# (more runnable threads than cores) the default spin-waiting of libgomp makes every parallel
# region wait for a descheduled sibling: the same paper-model step took 9-41 s with 2 spinning
# threads vs 2-4 s with passive ones at a load of 10 on 2 cores (see README, Performance). Set
# only for the section processes, and only if the caller has not set it; recorded in the JSON.
OMP_WAIT_POLICY = "PASSIVE"

# Goals on step-TIME ratios (lower is better): ratio key -> (threshold, text).
MAX_GOALS = {
    "i2p_vs_3d_only_step_tiny": (1.15, "default (2D-guided) step <= 1.15x the 3D-only step (tiny)"),
    "i2p_vs_3d_only_step_paper": (1.10, "default (2D-guided) step <= 1.10x the 3D-only step (paper)"),
    "cache_vs_memory_fed_step_paper": (1.05, "cache-fed step <= 1.05x the memory-fed step (paper)"),
}

GOALS = {  # ratio key -> (threshold, text): speed ratios (higher is better)
    "cached_vs_online_paper": (3.0, "cached >= 3x online-teacher samples/s (paper model)"),
    "reads_warm_vs_consumption": (5.0, "cache reads >= 5x what training consumes (warm)"),
    "reads_cold_vs_consumption": (5.0, "cache reads >= 5x what training consumes (cold)"),
    "stage1_vs_bare_teacher": (0.7, "stage 1 >= 0.7x the bare teacher forward"),
    "default_vs_fixed_lambda_tiny": (1 / 1.2, "default objective step <= 1.2x the fixed-lambda step (tiny)"),
    "default_vs_fixed_lambda_paper": (1 / 1.2, "default objective step <= 1.2x the fixed-lambda step (paper)"),
    "fps_i2p_vs_fpsample": (1.0, "FPS >= 1x fpsample (same picks up to distance ties)"),
    "knn_i2p_vs_ckdtree": (1.0, "kNN >= 1x cKDTree (same neighbours)"),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 3 repeats (under ~10 min on 2 CPU cores)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes that only exercise the harness (tests)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                   help="directory for results.json and results.md (default benchmarks/results)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list out of {','.join(SECTIONS)}")
    p.add_argument("--teacher", default=None, help="teacher name (default clip-vitb16, random weights)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in every section (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the stage-2 model (CUDA only)")
    p.add_argument("--in-process", action="store_true", help="run sections in this process (no per-stage RSS)")
    p.add_argument("--workdir", default=None, help="keep the temporary caches here instead of a temp dir")
    p.add_argument("--set", dest="model_set", action="append", default=[], metavar="model.FIELD=VALUE",
                   help="a ModelConfig field for both stage-2 models (repeatable), e.g. model.target_dims=64")
    return p.parse_args(argv)


def model_overrides(items: list[str]) -> dict:
    """``["model.target_dims=64", ...]`` -> ``{"target_dims": 64}`` (values parsed as YAML)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("model.") or len(key) <= len("model."):
            raise SystemExit(f"--set {item}: expected model.FIELD=VALUE")
        out[key[len("model."):]] = yaml.safe_load(value)
    return out


def sizes_from(args) -> Sizes:
    sizes = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    sizes = replace(sizes, device=args.device, compile=args.compile)
    if args.teacher:
        sizes = replace(sizes, teacher=args.teacher)
    if args.repeats:
        sizes = replace(sizes, repeats=args.repeats, ops_repeats=args.repeats)
    over = model_overrides(args.model_set)
    if over:
        sizes = replace(sizes, tiny_overrides={**sizes.tiny_overrides, **over},
                        paper_overrides={**sizes.paper_overrides, **over})
    return sizes


def run_section(name: str, sizes: Sizes, workdir: Path, threads: int | None) -> dict:
    """Run one section in this process (the subprocess entry point calls this too)."""
    import importlib

    import torch

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    res = importlib.import_module(f"benchmarks.{name}").run(sizes, workdir)
    res["section_seconds"] = time.perf_counter() - t0
    res["torch_threads"] = torch.get_num_threads()
    return res


def _spawn(name: str, sizes: Sizes, workdir: Path, threads: int | None) -> dict:
    result = workdir / f"{name}.json"
    cmd = [sys.executable, "-m", "benchmarks.section", name, "--sizes", json.dumps(sizes.to_dict()),
           "--workdir", str(workdir), "--result", str(result)]
    if threads:
        cmd += ["--threads", str(threads)]
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark section {name} failed (exit {proc.returncode})")
    return json.loads(result.read_text())


def derive(results: dict) -> tuple[dict, dict]:
    """The ratio table and the goal verdicts from the section results."""
    r: dict = {k: None for k in RATIO_KEYS}
    s1, s2, rd, ops = (results.get(k) for k in SECTIONS)
    if s1:
        r["stage1_vs_bare_teacher"] = s1["ratio_stage1_vs_bare_teacher"]
    if s2:
        for m in ("tiny", "paper"):
            r[f"cached_vs_online_{m}"] = s2[m]["ratio_cached_vs_online"]
            r[f"default_vs_fixed_lambda_{m}"] = s2[m].get("ratio_default_vs_fixed_lambda")
            r[f"i2p_vs_3d_only_step_{m}"] = s2[m].get("ratio_i2p_vs_3d_only")
        r["cache_vs_memory_fed_step_paper"] = s2["paper"].get("ratio_cache_vs_memory_fed")
    if rd and s2:
        consume = s2["paper"]["cached_samples_per_s"]
        rd["consumption_samples_per_s"] = consume
        r["reads_cold_vs_consumption"] = rd["cold_reads_per_s"] / consume
        r["reads_warm_vs_consumption"] = rd["warm_reads_per_s"] / consume
    if ops:
        r["fps_i2p_vs_fpsample"] = ops["fps"].get("ratio_i2p_vs_reference")
        r["knn_i2p_vs_ckdtree"] = ops["knn"].get("ratio_i2p_vs_reference")
        r["chamfer_i2p_vs_ckdtree"] = ops["chamfer"].get("ratio_i2p_vs_reference")
    goals = {}
    for key, (thr, text) in GOALS.items():
        v = r.get(key)
        goals[key] = {"goal": text, "threshold": thr, "value": v, "direction": ">=",
                      "holds": None if v is None else bool(v >= thr)}
    for key, (thr, text) in MAX_GOALS.items():
        v = r.get(key)
        goals[key] = {"goal": text, "threshold": thr, "value": v, "direction": "<=",
                      "holds": None if v is None or v != v else bool(v <= thr)}
    return r, goals


def _f(x, nd=2) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if x != x:
            return "nan"
        return f"{x:.{nd}f}" if abs(x) >= 0.01 or x == 0 else f"{x:.2e}"
    return str(x)


def markdown(report: dict) -> str:
    env, res, sizes = report["environment"], report["results"], report["sizes"]
    lines = [f"# i2p benchmarks ({sizes['name']})", "",
             f"Machine: {env['processor']}, {env['cpu_count']} CPUs, torch {env['torch']} "
             f"({env.get('torch_threads')} threads, OMP_WAIT_POLICY={env.get('omp_wait_policy')}), "
             f"benchmarked on {sizes['device']}{' (compiled)' if sizes.get('compile') else ''}; load average at start "
             f"{', '.join(f'{x:.1f}' for x in env.get('loadavg_start', []))}. Figures are medians of "
             f"{sizes['repeats']} repeats after {sizes['warmup']} warm-up, compared variants interleaved.",
             "", "## Ratios and goals", "", "| ratio | value | goal | holds |", "|---|---|---|---|"]
    for k in RATIO_KEYS:
        g = report["goals"].get(k)
        goal = f"{g['direction']} {g['threshold']:.3g}" if g else ""
        holds = "" if not g else ("n/a" if g["holds"] is None else "yes" if g["holds"] else "NO")
        lines.append(f"| {k} | {_f(report['ratios'][k])} | {goal} | {holds} |")
    s1 = res.get("stage1")
    if s1:
        lines += ["", f"## Stage 1 ({s1['shapes']} shapes x 3 views, {s1['teacher']} random weights, "
                  f"batch {s1['batch_size']}, {s1['points']} points)", "",
                  "| figure | shapes/s | seconds (median) |", "|---|---|---|",
                  f"| build_cache end to end | {_f(s1['stage1_shapes_per_s'], 3)} | {_f(median(s1['build_seconds']))} |",
                  f"| bare teacher forward, same batches | {_f(s1['bare_teacher_shapes_per_s'], 3)} | "
                  f"{_f(median(s1['bare_teacher_seconds']))} |"]
        for p, s in s1["phase_seconds"].items():
            lines.append(f"| phase {p} | {_f(s1['phase_shapes_per_s'][p], 3)} | {_f(s, 3)} |")
        lines.append(f"| other (setup, store, finalize) | | {_f(s1['other_seconds'], 3)} |")
    s2 = res.get("stage2")
    if s2:
        lines += ["", f"## Stage 2 (training step from the real cache vs online {s2['teacher']})", "",
                  "| model | batch | params (M) | cached samples/s | online samples/s | ratio | "
                  "fixed-lambda objective samples/s | default / fixed-lambda |",
                  "|---|---|---|---|---|---|---|---|"]
        for m in ("tiny", "paper"):
            x = s2[m]
            lines.append(f"| {m} | {x['batch']} | {_f(x['params_m'])} | {_f(x['cached_samples_per_s'], 3)} | "
                         f"{_f(x['online_samples_per_s'], 3)} | {_f(x['ratio_cached_vs_online'])} | "
                         f"{_f(x.get('fixed_lambda_samples_per_s'), 3)} | {_f(x.get('ratio_default_vs_fixed_lambda'))} |")
    if s2:
        lines += ["", "### The 2D half's cost and the input pipeline (step seconds, medians, interleaved)", "",
                  "| model | I2P step | 3D-only step | I2P / 3D-only | per-round median | I2P read | 3D-only read | "
                  "memory-fed step | cache-fed / memory-fed |", "|---|---|---|---|---|---|---|---|---|"]
        for m in ("tiny", "paper"):
            x = s2[m]
            mem = x.get("memory_fed_step_seconds")
            lines.append(f"| {m} | {_f(median(x['i2p_step_seconds']), 3)} | {_f(median(x['3d_only_step_seconds']), 3)} | "
                         f"{_f(x['ratio_i2p_vs_3d_only'], 3)} | {_f(x['ratio_i2p_vs_3d_only_per_round'], 3)} | "
                         f"{_f(x['i2p_read_seconds_median'], 3)} | {_f(x['3d_only_read_seconds_median'], 3)} | "
                         f"{_f(median(mem), 3) if mem else ''} | {_f(x.get('ratio_cache_vs_memory_fed'), 3)} |")
        ld = s2["paper"].get("loaders")
        if ld:
            lines += ["", f"DataLoader (prefetch {ld['prefetch_factor']}) vs memory-fed, paper model, blocks of "
                      "consecutive steps: " + ", ".join(f"{k.replace('_', ' ')}: {_f(v, 3)}x"
                                                      for k, v in ld["ratio_vs_memory"].items())]
        rss = s2.get("peak_rss", {})
        for key, label in (("cache_build", "i2p cache build"), ("pretrain_paper", "i2p pretrain --config paper")):
            x = rss.get(key) or {}
            if x:
                lines.append(f"- peak RSS of `{label}` (child process): {_f(x['rss_peak_mib'], 0)} MiB "
                             f"({_f(x['seconds'], 1)} s)")
    rd = res.get("reads")
    if rd:
        lines += ["", f"## Cache reads ({rd['samples']} samples of {rd['bytes_per_sample'] / 1e6:.2f} MB)", "",
                  "| figure | samples/s |", "|---|---|",
                  f"| cold (first pass, fresh process) | {_f(rd['cold_reads_per_s'], 1)} |",
                  f"| warm | {_f(rd['warm_reads_per_s'], 1)} |",
                  f"| consumed by the cached paper step | {_f(rd.get('consumption_samples_per_s'), 3)} |"]
    ops = res.get("point_ops")
    if ops:
        lines += ["", f"## Point ops (batch {ops['batch']}, {ops['points']} points)", "",
                  "| op | i2p (ms) | reference | reference (ms) | i2p / reference speed | agreement |",
                  "|---|---|---|---|---|---|"]
        for key, label, ref in (("fps", f"FPS {ops['points']} -> {ops['centres']}", "fpsample"),
                                ("knn", f"kNN {ops['centres']} x {ops['points']}, k={ops['k']}", "cKDTree"),
                                ("chamfer", f"Chamfer {ops['points']} vs {ops['points']}", "cKDTree")):
            x = ops[key]
            rx = x.get(ref)
            agree = x.get("agreement", x.get("max_abs_diff"))
            lines.append(f"| {label} | {_f(x['i2p']['median_s'] * 1e3, 1)} | {ref if rx else x['reference']} | "
                         f"{_f(rx['median_s'] * 1e3, 1) if rx else 'n/a'} | {_f(x.get('ratio_i2p_vs_reference'))} | "
                         f"{_f(agree, 4) if agree is not None else 'n/a'} |")
        for key, label in (("chamfer_tokens_8x8", f"Chamfer 8x8 groups ({ops['chamfer_tokens_8x8']['tokens']})"),
                           ("projection", "project (3 views, 224x224)"),
                           ("back_projection", "back-project 14x14x512 to 512 centres")):
            lines.append(f"| {label} | {_f(ops[key]['median_s'] * 1e3, 1)} | | | | |")
    lines += ["", "## Peak memory (RSS, MiB)", "", "| section | peak during section | process lifetime peak |",
              "|---|---|---|"]
    for k in SECTIONS:
        if k in res:
            m = res[k]["memory"]
            lines.append(f"| {k} | {_f(m['rss_peak_mib'], 0)} | {_f(m['ru_maxrss_mib'], 0)} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    sizes = sizes_from(args)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise SystemExit(f"unknown section(s) {bad}; choose from {SECTIONS}")
    needs_cache = {"reads"} & set(sections)  # stage2 builds a cache itself when stage1 did not run
    if needs_cache and "stage1" not in sections and not (args.workdir and (Path(args.workdir) / "cache").exists()):
        raise SystemExit(f"section(s) {sorted(needs_cache)} read the cache that stage1 builds: add stage1 to "
                         "--sections, or pass the --workdir of an earlier run")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="i2p-bench-")
        workdir = Path(tmp.name)
    t0 = time.perf_counter()
    report = {"sizes": sizes.to_dict(), "environment": environment(), "results": {}}
    report["environment"]["omp_wait_policy"] = (os.environ.get("OMP_WAIT_POLICY", "(libgomp default)")
                                                if args.in_process else
                                                os.environ.get("OMP_WAIT_POLICY", OMP_WAIT_POLICY))
    report["environment"]["sections_in_separate_processes"] = not args.in_process
    keep_freed_memory()  # what the `i2p` command sets; the section processes inherit its variables
    report["environment"]["malloc"] = {k: os.environ.get(k, HEAP_ENV[k]) for k in HEAP_ENV}
    try:
        for name in sections:
            print(f"[benchmarks] {name} ...", flush=True)
            ts = time.perf_counter()
            if args.in_process:
                res = run_section(name, sizes, workdir, args.threads)
            else:
                res = _spawn(name, sizes, workdir, args.threads)
            report["results"][name] = res
            print(f"[benchmarks] {name} done in {time.perf_counter() - ts:.1f}s", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    report["ratios"], report["goals"] = derive(report["results"])
    report["total_seconds"] = time.perf_counter() - t0
    try:
        report["environment"]["loadavg_end"] = list(os.getloadavg())
    except OSError:
        pass
    (out / "results.json").write_text(json.dumps(report, indent=2, default=float))
    md = markdown(report)
    (out / "results.md").write_text(md)
    print(md)
    print("ratios:")
    for k, v in report["ratios"].items():
        print(f"  {k:32s} {_f(v, 3)}")
    for k, g in report["goals"].items():  # noqa: B007
        state = "n/a" if g["holds"] is None else ("HOLDS" if g["holds"] else "DOES NOT HOLD")
        print(f"  goal {g['goal']}: {_f(g['value'])} -> {state}")
    print(f"[benchmarks] wrote {out / 'results.json'} and {out / 'results.md'} "
          f"in {report['total_seconds']:.0f}s", flush=True)
    return report
