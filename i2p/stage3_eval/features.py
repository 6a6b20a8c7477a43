"""Frozen-encoder features for every stage-3 protocol.

The protocols (SVM, few-shot, kNN) all look at the same thing: the pretrained encoder run
WITHOUT masking, its LayerNorm'd level-3 tokens pooled to one vector per shape (max-pooling as
in the paper; mean and max concatenated, or summed as the official Point-M2AE SVM does, as
options). The encoder is the public
:class:`i2p.api.Encoder` built by :func:`i2p.load_encoder` (or, for ``teacher:NAME``, the
:class:`~i2p.stage3_eval.teacher_encoder.TeacherEncoder`, which has the same ``embed``): this
module turns a dataset, or a list of raw clouds, into an ``[N, D]`` float32 matrix through
that encoder's ``embed``, so the protocols and a user's own code compute the same features.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from i2p.api.calibration import calibrate_batchnorm, dataset_clouds  # noqa: F401  (re-exported for the protocols)
from i2p.api.encoder import POOLS, check_pool, pool_tokens  # noqa: F401  (re-exported for the protocols)
from i2p.common.device import resolve_device
from i2p.common.errors import SampleError, UserError

RANDOM = "random"


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


def _encode(model, clouds: Sequence[np.ndarray], pool: str, normalize: bool | None = None) -> np.ndarray:
    extra = {} if normalize is None else {"normalize": normalize}  # None: the encoder's own default
    return np.asarray(model.embed(np.stack(clouds).astype(np.float32), pool=pool, **extra), dtype=np.float32)


def encode_samples(model, samples: Iterable, total: int, batch_size: int = 32,
                   device: str | torch.device = "cpu", pool: str = "max",
                   progress: bool = True, desc: str = "features", normalize: bool | None = None) -> Features:
    """Encode an iterable of ``Sample``-like objects (``points``, ``label``, ``id``) or of
    ``(id, SampleError)`` pairs, which are counted as skipped, with ``model.embed`` (an
    :class:`i2p.api.Encoder` or a ``TeacherEncoder``: no grad, eval mode, the encoder's own
    device; ``device`` is kept for callers and unused). ``normalize`` is passed to ``embed``
    when given (False: the clouds are encoded as given, e.g. the official SVM's stored points)."""
    from tqdm.auto import tqdm

    check_pool(pool)
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1 (got {batch_size})")
    feats, labels, ids, skipped = [], [], [], []
    clouds, buf_labels, buf_ids = [], [], []

    def flush():
        if clouds:
            feats.append(_encode(model, clouds, pool, normalize))
            labels.extend(buf_labels)
            ids.extend(buf_ids)
            clouds.clear()
            buf_labels.clear()
            buf_ids.clear()

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
                     pool: str = "max", progress: bool = True, indices: Sequence[int] | None = None,
                     normalize: bool | None = None) -> Features:
    """Features of every usable sample of a ``PointDataset`` (or of ``indices`` only: few-shot
    needs a few hundred of thousands of shapes). Bad samples are skipped and listed in
    ``.skipped``; order follows the dataset (or ``indices``), minus skipped samples."""
    desc = f"features {getattr(dataset, 'split', '')}".strip()
    idx = range(len(dataset)) if indices is None else [int(i) for i in indices]
    return encode_samples(model, _iter_dataset(dataset, idx), len(idx), batch_size, device, pool,
                          progress, desc, normalize)


