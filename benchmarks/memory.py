"""Peak memory (RSS) of the two commands that touch a whole cache: ``i2p cache build`` and
``i2p pretrain`` (paper config), each in a fresh child process so that its ``ru_maxrss`` is its
own and nothing of the benchmark itself (other models, other caches) is counted.

The child runs the same library calls as the command (``build_cache``; ``pretrain`` with the
``paper`` preset, shortened to a few steps and without held-out set, probe or checkpoints in
between), then prints its lifetime peak RSS as one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

_BUILD = """
import json, resource, warnings, time
from i2p.stage1_project.build import BuildConfig, build_cache
warnings.simplefilter("ignore")
t0 = time.perf_counter()
build_cache(BuildConfig(**json.loads({cfg!r})))
print(json.dumps({{"ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   "seconds": time.perf_counter() - t0}}))
"""

_PRETRAIN = """
import json, resource, warnings, time
from i2p.stage2_pretrain import config as pcfg
from i2p.stage2_pretrain.train import pretrain
warnings.simplefilter("ignore")
cfg = pcfg.PRESETS["paper"]()
cfg.device, cfg.optim.batch_size, cfg.optim.epochs = "cpu", {batch}, 1
cfg.data.workers, cfg.data.holdout = {workers}, 0
cfg.log.progress, cfg.log.diag_every_steps, cfg.log.ckpt_every_steps = False, 0, 10 ** 9
t0 = time.perf_counter()
pretrain({cache!r}, {out!r}, cfg, resume=False, max_steps={steps})
print(json.dumps({{"ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   "seconds": time.perf_counter() - t0}}))
"""


def _child(code: str) -> dict:
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"rss_peak_mib": res["ru_maxrss_kib"] / 1024, "seconds": res["seconds"],
            "process_seconds": time.perf_counter() - t0}


def build_cache_child(spec: str, out: Path, teacher: str, points: int, batch: int, limit: int,
                      device: str = "cpu") -> dict:
    """Build the cache ``out`` in a child process; its peak RSS and seconds."""
    cfg = dict(data=spec, out=str(out), teacher=teacher, teacher_weights="random", split="train", points=points,
               batch_size=batch, device=device, limit=limit, progress=False, overwrite=True)
    return {"shapes": limit, "batch_size": batch, **_child(_BUILD.format(cfg=json.dumps(cfg)))}


def pretrain_child(cache: Path, out: Path, steps: int = 2, batch: int = 4, workers: int = 0) -> dict:
    """``steps`` steps of ``i2p pretrain --config paper`` (batch ``batch``) in a child process."""
    code = _PRETRAIN.format(cache=str(cache), out=str(out), steps=steps, batch=batch, workers=workers)
    return {"preset": "paper", "steps": steps, "batch_size": batch, "workers": workers, **_child(code)}
