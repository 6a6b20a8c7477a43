"""Stage-1 levers of the 2D targets: z-buffer projection and denoised (multi-render) targets."""

from __future__ import annotations

import pytest
import torch
import zarr

from conftest import TinyTestTeacher, build_small_cache
from i2p.cache.reader import CacheDataset
from i2p.stage1_project.build import _jitter_seed
from i2p.stage1_project.projection import project, to_teacher_input

pytestmark = pytest.mark.usefixtures("one_thread")


def test_zbuffer_keeps_the_nearest_depth_where_sum_adds():
    # Two points on the same pixel column of view 0 (x, y | z) at depths 0.5 and -0.25, plus
    # two far-away points that fix the raster extent.
    pts = torch.tensor([[[0.0, 0.0, 0.5], [0.0, 0.0, -0.25], [1.0, 1.0, 0.0], [-1.0, -1.0, 0.0]]])
    s, p = project(pts, mode="sum")
    z, p2 = project(pts, mode="zbuffer")
    assert torch.equal(p, p2)
    # pixel of (0, 0): floor((0 - (-1)) / cell) + 1 + shift, cell = 2 / 221
    cell = 2.0 / 221
    r = int(torch.floor(torch.tensor(1.0 / cell))) + 1 + int(p[0, 0, 3])
    c = int(torch.floor(torch.tensor(1.0 / cell))) + 1 + int(p[0, 0, 4])
    assert s[0, 0, r, c].item() == pytest.approx(0.25)  # 0.5 + (-0.25)
    assert z[0, 0, r, c].item() == pytest.approx(1.5)  # 1 + max(0.5, -0.25)
    assert z[0, 0, 0, 223].item() == 0.0 and z[0, 0, 0, 0].item() == 1.0  # background 0; (-1, -1) stamped at depth 0
    with pytest.raises(ValueError, match="projection"):
        project(pts, mode="max")


def test_denoised_cache_is_the_mean_over_jittered_renders(tmp_path):
    plain, den = tmp_path / "plain", tmp_path / "den"
    spec = "builtin:primitives?n_train=1&n_test=1"
    build_small_cache(plain, data=spec, points=256)
    build_small_cache(den, data=spec, points=256, denoise=2, denoise_sigma=0.02)
    a, b = CacheDataset(str(plain)), CacheDataset(str(den))
    assert torch.equal(a[3]["points"], b[3]["points"]) and torch.equal(a[3]["proj"], b[3]["proj"])
    assert not torch.equal(a[3]["features"], b[3]["features"])
    teacher = TinyTestTeacher().freeze("cpu")
    x = a[3]["points"][None]
    maps = []
    for k in range(3):
        xk = x if k == 0 else x + 0.02 * torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(
            _jitter_seed(0, 3, k)))[None]
        maps.append(teacher(to_teacher_input(project(xk)[0], teacher.mean, teacher.std))[0])
    expect = torch.stack(maps).mean(0).view(3, 8, 8, 8).half().float()
    torch.testing.assert_close(b[3]["features"].float(), expect, rtol=2e-3, atol=2e-3)
    settings = zarr.open_group(str(den), mode="r").attrs["settings"]
    assert settings["denoise"] == 2 and settings["denoise_sigma"] == 0.02 and settings["projection"] == "sum"


def test_cache_written_before_the_levers_is_still_resumed(tmp_path):
    out = tmp_path / "old"
    spec = "builtin:primitives?n_train=1&n_test=1"
    build_small_cache(out, data=spec, points=256)
    root = zarr.open_group(str(out), mode="r+")
    s = dict(root.attrs["settings"])
    for k in ("projection", "denoise", "denoise_sigma"):
        s.pop(k)
    root.attrs["settings"] = s
    report = build_small_cache(out, data=spec, points=256)  # same settings, legacy attributes
    assert report.complete and report.shards_done_now == 0
    from i2p.common.errors import CacheError

    with pytest.raises(CacheError, match="denoise"):
        build_small_cache(out, data=spec, points=256, denoise=1)


def test_teacher_layer_choice_changes_the_feature_map_and_the_identity():
    from i2p.common.errors import TeacherError
    from i2p.stage1_project.teachers import create_teacher

    torch.manual_seed(0)
    default = create_teacher("effnet-lite2", weights="random")
    torch.manual_seed(0)
    mid = create_teacher("effnet-lite2@blocks.4", weights="random")
    late = create_teacher("effnet-lite2@blocks.6", weights="random")
    assert default.feature_shape == (14, 14, 120 + 352)  # blocks.4 + blocks.6, the default pair
    assert mid.feature_shape == (14, 14, 120) and late.feature_shape == (7, 7, 352)
    assert late.name == "effnet-lite2@blocks.6"
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(default(x)[0][..., :120], mid(x)[0])  # same init: the same stage-16 map
    with pytest.raises(TeacherError, match="no layer choice"):
        create_teacher("clip-vitb16@visual.transformer", weights="random")
    with pytest.raises(TeacherError, match="no module"):
        create_teacher("effnet-lite2@blocks.99", weights="random")
