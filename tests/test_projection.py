"""Projection against a hand-computed image, and back-projection against its definition."""

import numpy as np
import pytest
import torch

from i2p.stage1_project.projection import (back_project, pixel_indices, project, projection_params,
                                           to_teacher_input, upsample_maps)


def hand_cloud():
    # View 0 is (x, y | z). With S = 11 the cell is range / 8 = 1.0 / 8 = 0.125 (exact in binary).
    return torch.tensor([[[0.0, 0.0, 0.5], [1.0, 0.5, -0.25], [0.5, 0.5, 1.0]]])


def test_projection_params_by_hand():
    proj = projection_params(hand_cloud(), size=11)
    # view 0: min x = 0, min y = 0, cell = 0.125; rows of x: 1, 9, 5 -> box [1, 9], shift 0;
    # cols of y: 1, 5, 5 -> box [1, 5], shift floor((11 - 2 - 5) / 2) = 2.
    assert proj[0, 0].tolist() == [0.0, 0.0, 0.125, 0.0, 2.0]
    # view 1 is (z, x | y): z in [-0.25, 1.0] (range 1.25), x in [0, 1]; cell = 1.25 / 8.
    assert proj[0, 1, 2].item() == pytest.approx(1.25 / 8)
    pix = pixel_indices(hand_cloud(), proj, size=11)
    assert pix[0, 0].tolist() == [[1, 3], [9, 7], [5, 7]]


def test_depth_image_by_hand():
    depth, _ = project(hand_cloud(), size=11)
    img = depth[0, 0].numpy()
    expect = np.zeros((11, 11), np.float32)
    # p1 (row 1, col 3), depth 0.5: rows -1..3 clamp to 0..3 (row 0 stamped twice), cols 1..5
    expect[0:4, 1:6] += 0.5
    expect[0, 1:6] += 0.5
    # p2 (row 9, col 7), depth -0.25: rows 7..11 clamp to 7..10 (row 10 twice), cols 5..9
    expect[7:11, 5:10] += -0.25
    expect[10, 5:10] += -0.25
    # p3 (row 5, col 7), depth 1.0: rows 3..7, cols 5..9
    expect[3:8, 5:10] += 1.0
    np.testing.assert_array_equal(img, expect)
    assert img[3, 5] == pytest.approx(1.5) and img[7, 7] == pytest.approx(0.75)


def test_teacher_input_normalisation():
    depth = torch.zeros(2, 3, 8, 8)
    depth[0, 1, 2, 3] = 10.0
    x = to_teacher_input(depth, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert x.shape == (6, 3, 8, 8)
    assert torch.all(x[0] == 0)  # sigmoid(0) = 0.5 = mean
    v = torch.sigmoid(torch.tensor(10.0))
    assert x[1, :, 2, 3].tolist() == pytest.approx([((v - 0.5) / s).item() for s in (0.25, 0.5, 1.0)])


def test_batched_equals_single_and_is_vectorised():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(5, 300, 3, generator=g) * 2 - 1
    depth, proj = project(pts, size=64)
    for i in range(5):
        d1, p1 = project(pts[i:i + 1], size=64)
        assert torch.equal(d1[0], depth[i]) and torch.equal(p1[0], proj[i])


def test_box_is_centred():
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(3, 500, 3, generator=g) * torch.tensor([1.0, 0.3, 0.6]) - 0.4
    depth, proj = project(pts, size=100)
    pix = pixel_indices(pts, proj, size=100)
    lo, hi = pix.amin(dim=2), pix.amax(dim=2)
    centre = (lo + hi).float() / 2
    assert torch.all((centre - 49.5).abs() <= 1.0)


@pytest.mark.parametrize("h", [7, 14])
def test_back_project_equals_upsample_then_read(h):
    g = torch.Generator().manual_seed(2)
    pts = torch.rand(3, 200, 3, generator=g) * 2 - 1
    _, proj = project(pts)
    maps = torch.randn(3, 3, h, h, generator=g)
    up = upsample_maps(maps)
    pix = pixel_indices(pts, proj)
    ref = up.flatten(2).gather(2, pix[..., 0] * 224 + pix[..., 1])
    torch.testing.assert_close(back_project(maps, pts, proj), ref, atol=1e-5, rtol=1e-5)
    chans = torch.randn(3, 3, h, h, 4, generator=g)
    out = back_project(chans, pts, proj)
    for c in range(4):
        torch.testing.assert_close(out[..., c], back_project(chans[..., c], pts, proj), atol=1e-5, rtol=1e-5)


def test_back_projected_value_is_the_pixel_the_point_was_projected_to():
    # Property: with a full-resolution map (S x S, so bicubic is the identity) every point
    # reads back exactly the value of the image pixel it was stamped at the centre of.
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        pts = torch.randn(2, 400, 3, generator=g) * torch.rand(3, generator=g)
        depth, proj = project(pts)
        image = torch.sigmoid(depth)
        pix = pixel_indices(pts, proj)
        values = back_project(image, pts, proj)
        expect = image.flatten(2).gather(2, pix[..., 0] * 224 + pix[..., 1])
        torch.testing.assert_close(values, expect, atol=1e-6, rtol=0)
