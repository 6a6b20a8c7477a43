"""The :class:`Encoder`: a pretrained I2P-MAE encoder as one object a user can call.

Why a wrapper and not the bare ``nn.Module``: the network alone leaves every caller to
re-discover the same conventions -- the frame the network was trained in (centred, unit
sphere), eval mode, no grad, which tokens to pool and how, batching of large inputs, which
device, numpy vs torch. Getting one wrong silently changes the features (an uncentred cloud
gives other FPS centres; a module left in train mode uses batch statistics). The wrapper fixes
those conventions once; the stage-3 protocols, ``i2p embed`` and user code all go through it.

* ``embed(points [B,N,3]) -> [B,D]``: the LayerNorm'd coarsest tokens pooled (``max``, the
  paper's; ``meanmax``, mean and max concatenated; or ``mean_plus_max``, their sum, the
  official Point-M2AE feature), or every level's tokens pooled (``levels``: mean and max of
  each level, finest first, concatenated).
* ``point_features(points [B,N,3]) -> [B,N,D']``: every level's tokens carried back to every
  input point by inverse-distance weighting of its 3 nearest token centres (the PointNet++
  feature propagation the decoder uses), levels concatenated (``D' = sum(enc_dims)``).

numpy in gives numpy out (on the CPU), torch in gives torch out (on the input's device); a
single cloud ``[N,3]`` gives ``[D]`` / ``[N,D']``. Clouds are centred and scaled to the unit
sphere inside (``normalize=False`` turns that off): the readers deliver that frame, so an
embedding then does not move when the same shape is moved or scaled.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable

import numpy as np
import torch

from i2p.common.device import resolve_device
from i2p.common.errors import UserError
from i2p.common.point_ops import three_nn_interpolate

# max: the paper's (and the official I2P-MAE SVM feature); meanmax: mean and max concatenated;
# mean_plus_max: mean and max SUMMED, the official Point-M2AE SVM feature (models/Point_M2AE.py);
# mean: the average token alone (the teacher's mean-pooled feature, a reference of the issues);
# levels: mean and max of EVERY level's tokens, finest first, concatenated (2 * sum(enc_dims)):
# the hierarchy's finer levels carry local shape the coarsest tokens pool away (chosen as the
# default for i2p encoders on validation, docs/RESULTS.md "Generalisation"). On a single-level
# token set (a 2D teacher's feature map) ``levels`` is ``meanmax``.
POOLS = ("max", "meanmax", "mean_plus_max", "mean", "levels")
DEFAULT_POOL = "levels"  # what embed() and every frozen-feature protocol use unless told otherwise


def check_pool(pool: str) -> str:
    if pool not in POOLS:
        raise UserError(f"unknown pooling {pool!r}: choose one of {', '.join(POOLS)}")
    return pool


def pooled_dim(dims, pool: str) -> int:
    """Width of a pooled vector. ``dims``: the token width of every level, finest first (or
    one int, the coarsest width). ``meanmax`` doubles the coarsest width, ``levels`` is twice
    the sum of all widths, the others keep the coarsest width."""
    dims = [int(dims)] if isinstance(dims, (int, np.integer)) else [int(d) for d in dims]
    pool = check_pool(pool)
    if pool == "levels":
        return 2 * sum(dims)
    return dims[-1] * (2 if pool == "meanmax" else 1)


def pool_tokens(tokens: torch.Tensor, pool: str = "max") -> torch.Tensor:
    """``[B, T, D]`` tokens -> ``[B, D]`` (``max``; ``mean``; ``mean_plus_max``: the sum of mean
    and max) or ``[B, 2D]`` (``meanmax``: mean and max concatenated)."""
    pool = check_pool(pool)
    if pool == "levels":  # one level only: its mean and max
        pool = "meanmax"
    if pool == "mean":
        return tokens.mean(dim=1)
    top = tokens.max(dim=1).values
    if pool == "max":
        return top
    if pool == "mean_plus_max":
        return tokens.mean(dim=1) + top
    return torch.cat([tokens.mean(dim=1), top], dim=-1)


def pool_levels(levels, pool: str = "max") -> torch.Tensor:
    """Encoder outputs (``LevelOutput`` per level, finest first) -> ``[B, D]``: ``levels`` pools
    every level (mean and max over its encoded tokens, padding excluded), the rest pool the
    coarsest level's tokens as :func:`pool_tokens`."""
    if check_pool(pool) != "levels":
        return pool_tokens(levels[-1].tokens, pool)
    parts = []
    for lv in levels:
        valid = lv.valid[..., None]
        count = valid.sum(dim=1).clamp_min(1).to(lv.tokens.dtype)
        mean = lv.tokens.masked_fill(~valid, 0).sum(dim=1) / count
        top = lv.tokens.masked_fill(~valid, torch.finfo(lv.tokens.dtype).min).amax(dim=1)
        parts += [mean, top]
    return torch.cat(parts, dim=-1)


def normalize_clouds(points: torch.Tensor) -> torch.Tensor:
    """Per cloud of ``[B, N, 3]``: centre on the centroid, scale so that the farthest point
    lies on the unit sphere -- the frame of every dataset reader
    (:func:`i2p.common.geometry.normalize_unit_sphere`). Computed in float64 so that a moved
    and scaled copy of a cloud lands on the same coordinates up to float32 rounding."""
    x = points.double()
    x = x - x.mean(dim=1, keepdim=True)
    radius = x.norm(dim=-1).amax(dim=1).clamp_min(1e-12)
    return (x / radius[:, None, None]).to(points.dtype)


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Eval mode for the duration; every submodule's own flag restored afterwards (a caller
    may have put only some modules in train mode, e.g. BatchNorm re-estimation)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in modes:
            m.training = flag


def _as_batch(points: Any) -> tuple[torch.Tensor, bool, bool]:
    """-> (``[B, N, 3]`` float32 tensor, input was torch, input was one cloud)."""
    is_torch = isinstance(points, torch.Tensor)
    if is_torch:
        x = points.detach()
    else:
        try:
            x = torch.from_numpy(np.asarray(points, dtype=np.float32))
        except (TypeError, ValueError):
            raise UserError("points must be a numeric array [B, N, 3] or [N, 3] (clouds with different "
                            "point counts go in separate calls)") from None
    shape = tuple(x.shape)
    single = x.dim() == 2
    if single:
        x = x[None]
    if x.dim() != 3 or x.shape[-1] != 3:
        raise UserError(f"points must have shape [B, N, 3] or [N, 3] (got {shape})")
    if not x.is_floating_point():
        x = x.float()
    return x, is_torch, single


class Encoder:
    """A pretrained (or randomly initialised) hierarchical I2P-MAE encoder, ready to use.

    Built by :func:`i2p.load_encoder`; holds the network (``.network``, a
    ``HierarchicalEncoder``, trainable for fine-tuning), its architecture (``.config``, a
    ``ModelConfig``) and where it came from (``.info``: checkpoint path, sha256, epoch, step,
    teacher of the cache, ...).
    """

    def __init__(self, network: torch.nn.Module, config: Any, *, pool: str = DEFAULT_POOL, normalize: bool = True,
                 batch_size: int = 32, device: str | torch.device = "auto", info: dict | None = None):
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1 (got {batch_size})")
        self.network = network
        self.config = config
        self.pool = check_pool(pool)
        self.normalize = bool(normalize)
        self.batch_size = int(batch_size)
        self.info = dict(info or {})
        self.device = torch.device("cpu")
        self.to(device)
        self.network.eval()

    # ------------------------------------------------------------------ description
    @property
    def dim(self) -> int:
        """Width of :meth:`embed` with this encoder's pooling."""
        return pooled_dim(self.config.enc_dims, self.pool)

    @property
    def point_dim(self) -> int:
        """Width of :meth:`point_features`: every level's token width, concatenated."""
        return int(sum(self.config.enc_dims))

    @property
    def min_points(self) -> int:
        """A cloud needs at least as many points as the first level has centres."""
        return int(self.config.num_groups[0])

    def __repr__(self) -> str:
        src = self.info.get("checkpoint") or self.info.get("export") or "?"
        return (f"Encoder(dims={list(self.config.enc_dims)}, groups={list(self.config.num_groups)}, "
                f"pool={self.pool!r}, normalize={self.normalize}, device={self.device}, source={src!r})")

    # ------------------------------------------------------------------ the nn.Module surface
    def to(self, device: str | torch.device) -> "Encoder":
        self.device = resolve_device(device)
        self.network.to(self.device)
        return self

    @property
    def training(self) -> bool:
        return self.network.training

    def eval(self) -> "Encoder":
        self.network.eval()
        return self

    def train(self, mode: bool = True) -> "Encoder":
        self.network.train(mode)
        return self

    def modules(self):
        return self.network.modules()

    def state_dict(self) -> dict:
        return self.network.state_dict()

    def encode(self, points: torch.Tensor) -> torch.Tensor:
        """Coarsest LayerNorm'd tokens ``[B, T, D]`` of a tensor batch, in whatever mode the
        network is in and with autograd as the caller has it (used by BatchNorm
        re-estimation); normalised like :meth:`embed`."""
        x = points.to(self.device, torch.float32)
        if self.normalize:
            x = normalize_clouds(x)
        return self.network(x)[-1].tokens

    # ------------------------------------------------------------------ features
    def embed(self, points: Any, *, pool: str | None = None, normalize: bool | None = None,
              batch_size: int | None = None):
        """One vector per cloud: ``[B, N, 3] -> [B, D]`` (``[N, 3] -> [D]``)."""
        pool = check_pool(pool or self.pool)
        return self._run(points, lambda x: pool_levels(self.network(x), pool), normalize, batch_size)

    def point_features(self, points: Any, *, normalize: bool | None = None, batch_size: int | None = None):
        """One vector per input point: ``[B, N, 3] -> [B, N, sum(enc_dims)]``.

        Each level's tokens are interpolated at every input point from its 3 nearest token
        centres, weights ``1 / squared distance`` normalised to one; levels are concatenated
        finest first. A point that is itself a centre gets (almost exactly) its own token."""
        def run(x: torch.Tensor) -> torch.Tensor:
            levels = self.network.forward_hierarchy(self.network.group(x))
            return torch.cat([three_nn_interpolate(x, lv.centers, lv.tokens) for lv in levels], dim=-1)

        return self._run(points, run, normalize, batch_size)

    def _run(self, points: Any, fn: Callable[[torch.Tensor], torch.Tensor], normalize: bool | None,
             batch_size: int | None):
        x, is_torch, single = _as_batch(points)
        if x.shape[0] == 0:
            raise UserError("no clouds given (batch of size 0)")
        if x.shape[1] < self.min_points:
            raise UserError(f"clouds have {x.shape[1]} points; this encoder needs at least {self.min_points} "
                            f"(its first level has {self.min_points} centres)")
        if not torch.isfinite(x).all():
            raise UserError("points contain NaN or Inf")
        bs = int(batch_size or self.batch_size)
        if bs < 1:
            raise UserError(f"batch size must be >= 1 (got {bs})")
        norm = self.normalize if normalize is None else bool(normalize)
        outs = []
        with torch.no_grad(), eval_mode(self.network):
            for lo in range(0, x.shape[0], bs):
                chunk = x[lo:lo + bs].to(self.device, torch.float32)
                out = fn(normalize_clouds(chunk) if norm else chunk).float()
                outs.append(out if is_torch else out.cpu())
        out = torch.cat(outs)
        if single:
            out = out[0]
        return out.to(points.device) if is_torch else out.numpy()

    # ------------------------------------------------------------------ BatchNorm statistics
    def calibrate(self, clouds: Iterable[np.ndarray], batch_size: int | None = None) -> int:
        """Re-estimate the BatchNorm statistics of the mini-PointNets from ``clouds``
        (labels unused), the way every ``i2p eval`` protocol does on its training shapes; see
        calibrate_batchnorm (i2p/api/calibration.py) for why. Returns shapes used."""
        from i2p.api.calibration import calibrate_batchnorm

        return calibrate_batchnorm(self, clouds, int(batch_size or self.batch_size), self.device)
