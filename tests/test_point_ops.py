"""Point ops against brute-force Python/numpy references on small inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from i2p.common.point_ops import (chamfer_l2, farthest_point_sample, gather, knn, square_distance,
                                  three_nn_interpolate)


def naive_fps(pts: np.ndarray, k: int, start: int = 0) -> list[int]:
    chosen = [start]
    best = np.full(len(pts), np.inf)
    for _ in range(k - 1):
        best = np.minimum(best, ((pts - pts[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(np.argmax(best)))
    return chosen


def cloud(b: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_fps_matches_naive():
    x = cloud(3, 200)
    idx = farthest_point_sample(x, 32)
    assert idx.shape == (3, 32) and idx.dtype == torch.long
    for b in range(3):
        assert idx[b].tolist() == naive_fps(x[b].double().numpy(), 32)
        assert len(set(idx[b].tolist())) == 32


def test_fps_start_and_generator():
    x = cloud(2, 100, seed=1)
    idx = farthest_point_sample(x, 10, start=7)
    assert idx[:, 0].tolist() == [7, 7]
    assert idx[1].tolist() == naive_fps(x[1].double().numpy(), 10, start=7)
    a = farthest_point_sample(x, 10, start=torch.Generator().manual_seed(5))
    b = farthest_point_sample(x, 10, start=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    expect = torch.randint(100, (2,), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[:, 0], expect)
    per = farthest_point_sample(x, 10, start=[torch.Generator().manual_seed(s) for s in (1, 2)])
    one = farthest_point_sample(x[1:], 10, start=[torch.Generator().manual_seed(2)])
    assert torch.equal(per[1:], one)
    with pytest.raises(ValueError):
        farthest_point_sample(x, 101)


def test_knn_matches_sorting():
    q, r = cloud(2, 20, seed=2), cloud(2, 60, seed=3)
    idx = knn(q, r, 5)
    assert idx.shape == (2, 20, 5)
    for b in range(2):
        for m in range(20):
            d = ((r[b].double() - q[b, m].double()) ** 2).sum(-1)
            assert idx[b, m].tolist() == torch.argsort(d)[:5].tolist()
    # A query contained in the reference set finds itself first.
    self_idx = knn(r[:, :10], r, 3)
    assert torch.equal(self_idx[..., 0], torch.arange(10).expand(2, 10))


def test_fps_in_cpu_blocks_equals_cloud_by_cloud():
    """A CPU batch larger than one block (16 clouds of 2048 points) is sampled block by block:
    the same picks as each cloud alone, for a fixed start, one generator and per-sample ones."""
    x = cloud(20, 2048, seed=6)
    for start in (0, torch.Generator().manual_seed(2), [torch.Generator().manual_seed(s) for s in range(20)]):
        got = farthest_point_sample(x, 24, start)
        if isinstance(start, torch.Generator):
            starts = torch.randint(2048, (20,), generator=torch.Generator().manual_seed(2))
        elif isinstance(start, list):
            starts = torch.stack([torch.randint(2048, (), generator=torch.Generator().manual_seed(s)) for s in range(20)])
        else:
            starts = torch.zeros(20, dtype=torch.long)
        one = torch.cat([farthest_point_sample(x[b:b + 1], 24, int(starts[b])) for b in range(20)])
        assert torch.equal(got, one)
        assert torch.equal(got[:, 0], starts)


def test_two_stage_argmax_is_argmax_with_ties_nan_and_inf():
    """FPS's CPU argmax in two stages returns argmax's index: the first maximum, a NaN winning."""
    from i2p.common.point_ops import _first_max_cpu

    g = torch.Generator().manual_seed(0)
    best = torch.randint(0, 7, (32, 1024), generator=g).float()  # many tied maxima per row
    best[3] = float("-inf")
    best[4, 700:] = float("inf")
    best[5, 10] = best[5, 900] = float("nan")
    best[6, :64] = 6.0  # the row's maximum throughout the first block
    assert _first_max_cpu(best[:4, :256]) is None and _first_max_cpu(best[:, :1000]) is None  # small, ragged
    out = torch.empty(32, dtype=torch.long)
    _first_max_cpu(best)(out)
    assert torch.equal(out, torch.argmax(best, dim=1))
    assert out[3] == 0 and out[4] == 700 and out[5] == 10 and out[6] == 0


def test_fps_with_distance_ties_is_the_same_in_a_batch_and_alone():
    """Points on a coarse grid tie in distance all the time: the batched path (two-stage argmax)
    and each cloud alone (plain argmax) pick the same lowest-index point at every tie."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 6, (16, 1024, 3), generator=g).float() / 5
    got = farthest_point_sample(x, 64)
    alone = torch.cat([farthest_point_sample(x[b:b + 1], 64) for b in range(16)])
    assert torch.equal(got, alone)
    for b in range(2):
        assert got[b].tolist() == naive_fps(x[b].numpy(), 64)  # float32, as the loop computes


@pytest.mark.parametrize("library", ["pykdtree", "scipy"])
def test_knn_cpu_tree_returns_the_brute_force_indices(library, monkeypatch):
    """On the CPU, kNN of >= 256 points goes through a k-d tree (``knn_cpu``: pykdtree, or
    scipy's cKDTree without it): the same indices as the brute force, bit for bit, also with
    duplicated points (exact distance ties, answered by the brute force), points far from the
    origin and the builtin shapes (flat faces, grid-like samples: many near-ties); below 256
    points, on non-finite input or with backend='torch', the brute force itself."""
    pytest.importorskip("scipy")
    from i2p.common import knn_cpu
    from i2p.common.datasets import create_dataset

    if library == "pykdtree":
        pytest.importorskip("pykdtree")
    else:
        monkeypatch.setattr(knn_cpu, "_pykdtree", lambda: None)
    assert knn_cpu.tree_library() == library
    pts = cloud(3, 2048, seed=4)
    pts[1, 1000:1100] = pts[1, :100]  # 100 duplicated points: tied neighbours
    pts[2] = pts[2] * 1e-3 + 5.0  # small distances far from the origin
    ds = create_dataset("builtin:primitives", "train", num_points=2048)
    shapes = torch.from_numpy(np.stack([ds[i].points for i in range(0, 416, 52)])).float()
    for p in (pts, shapes):
        ctr = gather(p, farthest_point_sample(p, 512))
        for k in (1, 16):
            fast, ref = knn(ctr, p, k), knn(ctr, p, k, backend="torch")
            assert fast.dtype == ref.dtype == torch.int64 and fast.shape == (len(p), 512, k)
            assert torch.equal(fast, ref), k
    ctr = gather(pts, farthest_point_sample(pts, 512))
    calls = []
    real = knn_cpu.knn_kdtree
    try:
        knn_cpu.knn_kdtree = lambda *a: calls.append(1) or real(*a)
        knn(ctr, pts, 16)
        knn(ctr[:, :50], pts[:, :255], 8)  # below MIN_POINTS: brute force
        bad = pts.clone()
        bad[0, 5] = float("nan")
        knn(ctr, bad, 4)  # non-finite: brute force
    finally:
        knn_cpu.knn_kdtree = real
    assert calls == [1]
    with pytest.raises(ValueError, match="backend"):
        knn(ctr, pts, 4, backend="faiss")


def test_gather_loops():
    x = torch.randn(3, 7, 4, 2)
    idx = torch.randint(7, (3, 5, 6))
    out = gather(x, idx)
    assert out.shape == (3, 5, 6, 4, 2)
    for b in range(3):
        for i in range(5):
            for j in range(6):
                assert torch.equal(out[b, i, j], x[b, idx[b, i, j]])


@pytest.mark.parametrize("m,k", [(8, 8), (5, 3), (90, 70)])  # the last one takes the cdist path
def test_chamfer_matches_loops(m, k):
    a, b = cloud(2, m, seed=4), cloud(2, k, seed=5)
    got = chamfer_l2(a, b)
    assert got.shape == (2,)
    for s in range(2):
        d = [[float(((a[s, i].double() - b[s, j].double()) ** 2).sum()) for j in range(k)] for i in range(m)]
        ref = np.mean([min(row) for row in d]) + np.mean([min(d[i][j] for i in range(m)) for j in range(k)])
        assert got[s].item() == pytest.approx(ref, rel=1e-5, abs=1e-7)
    assert torch.allclose(chamfer_l2(a, a), torch.zeros(2), atol=1e-7)


def test_three_nn_interpolate_matches_loops():
    q, r = cloud(2, 12, seed=6), cloud(2, 9, seed=7)
    f = torch.randn(2, 9, 5)
    got = three_nn_interpolate(q, r, f)
    assert got.shape == (2, 12, 5)
    for b in range(2):
        for m in range(12):
            d = ((r[b].double() - q[b, m].double()) ** 2).sum(-1)
            nn3 = torch.argsort(d)[:3]
            w = 1.0 / (d[nn3] + 1e-8)
            w = w / w.sum()
            ref = (f[b, nn3].double() * w[:, None]).sum(0)
            assert torch.allclose(got[b, m].double(), ref, atol=1e-5)
    # A query on a reference point copies that point's feature.
    same = three_nn_interpolate(r, r, f)
    assert torch.allclose(same, f, atol=1e-4)
    # Gradient flows to the features, not the geometry.
    fr = f.clone().requires_grad_(True)
    three_nn_interpolate(q, r, fr).sum().backward()
    assert fr.grad is not None and torch.isfinite(fr.grad).all()


def test_square_distance_exact_zero_on_self():
    x = cloud(2, 50, seed=8)
    d = square_distance(x, x)
    assert torch.equal(torch.diagonal(d, dim1=1, dim2=2), torch.zeros(2, 50))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_device_and_dtype(device, dtype):
    x = cloud(2, 64, seed=9).to(device=device, dtype=dtype)
    idx = farthest_point_sample(x, 8, start=torch.Generator().manual_seed(0))
    assert idx.device.type == device and idx.shape == (2, 8)
    nn_idx = knn(gather(x, idx), x, 4)
    assert nn_idx.device.type == device
    assert torch.equal(nn_idx[..., 0], idx)  # every centre is its own nearest neighbour
    cd = chamfer_l2(x[:, :8], x[:, 8:16])
    assert cd.device.type == device and torch.isfinite(cd.float()).all()
    feats = torch.randn(2, 64, 3, device=device, dtype=dtype)
    up = three_nn_interpolate(x[:, :10], x, feats)
    assert up.dtype == dtype and up.device.type == device
