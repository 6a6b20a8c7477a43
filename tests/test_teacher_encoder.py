"""``--ckpt teacher:NAME``: the 2D teacher's own pooled features as an encoder (the ceiling)."""

from __future__ import annotations

import json

import pytest
import torch

import conftest  # noqa: F401  (registers the test-tiny teacher)
from i2p.cache.reader import CacheDataset
from i2p.common.errors import UserError
from i2p.stage3_eval import runner
from i2p.stage3_eval.features import pool_tokens
from i2p.stage3_eval.teacher_encoder import TeacherEncoder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_teacher_tokens_are_the_stage1_maps_views_side_by_side(small_cache):
    """Same projection as stage 1: encoding the cached clouds gives back the cached feature
    maps (stored as float16), one token per cell with the V views' C features side by side."""
    ds = CacheDataset(small_cache)
    items = [ds[i] for i in (0, 5, 17)]
    points = torch.stack([it["points"] for it in items])
    cached = torch.stack([it["features"] for it in items]).float()  # [B, V, h, w, C]
    enc = TeacherEncoder("test-tiny", weights="random")
    tokens = enc.encode(points)
    b, v, h, w, c = cached.shape
    assert tokens.shape == (b, h * w, v * c)
    expect = cached.reshape(b, v, h * w, c).permute(0, 2, 1, 3).flatten(2)
    torch.testing.assert_close(tokens.half().float(), expect)
    # max pooling = each view's max-pooled feature, views concatenated
    torch.testing.assert_close(pool_tokens(tokens, "max").view(b, v, c), tokens.view(b, h * w, v, c).amax(1))
    # mean pooling = each view's average over its cells (the teacher's mean-pooled reference)
    torch.testing.assert_close(pool_tokens(tokens, "mean").view(b, v, c), cached.reshape(b, v, h * w, c).mean(2),
                               rtol=1e-3, atol=1e-3)
    assert list(enc.modules()) == []  # stage 3 must not re-estimate a teacher's BatchNorm


def test_eval_svm_with_teacher_ckpt(tmp_path):
    res = runner.svm("teacher:test-tiny", "builtin:primitives?n_train=4&n_test=2", str(tmp_path / "svm"),
                     C=0.01, progress=False)
    saved = json.loads((tmp_path / "svm" / "result.json").read_text())
    assert saved["checkpoint"]["path"] == "teacher:test-tiny"
    assert saved["checkpoint"]["teacher"]["name"] == "test-tiny"
    # a teacher's defaults: the stage-1 point count and mean+max pooling (chosen on SHREC'16 train)
    assert saved["settings"]["feature_dim"] == 2 * 3 * 8 and saved["settings"]["pool"] == "meanmax"
    assert saved["settings"]["points"] == 2048
    assert 0.0 <= res["accuracy"] <= 1.0 and saved["n_test"] == 26
    with pytest.raises(UserError, match="fine-tuning needs a 3D network"):
        runner.finetune("teacher:test-tiny", "builtin:primitives?n_train=4&n_test=2", str(tmp_path / "ft"))
