"""The frozen 2D teacher run inside pre-training (``--online-teacher``): built exactly as the
cache's teacher was (weights checked by sha256, same projection and input normalisation), so
its targets equal the cached ones (tests/test_pretrain.py). Kept apart from the training loop
because only this mode needs stage 1's teachers."""

from __future__ import annotations

import torch

from i2p.common.errors import UserError


def online_teacher(cfg, attrs: dict, device: torch.device):
    from i2p.stage1_project.teachers import create_teacher, teacher_fingerprint

    s = attrs["settings"]
    if s.get("denoise"):
        raise UserError("--online-teacher cannot reproduce a cache built with --denoise (its targets average "
                            "several jittered renders); train from the cache")
    weights = cfg.teacher_weights or ("random" if s["teacher_random"] else None)
    teacher = create_teacher(s["teacher"], weights=weights, device=device)
    fp = teacher_fingerprint(teacher)
    teacher.projection = s.get("projection", "sum")  # render as the cache was rendered
    if s.get("teacher_mean") and s.get("teacher_std"):  # normalise as the cache did (--teacher-input)
        teacher.mean, teacher.std = tuple(s["teacher_mean"]), tuple(s["teacher_std"])
    if fp["weights_sha256"] != s["teacher_weights_sha256"]:
        raise UserError(f"online teacher weights (sha256 {fp['weights_sha256']}) differ from the cache's "
                            f"({s['teacher_weights_sha256']}): pass the same --teacher-weights")
    return teacher


def teacher_maps(teacher, points: torch.Tensor, projection: str = "sum"):
    from i2p.stage1_project.projection import project, to_teacher_input

    depth, proj = project(points, mode=projection)
    f, s = teacher(to_teacher_input(depth, teacher.mean, teacher.std))
    b, v = proj.shape[:2]
    return f.view(b, v, *f.shape[1:]), s.view(b, v, *s.shape[1:]), proj


