"""What the figures show, computed with the pipeline's own functions (no plotting here).

Every array a figure draws comes from here, and each is made by the same code path the
pipeline uses, so a figure cannot drift from what was trained:

* the depth images are ``sigmoid(project(points))`` of the CACHED points: the stage-1 images
  the teacher saw (before its mean/std normalisation), and their raster parameters must equal
  the cached ``proj``;
* the saliency cloud, the 2D-guided draw and the propagation to finer levels are the model's
  own ``build_hierarchy`` / ``saliency_cloud`` / ``coarse_visibility`` / ``all_visibilities``,
  driven by the generator a training step seeds for that sample (``step_generators`` of
  ``stage2_pretrain/model/rng.py``, which the training loop draws through);
* a reconstruction runs the checkpoint's encoder, decoder and 3D head exactly as
  ``I2PMAE.forward`` does, and keeps the predictions the loss would compare.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from i2p.common.errors import UserError

RANDOM_MODE = "random"
GUIDED_MODE = "saliency"


@dataclass
class CacheSample:
    """One cached sample, as stored (torch tensors, batch axis of 1)."""

    index: int
    sample_id: str
    label: int
    points: torch.Tensor  # [1, P, 3] float32
    features: torch.Tensor  # [1, V, h, w, C] float16
    saliency: torch.Tensor  # [1, V, h, w] float32
    proj: torch.Tensor  # [1, V, 5] float32
    settings: dict


@dataclass
class MaskDraw:
    """One masking draw: visibility per level (finest first) and the coarse draw's inputs."""

    mode: str
    visible: list[np.ndarray]  # [G_l] bool per level
    centers: list[np.ndarray]  # [G_l, 3] token centres in the ORIGINAL frame, per level
    probabilities: np.ndarray | None  # softmax(s / T) over the coarse tokens (guided only)


@dataclass
class SampleViz:
    sample: CacheSample
    images: np.ndarray  # [V, S, S] sigmoid(depth): the stage-1 images
    proj: np.ndarray  # [V, 5] recomputed raster parameters (equal to the cached ones)
    saliency_up: np.ndarray  # [V, S, S] teacher saliency, bicubic to S x S (back-projection's)
    saliency_cloud: np.ndarray  # [G_top] back-projected saliency of the coarse centres
    coarse_centers: np.ndarray  # [G_top, 3] original-frame coarse centres
    guided: MaskDraw
    random: MaskDraw  # drawn with seed + 1 (see sample_viz)
    seed: int
    step: int
    temperature: float
    model_cfg: object
    augmented: bool = False
    notes: list[str] = field(default_factory=list)


def step_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The per-sample generator of training step ``step`` (see ``stage2_pretrain/train.py``)."""
    from i2p.stage2_pretrain.model.rng import step_generators

    return step_generators(seed, step, [index])[0]


def load_sample(cache: str, index: int) -> CacheSample:
    """Sample ``index`` (the cache's own sample index) of a finished cache."""
    from i2p.cache import store as cs

    root = cs.open_store(cache)
    settings = dict(root.attrs["settings"])
    n = int(settings["num_samples"])
    if not 0 <= index < n:
        raise UserError(f"--index {index} is out of range: cache {cache} holds samples 0..{n - 1}")
    skipped = {int(s["index"]): s.get("reason", "") for s in root.attrs.get("skips", [])}
    if index in skipped:
        raise UserError(f"sample {index} of {cache} was skipped at build time ({skipped[index]}); pick another --index")
    points = np.asarray(root["points"][index], dtype=np.float32)
    if not np.isfinite(points).all():
        raise UserError(f"sample {index} of {cache} is not written (an unfinished cache?): "
                        "finish it with the same `i2p cache build` command")
    sid = root["id"][index]
    return CacheSample(
        index=index, sample_id=str(sid.item() if hasattr(sid, "item") else sid), label=int(root["label"][index]),
        points=torch.from_numpy(points)[None],
        features=torch.from_numpy(np.asarray(root["features"][index]))[None],
        saliency=torch.from_numpy(np.asarray(root["saliency"][index], dtype=np.float32))[None],
        proj=torch.from_numpy(np.asarray(root["proj"][index], dtype=np.float32))[None],
        settings=settings)


def first_valid_indices(cache: str, count: int, spread_classes: bool = True) -> list[int]:
    """Up to ``count`` written sample indices, one per class first (for galleries)."""
    from i2p.cache import store as cs

    root = cs.open_store(cache)
    skipped = {int(s["index"]) for s in root.attrs.get("skips", [])}
    labels = np.asarray(root["label"][:])
    valid = [i for i in range(len(labels)) if i not in skipped]
    if not spread_classes or not valid:
        return valid[:count]
    classes = sorted({int(labels[i]) for i in valid})
    # Classes spread over the label range (the middle of equal bins), so a gallery shows different shapes.
    k = min(count, len(classes))
    wanted = [classes[int((j + 0.5) * len(classes) / k)] for j in range(k)]
    picked = [next(i for i in valid if int(labels[i]) == c) for c in dict.fromkeys(wanted)]
    picked += [i for i in valid if i not in picked][:max(0, count - len(picked))]
    return picked[:count]


# ---------------------------------------------------------------- model configuration

def resolve_model_config(config: str | None, settings: dict, temperature: float | None = None,
                         with_augmentation: bool = False):
    """(ModelConfig, run seed or None) for the cache's settings; with ``with_augmentation`` also
    the run's augmentation ranges ``{"scale_range": (lo, hi), "shift_range": s}``.

    ``config``: ``paper`` / ``tiny`` (presets), a run directory or its ``config.yaml``, or a
    checkpoint file (its stored config). The cache fixes points, views, feature width and S.
    """
    from i2p.stage2_pretrain import config as pcfg

    run, is_preset = pcfg.load_any(config or "paper")
    seed = None if is_preset else run.seed
    aug = {"scale_range": (run.data.scale_low, run.data.scale_high), "shift_range": run.data.shift}
    changes = pcfg.cache_model_fields(settings)
    if temperature is not None:
        if not temperature > 0:
            raise UserError(f"--temperature must be positive (got {temperature})")
        changes["temperature"] = float(temperature)
    try:
        mcfg = dataclasses.replace(run.model, **changes)
    except ValueError as exc:
        raise UserError(f"model config does not fit the cache ({settings['num_points']} points): {exc}") from None
    return (mcfg, seed, aug) if with_augmentation else (mcfg, seed)


# ---------------------------------------------------------------- stage-1 images

def stage1_images(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images [B,V,S,S], depth [B,V,S,S], proj [B,V,5])``: ``sigmoid(depth)`` is what
    ``to_teacher_input`` normalises and copies to three channels for the teacher."""
    from i2p.stage1_project.projection import project

    depth, proj = project(points.float())
    return torch.sigmoid(depth), depth, proj


# ---------------------------------------------------------------- masking draws

def _frame(points: torch.Tensor, scale, shift) -> torch.Tensor:
    seen = points
    if scale is not None:
        seen = seen * scale
    if shift is not None:
        seen = seen + shift
    return seen


def draw_masks(mcfg, sample: CacheSample, mode: str, seed: int, step: int = 0,
               scale: torch.Tensor | None = None, shift: torch.Tensor | None = None):
    """The visibility a training step of ``mcfg`` (with ``mask_mode=mode``) draws for this
    sample: same grouping frame, same generator, same order of draws as ``I2PMAE.forward``.

    Returns ``(MaskDraw, hierarchy, saliency cloud [1,G] or None, generator after the draw)``.
    """
    from i2p.stage2_pretrain.model.masking import all_visibilities, coarse_visibility
    from i2p.stage2_pretrain.model.targets import saliency_cloud
    from i2p.stage2_pretrain.model.tokenizer import build_hierarchy

    gen = [step_generator(seed, step, sample.index)]
    seen = _frame(sample.points, scale, shift)
    # HierarchicalEncoder.group: the generator moves the FPS start only with fps_random_start.
    h = build_hierarchy(seen, mcfg.num_groups, mcfg.group_sizes, gen if mcfg.fps_random_start else None)
    top = mcfg.num_levels - 1
    sal = saliency_cloud(sample.saliency, sample.points, h, sample.proj, mcfg.image_size)
    vis_top = coarse_visibility(sal, 1, mcfg.num_groups[top], mcfg.num_visible(), mode, mcfg.temperature,
                                gen, sample.points.device)
    vis = all_visibilities(vis_top, h.groups, mcfg.num_groups)
    pts = sample.points[0]
    centers = [pts[h.point_index[lvl][0]].numpy() for lvl in range(mcfg.num_levels)]
    probs = torch.softmax(sal[0].float() / mcfg.temperature, dim=0).numpy() if mode == GUIDED_MODE else None
    draw = MaskDraw(mode, [v[0].numpy().copy() for v in vis], centers, probs)
    return draw, h, sal, gen


def augmentation(seed: int, epoch: int, index: int, scale_range=(2 / 3, 3 / 2), shift_range: float = 0.2):
    """The (scale [1,1,3], shift [1,1,3]) that ``CacheDataset(augment=True)`` gives sample
    ``index`` in ``epoch`` (same draws, same order)."""
    from i2p.cache.reader import augmentation_params

    scale, shift = augmentation_params(seed, epoch, index, scale_range, shift_range)
    return torch.from_numpy(scale)[None], torch.from_numpy(shift)[None]


def sample_viz(cache: str, index: int, config: str | None = "paper", seed: int | None = None, step: int = 0,
               temperature: float | None = None, epoch: int | None = None) -> SampleViz:
    """Everything ``viz sample`` draws. ``epoch`` given: group in the augmented frame that
    training step saw in that epoch (masks are then those of that exact step)."""
    from i2p.stage1_project.projection import upsample_maps

    sample = load_sample(cache, index)
    mcfg, run_seed, aug = resolve_model_config(config, sample.settings, temperature, with_augmentation=True)
    seed = run_seed if seed is None and run_seed is not None else (seed or 0)
    images, _, proj = stage1_images(sample.points)
    notes = []
    if not torch.equal(proj, sample.proj):
        notes.append("recomputed projection parameters differ from the cached ones")
    scale = shift = None
    if epoch is not None:
        scale, shift = augmentation(seed, epoch, index, **aug)
    guided, _, sal, _ = draw_masks(mcfg, sample, GUIDED_MODE, seed, step, scale, shift)
    # The random draw beside it is the one a `--mask random` run with seed + 1 makes at this step:
    # with the SAME seed both draws share their Gumbel noise and, at T = 1, mostly coincide.
    rand, _, _, _ = draw_masks(mcfg, sample, RANDOM_MODE, seed + 1, step, scale, shift)
    up = upsample_maps(sample.saliency, size=int(sample.settings["image_size"]))
    return SampleViz(sample=sample, images=images[0].numpy(), proj=proj[0].numpy(), saliency_up=up[0].numpy(),
                     saliency_cloud=sal[0].numpy(), coarse_centers=guided.centers[-1], guided=guided, random=rand,
                     seed=int(seed), step=int(step), temperature=float(mcfg.temperature), model_cfg=mcfg,
                     augmented=epoch is not None, notes=notes)


# ---------------------------------------------------------------- reconstruction

@dataclass
class Reconstruction:
    sample: CacheSample
    points: np.ndarray  # [P, 3] input
    visible_points: np.ndarray  # members of visible level-1 tokens
    predicted: np.ndarray  # [M*K, 3] predicted members of the masked head-level tokens (+ centres)
    target: np.ndarray  # [M*K, 3] their true members
    masked_centers: np.ndarray  # [M, 3]
    chamfer: float  # mean per-token Chamfer-L2 of the prediction (the loss_3d of this sample)
    visible_fraction: float  # share of input points that are visible
    mode: str
    seed: int
    step: int
    checkpoint: str
    head_level: int


def load_model(ckpt: str, device: str = "cpu"):
    """(I2PMAE in eval mode, its ModelConfig, checkpoint dict) from a pretrain checkpoint."""
    from i2p.common.checkpoint import load_checkpoint, load_model_state, trained_weights
    from i2p.stage2_pretrain import config as pcfg
    from i2p.stage2_pretrain.model import build_model

    ck = load_checkpoint(ckpt)
    mcfg = pcfg.from_saved(ck.get("config") or {}, f"checkpoint {ckpt}").model
    model = build_model(mcfg)
    load_model_state(model, trained_weights(ck), what=f"checkpoint {ckpt}")
    return model.to(device).eval(), mcfg, ck


@torch.no_grad()
def reconstruct(model, sample: CacheSample, seed: int = 0, step: int = 0, mode: str | None = None,
                checkpoint: str = "") -> Reconstruction:
    """Mask the sample as training step ``step`` would (no augmentation), then predict the
    members of every masked head-level token with the encoder, decoder and ``head_3d``."""
    from i2p.common.point_ops import chamfer_l2

    mcfg = model.cfg
    if int(sample.points.shape[1]) != mcfg.num_points:
        raise UserError(f"the checkpoint was trained on {mcfg.num_points}-point clouds, the cache holds "
                        f"{sample.points.shape[1]}")
    mode = mode or mcfg.mask_mode
    draw, h, _, gen = draw_masks(mcfg, sample, mode, seed, step)
    vis = [torch.from_numpy(v)[None] for v in draw.visible]
    enc = model.encoder.forward_hierarchy(h, vis, gen)
    x = model.decoder(h, enc, gen)
    lvl, k = mcfg.head_level, mcfg.group_sizes[mcfg.head_level]
    masked = ~vis[lvl]
    b_idx, g_idx = masked.nonzero(as_tuple=True)
    rel = model.head_3d(x[b_idx, g_idx]).float().view(-1, k, 3)
    target_rel = h.neighbors[lvl][b_idx, g_idx].float()
    chamfer = float(chamfer_l2(rel, target_rel).mean()) if len(b_idx) else float("nan")
    ctr = h.centers[lvl][b_idx, g_idx][:, None, :]
    pts = sample.points[0]
    vis_pts = h.groups[0][0][vis[0][0]].reshape(-1).unique()
    return Reconstruction(
        sample=sample, points=pts.numpy(), visible_points=pts[vis_pts].numpy(),
        predicted=(rel + ctr).reshape(-1, 3).numpy(), target=(target_rel + ctr).reshape(-1, 3).numpy(),
        masked_centers=ctr[:, 0].numpy(), chamfer=chamfer, visible_fraction=float(len(vis_pts)) / len(pts),
        mode=mode, seed=seed, step=step, checkpoint=checkpoint, head_level=lvl)


__all__ = ["CacheSample", "MaskDraw", "SampleViz", "Reconstruction", "step_generator", "load_sample",
           "first_valid_indices", "resolve_model_config", "stage1_images", "draw_masks", "augmentation",
           "sample_viz", "load_model", "reconstruct"]
