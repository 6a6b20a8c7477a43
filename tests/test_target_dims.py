"""``model.target_dims``: 2D targets projected onto the top principal directions of the
standardised teacher maps -- the basis is the covariance's top eigenvectors, the projected
targets are the full targets' coordinates in that subspace, the basis travels in the
checkpoint and a resumed run reproduces the uninterrupted one bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from i2p.stage2_pretrain import config as pcfg
from i2p.stage2_pretrain.model import ModelConfig, build_model
from test_balance import _assert_2d_loss_halves
from test_model import C, make_batch, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["model.enc_depths=[1,1,1]", "model.drop_path=0.0", "data.workers=0", "log.ckpt_every_steps=4",
        "log.progress=false", "optim.warmup_epochs=1", "data.holdout=0", "optim.batch_size=8"]


def _orthonormal(c: int, r: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(c, r, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


def test_projected_targets_are_the_full_targets_coordinates():
    """Projecting the maps before back-projection gives, per member and view, the full
    back-projected target times the basis (back-projection is linear); the head shrinks C/r
    times; without a basis a step refuses to run; a state dict carries the basis."""
    r = 4
    full_cfg, cfg = tiny(drop_path=0.0), tiny(drop_path=0.0, target_dims=r)
    ref, model = build_model(full_cfg), build_model(cfg)
    k, v = cfg.group_sizes[cfg.head_level], cfg.views
    assert ref.head_2d.out_features == k * v * C and model.head_2d.out_features == k * v * r
    pts, feats, sal, proj = make_batch(cfg)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with pytest.raises(ValueError, match="no target basis"):
        model(pts, feats, sal, proj, generator=gen())
    basis = _orthonormal(C, r)
    model.set_target_basis(basis)
    with torch.no_grad():
        full = ref(pts, feats, sal, proj, generator=gen())["target_2d"]  # [n, k, V*C]
        got = model(pts, feats, sal, proj, generator=gen())["target_2d"]  # [n, k, V*r]
    expect = (full.view(*full.shape[:2], v, C) @ basis).flatten(2)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)
    assert got.abs().max() > 0.1  # not a vacuous match

    twin = build_model(cfg)
    assert not twin.has_target_basis
    twin.load_state_dict(model.state_dict())
    assert twin.has_target_basis and torch.equal(twin.target_basis, basis)
    with pytest.raises(ValueError, match="target basis of shape"):
        model.set_target_basis(basis[:, :2])
    fixed = build_model(tiny(drop_path=0.0, target_dims=r, lambda_2d=1.0))
    fixed.set_target_basis(basis)
    _assert_2d_loss_halves(fixed, pts, feats, sal, proj)


def test_target_dims_at_or_above_the_channels_keeps_every_channel():
    """r >= C would only rotate the targets: every channel stays a target, no basis needed;
    a config saved before the field existed loads as 'every channel'."""
    model = build_model(tiny(target_dims=C))
    assert model.head_2d.out_features == 8 * 3 * C and model.has_target_basis
    assert not hasattr(model, "target_basis")
    saved = tiny().to_dict()
    saved.pop("target_dims")
    assert ModelConfig.from_dict(saved).target_dims == 0
    with pytest.raises(ValueError, match="target_dims"):
        tiny(target_dims=-1)
    assert ModelConfig.paper().target_dims == 0  # the published recipe regresses every channel


class _Part:
    """A cache part holding the arrays :func:`principal_basis` reads."""

    def __init__(self, **arrays):
        self.arrays = arrays
        self.indices = list(range(len(arrays["features"])))

    def _arrays(self):
        return {k: _Array(v) for k, v in self.arrays.items()}

    def __len__(self):
        return len(self.indices)


class _Array:
    def __init__(self, a):
        self.a = a

    def get_orthogonal_selection(self, sel):
        return self.a[list(sel)]


def _maps_part(seed: int, n: int = 40, c: int = 6, flip: bool = False):
    """Maps whose channels mix ``c`` sources of distinct variance, with channel offsets and
    scales, over clouds in the unit sphere and their projection parameters."""
    from i2p.stage1_project.projection import projection_params

    g = torch.Generator().manual_seed(seed)
    mix = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=torch.float64))[0]
    z = torch.randn(n, 3, 8, 8, c, generator=g, dtype=torch.float64) * torch.linspace(3.0, 0.2, c, dtype=torch.float64)
    maps = (z @ mix.T) * torch.linspace(0.1, 10.0, c, dtype=torch.float64) + torch.arange(float(c))
    if flip:
        maps = maps.flip(-1) * 3
    pts = torch.randn(n, 512, 3, generator=g)
    pts = pts / pts.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)
    return _Part(features=maps.float().numpy(), points=pts.numpy(), proj=projection_params(pts).numpy())


def test_principal_basis_is_the_top_eigenvectors_of_the_2d_targets():
    """The basis spans the top eigenvectors of the covariance of the targets themselves (the
    standardised maps back-projected at the strided points, every view), each column with its
    largest entry positive, holds their share of the variance, and mixes caches as asked."""
    from types import SimpleNamespace

    from i2p.stage1_project.projection import back_project
    from i2p.stage2_pretrain.teacher_targets import principal_basis, target_stats

    part = _maps_part(0)
    ds = SimpleNamespace(parts=[part])
    stats = target_stats(ds, 40)
    basis, kept = principal_basis(ds, 40, 3, stats["mean"], stats["std"], size=224, points=64)
    maps = (torch.from_numpy(part.arrays["features"]) - stats["mean"]) / stats["std"]
    at = torch.from_numpy(part.arrays["points"])[:, ::8]
    x = back_project(maps, at, torch.from_numpy(part.arrays["proj"]), size=224).reshape(-1, 6).double()
    x = x - x.mean(0)
    values, vectors = torch.linalg.eigh(x.T @ x / len(x))
    assert float(values[-3] / values[-4]) > 1.2  # distinct: the subspace and each column are defined
    top = vectors[:, -3:].flip(1)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(basis.double().T @ basis.double(), eye, atol=1e-6, rtol=0)
    torch.testing.assert_close((basis.double().T @ top).abs(), eye, atol=1e-4, rtol=0)
    assert all(float(col[col.abs().argmax()]) > 0 for col in basis.T)
    assert kept == pytest.approx(float(values[-3:].sum() / values.sum()), rel=1e-4)
    # two caches: weight 0 on the second (another mixture) = the first alone; equal weights differ
    both = SimpleNamespace(parts=[part, _maps_part(1, flip=True)])
    st = target_stats(both, 80, [1.0, 0.0])
    alone, _ = principal_basis(both, 80, 3, st["mean"], st["std"], 224, [1.0, 0.0], points=64)
    torch.testing.assert_close(alone, basis, atol=1e-5, rtol=0)
    st = target_stats(both, 80, [1.0, 1.0])
    mixed, _ = principal_basis(both, 80, 3, st["mean"], st["std"], 224, [1.0, 1.0], points=64)
    assert (mixed.T @ basis).abs().diagonal().min() < 0.99
    with pytest.raises(ValueError, match="target_dims"):
        principal_basis(ds, 40, 7, stats["mean"], stats["std"], 224)


def _losses(run_dir) -> dict[int, float]:
    recs = [json.loads(ln) for ln in Path(run_dir, "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def test_pretrain_fits_the_basis_saves_it_and_resumes_bit_exact(small_cache, tmp_path):
    from i2p.cache.reader import MultiCacheDataset
    from i2p.common.checkpoint import load_checkpoint
    from i2p.stage2_pretrain.teacher_targets import principal_basis, target_stats
    from i2p.stage2_pretrain.train import pretrain

    cfg = pcfg.resolve("tiny", FAST + ["optim.epochs=2", "model.target_dims=3"])
    ref = pretrain([small_cache], str(tmp_path / "ref"), cfg)
    pretrain([small_cache], str(tmp_path / "run"), cfg, max_steps=4)  # stops mid epoch 1
    pretrain([small_cache], str(tmp_path / "run"), cfg)  # resumes with the saved basis
    a, b = _losses(tmp_path / "ref"), _losses(tmp_path / "run")
    assert len(a) == ref.step and a == b
    ca, cb = load_checkpoint(tmp_path / "ref" / "last.ckpt"), load_checkpoint(tmp_path / "run" / "last.ckpt")
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    ds = MultiCacheDataset([small_cache])
    stats = target_stats(ds, cfg.data.normalize_samples)
    basis, kept = principal_basis(ds, cfg.data.normalize_samples, 3, stats["mean"], stats["std"], 224)
    assert torch.equal(ca["model"]["target_basis"], basis)
    assert ca["model"]["head_2d.weight"].shape[0] == 8 * 3 * 3
    first = json.loads(Path(tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()[0])
    assert first == {"step": 0, "target_dims": 3, "target_variance_kept": round(kept, 4)}
