"""Shared fixtures: a tiny deterministic teacher and small caches built with it.

The tiny teacher is a real :class:`Teacher` (same freezing, shapes and normalisation path as
the shipped ones) with a fixed random conv, so stage-1/2 tests run in seconds on 2 cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from i2p.stage1_project.teachers import register_teacher
from i2p.stage1_project.teachers.base import Teacher

SHREC = Path(__file__).resolve().parents[2] / "shared" / "data" / "shrec16"
REPO = Path(__file__).resolve().parents[1]


class TinyTestTeacher(Teacher):
    """avg-pool 224 -> 8x8, fixed 1x1 conv to 8 channels; saliency = softmax of channel 0."""

    def __init__(self):
        super().__init__("test-tiny", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "random", None)
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(8, 3, 1, 1, generator=g))
            self.conv.bias.copy_(torch.randn(8, generator=g) * 0.1)

    def _extract(self, x):
        f = self.conv(nn.functional.adaptive_avg_pool2d(x, 8))  # [B,8,8,8]
        sal = torch.softmax(f[:, 0].flatten(1), dim=1).view(-1, 8, 8)
        return f.permute(0, 2, 3, 1), sal


@register_teacher("test-tiny")
def _make_tiny(weights=None, device="cpu"):
    return TinyTestTeacher().freeze(device)


def build_small_cache(out, data="builtin:primitives?n_train=4&n_test=2", points=512, split="train", **kw):
    from i2p.stage1_project.build import BuildConfig, build_cache

    cfg = BuildConfig(data=data, out=str(out), teacher="test-tiny", teacher_weights="random", split=split,
                      points=points, batch_size=8, device="cpu", progress=False, **kw)
    return build_cache(cfg)


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory):
    """52 primitives (13 classes x 4), 512 points, tiny teacher (8x8x8 features)."""
    out = tmp_path_factory.mktemp("cache") / "prims"
    build_small_cache(out)
    return str(out)


@pytest.fixture(scope="module")
def one_thread():
    """Small ops are dominated by OpenMP hand-offs on a busy 2-core box; one thread is faster.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
