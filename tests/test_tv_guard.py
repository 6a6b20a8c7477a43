"""The torchvision import guard: timm/open_clip/torchvision import behind it, and it registers
nothing when the ops already exist."""

import subprocess
import sys
import textwrap

import torch

import i2p.common.tv_guard as tv_guard


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_guard_makes_timm_open_clip_torchvision_importable():
    r = _run("""
        import i2p.common.tv_guard as g
        import timm, open_clip, torchvision
        import torchvision.transforms
        print("STATE", g.guard_state())
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "STATE native" in r.stdout or "STATE shimmed" in r.stdout


def test_guard_is_noop_when_ops_already_exist():
    # Stand in for a working C extension: the schema exists before the guard runs.
    r = _run("""
        import torch
        lib = torch.library.Library("torchvision", "FRAGMENT")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import i2p.common.tv_guard as g
        assert g.guard_state() == "native", g.guard_state()
        assert g._LIB is None
        assert g.ensure_torchvision() == "native"
        print("OK")
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "OK" in r.stdout


def test_guard_idempotent_in_process():
    first = tv_guard.guard_state()
    lib = tv_guard._LIB
    assert tv_guard.ensure_torchvision() == first
    assert tv_guard.ensure_torchvision() == first
    assert tv_guard._LIB is lib  # no second registration
    if first == "shimmed":
        assert lib is not None
        assert hasattr(torch.ops.torchvision, "nms") and hasattr(torch.ops.torchvision, "qnms")
        import torchvision.extension

        # torchvision still knows its kernels are missing and refuses its C ops loudly.
        assert not torchvision.extension._has_ops()
    else:
        assert lib is None
