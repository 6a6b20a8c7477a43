"""``i2p viz``: the figures draw exactly what the pipeline computed.

* the depth images are the stage-1 images: ``sigmoid(project(cached points))`` with the cached
  raster parameters, and the teacher applied to them gives back the cached features (float16);
* the visible tokens drawn are the masks a real training step used for that sample (same
  generator seeding, same augmented frame), at all three levels, for both masking modes;
* a reconstruction is the forward pass's own prediction (its Chamfer equals ``loss_3d``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_small_cache
from i2p.cache import store as cs
from i2p.cli import main
from i2p.stage1_project.projection import project, to_teacher_input
from i2p.stage1_project.teachers import create_teacher
from i2p.stage2_pretrain import config as pcfg
from i2p.stage2_pretrain.model.mae import I2PMAE
from i2p.stage2_pretrain.train import pretrain
from i2p.viz.data import (
    load_model, load_sample, reconstruct, sample_viz, stage1_images, step_generator,
)
from i2p.viz.figures import recon_figure, sample_figure

FAST = ["data.holdout=0", "model.drop_path=0.0", "data.workers=0", "log.progress=false", "optim.warmup_epochs=1",
        "optim.batch_size=8", "log.ckpt_every_steps=100"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """26 primitives (13 classes x 2), 512 points, the test-tiny teacher."""
    out = tmp_path_factory.mktemp("viz") / "cache"
    build_small_cache(out, data="builtin:primitives?n_train=2&n_test=1")
    return str(out)


def _record_steps(monkeypatch):
    """Wrap I2PMAE.forward: one record per training step (points, scale, shift, masks)."""
    calls = []
    orig = I2PMAE.forward

    def spy(self, points, view_features=None, view_saliency=None, proj=None, scale=None, shift=None,
            generator=None, **kw):
        out = orig(self, points, view_features, view_saliency, proj, scale, shift, generator, **kw)
        calls.append({"points": points.detach().clone(), "scale": scale.clone(), "shift": shift.clone(),
                      "masks": [out[f"visible_mask_l{i}"].clone() for i in (1, 2, 3)]})
        return out

    monkeypatch.setattr(I2PMAE, "forward", spy)
    return calls


def _train(cache, out, monkeypatch, steps=2, **sets):
    calls = _record_steps(monkeypatch)
    cfg = pcfg.resolve("tiny", FAST + [f"{k}={v}" for k, v in sets.items()])
    pretrain(cache, str(out), cfg, max_steps=steps)
    monkeypatch.undo()
    return calls


def _index_of(points: torch.Tensor, cache: str) -> int:
    stored = np.asarray(cs.open_store(cache)["points"][:])
    hits = np.flatnonzero((stored == points.numpy()[None]).all(axis=(1, 2)))
    assert len(hits) == 1
    return int(hits[0])


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
    """A 2-step tiny run (2D-guided masking, seed 3) with the masks each step really used."""
    mp = pytest.MonkeyPatch()
    run = tmp_path_factory.mktemp("viz") / "run"
    calls = _train(cache, run, mp, steps=2, seed=3)
    return run, calls


def test_depth_images_are_the_stage1_images_the_teacher_saw(cache):
    viz = sample_viz(cache, 5, config="tiny")
    sample = load_sample(cache, 5)
    depth, proj = project(sample.points)
    assert torch.equal(proj, sample.proj)  # raster parameters recomputed == cached
    assert np.array_equal(viz.proj, sample.proj[0].numpy())
    assert np.array_equal(viz.images, torch.sigmoid(depth)[0].numpy())
    assert not viz.notes
    # The teacher applied to these images reproduces the cached maps.
    teacher = create_teacher("test-tiny", weights="random")
    images = torch.from_numpy(viz.images)[None]
    x = (images.flatten(0, 1)[:, None].expand(-1, 3, -1, -1) - 0.5) / 0.5
    assert torch.equal(x, to_teacher_input(depth, teacher.mean, teacher.std))
    with torch.no_grad():
        feats, sal = teacher(x)
    cached = sample.features[0].float()
    torch.testing.assert_close(feats.to(torch.float16).float(), cached, rtol=0, atol=0)
    torch.testing.assert_close(feats.float(), cached, rtol=1e-3, atol=1e-3)  # float16 tolerance
    torch.testing.assert_close(sal.float(), sample.saliency[0], rtol=1e-5, atol=1e-6)
    # ... and the figure shows exactly those arrays.
    fig = sample_figure(viz)
    drawn = {im.get_gid(): np.asarray(im.get_array()) for ax in fig.axes for im in ax.images if im.get_gid()}
    for v in range(3):
        assert np.array_equal(drawn[f"depth-v{v}"], viz.images[v])
    _, _, p2 = stage1_images(sample.points)
    assert torch.equal(p2, sample.proj)


def test_drawn_masks_are_the_masks_of_the_training_step(cache, trained):
    run, calls = trained
    assert len(calls) == 2
    checked = 0
    for step, call in enumerate(calls):
        for row in (0, 5):
            index = _index_of(call["points"][row], cache)
            # The exact step: its seed (from the run), its step, its epoch's augmentation.
            viz = sample_viz(cache, index, config=str(run), step=step, epoch=0)
            assert viz.seed == 3
            for lvl in range(3):
                used = call["masks"][lvl][row].numpy()
                assert np.array_equal(viz.guided.visible[lvl], used), (step, index, lvl)
            checked += 1
            # The figure's visible scatter at each level is exactly those tokens' centres.
            fig = sample_figure(viz)
            colls = {c.get_gid(): c for ax in fig.axes for c in ax.collections if c.get_gid()}
            for lvl in range(3):
                xyz = np.stack(colls[f"saliency-l{lvl + 1}-visible"]._offsets3d, axis=1)
                vis = viz.guided.visible[lvl]
                assert np.allclose(xyz, viz.guided.centers[lvl][vis])
                assert len(colls[f"saliency-l{lvl + 1}-masked"]._offsets3d[0]) == int((~vis).sum())
    assert checked == 4
    # Without --epoch the draw is the same generator on the un-augmented cloud; its coarse
    # visibility count is still the configured one.
    viz = sample_viz(cache, 0, config=str(run))
    assert int(viz.guided.visible[-1].sum()) == viz.model_cfg.num_visible()


def test_random_draw_is_that_of_a_random_masking_run_with_the_next_seed(cache, tmp_path, monkeypatch):
    calls = _train(cache, tmp_path / "rand", monkeypatch, steps=1, seed=4, **{"model.mask_mode": "random"})
    row = 2
    index = _index_of(calls[0]["points"][row], cache)
    viz = sample_viz(cache, index, config="tiny", seed=3, step=0, epoch=0)
    # The random run's augmentation used ITS seed (4); ours groups in seed 3's frame, so compare the
    # coarse draw, which does not depend on the frame (uniform scores, same generator).
    assert np.array_equal(viz.random.visible[-1], calls[0]["masks"][-1][row].numpy())


def test_reconstruction_is_the_forward_pass_prediction(cache, trained):
    run, _ = trained
    model, mcfg, ck = load_model(str(run / "last.ckpt"))
    sample = load_sample(cache, 7)
    rec = reconstruct(model, sample, seed=3, step=1)
    with torch.no_grad():
        out = model(sample.points, sample.features, sample.saliency, sample.proj,
                    generator=[step_generator(3, 1, 7)])
        vis2 = out["visible_mask_l2"][0]
    n_masked = int((~vis2).sum())
    k = mcfg.group_sizes[mcfg.head_level]
    assert rec.predicted.shape == (n_masked * k, 3) == rec.target.shape
    assert rec.chamfer == pytest.approx(float(out["loss_3d"]), rel=1e-5)
    assert 0 < rec.visible_fraction < 1 and len(rec.visible_points) < len(rec.points)
    fig = recon_figure(rec)
    colls = {c.get_gid(): c for ax in fig.axes for c in ax.collections if c.get_gid()}
    assert np.allclose(np.stack(colls["recon-predicted"]._offsets3d, axis=1), rec.predicted)


def test_cli_writes_pngs_and_refuses_bad_input(cache, trained, tmp_path, capsys):
    run, _ = trained
    png = tmp_path / "s.png"
    assert main(["viz", "sample", "--cache", cache, "--index", "3", "--out", str(png), "--config", "tiny",
                 "--temperature", "0.5", "--seed", "1"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    png2 = tmp_path / "r.png"
    assert main(["viz", "recon", "--ckpt", str(run / "last.ckpt"), "--cache", cache, "--index", "3",
                 "--out", str(png2)]) == 0
    assert png2.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["viz", "sample", "--cache", cache, "--index", "999", "--out", str(png)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("i2p: error:") and "out of range" in err and len(err.splitlines()) == 1
    assert main(["viz", "sample", "--cache", cache, "--out", str(png), "--temperature", "0"]) == 2
    assert main(["viz", "sample", "--cache", str(tmp_path / "nope"), "--out", str(png)]) == 2


def test_augmentation_is_the_readers(cache):
    from i2p.cache.reader import CacheDataset
    from i2p.viz.data import augmentation

    ds = CacheDataset(cache, with_targets=False, augment=True, seed=5, scale_range=(0.5, 2.0), shift_range=0.3)
    ds.set_epoch(3)
    for k in (0, 7):
        item = ds[k]
        scale, shift = augmentation(5, 3, item["index"], scale_range=(0.5, 2.0), shift_range=0.3)
        assert torch.equal(scale[0], item["scale"]) and torch.equal(shift[0], item["shift"])
