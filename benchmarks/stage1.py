"""Stage 1: ``build_cache`` end to end and per phase, beside the bare teacher forward.

A shape = 3 view images. The bare teacher runs on exactly the images stage 1 feeds it (same
shapes, same sub-batches), already projected and normalised, so the ratio
``stage1 shapes/s / bare-teacher shapes/s`` is the share of stage 1's time that is the teacher.
The teacher is built once and handed to every build (``teacher_factory``): loading a model is a
one-off per job, not per shape.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import PeakRSS, Sizes, interleaved, median, ratio, resolve, sync

PHASES = ("read", "project", "teacher", "write")


def data_spec(n: int) -> str:
    from i2p.common.datasets._shapes import SHAPES

    return f"builtin:primitives?n_train={max(1, math.ceil(n / len(SHAPES)))}&n_test=1"


def run(sizes: Sizes, workdir: Path) -> dict:
    from i2p.common.datasets import create_dataset
    from i2p.stage1_project.build import BuildConfig, build_cache
    from i2p.stage1_project.projection import project, to_teacher_input
    from i2p.stage1_project.teachers import create_teacher

    device = resolve(sizes.device)
    spec = data_spec(sizes.s1_shapes)
    with PeakRSS() as mem:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            teacher = create_teacher(sizes.teacher, weights="random", device=device)

        # The bare teacher's input: the very images stage 1 renders, in its sub-batches.
        ds = create_dataset(spec, split="train", num_points=sizes.points, seed=0)
        n = min(sizes.s1_shapes, len(ds))
        pts = torch.from_numpy(np.stack([ds.load(i).points for i in range(n)]).astype(np.float32))
        batches = [to_teacher_input(project(pts[k:k + sizes.s1_batch].to(device))[0], teacher.mean, teacher.std)
                   for k in range(0, n, sizes.s1_batch)]

        def bare():  # the teacher's forward alone, on the images stage 1 would feed it
            for x in batches:
                teacher(x)
            sync()

        builds: list = []
        counter = iter(range(10 ** 6))
        cache = workdir / "cache"

        def build(limit=n):
            out = workdir / f"s1-build-{next(counter)}"
            cfg = BuildConfig(data=spec, out=str(out), teacher=sizes.teacher, teacher_weights="random",
                              split="train", points=sizes.points, batch_size=sizes.s1_batch, device=str(device),
                              limit=limit, progress=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                rep = build_cache(cfg, teacher_factory=lambda *a, **k: teacher)
                wall = time.perf_counter() - t0
            builds.append({"wall": wall, **{p: rep.timings[p] for p in PHASES}})
            # The latest full build stays on disk as the real cache that stage 2 and the read
            # benchmark use (moving it is outside the timed call).
            if cache.exists():
                shutil.rmtree(cache)
            out.rename(cache)

        # Warm-up: a one-shape build (zarr, codecs, allocator) and one teacher sub-batch.
        build(limit=1)
        teacher(batches[0])
        builds.clear()
        times = interleaved({"build": build, "bare_teacher": bare}, sizes.repeats, warmup=0)
        times["build"] = [b["wall"] for b in builds]  # build_cache alone, without the clean-up

    wall = median(times["build"])
    bare_t = median(times["bare_teacher"])
    phases = {p: median([b[p] for b in builds]) for p in PHASES}
    res = {
        "data": spec,
        "teacher": sizes.teacher,
        "device": str(device),
        "shapes": n,
        "views_per_shape": 3,
        "batch_size": sizes.s1_batch,
        "points": sizes.points,
        "repeats": sizes.repeats,
        "build_seconds": times["build"],
        "bare_teacher_seconds": times["bare_teacher"],
        "stage1_shapes_per_s": n / wall,
        "bare_teacher_shapes_per_s": n / bare_t,
        "bare_teacher_images_per_s": 3 * n / bare_t,
        "phase_seconds": phases,
        "phase_shapes_per_s": {p: (n / s if s > 0 else None) for p, s in phases.items()},
        "other_seconds": wall - sum(phases.values()),
        "ratio_stage1_vs_bare_teacher": ratio(n / wall, n / bare_t),
        "cache_dir": str(cache),
        "memory": mem.as_dict(),
    }
    return res
