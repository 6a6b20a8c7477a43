"""The 2D/3D balance: gradient-norm balancing is exact and scale-free; the levers (global
distillation, per-point L2 targets) and the diagnostics (encoder gradient norms, held-out R2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from i2p.stage2_pretrain import config as pcfg
from i2p.stage2_pretrain.model import build_model
from i2p.stage2_pretrain.model import mae as mae_mod
from i2p.stage2_pretrain.model.mae import balance_weight
from test_model import C, make_batch, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def test_balance_weight_makes_the_gradient_ratio_exact():
    x = torch.randn(5, 7, requires_grad=True)
    ref = (x[:2] ** 2).sum() * 0.01  # a small loss on some rows
    big = ((x[2:] * 40 - 3) ** 2).mean() * 1e3  # a huge loss on the others
    w, raw = balance_weight(ref, big, x, ratio=0.3)
    g_ref = torch.autograd.grad(ref, x, retain_graph=True)[0]
    g_big = torch.autograd.grad(w * big, x)[0]
    assert g_big.norm() / g_ref.norm() == pytest.approx(0.3, rel=1e-5)
    assert raw > 1e3 and not w.requires_grad


def _encoder_grad_ratio(model, batch, feats_scale=1.0, global_target=None) -> float:
    pts, feats, sal, proj = batch
    out = model(pts, feats.float() * feats_scale, sal, proj, generator=torch.Generator().manual_seed(3),
                global_target=global_target)
    params = [p for p in model.encoder.parameters()]

    def norm(term):
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        return torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None))

    return float(norm(out["w_2d"] * out["loss_2d"]) / norm(out["loss_3d"]))


@pytest.mark.parametrize("lambda_2d", [None, 1.0])
def test_automatic_balance_is_scale_free_and_a_fixed_weight_is_not(lambda_2d, monkeypatch):
    """Raw targets (no normalisation anywhere in the model): multiplying the 2D targets by 10,
    or the 3D loss by 100, must not move the ratio of the gradient norms that the two terms
    send into the ENCODER by 2x or more. A fixed weight (the paper's 1.0) moves it ~10-100x,
    which is what shows the check can fail."""
    torch.manual_seed(0)
    cfg = tiny(drop_path=0.0, lambda_2d=lambda_2d)
    model = build_model(cfg)
    batch = make_batch(cfg)
    base = _encoder_grad_ratio(model, batch)
    targets_x10 = _encoder_grad_ratio(model, batch, feats_scale=10.0)
    chamfer = mae_mod.chamfer_l2
    monkeypatch.setattr(mae_mod, "chamfer_l2", lambda a, b: 100.0 * chamfer(a, b))
    loss3d_x100 = _encoder_grad_ratio(model, batch)
    changes = [max(r / base, base / r) for r in (targets_x10, loss3d_x100)]
    if lambda_2d is None:
        assert max(changes) < 2.0, (base, targets_x10, loss3d_x100)
    else:
        assert min(changes) > 5.0, (base, targets_x10, loss3d_x100)


def test_fixed_lambda_is_a_manual_override():
    cfg = tiny(lambda_2d=0.25)
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)
    out = model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(0))
    assert float(out["w_2d"]) == 0.25
    assert torch.allclose(out["loss"], out["loss_3d"] + 0.25 * out["loss_2d"])


def test_global_distillation_term_is_balanced_and_learns():
    torch.manual_seed(0)
    cfg = tiny(drop_path=0.0, global_ratio=0.5)
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)
    target = torch.randn(len(pts), cfg.views * C, generator=torch.Generator().manual_seed(5))
    assert model.head_global.out_features == cfg.views * C
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        out = model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(0), global_target=target)
        assert out["w_global"] > 0 and torch.isfinite(out["loss_global"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss_global"]))
    assert losses[-1] < 0.5 * losses[0], losses
    with pytest.raises(ValueError, match="global_target"):
        model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(0))


def test_global_term_on_the_full_cloud_pools_every_token():
    """global_input='full': the global head reads a second, unmasked encoder pass of the same
    grouped cloud (what downstream protocols encode), not the masked pass's 20% visible tokens."""
    from i2p.stage2_pretrain.model.masking import all_visibilities

    cfg = tiny(drop_path=0.0, global_ratio=0.5, global_input="full")
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)
    target = torch.randn(len(pts), cfg.views * C, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(0), global_target=target)
        h = model.encoder.group(pts, torch.Generator().manual_seed(0))
        top = cfg.num_levels - 1
        every = torch.ones(len(pts), cfg.num_groups[top], dtype=torch.bool)
        enc = model.encoder.forward_hierarchy(h, all_visibilities(every, h.groups, cfg.num_groups), None)
        assert bool(enc[-1].valid.all())  # every token encoded
        expect = model.head_global(enc[-1].tokens.amax(dim=1)).float()
        torch.testing.assert_close(out["pred_global"], expect, rtol=1e-5, atol=1e-5)
        vis_model = build_model(tiny(drop_path=0.0, global_ratio=0.5))
        vis_model.load_state_dict(model.state_dict())
        vis = vis_model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(0), global_target=target)
        assert (vis["pred_global"] - out["pred_global"]).abs().max() > 1e-3  # the visible-token pooling differs
    with pytest.raises(ValueError, match="global_input"):
        tiny(global_input="all").validate()


def test_point_l2_targets_have_unit_length_per_view():
    cfg = tiny(target_l2=True)
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)
    with torch.no_grad():
        out = model(pts, feats * 7.0, sal, proj, generator=torch.Generator().manual_seed(0))
    t = out["target_2d"].view(out["target_2d"].shape[0], -1, cfg.views, C)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(t.shape[:-1]), rtol=1e-5, atol=1e-5)
    plain = build_model(tiny())
    with torch.no_grad():
        raw = plain(pts, feats * 7.0, sal, proj, generator=torch.Generator().manual_seed(0))["target_2d"]
    assert raw.view(t.shape).norm(dim=-1).mean() > 3  # the un-normalised ones are not


def test_presets_paper_is_the_published_recipe_and_defaults_balance():
    paper = pcfg.resolve("paper")
    assert paper.model.lambda_2d == 1.0 and paper.model.global_ratio == 0.0 and not paper.model.target_l2
    assert paper.data.normalize_targets is False and paper.data.holdout == 0
    for name in ("tiny", "base"):
        cfg = pcfg.resolve(name)
        assert cfg.model.lambda_2d is None and cfg.data.normalize_targets
    assert pcfg.resolve("base").model.enc_dims == paper.model.enc_dims
    assert pcfg.resolve("tiny", ["loss.lambda_2d=0.01"]).model.lambda_2d == 0.01
    assert pcfg.resolve("paper", ["loss.lambda_2d=auto"]).model.lambda_2d is None
    with pytest.raises(Exception, match="lambda_2d"):
        pcfg.resolve("tiny", ["loss.lambda_2d=-1"])


def test_run_logs_balance_diagnostics_and_heldout_r2(small_cache, tmp_path):
    from i2p.common.checkpoint import load_checkpoint
    from i2p.stage2_pretrain.train import pretrain

    cfg = pcfg.resolve("tiny", ["model.enc_depths=[1,1,1]", "data.workers=0", "log.progress=false",
                                "optim.batch_size=8", "optim.epochs=2", "data.holdout=8",
                                "log.diag_every_steps=2", "model.global_ratio=0.1"])
    res = pretrain(small_cache, str(tmp_path / "run"), cfg)
    assert res.step == 10  # (52 - 8 held out) // 8 = 5 steps per epoch
    recs = [json.loads(ln) for ln in Path(tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    diag = [r for r in recs if "enc_grad_3d" in r]
    assert len(diag) == 5
    for r in diag:
        assert r["enc_grad_3d"] > 0 and r["enc_grad_2d"] > 0 and r["enc_grad_global"] > 0
        assert r["enc_grad_ratio_2d"] == pytest.approx(r["enc_grad_2d"] / r["enc_grad_3d"])
    r2 = [r for r in recs if "heldout_r2_2d" in r]
    assert [r["epoch"] for r in r2] == [0, 1]
    assert all(-5 < r["heldout_r2_2d"] < 1 and -5 < r["heldout_r2_global"] < 1 for r in r2)
    steps = [r for r in recs if "loss" in r]
    assert all(r["loss"] == pytest.approx(r["loss_3d"] + r["w_2d"] * r["loss_2d"] + r["w_global"] * r["loss_global"],
                                          rel=1e-5) for r in steps)
    ckpt = load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert len(ckpt["holdout"]) == 8 and ckpt["target_norm"]["global_mean"].shape == (3 * 8,)


def test_global_nce_picks_its_own_teacher_feature():
    """'nce': cross-entropy over cosine similarities to the bank; starts near log(M) and
    falls as the student learns to pick each shape's own teacher feature."""
    import math

    torch.manual_seed(0)
    cfg = tiny(drop_path=0.0, global_ratio=0.5, global_loss="nce", global_tau=0.1)
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)
    bank = torch.randn(10, cfg.views * C, generator=torch.Generator().manual_seed(5))
    rows = torch.tensor([7, 2, 4, 0])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(0),
                    global_target=bank[rows], global_bank=bank, global_rows=rows)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss_global"].detach()))
    assert abs(losses[0] - math.log(10)) < 1.0 and losses[-1] < 0.3 * losses[0], losses
    with torch.no_grad():
        pred = model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(0), global_target=bank[rows],
                     global_bank=bank, global_rows=rows)["pred_global"]
    sims = torch.nn.functional.normalize(pred, dim=-1) @ torch.nn.functional.normalize(bank, dim=-1).T
    assert sims.argmax(dim=1).tolist() == rows.tolist()


def test_teacher_bank_rows_follow_sample_indices(small_cache):
    from i2p.cache.reader import MultiCacheDataset
    from i2p.stage2_pretrain.teacher_targets import global_target, target_stats, teacher_bank

    ds = MultiCacheDataset([small_cache])
    norm = target_stats(ds, 64)
    bank = teacher_bank(ds, [3, 10, 40], norm, torch.device("cpu"))
    assert bank["emb"].shape == (3, 3 * 8) and set(bank["row"]) == {ds[p]["index"] for p in (3, 10, 40)}
    item = ds[10]
    expect = (global_target(item["features"][None]) - norm["global_mean"]) / norm["global_std"]
    torch.testing.assert_close(bank["emb"][bank["row"][item["index"]]], expect[0])


def test_balance_warmup_ramps_the_ratio_linearly():
    """``balance_warmup=0.5``: no 2D weight at the first step, half the balanced weight a
    quarter into the run, the full weight from half-way on (and without ``progress``)."""
    torch.manual_seed(0)
    cfg = tiny(drop_path=0.0, balance_warmup=0.5)
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)

    def weight(progress):
        out = model(pts, feats.float(), sal, proj, generator=torch.Generator().manual_seed(3), progress=progress)
        return float(out["w_2d"])

    full = weight(None)
    assert full > 0
    assert weight(0.0) == 0.0
    assert weight(0.25) == pytest.approx(0.5 * full, rel=1e-5)
    assert weight(0.5) == pytest.approx(full, rel=1e-5)
    assert weight(0.9) == pytest.approx(full, rel=1e-5)
    with pytest.raises(ValueError, match="balance_warmup"):
        tiny(balance_warmup=1.0)
    # the default warms up over a tenth of the run; a config saved before the key existed
    # (it has balance_ratio but no balance_warmup) resumes exactly as it ran: without
    assert tiny().balance_warmup == 0.1
    legacy = {k: v for k, v in tiny().to_dict().items() if k != "balance_warmup"}
    assert type(cfg).from_dict(legacy).balance_warmup == 0.0


@pytest.mark.parametrize("progress", [None, 0.03])
def test_single_pass_balance_equals_the_two_pass_form(progress):
    """The default objective differentiates the heads once (``balance_single_pass``); the
    two-pass form (``balance_weight``, then ``loss.backward()`` through the heads again) must
    give the same loss, weight, raw ratio and -- up to rounding order -- the same gradient on
    every parameter, and the same encoder gradients of each term (the diagnostics')."""
    torch.manual_seed(0)
    cfg = tiny(drop_path=0.0)
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)
    enc = [p for p in model.encoder.parameters()]
    runs = {}
    for single in (True, False):
        model._single_pass = (lambda: single) if not single else type(model)._single_pass.__get__(model)
        model.zero_grad(set_to_none=True)
        out = model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(3), progress=progress)
        term = {k: torch.autograd.grad(out[k] if k == "loss_3d" else out["w_2d"] * out["loss_2d"], enc,
                                       retain_graph=True, allow_unused=True) for k in ("loss_3d", "loss_2d")}
        out["loss"].backward()
        runs[single] = (out, term, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (a, ta, ga), (b, tb, gb) = runs[True], runs[False]
    for k in ("loss", "loss_3d", "loss_2d", "w_2d", "grad_ratio_2d"):
        assert torch.equal(a[k].detach(), b[k].detach()), k
    assert float(a["w_2d"]) > 0
    assert set(ga) == set(gb) and {"head_2d.weight", "head_3d.weight"} <= set(ga) and len(ga) > 20
    # Rounding order differs (w scales the 2D gradient after the head instead of before), so
    # compare within 1e-5 of the largest gradient entry (a bias followed by a BatchNorm has a
    # gradient that is rounding noise in both forms).
    scale = max(float(g.abs().max()) for g in gb.values())
    for n in gb:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-4, atol=1e-5 * scale, msg=n)
    flat = lambda g: torch.cat([x.flatten() for x in g if x is not None])  # noqa: E731
    for k in ta:  # what the diagnostics report: the norm of each term's encoder gradient
        x, y = flat(ta[k]), flat(tb[k])
        assert float((x - y).norm()) <= 1e-5 * float(y.norm()) and float(y.norm()) > 0, k


def _assert_2d_loss_halves(model, pts, feats, sal, proj, steps: int = 25) -> None:
    """``model`` (a ModelConfig: a model built from it) learns its 2D term: ``steps`` AdamW
    steps on one batch (same masks every step) halve the 2D loss."""
    if not isinstance(model, torch.nn.Module):
        model = build_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(steps):
        o = model(pts, feats, sal, proj, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        o["loss"].backward()
        opt.step()
        losses.append(float(o["loss_2d"]))
    assert losses[-1] < 0.5 * losses[0], losses


def test_2d_head_on_the_encoder_tokens():
    """head2d_input='encoder': the 2D head reads the encoder's LayerNorm'd head-level tokens (the
    features probes pool), not the decoder's; the 2D gradient then reaches the encoder without
    passing through the decoder, and the balance still holds its ratio at those tokens."""
    torch.manual_seed(0)
    cfg = tiny(drop_path=0.0, head2d_input="encoder")
    model = build_model(cfg)
    pts, feats, sal, proj = make_batch(cfg)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    out = model(pts, feats, sal, proj, generator=gen())
    dec_params = list(model.decoder.parameters())
    g2 = torch.autograd.grad(out["w_2d"] * out["loss_2d"], dec_params, retain_graph=True, allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0.0 for g in g2)  # the decoder gets no 2D gradient
    with torch.no_grad():
        ev = model(pts, feats, sal, proj, generator=gen())
        enc = model.encoder.forward_hierarchy(model.encoder.group(pts, gen()), [
            ev[f"visible_mask_l{i + 1}"] for i in range(cfg.num_levels)], None)
        b_idx, g_idx = ev[f"visible_mask_l{cfg.head_level + 1}"].nonzero(as_tuple=True)
        expect = model.head_2d(enc[cfg.head_level].full[b_idx, g_idx]).float()
        torch.testing.assert_close(ev["pred_2d"].flatten(1), expect, rtol=1e-5, atol=1e-5)
    # the default reads the decoder: its 2D gradient reaches the decoder
    ref = build_model(tiny(drop_path=0.0))
    out_ref = ref(pts, feats, sal, proj, generator=gen())
    g_dec = torch.autograd.grad(out_ref["loss_2d"], list(ref.decoder.parameters()), allow_unused=True)
    assert any(g is not None and float(g.abs().max()) > 0 for g in g_dec)
    # it learns (a fixed weight, so that the 2D term leads): 25 steps halve the 2D loss
    _assert_2d_loss_halves(tiny(drop_path=0.0, head2d_input="encoder", lambda_2d=1.0), pts, feats, sal, proj)
    with pytest.raises(ValueError, match="head2d_input"):
        tiny(head2d_input="both").validate()


def test_token_2d_target_is_the_mean_of_the_member_targets():
    """target2d='token': one 2D target per visible token, the mean of its k member points'
    back-projected targets (the 'points' objective's targets, averaged), a head k times smaller,
    the automatic balance in force, and a 2D loss that falls."""
    torch.manual_seed(0)
    base, tok = tiny(drop_path=0.0), tiny(drop_path=0.0, target2d="token")
    k = base.group_sizes[base.head_level]
    ref, model = build_model(base), build_model(tok)
    assert model.head_2d.out_features * k == ref.head_2d.out_features == k * base.views * base.teacher_channels
    pts, feats, sal, proj = make_batch(base)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with torch.no_grad():
        ev_ref, ev = ref(pts, feats, sal, proj, generator=gen()), model(pts, feats, sal, proj, generator=gen())
    assert ev_ref["target_2d"].shape[1] == k and ev["target_2d"].shape[1] == 1
    torch.testing.assert_close(ev["target_2d"], ev_ref["target_2d"].mean(dim=1, keepdim=True), rtol=0, atol=0)
    assert ev["pred_2d"].shape == ev["target_2d"].shape
    out = model(pts, feats, sal, proj, generator=gen())
    assert 0 < float(out["w_2d"]) and torch.isfinite(out["loss"])  # the automatic balance weighs it
    _assert_2d_loss_halves(tiny(drop_path=0.0, target2d="token", lambda_2d=1.0), pts, feats, sal, proj)
    with pytest.raises(ValueError, match="target2d"):
        tiny(target2d="pixels").validate()


def test_gradient_injection_is_zero_with_the_given_gradient():
    """``_link(x, g)``: exactly 0 forward; backward gives ``x`` the gradient ``g`` times the
    incoming one, bit for bit what the product form ``(x * g).sum()`` gives, in ``x``'s dtype."""
    from i2p.stage2_pretrain.model.balance import _link

    g = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(6, 5).to(dtype).requires_grad_()
        ref = x.detach().clone().requires_grad_()
        z = _link(x, g)
        assert z.item() == 0.0 and z.requires_grad
        (3.0 * z).backward()
        t = (ref * g).sum()
        (3.0 * (t - t.detach())).backward()
        assert x.grad.dtype == dtype and torch.equal(x.grad, ref.grad)
