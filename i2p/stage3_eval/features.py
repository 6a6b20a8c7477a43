"""Frozen-encoder features for every stage-3 protocol.

The protocols (SVM, few-shot, kNN) all look at the same thing: the pretrained encoder run
WITHOUT masking, its LayerNorm'd level-3 tokens pooled to one vector per shape (max-pooling as
in the paper; mean+max concatenated as an option). This module builds that encoder from a
checkpoint (or randomly, as the "no pretraining" baseline) and turns a dataset, or a list of raw
clouds, into an ``[N, D]`` float32 matrix.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from i2p.common.checkpoint import CheckpointError, file_sha256, load_checkpoint, load_model_state
from i2p.common.errors import SampleError, UserError

POOLS = ("max", "meanmax", "mean_plus_max")
RANDOM = "random"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; asking for cuda without one is a UserError."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but torch sees no CUDA device")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}: use auto, cpu or cuda") from None


def _model_api():
    """Import the 3D network lazily: evaluation of saved features (compare, tests on synthetic
    features) must not depend on the model package importing."""
    from i2p.stage2_pretrain import model as m  # noqa: WPS433

    return m


PRESETS = ("tiny", "paper")


def model_config_for(preset: str) -> Any:
    """A ``ModelConfig`` for a named preset (``tiny`` or ``paper``), for ``--ckpt random``.

    The preset's default objective has a 2D head whose width comes from a cache; a random
    encoder for evaluation has no cache, so it is built with the 3D-only objective. Heads and
    decoder never touch the encoder's features, so this changes nothing that is evaluated.
    """
    m = _model_api()
    if preset not in PRESETS:
        raise UserError(f"unknown model preset {preset!r}: choose one of {', '.join(PRESETS)}")
    cfg = getattr(m.ModelConfig, preset)()
    if cfg.targets != "3d" and not cfg.teacher_channels:
        cfg = dataclasses.replace(cfg, targets="3d")
    return cfg


def load_encoder(ckpt: str, device: str | torch.device = "cpu", preset: str = "tiny",
                 seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """Build the I2P-MAE network for evaluation.

    ``ckpt`` is a checkpoint path (the architecture comes from the checkpoint's own config, so
    an evaluation can never pair weights with the wrong shapes; loading is strict and any
    mismatch or corruption is one :class:`CheckpointError` line) or ``"random"``: a randomly
    initialised network of ``preset`` with the init seeded by ``seed`` -- the baseline that a
    pretrained checkpoint must beat.
    Returns ``(model in eval mode on device, info dict for the report)``.
    """
    dev = resolve_device(device)
    m = _model_api()
    if ckpt == RANDOM:
        cfg = model_config_for(preset)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = m.build_model(cfg)
        info = {"checkpoint": RANDOM, "sha256": None, "preset": preset, "init_seed": seed}
    elif Path(ckpt).is_dir():  # an encoder export directory (i2p export / i2p convert)
        from i2p.official.export import load_export_model

        model, cfg, export = load_export_model(ckpt)
        info = {"checkpoint": str(ckpt), "sha256": file_sha256(Path(ckpt) / "model.safetensors"),
                "preset": None, "export_pooling": export.get("pooling"), "provenance": export.get("provenance")}
    else:
        path = Path(ckpt)
        state = load_checkpoint(path)
        model_cfg = (state.get("config") or {}).get("model")
        if not isinstance(model_cfg, dict):
            raise CheckpointError(f"checkpoint {path} holds no model config (config['model'])")
        try:
            cfg = m.ModelConfig.from_dict(dict(model_cfg))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} has a model config this version cannot build: {exc}") from None
        try:
            model = m.build_model(cfg)
        except Exception as exc:  # noqa: BLE001 - inconsistent sizes in the stored config
            raise CheckpointError(f"checkpoint {path}: cannot build its model ({type(exc).__name__}: {exc})") from None
        load_model_state(model, state["model"], what=f"checkpoint {path}")
        info = {"checkpoint": str(path), "sha256": file_sha256(path), "preset": None,
                "epoch": state.get("epoch"), "step": state.get("step")}
    info["model_config"] = cfg.to_dict()
    model.to(dev).eval()
    return model, info


def pool_tokens(tokens: torch.Tensor, pool: str = "max") -> torch.Tensor:
    """``[B, T, D]`` tokens -> ``[B, D]`` (max; mean_plus_max: their sum, the official Point-M2AE
    SVM feature) or ``[B, 2D]`` (meanmax: mean and max concatenated)."""
    if pool == "max":
        return tokens.max(dim=1).values
    if pool == "mean_plus_max":
        return tokens.mean(dim=1) + tokens.max(dim=1).values
    if pool == "meanmax":
        return torch.cat([tokens.mean(dim=1), tokens.max(dim=1).values], dim=-1)
    raise UserError(f"unknown pooling {pool!r}: choose one of {', '.join(POOLS)}")


class Features(tuple):
    """``(X [N,D] float32, y [N] int64, ids list[str])`` plus ``.skipped``: a list of
    ``(id, reason)`` for samples a reader refused; unpacks as a 3-tuple."""

    def __new__(cls, X: np.ndarray, y: np.ndarray, ids: list[str], skipped: list | None = None):
        obj = super().__new__(cls, (X, y, ids))
        obj.skipped = list(skipped or [])
        return obj

    X = property(lambda self: self[0])
    y = property(lambda self: self[1])
    ids = property(lambda self: self[2])


@torch.no_grad()
def _encode(model, clouds: Sequence[np.ndarray], device: torch.device, pool: str) -> np.ndarray:
    batch = torch.from_numpy(np.stack(clouds).astype(np.float32)).to(device)
    tokens = model.encode(batch)
    return pool_tokens(tokens.float(), pool).cpu().numpy().astype(np.float32)


def encode_samples(model, samples: Iterable, total: int, batch_size: int = 32,
                   device: str | torch.device = "cpu", pool: str = "max",
                   progress: bool = True, desc: str = "features") -> Features:
    """Encode an iterable of ``Sample``-like objects (``points``, ``label``, ``id``) or of
    ``(id, SampleError)`` pairs, which are counted as skipped. Batched, no grad, eval mode."""
    from tqdm.auto import tqdm

    if pool not in POOLS:
        raise UserError(f"unknown pooling {pool!r}: choose one of {', '.join(POOLS)}")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1 (got {batch_size})")
    dev = resolve_device(device)
    was_training = model.training
    model.eval()
    feats, labels, ids, skipped = [], [], [], []
    clouds, buf_labels, buf_ids = [], [], []

    def flush():
        if clouds:
            feats.append(_encode(model, clouds, dev, pool))
            labels.extend(buf_labels)
            ids.extend(buf_ids)
            clouds.clear()
            buf_labels.clear()
            buf_ids.clear()

    try:
        for item in tqdm(samples, total=total, desc=desc, unit="shape", disable=not progress, leave=False):
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], SampleError):
                skipped.append((str(item[0]), str(item[1])))
                continue
            if clouds and np.shape(item.points) != np.shape(clouds[0]):
                flush()  # clouds of another point count go in their own batch
            clouds.append(np.asarray(item.points, dtype=np.float32))
            buf_labels.append(int(item.label))
            buf_ids.append(str(item.id))
            if len(clouds) >= batch_size:
                flush()
        flush()
    finally:
        model.train(was_training)
    if not feats:
        raise UserError(f"no usable samples to extract features from ({len(skipped)} skipped)")
    X = np.concatenate(feats, axis=0)
    if not np.isfinite(X).all():
        raise UserError("the encoder produced NaN/Inf features (diverged checkpoint?)")
    return Features(X, np.asarray(labels, dtype=np.int64), ids, skipped)


def _iter_dataset(dataset, indices):
    ids = dataset.ids
    for i in indices:
        try:
            yield dataset.load(i)
        except SampleError as err:
            yield (ids[i], err)


def extract_features(model, dataset, batch_size: int = 32, device: str | torch.device = "cpu",
                     pool: str = "max", progress: bool = True, indices: Sequence[int] | None = None) -> Features:
    """Features of every usable sample of a ``PointDataset`` (or of ``indices`` only: few-shot
    needs a few hundred of thousands of shapes). Bad samples are skipped and listed in
    ``.skipped``; order follows the dataset (or ``indices``), minus skipped samples."""
    desc = f"features {getattr(dataset, 'split', '')}".strip()
    idx = range(len(dataset)) if indices is None else [int(i) for i in indices]
    return encode_samples(model, _iter_dataset(dataset, idx), len(idx), batch_size, device, pool,
                          progress, desc)


def dataset_clouds(dataset, max_shapes: int = 512):
    """Up to ``max_shapes`` clouds of ``dataset`` at evenly spaced indices (deterministic,
    every class represented in a class-sorted reader); unusable samples are skipped."""
    n = len(dataset)
    idx = np.unique(np.linspace(0, n - 1, num=min(n, max_shapes)).round().astype(int)) if n else []
    for i in idx:
        try:
            yield dataset.load(int(i)).points
        except SampleError:
            continue


@torch.no_grad()
def calibrate_batchnorm(model, clouds: Iterable[np.ndarray], batch_size: int = 32,
                        device: str | torch.device = "cpu") -> int:
    """Re-estimate every BatchNorm's running statistics from ``clouds`` (labels unused).

    Why: a randomly initialised network carries BatchNorm's placeholder statistics (mean 0,
    var 1), which describe no data at all: the level-1 inputs (relative coordinates ~0.05)
    have variance ~1e-3, so in eval mode the first BN leaves activations ~30x too small and the
    "random" baseline measures that artefact rather than random features. The statistics are
    set to the exact average over the given shapes (momentum None); only BN layers run in
    train mode, so drop path and dropout stay off. Returns the number of shapes used.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    dev = resolve_device(device)
    model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    used, buf = 0, []
    try:
        for cloud in clouds:
            if buf and np.shape(cloud) != np.shape(buf[0]):
                model.encode(torch.from_numpy(np.stack(buf)).to(dev))
                used, buf = used + len(buf), []
            buf.append(np.asarray(cloud, dtype=np.float32))
            if len(buf) >= batch_size:
                model.encode(torch.from_numpy(np.stack(buf)).to(dev))
                used, buf = used + len(buf), []
        if len(buf) >= 2:  # BN cannot take a batch of one
            model.encode(torch.from_numpy(np.stack(buf)).to(dev))
            used += len(buf)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()
    return used
