"""How 2D-guided masking actually behaves on a cache: no training, only grouping + masking.

For cached samples (evenly spaced over each cache, un-augmented clouds) this builds the
token hierarchy exactly as pre-training does, reads the saliency cloud ``s`` of the coarsest
tokens from the cached teacher maps, and draws the visible set the way ``coarse_visibility``
does, for random masking and for saliency masking at each temperature ``T``. Every mode sees
the SAME Gumbel noise for a given (sample, draw) (common random numbers), so differences
between modes come from ``T`` alone.

Reported per mode:

* ``sal_visible`` / ``sal_masked``: mean saliency of the visible / masked coarse tokens;
* ``overlap_top``: |visible ∩ top-k salient| / k, with k = round(top_fraction * G); chance
  (random masking) is n_visible / G in expectation;
* ``max_over_mean``: max_i p_i / mean_i p_i of p = softmax(s / T) (1 = uniform; G = one-hot);
* ``entropy_rel``: H(p) / log G (1 = uniform);
* ``p_visible_top``: the softmax mass on the top-k tokens (k / G when uniform).

Plus the spread of the saliency cloud itself (per-sample range and std), which is what T
divides: a spread of 0.1 at T = 1 changes logits by 0.1, i.e. probabilities by ~10 %.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from i2p.common.geometry import stable_seed


def _sample_indices(valid: np.ndarray, count: int) -> np.ndarray:
    if count >= len(valid):
        return valid
    pick = np.unique(np.linspace(0, len(valid) - 1, num=count).round().astype(int))
    return valid[pick]


def _read_samples(url: str, indices: np.ndarray):
    from i2p.cache import store as cs

    root = cs.open_store(url)
    pts = np.stack([np.asarray(root["points"][int(i)]) for i in indices]).astype(np.float32)
    sal = np.stack([np.asarray(root["saliency"][int(i)]) for i in indices]).astype(np.float32)
    proj = np.stack([np.asarray(root["proj"][int(i)]) for i in indices]).astype(np.float32)
    return torch.from_numpy(pts), torch.from_numpy(sal), torch.from_numpy(proj)


def _mean_std(v) -> tuple[float, float]:
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()) if len(a) else float("nan"), float(a.std()) if len(a) else float("nan")


class _Tally:
    """The lists the statistics are means of: per mode (visible/masked saliency, overlap with
    the top-k, spread of the softmax) and of the saliency cloud itself."""

    def __init__(self, modes: list, G: int, n_vis: int, k_top: int, draws: int, seed: int):
        self.modes, self.G, self.n_vis, self.k_top, self.draws, self.seed = modes, G, n_vis, k_top, draws, seed
        keys = ("sal_visible", "sal_masked", "overlap_top", "max_over_mean", "entropy_rel", "p_visible_top")
        self.per = [{k: [] for k in keys} for _ in modes]
        self.cloud: dict[str, list] = {"mean": [], "range_within_sample": [], "std_within_sample": [],
                                       "top_minus_mean": []}

    def add(self, s: torch.Tensor, chunk: np.ndarray, ci: int) -> None:
        """One batch of saliency clouds ``s`` [B, G] of samples ``chunk`` of cache ``ci``."""
        from i2p.stage2_pretrain.model.masking import coarse_visibility

        G, k_top = self.G, self.k_top
        order = torch.argsort(s, dim=1, descending=True, stable=True)
        top = torch.zeros_like(s, dtype=torch.bool).scatter(1, order[:, :k_top], True)
        self.cloud["range_within_sample"] += (s.amax(1) - s.amin(1)).tolist()
        self.cloud["std_within_sample"] += s.std(1, unbiased=False).tolist()
        self.cloud["mean"] += s.mean(1).tolist()
        self.cloud["top_minus_mean"] += ((s * top).sum(1) / k_top - s.mean(1)).tolist()
        for acc, (mode, T) in zip(self.per, self.modes):
            p = torch.full_like(s, 1.0 / G) if mode == "random" else torch.softmax(s / T, dim=1)
            acc["max_over_mean"] += (p.amax(1) * G).tolist()
            acc["entropy_rel"] += (-(p * p.clamp_min(1e-30).log()).sum(1) / math.log(G)).tolist()
            acc["p_visible_top"] += (p * top).sum(1).tolist()
            for d in range(self.draws):
                g = [torch.Generator().manual_seed(stable_seed("maskstats", self.seed, ci, int(i), d)) for i in chunk]
                vis = coarse_visibility(s, len(chunk), G, self.n_vis, mode, T or 1.0, g, "cpu")
                acc["sal_visible"] += ((s * vis).sum(1) / vis.sum(1)).tolist()
                acc["sal_masked"] += ((s * ~vis).sum(1) / (~vis).sum(1)).tolist()
                acc["overlap_top"] += ((vis & top).sum(1).float() / k_top).tolist()

    def rows(self) -> list[dict]:
        out = []
        for acc, (mode, T) in zip(self.per, self.modes):
            row = {"mode": mode, "temperature": T}
            for key in ("sal_visible", "sal_masked", "overlap_top", "max_over_mean", "entropy_rel", "p_visible_top"):
                row[key], row[key + "_std"] = _mean_std(acc[key])
            out.append(row)
        return out


@torch.no_grad()
def masking_stats(caches: Sequence[str], model_cfg, temperatures: Sequence[float], samples: int = 200,
                  seed: int = 0, top_fraction: float = 0.2, draws: int = 8, batch_size: int = 16) -> dict:
    """Masking statistics over up to ``samples`` cached samples (split evenly over ``caches``).

    ``model_cfg`` supplies the grouping (num_groups, group_sizes, fps_random_start), the mask
    ratio and the image size (it is checked against the caches' own)."""
    from i2p.cache.reader import CacheDataset, open_many_for_training
    from i2p.stage2_pretrain.model.targets import saliency_cloud
    from i2p.stage2_pretrain.model.tokenizer import build_hierarchy

    caches = list(caches)
    image_size = int(open_many_for_training(caches)[0]["settings"]["image_size"])
    G, n_vis = int(model_cfg.num_groups[-1]), int(model_cfg.num_visible())
    k_top = max(1, int(round(top_fraction * G)))
    tally = _Tally([("random", None)] + [("saliency", float(t)) for t in temperatures], G, n_vis, k_top, draws, seed)
    per_cache_counts = []
    quota = [samples // len(caches) + (1 if i < samples % len(caches) else 0) for i in range(len(caches))]
    for ci, (url, q) in enumerate(zip(caches, quota)):
        idx = _sample_indices(CacheDataset(url, with_targets=False).indices, q)
        per_cache_counts.append(int(len(idx)))
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            points, view_sal, proj = _read_samples(url, chunk)
            gens = None
            if model_cfg.fps_random_start:
                gens = [torch.Generator().manual_seed(stable_seed("maskstats-fps", seed, ci, int(i))) for i in chunk]
            h = build_hierarchy(points, model_cfg.num_groups, model_cfg.group_sizes, gens)
            tally.add(saliency_cloud(view_sal, points, h, proj, image_size).float(), chunk, ci)  # [B, G]
    return {
        "caches": caches, "samples": int(sum(per_cache_counts)), "per_cache_samples": per_cache_counts,
        "draws_per_sample": draws, "seed": seed, "augmentation": "none (cached clouds as stored)",
        "num_tokens": G, "num_visible": n_vis, "top_k": k_top, "top_fraction": top_fraction,
        "chance_overlap": n_vis / G,
        "saliency": {k: _mean_std(v)[0] for k, v in tally.cloud.items()},
        "modes": tally.rows(),
    }


def mode_label(row: dict) -> str:
    return "random" if row["mode"] == "random" else f"saliency T={row['temperature']:g}"


def markdown_table(stats: dict) -> str:
    """The masking table of ``results.md``."""
    k, G, nv = stats["top_k"], stats["num_tokens"], stats["num_visible"]
    head = ("| masking | mean saliency visible | mean saliency masked | overlap with top-"
            f"{k} (chance {stats['chance_overlap']:.3f}) | softmax max/mean | softmax entropy / log G "
            f"| softmax mass on top-{k} |\n|---|---|---|---|---|---|---|\n")
    lines = []
    for r in stats["modes"]:
        lines.append(f"| {mode_label(r)} | {r['sal_visible']:.4f} | {r['sal_masked']:.4f} | "
                     f"{r['overlap_top']:.3f} ± {r['overlap_top_std']:.3f} | {r['max_over_mean']:.3f} | "
                     f"{r['entropy_rel']:.4f} | {r['p_visible_top']:.3f} |")
    s = stats["saliency"]
    foot = (f"\n\n{stats['samples']} cached samples ({', '.join(map(str, stats['per_cache_samples']))} per cache), "
            f"{stats['draws_per_sample']} draws each, G = {G} coarse tokens, {nv} visible; "
            f"saliency cloud per sample: mean {s['mean']:.4f}, range (max-min) {s['range_within_sample']:.4f}, "
            f"std {s['std_within_sample']:.4f}, top-{k} mean minus mean {s['top_minus_mean']:.4f}. "
            "± is the std over samples x draws.")
    return head + "\n".join(lines) + foot + "\n"
