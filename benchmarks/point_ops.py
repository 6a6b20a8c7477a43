"""Point ops at paper sizes (batch 64, 2048 points), beside a reference where one is installed.

* FPS 2048 -> 512 (the level-1 tokeniser): ``i2p`` (pure PyTorch, batched) vs ``fpsample``
  (PyPI, C++, one cloud per call), both starting at index 0; agreement = identical indices.
* kNN 512 queries x 2048 points, k = 16: vs ``scipy.spatial.cKDTree``; agreement = identical
  neighbour lists.
* Chamfer-L2 2048 vs 2048 points: vs ``cKDTree`` nearest neighbours both ways; and the
  in-model case (8 x 8 point groups of the masked level-2 tokens, ~200 per shape).
* Projection (render 3 depth views of 224 x 224) and back-projection of the 14x14x512 teacher
  maps to the 512 level-1 centres (the 2D-target gather), no reference.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.common import PeakRSS, Sizes, interleaved, median, resolve


def clouds(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(b, n, 3, generator=g) * torch.tensor([1.0, 0.6, 0.3])
    return pts / pts.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)


def _entry(times: dict, key: str, work: float, unit: str) -> dict:
    t = median(times[key])
    return {"seconds": times[key], "median_s": t, f"{unit}_per_s": work / t}


def run(sizes: Sizes, workdir=None) -> dict:
    from i2p.common.point_ops import chamfer_l2, farthest_point_sample, gather, knn
    from i2p.stage1_project.projection import back_project, project

    b, n = sizes.ops_batch, sizes.ops_points
    g1, k1 = max(1, n // 4), 16  # 2048 -> 512 centres x 16
    device = resolve(sizes.device)
    pts = clouds(b, n).to(device)
    out: dict = {"batch": b, "points": n, "centres": g1, "k": k1, "device": str(device)}
    reps, warm = sizes.ops_repeats, 1
    with PeakRSS() as mem:
        # ---------------------------------------------------------------- FPS
        fns = {"i2p": lambda: farthest_point_sample(pts, g1)}
        try:
            import fpsample

            np_pts = pts.cpu().numpy().astype(np.float32)
            fns["fpsample"] = lambda: [fpsample.fps_sampling(np_pts[i], g1, start_idx=0) for i in range(b)]
            ref_note = f"fpsample {getattr(fpsample, '__version__', '?')} (PyPI), fps_sampling per cloud"
        except ImportError:
            ref_note = "fpsample not installed (pip install fpsample): no FPS reference"
        t = interleaved(fns, reps, warm)
        fps = {"i2p": _entry(t, "i2p", b, "clouds"), "reference": ref_note}
        if "fpsample" in fns:
            fps["fpsample"] = _entry(t, "fpsample", b, "clouds")
            ours = farthest_point_sample(pts, g1).cpu().numpy()
            theirs = np.stack([np.asarray(x, dtype=np.int64) for x in fns["fpsample"]()])
            fps["agreement"] = float((ours == theirs).all(axis=1).mean())
            fps["ratio_i2p_vs_reference"] = fps["i2p"]["clouds_per_s"] / fps["fpsample"]["clouds_per_s"]
        out["fps"] = fps

        # ---------------------------------------------------------------- kNN
        ctr = gather(pts, farthest_point_sample(pts, g1))
        fns = {"i2p": lambda: knn(ctr, pts, k1)}
        try:
            from scipy.spatial import cKDTree

            np_pts, np_ctr = pts.cpu().numpy(), ctr.cpu().numpy()
            workers = max(1, torch.get_num_threads())  # the same threads as i2p's path

            def kd():
                return np.stack([cKDTree(np_pts[i]).query(np_ctr[i], k=k1, workers=workers)[1] for i in range(b)])

            fns["cKDTree"] = kd
        except ImportError:
            kd = None
        t = interleaved(fns, reps, warm)
        from i2p.common import knn_cpu

        kn = {"i2p": _entry(t, "i2p", b, "clouds"), "i2p_tree": knn_cpu.tree_library() if pts.device.type == "cpu"
              else "none (brute force)", "reference": "scipy.spatial.cKDTree per cloud, workers = torch threads"}
        if kd is not None:
            kn["cKDTree"] = _entry(t, "cKDTree", b, "clouds")
            kn["agreement"] = float((knn(ctr, pts, k1).cpu().numpy() == kd()).all(axis=-1).mean())
            kn["ratio_i2p_vs_reference"] = kn["i2p"]["clouds_per_s"] / kn["cKDTree"]["clouds_per_s"]
        out["knn"] = kn

        # ---------------------------------------------------------------- Chamfer
        other = clouds(b, n, seed=1).to(device)
        fns = {"i2p": lambda: chamfer_l2(pts, other)}
        if kd is not None:
            np_o = other.cpu().numpy().astype(np.float64)
            np_p = pts.cpu().numpy().astype(np.float64)

            def kd_cd():
                return np.array([(cKDTree(np_o[i]).query(np_p[i])[0] ** 2).mean()
                                 + (cKDTree(np_p[i]).query(np_o[i])[0] ** 2).mean() for i in range(b)])

            fns["cKDTree"] = kd_cd
        t = interleaved(fns, reps, warm)
        cd = {"i2p": _entry(t, "i2p", b, "pairs"), "reference": "scipy.spatial.cKDTree both ways"}
        if kd is not None:
            cd["cKDTree"] = _entry(t, "cKDTree", b, "pairs")
            cd["max_abs_diff"] = float(np.abs(chamfer_l2(pts, other).double().cpu().numpy() - kd_cd()).max())
            cd["ratio_i2p_vs_reference"] = cd["i2p"]["pairs_per_s"] / cd["cKDTree"]["pairs_per_s"]
        out["chamfer"] = cd
        tokens = b * 200
        ga, gb = (clouds(tokens, 8, seed=2) * 0.1).to(device), (clouds(tokens, 8, seed=3) * 0.1).to(device)
        t = interleaved({"i2p": lambda: chamfer_l2(ga, gb)}, reps, warm)
        out["chamfer_tokens_8x8"] = {"tokens": tokens, **_entry(t, "i2p", tokens, "pairs")}

        # ---------------------------------------------------------------- projection
        t = interleaved({"project": lambda: project(pts)}, reps, warm)
        out["projection"] = _entry(t, "project", b, "clouds")
        _, proj = project(pts)
        feats = torch.randn(b, 3, 14, 14, 512).half().to(device)
        t = interleaved({"back_project": lambda: back_project(feats, ctr, proj)}, reps, warm)
        out["back_projection"] = {"maps": "[B,3,14,14,512] f16 at the level-1 centres",
                                  **_entry(t, "back_project", b, "clouds")}
    out["memory"] = mem.as_dict()
    return out
