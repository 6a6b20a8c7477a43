"""P8 of docs/FIDELITY.md: with ``--online-teacher`` and ``data.teacher_sees_augmented`` (the
``paper`` preset's choice) the teacher renders the AUGMENTED cloud of the step, as the official
runner does (train_transforms before the model, which projects it), and every target of the
step is of that cloud. Checked by hand: render, teacher, back-projection at the members."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import TinyTestTeacher
from i2p.cache.reader import CacheDataset
from i2p.common.point_ops import gather
from i2p.stage1_project.projection import back_project, project, to_teacher_input
from i2p.stage2_pretrain import config as pcfg
from i2p.stage2_pretrain.model import build_model
from i2p.stage2_pretrain.model.config import ModelConfig
from i2p.stage2_pretrain.train import forward_batch, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["model.enc_depths=[1,1,1]", "model.drop_path=0.0", "data.workers=0", "log.progress=false",
        "optim.warmup_epochs=1", "data.holdout=0", "optim.batch_size=8", "log.diag_every_steps=0"]


def _batch(cache: str) -> dict:
    ds = CacheDataset(cache, with_targets=False, augment=True, seed=5)
    return torch.utils.data.default_collate([ds[i] for i in (1, 9, 20)])


def _by_hand(model, teacher, pts: torch.Tensor, out: dict, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2D targets of the visible head-level tokens, saliency cloud) of cloud ``pts`` rendered
    and run through the teacher here, read at ``pts``' points that the grouping of the cloud
    the network sees (``seen``) picked as members and coarse centres."""
    cfg = model.cfg
    depth, proj = project(pts)
    f, s = teacher(to_teacher_input(depth, teacher.mean, teacher.std))
    b, v = proj.shape[:2]
    f, s = f.view(b, v, *f.shape[1:]), s.view(b, v, *s.shape[1:])
    h = model.encoder.group(seen, None)
    lvl = cfg.head_level
    b_idx, g_idx = out[f"visible_mask_l{lvl + 1}"].nonzero(as_tuple=True)
    members = gather(pts, h.point_index[lvl - 1])  # level-1 centres: the level-2 members
    per_point = back_project(f, members, proj).permute(0, 2, 1, 3).flatten(2)  # [B, N', V*C]
    targets = per_point[b_idx[:, None], h.groups[lvl][b_idx, g_idx]]
    sal = back_project(s, gather(pts, h.point_index[-1]), proj).mean(dim=1)
    return targets, sal


def test_targets_are_the_teacher_on_the_augmented_points(small_cache):
    torch.manual_seed(0)
    model = build_model(ModelConfig.tiny(num_points=512, num_groups=(128, 64, 16), teacher_channels=8,
                                         lambda_2d=1.0)).eval()
    teacher = TinyTestTeacher().freeze("cpu")
    batch = _batch(small_cache)
    assert not torch.allclose(batch["scale"], torch.ones_like(batch["scale"]), atol=0.05)  # a real augmentation
    aug = batch["points"] * batch["scale"] + batch["shift"]
    with torch.no_grad():
        on = forward_batch(model, batch, torch.device("cpu"), 0, 3, teacher, teacher_augmented=True)
        off = forward_batch(model, batch, torch.device("cpu"), 0, 3, teacher, teacher_augmented=False)
    want, want_sal = _by_hand(model, teacher, aug, on, aug)
    assert on["target_2d"].shape == want.shape and want.shape[0] > 10
    torch.testing.assert_close(on["target_2d"], want, rtol=0, atol=1e-6)
    torch.testing.assert_close(on["saliency"], want_sal, rtol=0, atol=1e-6)
    # the old behaviour (and the default): the teacher renders the stored cloud, read there
    old, old_sal = _by_hand(model, teacher, batch["points"], off, aug)
    torch.testing.assert_close(off["target_2d"], old, rtol=0, atol=1e-6)
    torch.testing.assert_close(off["saliency"], old_sal, rtol=0, atol=1e-6)
    # ... and it is another target: the per-axis scale changes the render
    assert (on["saliency"] - off["saliency"]).abs().max() > 1e-3
    # without a teacher the flag does nothing (cached maps are of the stored cloud)
    cached = _batch_with_targets(small_cache)
    with torch.no_grad():
        a = forward_batch(model, cached, torch.device("cpu"), 0, 3, None, teacher_augmented=True)
        b = forward_batch(model, cached, torch.device("cpu"), 0, 3, None, teacher_augmented=False)
    assert torch.equal(a["loss"], b["loss"]) and torch.equal(a["target_2d"], b["target_2d"])


def _batch_with_targets(cache: str) -> dict:
    ds = CacheDataset(cache, with_targets=True, augment=True, seed=5)
    return torch.utils.data.default_collate([ds[i] for i in (1, 9, 20)])


def _losses(run: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def test_paper_preset_turns_it_on_and_the_run_uses_it(small_cache, tmp_path):
    assert pcfg.resolve("paper").data.teacher_sees_augmented is True
    assert pcfg.resolve("base").data.teacher_sees_augmented is False
    assert pcfg.resolve("tiny").data.teacher_sees_augmented is False
    runs = {}
    for flag in (True, False):
        cfg = pcfg.resolve("tiny", FAST + ["online_teacher=true", f"data.teacher_sees_augmented={str(flag).lower()}",
                                           "model.lambda_2d=1.0"])
        run = tmp_path / str(flag)
        assert pretrain(small_cache, str(run), cfg, max_steps=1).step == 1
        runs[flag] = _losses(run)
        assert f"teacher_sees_augmented: {str(flag).lower()}" in (run / "config.yaml").read_text()
    assert all(math.isfinite(x) for x in runs[True] + runs[False])
    assert runs[True][0] != pytest.approx(runs[False][0], rel=1e-6)  # other targets, other loss
