"""The augmentation-aware cache (issue 18): K augmented renders per shape at build time, and
training that shows the network exactly the transformed cloud the teacher saw."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import TinyTestTeacher, build_small_cache
from i2p.cache import store as cs
from i2p.cache.augment import apply_transform, render_params
from i2p.cache.inspect import cache_info, verify_cache
from i2p.cache.reader import CacheDataset, augmentation_draw, augmentation_params
from i2p.common.config import ConfigError
from i2p.common.errors import CacheError
from i2p.stage1_project.aug_renders import AugRenders
from i2p.stage1_project.projection import back_project, project, to_teacher_input
from i2p.stage2_pretrain import config as pcfg
from i2p.stage2_pretrain.train import pretrain

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = "builtin:primitives?n_train=2&n_test=1"  # 26 shapes
AUG = AugRenders(renders=2, scale=(0.7, 1.4), shift=0.2, rotate=30.0)
FAST = ["model.enc_depths=[1,1,1]", "model.drop_path=0.0", "data.workers=0", "log.ckpt_every_steps=100",
        "log.progress=false", "optim.warmup_epochs=1", "data.holdout=0", "optim.batch_size=8",
        "log.diag_every_steps=0"]


@pytest.fixture(scope="module")
def aug_cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("aug") / "k2"
    build_small_cache(out, data=SPEC, points=256, aug=AUG)
    return str(out)


@pytest.fixture(scope="module")
def plain_cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("aug") / "k0"
    build_small_cache(out, data=SPEC, points=256)
    return str(out)


def _losses(run_dir) -> list[dict]:
    return [json.loads(ln) for ln in Path(run_dir, "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _teacher_maps(points: torch.Tensor):
    teacher = TinyTestTeacher().freeze("cpu")
    depth, proj = project(points)
    f, s = teacher(to_teacher_input(depth, teacher.mean, teacher.std))
    b = points.shape[0]
    return f.view(b, 3, *f.shape[1:]), s.view(b, 3, *s.shape[1:]), proj


def test_layout_settings_and_verify(aug_cache, plain_cache):
    root, plain = zarr.open_group(aug_cache, mode="r"), zarr.open_group(plain_cache, mode="r")
    assert root["aug_features"].shape == (26, 2, 3, 8, 8, 8) and root["aug_features"].dtype == np.float16
    assert root["aug_saliency"].shape == (26, 2, 3, 8, 8) and root["aug_proj"].shape == (26, 2, 3, 5)
    assert root["aug_params"].shape == (26, 2, 7)
    assert root["aug_features"].chunks == (1, 1, 3, 8, 8, 8)  # one render per inner chunk
    s = root.attrs["settings"]
    assert (s["aug_renders"], s["aug_scale"], s["aug_shift"], s["aug_rotate"]) == (2, [0.7, 1.4], 0.2, 30.0)
    assert root.attrs["format_version"] == cs.FORMAT_VERSION == 1  # additive arrays: same format
    # K = 0: today's layout and attributes, unchanged
    assert not any(n.startswith("aug_") for n in plain.array_keys())
    assert not any(k.startswith("aug_") for k in plain.attrs["settings"])
    assert cache_info(aug_cache)["aug_renders"] == 2 and cache_info(plain_cache)["aug_renders"] == 0
    params = np.asarray(root["aug_params"][:])
    for i, k in ((0, 0), (5, 1), (25, 1)):
        assert np.array_equal(params[i, k], render_params(0, i, k, (0.7, 1.4), 0.2, 30.0))
    assert ((params[..., :3] >= 0.7) & (params[..., :3] <= 1.4)).all() and (np.abs(params[..., 3:6]) <= 0.2).all()
    assert (np.abs(params[..., 6]) <= math.radians(30)).all() and np.abs(params[..., 6]).max() > 0.05
    assert verify_cache(aug_cache) == [] and verify_cache(plain_cache) == []


def test_transform_is_scale_then_rotation_about_y_then_shift():
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(50, 3)).astype(np.float32)
    q = render_params(3, 7, 1, (0.5, 2.0), 0.3, 45.0)
    a = float(q[6])
    rot = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    expect = (pts.astype(np.float64) * q[:3]) @ rot.T + q[3:6]
    np.testing.assert_allclose(apply_transform(pts, q), expect, rtol=0, atol=1e-6)
    # a rotation keeps lengths of the scaled cloud; the y coordinate is not turned
    np.testing.assert_allclose(apply_transform(pts, q)[:, 1], pts[:, 1] * q[1] + q[4], atol=1e-6)


def test_stored_aug_render_equals_render_of_the_transformed_cloud(aug_cache, plain_cache):
    root = zarr.open_group(aug_cache, mode="r")
    pts = np.asarray(root["points"][:])
    assert np.array_equal(pts, np.asarray(zarr.open_group(plain_cache, mode="r")["points"][:]))
    rows = [(0, 0), (9, 1), (21, 0)]
    moved = torch.from_numpy(np.stack([apply_transform(pts[i], render_params(0, i, k, (0.7, 1.4), 0.2, 30.0))
                                       for i, k in rows]))
    f, s, p = _teacher_maps(moved)
    for n, (i, k) in enumerate(rows):
        assert torch.equal(torch.from_numpy(root["aug_proj"][i, k]), p[n])
        torch.testing.assert_close(torch.from_numpy(root["aug_saliency"][i, k]), s[n], rtol=0, atol=1e-6)
        # float16 storage: the teacher ran on batches of another size, so a value may round to
        # the neighbouring float16 (one ulp, 2^-11 relative)
        torch.testing.assert_close(torch.from_numpy(root["aug_features"][i, k]).float(), f[n].half().float(),
                                   rtol=1e-3, atol=1e-4)
        # and it is another picture than the plain render's
        assert not torch.allclose(torch.from_numpy(root["features"][i]).float(), f[n].half().float(), atol=1e-2)


def test_picked_render_gives_the_targets_of_the_transformed_cloud(aug_cache):
    ds = CacheDataset(aug_cache, augment=True, seed=5, aug_renders=True)
    plain = CacheDataset(aug_cache, augment=False)
    ds.set_epoch(3)
    picks = set()
    for i in (2, 11, 17):
        item, orig = ds[i], plain[i]
        _, _, render = augmentation_draw(5, 3, i, renders=2)
        assert item["render"] == render and render in (0, 1)
        q = np.asarray(zarr.open_group(aug_cache, mode="r")["aug_params"][i, render])
        assert torch.equal(item["points"], torch.from_numpy(apply_transform(orig["points"].numpy(), q)))
        assert torch.equal(item["scale"], torch.ones(1, 3)) and torch.equal(item["shift"], torch.zeros(1, 3))
        # the 2D targets: the picked render's maps back-projected at the points the network sees
        # equal the teacher's maps of that very cloud back-projected there
        pts = item["points"][None]
        f, s, p = _teacher_maps(pts)
        assert torch.equal(item["proj"], p[0])
        off = back_project(item["features"][None].float(), pts, item["proj"][None])
        on = back_project(f.half().float(), pts, p)
        torch.testing.assert_close(off, on, rtol=0, atol=1e-5)
        sal_off = back_project(item["saliency"][None], pts, item["proj"][None])
        torch.testing.assert_close(sal_off, back_project(s, pts, p), rtol=0, atol=1e-6)
        # the plain render's maps at the original points are other targets
        stale = back_project(orig["features"][None].float(), orig["points"][None], orig["proj"][None])
        assert not torch.allclose(stale, on, atol=1e-2)
    for epoch in range(6):
        ds.set_epoch(epoch)
        picks |= {ds[i]["render"] for i in range(6)}
    assert picks == {0, 1}
    # the pick rides on the existing draw: scale and shift of the plain augmentation unchanged
    sc, sh, _ = augmentation_draw(5, 3, 4, renders=2)
    sc0, sh0 = augmentation_params(5, 3, 4)
    assert np.array_equal(sc, sc0) and np.array_equal(sh, sh0)
    # without augmentation (held-out R2): the plain render and the stored points
    assert plain[2]["render"] == -1 and torch.equal(CacheDataset(aug_cache, aug_renders=True)[2]["points"],
                                                    plain[2]["points"])


def test_official_sampling_orders_the_transformed_cloud(aug_cache):
    ds = CacheDataset(aug_cache, augment=True, seed=2, aug_renders=True, sampling="official")
    ref = CacheDataset(aug_cache, augment=True, seed=2, aug_renders=True)
    ds.set_epoch(1)
    ref.set_epoch(1)
    item, moved = ds[4], ref[4]
    assert item["render"] == moved["render"] and torch.equal(item["proj"], moved["proj"])
    # a permutation of the transformed cloud (targets read there), its pc_norm in scale/shift
    assert torch.equal(torch.sort(item["points"], dim=0)[0], torch.sort(moved["points"], dim=0)[0])
    seen = item["points"] * item["scale"] + item["shift"]
    assert float(seen.norm(dim=1).max()) == pytest.approx(1.0, abs=1e-5)


def test_online_teacher_on_aug_renders_runs(aug_cache, tmp_path):
    cfg = pcfg.resolve("tiny", FAST + ["data.aug_renders=true", "online_teacher=true"])
    assert pretrain(aug_cache, str(tmp_path / "run"), cfg, max_steps=2).step == 2
    assert all(math.isfinite(r["loss"]) for r in _losses(tmp_path / "run"))


def test_training_on_aug_renders_runs_and_loss_falls(aug_cache, tmp_path):
    cfg = pcfg.resolve("tiny", FAST + ["optim.epochs=8", "data.aug_renders=true", "optim.lr=2e-3"])
    res = pretrain(aug_cache, str(tmp_path / "run"), cfg)
    assert res.step == 24  # 26 shapes, batch 8: 3 steps an epoch
    recs = _losses(tmp_path / "run")
    assert len(recs) == 24 and all(math.isfinite(r["loss"]) and math.isfinite(r["loss_2d"]) for r in recs)
    assert all(r["loss_2d"] > 0 for r in recs)
    l3 = [r["loss_3d"] for r in recs]
    assert sum(l3[-3:]) / 3 < 0.7 * sum(l3[:3]) / 3, l3
    saved = pcfg.resolve(str(tmp_path / "run" / "config.yaml"))
    assert saved.data.aug_renders is True


def test_plain_cache_still_trains_and_aug_renders_on_it_is_refused(plain_cache, aug_cache, tmp_path):
    res = pretrain(plain_cache, str(tmp_path / "plain"), pcfg.resolve("tiny", FAST), max_steps=2)
    assert res.step == 2 and all(math.isfinite(r["loss"]) for r in _losses(tmp_path / "plain"))
    # an aug cache trains the plain way too (the aug arrays are then never read)
    res = pretrain(aug_cache, str(tmp_path / "k2plain"), pcfg.resolve("tiny", FAST), max_steps=2)
    assert res.step == 2
    with pytest.raises(CacheError, match="no augmented renders") as err:
        pretrain(plain_cache, str(tmp_path / "x"), pcfg.resolve("tiny", FAST + ["data.aug_renders=true"]))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="data.augment=true"):
        pcfg.resolve("tiny", ["data.aug_renders=true", "data.augment=false"])


def test_resume_rules_and_newer_format_refused(aug_cache, plain_cache, tmp_path):
    assert build_small_cache(plain_cache, data=SPEC, points=256).shards_done_now == 0
    assert build_small_cache(aug_cache, data=SPEC, points=256, aug=AUG).shards_done_now == 0
    with pytest.raises(CacheError, match="aug_renders"):
        build_small_cache(plain_cache, data=SPEC, points=256, aug=AugRenders(renders=1))
    with pytest.raises(CacheError, match="aug_rotate"):
        build_small_cache(aug_cache, data=SPEC, points=256, aug=AugRenders(2, (0.7, 1.4), 0.2, 10.0))
    newer = zarr.open_group(str(tmp_path / "newer"), mode="w")
    newer.attrs.update({"format_version": cs.FORMAT_VERSION + 1, "settings": {}})
    with pytest.raises(CacheError, match="newer than this i2p reads") as err:
        cs.open_store(str(tmp_path / "newer"))
    assert "\n" not in str(err.value)


def test_cli_flags_build_an_aug_cache(tmp_path):
    from typer.testing import CliRunner

    from i2p.cli import app

    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["cache", "build", "--data", "builtin:primitives?n_train=1&n_test=1", "--out", str(out),
                                 "--teacher", "test-tiny", "--teacher-weights", "random", "--points", "128",
                                 "--limit", "3", "--device", "cpu", "--no-progress", "--aug-renders", "1",
                                 "--aug-scale", "0.9", "1.1", "--aug-shift", "0.1", "--aug-rotate", "5"])
    assert r.exit_code == 0, r.output
    s = zarr.open_group(str(out), mode="r").attrs["settings"]
    assert (s["aug_renders"], s["aug_scale"], s["aug_shift"], s["aug_rotate"]) == (1, [0.9, 1.1], 0.1, 5.0)
    assert zarr.open_group(str(out), mode="r")["aug_params"].shape == (3, 1, 7)


def test_array_jobs_build_the_same_aug_arrays(tmp_path):
    spec = "builtin:primitives?n_train=6&n_test=1"  # 78 shapes: 2 shards
    aug = AugRenders(renders=1, rotate=20.0)
    build_small_cache(tmp_path / "one", data=spec, points=128, aug=aug)
    for i in (1, 0):
        build_small_cache(tmp_path / "two", data=spec, points=128, aug=aug, shard=(i, 2))
    a, b = zarr.open_group(str(tmp_path / "one"), mode="r"), zarr.open_group(str(tmp_path / "two"), mode="r")
    assert b.attrs["complete"] is True
    for name in ("aug_features", "aug_saliency", "aug_proj", "aug_params"):
        assert np.array_equal(np.asarray(a[name][:]), np.asarray(b[name][:]), equal_nan=True), name


def test_skipped_sample_has_no_aug_render_and_verify_still_passes(tmp_path):
    root = tmp_path / "meshes"
    for name, text in (("good", "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n"),
                       ("nan", "v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")):
        (root / "a" / "train").mkdir(parents=True, exist_ok=True)
        (root / "a" / "train" / f"{name}.obj").write_text(text)
    out = tmp_path / "c"
    assert build_small_cache(out, data=f"meshes:{root}", points=64, aug=AugRenders(renders=2)).complete
    g = zarr.open_group(str(out), mode="r")
    bad = [s["index"] for s in g.attrs["skips"]]
    good = 1 - bad[0]
    assert len(bad) == 1 and np.isnan(g["aug_params"][bad[0]]).all() and np.isnan(g["aug_features"][bad[0]]).all()
    assert np.isfinite(g["aug_features"][good]).all()
    assert verify_cache(str(out)) == []
    ds = CacheDataset(str(out), augment=True, aug_renders=True)
    assert len(ds) == 1 and torch.isfinite(ds[0]["features"].float()).all()
    zarr.open_group(str(out), mode="r+")["aug_saliency"][good, 1] = np.nan  # an unwritten aug render
    problems = verify_cache(str(out))
    assert len(problems) == 1 and "aug_saliency" in problems[0], problems


def test_sample_reads_fetched_together_equal_one_array_at_a_time(aug_cache, plain_cache, tmp_path):
    """``CacheDataset`` fetches a sample's arrays in one zarr hand-off; every item (plain and
    augmented renders, with and without targets) holds the same values as reading each array
    on its own, and NaN in a fetched array still stops with the array named."""

    class OneByOne(CacheDataset):
        def _read_many(self, i, reads):
            return [self._read(n, i, r) for n, r in reads]

    class NoFallback(CacheDataset):
        def _read(self, *args, **kwargs):
            raise AssertionError("the together path fell back to one array at a time")

    NoFallback(aug_cache, augment=True, aug_renders=True)[0]  # from the very first sample of a fresh dataset
    for url, kw in [(plain_cache, {}), (aug_cache, {"augment": True, "aug_renders": True}),
                    (aug_cache, {"with_targets": False})]:
        together, alone = CacheDataset(url, **kw), OneByOne(url, **kw)
        renders = set()
        for k in range(len(together)):
            a, b = together[k], alone[k]
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key], (url, k, key)
            renders.add(a["render"])
        if kw.get("aug_renders"):
            assert renders >= {0, 1}  # both augmented renders were read
    import shutil

    url = str(tmp_path / "nan")
    shutil.copytree(plain_cache, url)
    i = int(CacheDataset(url).indices[0])
    sal = zarr.open_group(url, mode="r+")["saliency"]
    sal[i:i + 1] = np.full((1,) + sal.shape[1:], np.nan, np.float32)
    with pytest.raises(CacheError, match=rf"saliency of sample {i} \(shard 0\) holds NaN/Inf"):
        CacheDataset(url)[0]
