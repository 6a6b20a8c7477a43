"""What every reader's sample must satisfy, shared by the dataset tests (``test_datasets*.py``)."""

from __future__ import annotations

import numpy as np

from i2p.common.datasets import create_dataset

P = 256


def blob(rng, n=600, offset=(3.0, -2.0, 5.0), scale=7.0):
    """A lumpy cloud far from the origin and far from unit size."""
    return (rng.standard_normal((n, 3)) * [1.0, 0.5, 2.0] * scale + offset).astype(np.float32)


def check_sample(s, num_points=P):
    assert s.points.shape == (num_points, 3) and s.points.dtype == np.float32
    assert np.isfinite(s.points).all()
    norms = np.linalg.norm(s.points, axis=1)
    assert norms.max() <= 1.0 + 1e-5
    assert isinstance(s.label, int) and isinstance(s.id, str)


def check_dense_frame(ds, i=0):
    """Asked for exactly as many points as the file has, the cloud is the whole file: its
    centroid must be 0 and its farthest point on the unit sphere."""
    pts = ds.load(i).points
    assert np.abs(pts.mean(0)).max() < 1e-4
    assert abs(np.linalg.norm(pts, axis=1).max() - 1.0) < 1e-5


def check_determinism(spec, split="train", i=0):
    a = create_dataset(spec, split=split, num_points=P, seed=0).load(i).points
    b = create_dataset(spec, split=split, num_points=P, seed=0).load(i).points
    c = create_dataset(spec, split=split, num_points=P, seed=1).load(i).points
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
