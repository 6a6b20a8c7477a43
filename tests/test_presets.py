"""The official recipes as presets (issue 13 item 3): pre-training ``paper`` and the fine-tune
recipes ``paper-modelnet40|paper-scan-objbg|paper-scan-objonly|paper-scan-hardest``.

Unit tests with the official numbers (LR per epoch, weight-decay exemptions, label smoothing),
and one epoch of every preset on ``builtin:primitives`` (model sizes and point counts cut down
for a CPU; every switch of the preset left on)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from i2p.common.schedules import official_epoch_lr
from i2p.stage2_pretrain import config as pcfg
from i2p.stage3_eval import finetune_presets as fp

pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------- pre-training: settings


def test_switches_off_in_our_presets_and_on_in_paper():
    for name in ("base", "tiny"):
        c = pcfg.resolve(name)
        assert (c.optim.schedule, c.optim.schedule_epochs, c.optim.decay_exempt, c.data.sampling) == \
            ("i2p", None, "i2p", "fixed")
    p = pcfg.resolve("paper")
    assert (p.optim.schedule, p.optim.schedule_epochs, p.optim.decay_exempt, p.data.sampling) == \
        ("official", 400, "official", "official")
    assert p.data.teacher_sees_augmented and not pcfg.resolve("base").data.teacher_sees_augmented  # P8
    assert (p.optim.epochs, p.optim.warmup_epochs, p.optim.lr, p.optim.weight_decay, p.optim.grad_clip,
            p.optim.batch_size) == (301, 10, 1e-3, 0.05, 0.0, 64)
    with pytest.raises(pcfg.cfgutil.ConfigError, match="optim.schedule"):
        pcfg.resolve("base", ["optim.schedule=cosine"])


def test_official_lr_per_epoch():
    # timm CosineLRScheduler(t_initial=400, warmup_t=10, warmup_lr_init=1e-6, lr_min=1e-6), built
    # (epoch 0 at 1e-6) and stepped with step(epoch) after each epoch: epoch e runs at t = e - 1.
    lr = lambda e: official_epoch_lr(e, 400, 10, 1e-3)  # noqa: E731
    assert lr(0) == 1e-6 and lr(1) == 1e-6
    assert lr(2) == pytest.approx(1.009e-4, rel=1e-12)            # 1e-6 + 1 * (1e-3 - 1e-6) / 10
    assert lr(10) == pytest.approx(9.001e-4, rel=1e-12)           # t = 9, last warm-up epoch
    assert lr(11) == pytest.approx(9.98459e-4, rel=1e-5)          # t = 10: cosine from t = 0
    assert lr(201) == pytest.approx(5.005e-4, rel=1e-9)           # t = 200 = horizon / 2
    assert lr(300) == pytest.approx(1.50085e-4, rel=1e-4)         # the last official epoch (t = 299)
    assert lr(401) == 1e-6 and lr(1000) == 1e-6
    # the same as a per-step factor, constant within an epoch
    f = pcfg.lr_factor(pcfg.resolve("paper").optim, steps_per_epoch=7)
    assert [f(s) * 1e-3 for s in (0, 6, 13, 14, 20)] == pytest.approx([1e-6, 1e-6, 1e-6, 1.009e-4, 1.009e-4])
    # ours: per step, ends at min_lr when the run ends; schedule_epochs moves the horizon
    ours = pcfg.resolve("base", ["optim.epochs=10", "optim.warmup_epochs=1"]).optim
    g = pcfg.lr_factor(ours, 5)
    assert g(0) == pytest.approx(0.2) and g(50) * 1e-3 == pytest.approx(1e-6, abs=1e-9) and g(49) < 0.01
    longer = pcfg.lr_factor(dataclasses.replace(ours, schedule_epochs=20), 5)
    assert longer(50) > 0.4


def _timm_cosine():
    """timm's CosineLRScheduler, loaded from its two files (``import timm`` pulls torchvision,
    which may be broken where timm itself is fine)."""
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(list(spec.submodule_search_locations)[0]) / "scheduler"
    pkg = types.ModuleType("_timm_sched")
    pkg.__path__ = [str(base)]
    sys.modules["_timm_sched"] = pkg
    for name in ("scheduler", "cosine_lr"):
        s = importlib.util.spec_from_file_location(f"_timm_sched.{name}", base / f"{name}.py")
        mod = importlib.util.module_from_spec(s)
        sys.modules[f"_timm_sched.{name}"] = mod
        s.loader.exec_module(mod)
    return sys.modules["_timm_sched.cosine_lr"].CosineLRScheduler


def test_official_lr_matches_timm_when_available():
    try:
        cosine = _timm_cosine()
    except Exception:
        cosine = None
    if cosine is None:
        pytest.skip("timm's scheduler not loadable")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = cosine(opt, t_initial=400, lr_min=1e-6, warmup_lr_init=1e-6, warmup_t=10, cycle_limit=1,
                   t_in_epochs=True)
    for epoch in range(420):  # the official loop: train the epoch, then scheduler.step(epoch)
        assert opt.param_groups[0]["lr"] == pytest.approx(official_epoch_lr(epoch, 400, 10, 1e-3), rel=1e-12)
        sched.step(epoch)


def test_official_weight_decay_exemptions_by_name():
    from i2p.stage2_pretrain.model.config import ModelConfig
    from i2p.stage2_pretrain.model.mae import I2PMAE, decay_exempt, optimizer_groups

    model = I2PMAE(ModelConfig.tiny(teacher_channels=8))
    params = dict(model.named_parameters())
    ours = {n for n, p in params.items() if decay_exempt(n, p, "i2p")}
    official = {n for n, p in params.items() if decay_exempt(n, p, "official")}
    assert ours == {n for n, p in params.items() if p.ndim == 1 or n.endswith(".bias")}
    # official adds every >= 2-D weight whose official name holds 'token': the encoder's token
    # embeddings (h_encoder.token_embed), the mask token, the decoder's token propagation
    extra = sorted(official - ours)
    assert extra == sorted([
        "decoder.fuse.0.0.weight", "decoder.mask_token",
        *(f"encoder.embeds.{lvl}.net.{part}.{i}.weight" for lvl in range(3)
          for part in ("first", "second") for i in (0, 3)),
    ])
    groups = optimizer_groups(model, 0.05, "official")
    assert sum(len(g["params"]) for g in groups) == len(params)
    assert {id(p) for p in groups[1]["params"]} == {id(params[n]) for n in official}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0


def test_official_sampling_order_and_normalisation(small_cache):
    from i2p.cache.reader import CacheDataset

    fixed = CacheDataset(small_cache, augment=True, seed=3)
    off = CacheDataset(small_cache, augment=True, seed=3, sampling="official")
    a, b = fixed[5], off[5]
    pa, pb = a["points"].numpy(), b["points"].numpy()
    assert not np.array_equal(pa, pb)  # a random order: FPS starts elsewhere
    assert np.array_equal(np.sort(pa, axis=0), np.sort(pb, axis=0))  # the same points
    # what the network sees = the official pc_norm of the cloud, then the same scale and shift
    c = pb.mean(0)
    m = np.sqrt(((pb - c) ** 2).sum(1)).max()
    want = (pb - c) / m * a["scale"].numpy() + a["shift"].numpy()
    got = pb * b["scale"].numpy() + b["shift"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    off.set_epoch(1)
    assert not np.array_equal(off[5]["points"].numpy(), pb)  # a fresh order each epoch


TINY_MODEL = ["model.num_groups=[128,64,16]", "model.enc_dims=[48,96,192]", "model.enc_depths=[1,1,1]",
              "model.num_heads=3", "model.embed_hidden=[32,64]", "model.dec_dims=[192,96]", "model.dec_depths=[1,1]",
              "model.drop_path=0.0", "optim.batch_size=8", "data.workers=1", "log.progress=false",
              "log.diag_every_steps=0"]


@pytest.mark.slow
def test_paper_preset_one_epoch(small_cache, tmp_path):
    from i2p.stage2_pretrain.train import pretrain

    cfg = pcfg.resolve("paper", TINY_MODEL + ["optim.epochs=2"])
    assert (cfg.optim.schedule, cfg.optim.decay_exempt, cfg.data.sampling, cfg.model.lambda_2d) == \
        ("official", "official", "official", 1.0)
    res = pretrain(small_cache, str(tmp_path / "run"), cfg, max_steps=8)  # epoch 0 and the start of epoch 1
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert res.step == 8 and all(math.isfinite(r["loss"]) for r in recs)
    for r in recs:  # epochs 0 and 1 both run at warmup_lr_init
        assert r["lr"] == pytest.approx(1e-6)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "schedule: official" in saved and "sampling: official" in saved and "decay_exempt: official" in saved
    assert "decoder_style: official" in saved and "teacher_sees_augmented: true" in saved  # P13/P14, P8


@pytest.mark.slow
def test_paper_preset_with_online_teacher_one_epoch(small_cache, tmp_path):
    """``--config paper --online-teacher``: the official step (the teacher renders the augmented
    cloud, the official decoder), one epoch."""
    from i2p.stage2_pretrain.train import pretrain

    cfg = pcfg.resolve("paper", TINY_MODEL + ["optim.epochs=1", "online_teacher=true", "log.every_steps=1"])
    assert cfg.online_teacher and cfg.data.teacher_sees_augmented and cfg.model.decoder_style == "official"
    res = pretrain(small_cache, str(tmp_path / "run"), cfg)
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert res.step == res.epoch * 6 == 6 and len(recs) == 6  # 52 shapes, batch 8
    assert all(math.isfinite(r["loss"]) and r["loss_2d"] > 0 for r in recs)


# ---------------------------------------------------------------- fine-tuning


def test_official_label_smoothing_values():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    y = torch.tensor([0])
    lse = math.log(math.exp(2) + 3)  # 2.3407...
    # official: 0.8 on the true class, 0.2 / 3 on each other one
    assert fp.official_smooth_loss(logits, y, 0.2).item() == pytest.approx(lse - 0.8 * 2, rel=1e-6)
    assert fp.official_smooth_loss(logits, y, 0.2).item() == pytest.approx(0.740753, abs=1e-6)
    # PyTorch's: 0.8 + 0.2/4 on the true class
    ours = fp.loss_fn(fp.DEFAULT)(logits, y).item()
    assert ours == pytest.approx(0.640753, abs=1e-6)
    assert fp.loss_fn(fp.RECIPES["paper-modelnet40"])(logits, y).item() == pytest.approx(0.740753, abs=1e-6)
    assert fp.loss_fn(fp.RECIPES["paper-scan-objbg"])(logits, y).item() == pytest.approx(lse - 2, abs=1e-6)


def test_recipes_hold_the_official_hyper_parameters():
    m = fp.RECIPES["paper-modelnet40"]
    assert (m.points, m.epochs, m.batch_size, m.lr, m.weight_decay, m.warmup, m.schedule, m.schedule_epochs,
            m.smoothing, m.loss, m.grad_clip, m.head, m.group_sizes, m.local_radii, m.read_points, m.fps_pool,
            m.augment, m.votes) == (1024, 301, 32, 5e-4, 0.05, 10, "official", 300, 0.2, "official", 10.0,
                                    "official-sum", (48, 24, 24), (0.24, 0.48, 0.96), 8192, 1200, "modelnet40", 10)
    for name, radii in (("paper-scan-objbg", (0.32, 0.64, 1.28)), ("paper-scan-objonly", (0.32, 0.64, 1.28)),
                        ("paper-scan-hardest", (0.48, 0.96, 1.92))):
        s = fp.RECIPES[name]
        assert (s.points, s.smoothing, s.loss, s.head, s.group_sizes, s.local_radii, s.augment, s.votes,
                s.grad_clip, s.fps_pool) == (2048, 0.0, "ce", "official-concat", (32, 16, 16), radii, "scan", 1,
                                             10.0, 2400)
    assert all(r.decay_exempt == "official" for r in fp.RECIPES.values())
    d = fp.DEFAULT
    assert (d.head, d.loss, d.schedule, d.grad_clip, d.group_sizes, d.fps_pool, d.augment, d.decay_exempt) == \
        ("i2p", "ce", "i2p", 0.0, None, None, "i2p", "none")
    # explicit options win over the recipe; None means "not given"
    r = fp.resolve("paper-modelnet40", epochs=3, lr=None, local_radii=[0, 0, 0])
    assert (r.epochs, r.lr, r.local_radii, r.head) == (3, 5e-4, (0, 0, 0), "official-sum")
    with pytest.raises(Exception, match="unknown fine-tune recipe"):
        fp.resolve("paper-shapenet")


def test_official_finetune_lr_and_augment():
    step = fp.StepRecipe(fp.RECIPES["paper-scan-objbg"], steps_per_epoch=4, epochs=301, warmup=10, lr=5e-4,
                         smoothing=0.0, sample_points=8)
    assert step.lr(0, 3) == 1e-6 and step.lr(2, 0) == pytest.approx(1e-6 + (5e-4 - 1e-6) / 10)
    assert step.lr(151, 2) == pytest.approx(1e-6 + 0.5 * (5e-4 - 1e-6))  # t = 150 of 300
    clouds = np.random.default_rng(0).normal(size=(3, 20, 3)).astype(np.float32)
    x = step.batch(clouds, torch.Generator().manual_seed(0), (0, 0, 0))
    assert x.shape == (3, 8, 3)
    # scan: per-axis scale in [0.9, 1.1], then a rotation about y: y is only scaled
    ys = x[..., 1].numpy()
    norms_xz = np.linalg.norm(x[..., [0, 2]].numpy(), axis=-1)
    assert norms_xz.shape == (3, 8) and np.isfinite(ys).all()
    g = torch.Generator().manual_seed(1)
    pts = torch.ones(2, 5, 3)
    out = fp.official_augment(pts, "modelnet40", g)
    assert ((out > 2 / 3 - 0.2 - 1e-6) & (out < 1.5 + 0.2 + 1e-6)).all()


FT_SPEC = "builtin:primitives?n_train=1&n_test=1"


def _small(name: str) -> fp.FinetuneRecipe:
    """The recipe with CPU sizes: 1 epoch, 256 points (read 512, pool 300), batch 16, 2 votes
    where the recipe votes; loss, head, groups, radii, schedule, clipping and augmentation kept."""
    r = fp.RECIPES[name]
    return fp.resolve(name, epochs=1, points=256, read_points=512, fps_pool=300, batch_size=16,
                      votes=2 if r.votes > 1 else 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(fp.RECIPES))
def test_each_finetune_recipe_runs_one_epoch(name, tmp_path):
    from i2p.stage3_eval import runner

    rc = _small(name)
    res = runner.finetune("random", FT_SPEC, str(tmp_path / name), rc.points, rc.epochs, rc.batch_size, rc.lr,
                          rc.weight_decay, rc.warmup, rc.smoothing, rc.dropout, 0.1, "last", rc.votes,
                          rc.local_radii, 0, "cpu", True, "tiny", False, recipe=rc)
    assert len(res["history"]) == 1 and math.isfinite(res["history"][0]["loss"])
    assert 0 <= res["accuracy"] <= 1
    s = res["settings"]
    assert (s["recipe"], s["head"], s["loss"], s["schedule"], s["grad_clip"], s["augment"], s["fps_pool"]) == \
        (name, rc.head, rc.loss, "official", 10.0, rc.augment, 300)
    assert s["group_sizes"] == list(rc.group_sizes) and s["local_radii"] == list(rc.local_radii)
    assert s["decay_exempt"] == "official"
    ck = torch.load(Path(res["finetuned_checkpoint"]), weights_only=False)
    first = [k for k in ck["model"] if k.startswith("head.0.weight")][0]
    dim = 192  # the tiny encoder's last width
    assert ck["model"][first].shape[1] == (dim if rc.head == "official-sum" else 2 * dim)


@pytest.mark.slow
def test_recipe_flag_on_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from i2p.cli import app

    out = tmp_path / "ft"
    r = CliRunner().invoke(app, ["eval", "finetune", "--ckpt", "random", "--data", FT_SPEC, "--recipe",
                                 "paper-scan-hardest", "--epochs", "1", "--points", "256", "--batch-size", "16",
                                 "--select-on", "last", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "result.json").read_text())["settings"]
    assert (s["recipe"], s["epochs"], s["points"], s["head"], s["local_radii"], s["label_smoothing"]) == \
        ("paper-scan-hardest", 1, 256, "official-concat", [0.48, 0.96, 1.92], 0.0)


def test_cache_build_teacher_input_official(small_cache, tmp_path):
    import zarr

    from conftest import build_small_cache
    from i2p.cache.store import open_store
    from i2p.stage1_project.projection import OFFICIAL_TEACHER_MEAN, OFFICIAL_TEACHER_STD

    out = tmp_path / "official"
    build_small_cache(out, teacher_input="official")
    ours, off = open_store(small_cache), open_store(str(out))
    s = off.attrs["settings"]
    assert (s["teacher_mean"], s["teacher_std"]) == (list(OFFICIAL_TEACHER_MEAN), list(OFFICIAL_TEACHER_STD))
    assert ours.attrs["settings"]["teacher_mean"] == [0.5, 0.5, 0.5]  # the test teacher's own
    np.testing.assert_array_equal(np.asarray(ours["points"][0]), np.asarray(off["points"][0]))
    assert not np.allclose(np.asarray(ours["features"][0]), np.asarray(off["features"][0]))
    assert isinstance(off, zarr.Group)
    with pytest.raises(Exception, match="teacher-input"):
        build_small_cache(tmp_path / "bad", teacher_input="imagenet")


@pytest.mark.slow
def test_official_sampling_draws_fewer_points_than_cached(small_cache, tmp_path):
    """The official 2048 of 8192, scaled down: a 512-point cache, 256 drawn per epoch."""
    from i2p.cache.reader import CacheDataset
    from i2p.stage2_pretrain.train import pretrain

    ds = CacheDataset(small_cache, sampling="official", draw=256)
    full = ds._array("points")[3]
    a = ds[3]["points"].numpy()
    assert a.shape == (256, 3) and {tuple(p) for p in a} <= {tuple(p) for p in full}
    ds.set_epoch(1)
    assert {tuple(p) for p in ds[3]["points"].numpy()} != {tuple(p) for p in a}  # a fresh subset
    cfg = pcfg.resolve("paper", TINY_MODEL + ["data.points=256", "optim.epochs=1"])
    assert pcfg.fit_to_cache(cfg, {"num_points": 512, "views": 3, "feature_shape": [3, 8, 8, 8],
                                   "image_size": 224}).model.num_points == 256
    res = pretrain(small_cache, str(tmp_path / "run"), cfg, max_steps=2)
    assert res.step == 2
    with pytest.raises(pcfg.cfgutil.ConfigError, match="sampling=official"):
        pcfg.fit_to_cache(pcfg.resolve("base", ["data.points=256"]),
                          {"num_points": 512, "views": 3, "feature_shape": [3, 8, 8, 8], "image_size": 224})
