"""I2P-MAE 3D network: shapes, learning, masking semantics, determinism, batch independence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from i2p.stage1_project.projection import back_project, projection_params
from i2p.stage2_pretrain.model import HierarchicalEncoder, ModelConfig, build_model, optimizer_groups
from i2p.stage2_pretrain.model.masking import all_visibilities, coarse_visibility, draw_order

C = 16  # teacher channels of the synthetic cache


pytestmark = pytest.mark.usefixtures("one_thread")


def make_batch(cfg: ModelConfig, b: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(b, cfg.num_points, 3, generator=g)
    pts = pts * torch.tensor([1.0, 0.6, 0.3])  # anisotropic blobs, unit sphere
    pts = pts / pts.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)
    # Smooth teacher maps (real ones are smooth at 14x14); views x channels last.
    low = torch.randn(b * cfg.views, C, 3, 3, generator=g)
    feats = F.interpolate(low, size=(14, 14), mode="bilinear").view(b, cfg.views, C, 14, 14)
    feats = feats.permute(0, 1, 3, 4, 2).contiguous().half()
    sal = torch.rand(b, cfg.views, 14, 14, generator=g)
    return pts, feats, sal, projection_params(pts)


def tiny(**kw) -> ModelConfig:
    return ModelConfig.tiny(teacher_channels=C, **kw)


def test_config_roundtrip_and_validation():
    cfg = tiny()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.paper().num_visible() == 13
    # FIDELITY P11: the official count G - int(mask_ratio * G) (the paper preset's) vs our rounding
    assert ModelConfig.base().num_visible() == 13 and ModelConfig.paper().visible_count == "official"
    assert ModelConfig.tiny(num_groups=(256, 128, 32)).num_visible() == 6  # round(6.4)
    assert ModelConfig.tiny(num_groups=(256, 128, 32), visible_count="official").num_visible() == 7  # 32 - 25
    assert ModelConfig.tiny(num_groups=(256, 128, 16), visible_count="official").num_visible() == 4  # 16 - 12
    assert ModelConfig.tiny(num_groups=(256, 128, 16)).num_visible() == 3  # round(3.2)
    with pytest.raises(ValueError):
        ModelConfig.tiny(num_heads=5)
    with pytest.raises(ValueError):
        build_model(ModelConfig.tiny())  # 2d3d without teacher_channels


def test_forward_keys_and_shapes():
    cfg = tiny()
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)
    scale = torch.full((4, 1, 3), 1.2)
    shift = torch.full((4, 1, 3), 0.1)
    out = model(pts, feats, sal, proj, scale, shift, generator=torch.Generator().manual_seed(0))
    for key in ("loss", "loss_3d", "loss_2d", "sal_visible", "sal_masked"):
        assert out[key].dim() == 0 and torch.isfinite(out[key]), key
    assert out["saliency"].shape == (4, 32)
    for lvl, g in enumerate(cfg.num_groups, start=1):
        assert out[f"visible_mask_l{lvl}"].shape == (4, g) and out[f"visible_mask_l{lvl}"].dtype == torch.bool
    assert out["visible_mask_l3"].sum(1).tolist() == [cfg.num_visible()] * 4
    assert torch.allclose(out["loss"], out["loss_3d"] + out["w_2d"] * out["loss_2d"])
    model.eval()
    with torch.no_grad():
        tokens = model.encode(pts)
    assert tokens.shape == (4, 32, cfg.enc_dims[-1]) and torch.isfinite(tokens).all()


def test_loss_decreases_on_fixed_batch():
    torch.manual_seed(0)
    cfg = tiny(drop_path=0.0)
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)
    opt = torch.optim.AdamW(optimizer_groups(model, 0.05), lr=2e-3)
    losses = []
    for _ in range(30):
        out = model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(map(lambda v: v == v, losses))
    assert losses[-1] < 0.7 * losses[0], losses
    groups = optimizer_groups(model, 0.05)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert all(p.ndim > 1 for p in groups[0]["params"])


def test_visibility_propagation_paper_ratio():
    cfg = tiny(num_groups=(256, 128, 64))  # 64 coarse tokens as in the paper
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg, b=3)
    out = model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(3))
    v1, v2, v3 = out["visible_mask_l1"], out["visible_mask_l2"], out["visible_mask_l3"]
    assert v3.sum(1).tolist() == [13, 13, 13]
    h = model.encoder.group(pts)
    for b in range(3):
        members3 = set(h.groups[2][b][v3[b]].flatten().tolist())
        assert set(torch.nonzero(v2[b]).flatten().tolist()) == members3
        members2 = set(h.groups[1][b][v2[b]].flatten().tolist())
        assert set(torch.nonzero(v1[b]).flatten().tolist()) == members2
    assert (v2.sum(1) < 128).all() and (v1.sum(1) < 256).all()


def test_saliency_masking_low_temperature_keeps_top_tokens():
    s = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    vis = coarse_visibility(s, 5, 64, 13, "saliency", 1e-4, torch.Generator().manual_seed(1))
    top = torch.zeros_like(vis).scatter(1, s.topk(13, dim=1).indices, True)
    assert torch.equal(vis, top)
    # Through the model: the visible tokens are the 13 most salient of the saliency cloud.
    cfg = tiny(num_groups=(256, 128, 64), temperature=1e-4)
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg, b=2)
    out = model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(2))
    sc = out["saliency"]
    top = torch.zeros_like(sc, dtype=torch.bool).scatter(1, sc.topk(13, dim=1).indices, True)
    assert torch.equal(out["visible_mask_l3"], top)
    assert out["sal_visible"] > out["sal_masked"]
    # The saliency cloud is the view-mean of the back-projected maps at the coarse centres.
    h = model.encoder.group(pts)
    xyz = torch.gather(pts, 1, h.point_index[-1][..., None].expand(-1, -1, 3))
    assert torch.allclose(sc, back_project(sal, xyz, proj).mean(1))


def test_saliency_draw_follows_softmax():
    """The first draw of Gumbel-top-k is distributed as softmax(s / T)."""
    s = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    firsts = torch.stack([draw_order(s, 1, 4, 1.0, torch.Generator().manual_seed(i))[0, 0] for i in range(3000)])
    freq = torch.bincount(firsts, minlength=4).float() / 3000
    assert torch.allclose(freq, torch.softmax(s[0], 0), atol=0.03)


def test_random_mode_ignores_saliency():
    cfg = tiny(mask_mode="random")
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)
    a = model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(4))["visible_mask_l3"]
    b = model(pts, feats, torch.rand_like(sal) * 10, proj,
              generator=torch.Generator().manual_seed(4))["visible_mask_l3"]
    c = model(pts, feats, None, proj, generator=torch.Generator().manual_seed(4))["visible_mask_l3"]
    assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(ValueError):
        build_model(tiny())(pts, feats, None, proj)  # saliency mode needs the maps


def test_same_seed_same_losses():
    cfg = tiny()  # drop path on: its draws come from the generator too
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)
    runs = [model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(runs[0]["loss"], runs[1]["loss"])
    assert torch.equal(runs[0]["visible_mask_l3"], runs[1]["visible_mask_l3"])
    assert not torch.equal(runs[0]["visible_mask_l3"], runs[2]["visible_mask_l3"])


def test_per_sample_generators_make_batch_splits_exact():
    """What DDP needs: with per-sample generators and LayerNorm token embeddings, a batch
    split in two halves gives the masks and (mean) loss of the whole batch, in train mode,
    drop path included. (A fixed 2D weight: the automatic one sums its gradient norms over
    ranks under torchrun, which test_pretrain's two-process run checks.)"""
    cfg = tiny(embed_norm="layer", fps_random_start=True, lambda_2d=1.0)
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)
    gens = lambda rows: [torch.Generator().manual_seed(100 + r) for r in rows]  # noqa: E731
    whole = model(pts, feats, sal, proj, generator=gens(range(4)))
    parts = [model(pts[s], feats[s], sal[s], proj[s], generator=gens(range(4)[s]))
             for s in (slice(0, 2), slice(2, 4))]
    for lvl in (1, 2, 3):
        key = f"visible_mask_l{lvl}"
        assert torch.equal(whole[key], torch.cat([p[key] for p in parts]))
    for key in ("loss", "loss_3d", "loss_2d"):
        assert torch.allclose(whole[key], (parts[0][key] + parts[1][key]) / 2, rtol=1e-5, atol=1e-7), key
    with pytest.raises(ValueError):
        model(pts, feats, sal, proj, generator=gens(range(3)))


def test_padding_matches_per_sample_encoding():
    cfg = tiny()
    model = build_model(cfg).eval()
    pts, feats, sal, proj = make_batch(cfg, b=3)
    h = model.encoder.group(pts)
    v3 = coarse_visibility(None, 3, 32, cfg.num_visible(), "random", 1.0, torch.Generator().manual_seed(5))
    vis = all_visibilities(v3, h.groups, cfg.num_groups)
    assert len(set(vis[0].sum(1).tolist())) > 1  # counts differ, so padding is exercised
    with torch.no_grad():
        batch = model.encoder.forward_hierarchy(h, vis)
        dec = model.decoder(h, batch)
        for b in range(3):
            hb = h.select(slice(b, b + 1))
            vb = [v[b:b + 1] for v in vis]
            alone = model.encoder.forward_hierarchy(hb, vb)
            for lvl in range(3):
                assert torch.allclose(batch[lvl].full[b:b + 1], alone[lvl].full, atol=1e-5)
            assert torch.allclose(dec[b:b + 1], model.decoder(hb, alone), atol=1e-5)
            assert torch.allclose(model.encode(pts)[b:b + 1], model.encode(pts[b:b + 1]), atol=1e-5)


def test_targets_3d_has_no_2d_loss_or_grad():
    cfg = tiny(targets="3d")
    model = build_model(cfg)
    pts, _, sal, proj = make_batch(cfg)
    out = model(pts, None, sal, proj, generator=torch.Generator().manual_seed(0))
    assert out["loss_2d"].item() == 0.0
    assert torch.equal(out["loss"], out["loss_3d"])
    out["loss"].backward()
    assert model.head_2d is None  # nothing 2D to train, and no idle parameters for DDP
    assert all(p.grad is not None for p in model.parameters())
    # Given maps anyway, the 3D-only objective ignores them.
    again = model(pts, make_batch(cfg)[1], sal, proj, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["loss"], out["loss"])


def test_gradient_reaches_every_parameter():
    cfg = tiny(drop_path=0.0)
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)
    model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(0))["loss"].backward()
    # The output LayerNorm of levels finer than the head level only serves feature extraction
    # (encode_levels); pre-training never reads it (as in Point-M2AE) and gives it an exact
    # zero gradient, so that DDP sees every parameter used.
    idle = {f"encoder.norms.{lvl}.{w}" for lvl in range(cfg.head_level) for w in ("weight", "bias")}
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if name in idle:
            assert not p.grad.any(), name
            continue
        assert torch.isfinite(p.grad).all(), name
        if name.startswith("encoder."):
            assert p.grad.abs().sum() > 0, name


def test_encoder_loads_alone_and_local_radii():
    cfg = tiny()
    model = build_model(cfg)
    enc = HierarchicalEncoder(cfg)
    enc.load_state_dict(model.encoder.state_dict())
    enc.eval()
    model.eval()
    pts = make_batch(cfg, b=2)[0]
    with torch.no_grad():
        assert torch.equal(enc(pts)[-1].tokens, model.encode(pts))
        local = enc(pts, local_radii=(0.32, 0.64, 1.28))
        tok = model.encode(pts)
        assert torch.equal(enc.global_feature(pts), tok.amax(1))
        assert enc.global_feature(pts, "mean+max").shape == (2, 2 * cfg.enc_dims[-1])
    assert all(torch.isfinite(lv.tokens).all() for lv in local)


def test_feature_targets_back_project_only_the_members_but_equal_every_candidate():
    """The 2D targets read the teacher at the members of the visible head-level tokens only;
    each value must equal back-projecting every candidate and indexing (the plain way), here
    on a mask that leaves some candidates unneeded and samples with different counts."""
    from i2p.common.point_ops import gather
    from i2p.stage1_project.projection import back_project
    from i2p.stage2_pretrain.model.targets import feature_targets

    cfg = tiny()
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)
    with torch.no_grad():
        out = model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(0))
    h = model.encoder.group(pts, torch.Generator().manual_seed(0))
    lvl = cfg.head_level
    vis = out[f"visible_mask_l{lvl + 1}"].clone()
    vis[0, :] = False
    vis[0, 3] = True  # one sample with a single visible token
    b_idx, g_idx = vis.nonzero(as_tuple=True)
    got = feature_targets(feats, pts, h, lvl, proj, cfg.image_size, b_idx, g_idx)
    cand = gather(pts, h.point_index[lvl - 1])
    every = back_project(feats, cand, proj, size=cfg.image_size).permute(0, 2, 1, 3).flatten(2)
    want = every[b_idx[:, None], h.groups[lvl][b_idx, g_idx]]
    assert got.shape == (len(b_idx), cfg.group_sizes[lvl], cfg.views * C)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_token_mse_equals_mse_loss_bit_for_bit():
    """The 2D term's per-token MSE (one temporary fewer in each direction) has the values and
    the gradient of ``mse_loss(reduction='none').mean(dim=(1, 2))`` exactly."""
    from i2p.stage2_pretrain.model.mae import token_mse

    g = torch.Generator().manual_seed(0)
    pred = torch.randn(37, 8, 93, generator=g, requires_grad=True)
    target = torch.randn(37, 8, 93, generator=g)
    weights = torch.rand(37, generator=g)
    ref = torch.nn.functional.mse_loss(pred, target, reduction="none").mean(dim=(1, 2))
    got = token_mse(pred, target)
    assert torch.equal(got, ref)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), pred)
    (g_got,) = torch.autograd.grad((got * weights).sum(), pred)
    assert torch.equal(g_got, g_ref) and g_got.abs().sum() > 0


@pytest.mark.parametrize("tokens", ["visible", "masked", "all"])
def test_target2d_tokens_picks_which_tokens_regress_the_teacher(tokens):
    """``target2d_tokens``: the 2D term is computed at the visible head-level tokens (the paper),
    at the masked ones, or at all of them; a training step runs and falls back to nothing else."""
    cfg = tiny(target2d_tokens=tokens)
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)
    with torch.no_grad():
        out = model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(0))
    visible = out["visible_mask_l2"]
    want = {"visible": visible, "masked": ~visible, "all": torch.ones_like(visible)}[tokens]
    k = cfg.group_sizes[cfg.head_level]
    assert out["pred_2d"].shape == (int(want.sum()), k, cfg.views * C) == out["target_2d"].shape
    err = ((out["pred_2d"] - out["target_2d"]) ** 2).mean(dim=(1, 2))
    rows = want.nonzero(as_tuple=True)[0]
    per_sample = torch.stack([err[rows == b].mean() for b in range(len(pts))]).mean()
    assert torch.allclose(out["loss_2d"], per_sample)
    model.train()
    step = model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(0))
    step["loss"].backward()
    assert model.head_2d.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="target2d_tokens"):
        tiny(target2d_tokens="hidden").validate()
