"""I2P-MAE: the 3D masked autoencoder trained from cached 2D teacher maps.

One ``forward`` is one pre-training step's network work: group the augmented cloud, read the
saliency cloud from the cached teacher, mask (2D-guided or random), encode the visible
tokens, decode, and compute L = L3d + lambda * L2d at the head level (level 2):

* masked tokens reconstruct their member coordinates relative to the centre (Chamfer-L2,
  in the augmented frame the network sees);
* visible tokens regress the teacher features of each member, all views concatenated (MSE,
  read at the ORIGINAL coordinates, so cached targets are exact);
* optionally (``global_ratio > 0``) the max-pooled visible top-level tokens regress the
  teacher's pooled feature of the whole shape (each view mean-pooled, views side by side,
  standardised: a global distillation term).

The weight of each 2D term is found per step by gradient-norm balancing (see
:func:`balance_weight`) unless ``lambda_2d`` fixes it.

Each loss is a per-sample mean over that sample's tokens, then a mean over samples.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from i2p.common.point_ops import chamfer_l2
from i2p.stage2_pretrain.model.balance import balance_single_pass, balance_weight
from i2p.stage2_pretrain.model.config import ModelConfig
from i2p.stage2_pretrain.model.decoder import HierarchicalDecoder
from i2p.stage2_pretrain.model.encoder import HierarchicalEncoder, LevelOutput
from i2p.stage2_pretrain.model.masking import all_visibilities, coarse_visibility, masked_mean
from i2p.stage2_pretrain.model.rng import Rng
from i2p.stage2_pretrain.model.targets import feature_targets, project_channels, saliency_cloud


def per_sample_mean(values: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """Mean over samples of each sample's mean over its tokens (``values [n]`` of tokens in
    sample ``rows [n]``).

    Visible/masked token counts differ per sample, so a plain mean over all tokens of the
    batch (the reference code's) would depend on how a batch is split across processes.
    Weighting every shape equally is one of the three conditions for a DDP loss equal to the
    single-process loss (with per-sample generators and ``embed_norm='layer'``).
    """
    sums = torch.zeros(batch, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    counts = torch.bincount(rows, minlength=batch).to(values.dtype)
    present = counts > 0
    return (sums[present] / counts[present]).mean()


class _TokenMSE(torch.autograd.Function):
    """Per-token mean squared error ``((pred - target) ** 2).mean(dim=(1, 2))`` of ``[n, K, L]``
    predictions (no gradient for the target), with the values and gradients of
    ``mse_loss(reduction='none').mean(dim=(1, 2))`` bit for bit and two map-sized temporaries
    fewer: the autograd form keeps the squared errors, expands the incoming gradient over every
    element and divides it, then multiplies by ``2 * (pred - target)`` (measured on the paper
    model's 2D targets, [366, 8, 1416]: 15 -> 10.5 ms forward + backward)."""

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = pred - target
        ctx.save_for_backward(diff)
        return (diff * diff).mean(dim=(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (diff,) = ctx.saved_tensors
        # (2 * diff) * (grad / L) rounds as 2 * (grad / L) * diff: scaling by 2 is exact
        scale = (grad / (diff.shape[1] * diff.shape[2])) * 2
        return diff * scale[:, None, None], None


def token_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[n, K, L]`` predictions and targets -> ``[n]`` per-token mean squared errors."""
    return _TokenMSE.apply(pred, target)


class I2PMAE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.use_2d and cfg.teacher_channels <= 0:
            raise ValueError("targets='2d3d' needs teacher_channels > 0: set it from the cache's feature width")
        self.cfg = cfg
        self.encoder = HierarchicalEncoder(cfg)
        self.decoder = HierarchicalDecoder(cfg)
        dim, k = cfg.dec_dims[-1], cfg.group_sizes[cfg.head_level]
        self.head_3d = nn.Linear(dim, k * 3)
        # Only the '2d3d' objective has a 2D head: every parameter then takes part in every
        # step, which DistributedDataParallel requires (without find_unused_parameters).
        dim_2d = dim if cfg.head2d_input == "decoder" else cfg.enc_dims[cfg.head_level]
        k_2d = k if cfg.target2d == "points" else 1
        self.head_2d = nn.Linear(dim_2d, k_2d * cfg.views * self.target_channels) if cfg.use_2d else None
        self._basis_ready = False
        if cfg.projects_targets:
            # Filled by set_target_basis (from the cache) or a checkpoint; NaN until then, and
            # a step without one refuses to run rather than regress a wrong target.
            self.register_buffer("target_basis", torch.full((cfg.teacher_channels, cfg.target_dims), float("nan")))
        use_global = cfg.use_2d and cfg.global_ratio > 0
        self.head_global = nn.Linear(cfg.enc_dims[-1], cfg.views * cfg.teacher_channels) if use_global else None
        for head in (self.head_3d, self.head_2d, self.head_global):
            # official: the heads keep PyTorch's default init (Conv1d rec_head_*, I2P_MAE.py:256-261)
            if head is not None and not (cfg.decoder_style == "official" and head is not self.head_global):
                nn.init.trunc_normal_(head.weight, std=0.02)
                nn.init.zeros_(head.bias)

    @property
    def target_channels(self) -> int:
        """Channels per view of one 2D target: ``target_dims`` when it projects, else the teacher's C."""
        return self.cfg.target_dims if self.cfg.projects_targets else self.cfg.teacher_channels

    @property
    def has_target_basis(self) -> bool:
        """Whether the 2D targets can be made: true unless they are projected and no basis was
        set or loaded yet."""
        return self._basis_ready or not self.cfg.projects_targets

    def set_target_basis(self, basis: torch.Tensor) -> None:
        """The ``[C, target_dims]`` orthonormal directions the 2D targets are projected onto
        (:func:`i2p.stage2_pretrain.teacher_targets.principal_basis`)."""
        want = (self.cfg.teacher_channels, self.cfg.target_dims)
        if not self.cfg.projects_targets or tuple(basis.shape) != want:
            raise ValueError(f"a target basis of shape {want} is needed (0 < target_dims < teacher_channels), "
                             f"got {tuple(basis.shape)}")
        if not torch.isfinite(basis).all():
            raise ValueError("the target basis has non-finite entries")
        self.target_basis.copy_(basis.to(self.target_basis))
        self._basis_ready = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "target_basis" in state_dict:
            self._basis_ready = True

    # ------------------------------------------------------------------ pre-training
    def forward(self, points: torch.Tensor, view_features: torch.Tensor | None = None,
                view_saliency: torch.Tensor | None = None, proj: torch.Tensor | None = None,
                scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                generator: Rng = None, global_target: torch.Tensor | None = None,
                global_bank: torch.Tensor | None = None,
                global_rows: torch.Tensor | None = None,
                progress: float | None = None) -> dict[str, torch.Tensor]:
        """One masked-autoencoding pass.

        points        [B, N, 3] ORIGINAL (un-augmented) coordinates, as stored in the cache
        view_features [B, V, h, w, C] teacher feature maps (any float dtype) or None
        view_saliency [B, V, h, w] teacher saliency maps or None
        proj          [B, V, 5] raster parameters of the original cloud or None
        scale, shift  [B, 1, 3] augmentation: the network sees ``points * scale + shift``
        generator     drives every random choice (masking, drop path, FPS start if enabled):
                      one torch.Generator, or a list with one per sample (see ``rng.py``)
        global_target [B, V*C] the teacher's pooled feature (needed when ``global_ratio > 0``)
        global_bank   [M, V*C] teacher features of every training shape ('nce'; None: in-batch)
        global_rows   [B] row of each sample's own feature in ``global_bank``
        progress      share of the run done (step / total steps), for ``balance_warmup``;
                      None: the warm-up is over

        Returns ``loss`` (to backpropagate), ``loss_3d``, ``loss_2d`` (0 when targets='3d'),
        ``sal_visible`` / ``sal_masked`` (mean saliency of visible / masked coarse tokens, NaN
        without saliency), ``saliency`` [B, G_top] (or absent), ``visible_mask_l{1,2,3}``
        [B, G_l] bool, and ``num_visible_l{1,2,3}`` (mean count, float).
        """
        h, sal, vis_top, vis, enc, x = self._mask_and_decode(points, view_saliency, proj, scale, shift, generator)
        masked = ~vis[self.cfg.head_level]
        # The default objective differentiates the heads once (see ``balance_single_pass``): they
        # then run on a detached copy of the head features, reconnected to the graph after.
        single = self._single_pass() and x.requires_grad
        xh = x.detach().requires_grad_() if single else x
        loss_3d = self._loss_3d(xh, masked, h, points.shape[0])
        enc_g = enc
        if self.head_global is not None and self.cfg.global_input == "full":
            every = torch.ones_like(vis_top)
            enc_g = self.encoder.forward_hierarchy(h, all_visibilities(every, h.groups, self.cfg.num_groups),
                                                   generator)
        x2d = xh if self.cfg.head2d_input == "decoder" else enc[self.cfg.head_level].full
        which = self.cfg.target2d_tokens
        rows_2d = ~masked if which == "visible" else masked if which == "masked" else torch.ones_like(masked)
        out = self._objective(loss_3d, x2d, rows_2d, enc_g, points, h, view_features, proj, global_target,
                              global_bank, global_rows, progress, x if single else None)
        out["head_features"] = x
        nan = torch.full((), float("nan"), device=points.device)
        out["sal_visible"] = masked_mean(sal, vis_top) if sal is not None else nan
        out["sal_masked"] = masked_mean(sal, ~vis_top) if sal is not None else nan
        if sal is not None:
            out["saliency"] = sal
        for i, v in enumerate(vis):
            out[f"visible_mask_l{i + 1}"] = v
            out[f"num_visible_l{i + 1}"] = v.sum(dim=1).float().mean()
        return out

    def _mask_and_decode(self, points, view_saliency, proj, scale, shift, generator):
        """Group the augmented cloud, draw the visible tokens (2D-guided or random), encode
        them and decode to the head level; returns ``(hierarchy, saliency cloud or None,
        top-level visibility, visibility per level, encoder outputs, head features)``. The
        generator is used in this order: FPS start, the draw, the encoder, the decoder."""
        cfg = self.cfg
        seen = points
        if scale is not None:
            seen = seen * scale
        if shift is not None:
            seen = seen + shift
        h = self.encoder.group(seen, generator)
        bsz, top = points.shape[0], cfg.num_levels - 1
        sal = None
        if view_saliency is not None and proj is not None:
            sal = saliency_cloud(view_saliency, points, h, proj, cfg.image_size)
        vis_top = coarse_visibility(sal, bsz, cfg.num_groups[top], cfg.num_visible(), cfg.mask_mode,
                                    cfg.temperature, generator, points.device)
        vis = all_visibilities(vis_top, h.groups, cfg.num_groups)
        enc = self.encoder.forward_hierarchy(h, vis, generator)
        return h, sal, vis_top, vis, enc, self.decoder(h, enc, generator)  # head features [B, G_head, D]

    def _loss_3d(self, x: torch.Tensor, masked: torch.Tensor, h, bsz: int) -> torch.Tensor:
        """Chamfer-L2 of the masked head-level tokens' predicted members, per sample, averaged."""
        lvl = self.cfg.head_level
        k = self.cfg.group_sizes[lvl]
        if not bool(masked.any()):  # nothing masked at the head level (only with tiny mask ratios)
            return x.sum() * 0.0
        b_idx, g_idx = masked.nonzero(as_tuple=True)
        pred = self.head_3d(x[b_idx, g_idx]).float().view(-1, k, 3)
        per_token = chamfer_l2(pred, h.neighbors[lvl][b_idx, g_idx].float())
        return per_sample_mean(per_token, b_idx, bsz)

    def _single_pass(self) -> bool:
        """Whether this step's automatic balance takes the single-pass form: the default
        objective (2D term, automatic weight, no global term) with gradients enabled."""
        cfg = self.cfg
        return (cfg.use_2d and cfg.lambda_2d is None and self.head_global is None and cfg.head2d_input == "decoder"
                and torch.is_grad_enabled())

    def _objective(self, loss_3d, x, visible, enc, points, h, view_features, proj, global_target, global_bank,
                   global_rows, progress, graph_x=None) -> dict[str, torch.Tensor]:
        """L3d plus the weighted 2D terms (fixed lambda or the automatic balance), with each
        term, its weight and the raw gradient ratio; the heads' predictions in evaluation.
        ``graph_x``: the head features in the graph when ``x`` is their detached copy (the
        single-pass balance)."""
        cfg = self.cfg
        zero = torch.zeros((), device=points.device)
        loss_2d, loss_g, w_2d, w_g, raw_2d, raw_g = zero, zero, zero, zero, zero, zero
        loss = loss_3d
        preds: dict[str, torch.Tensor] = {}
        if cfg.use_2d:
            loss_2d, preds["pred_2d"], preds["target_2d"] = self._loss_2d(x, visible, points, h, view_features, proj)
            auto = torch.is_grad_enabled() and x.requires_grad
            if cfg.lambda_2d is not None:
                w_2d = torch.tensor(float(cfg.lambda_2d), device=points.device)
            elif graph_x is not None:
                w_2d, raw_2d, loss_3d, loss_2d, loss = balance_single_pass(
                    loss_3d, loss_2d, x, graph_x, self.head_3d, self.head_2d, cfg.balance_ratio * self._ramp(progress))
            elif auto:
                w_2d, raw_2d = balance_weight(loss_3d, loss_2d, x, cfg.balance_ratio * self._ramp(progress))
            else:  # no graph to balance with (evaluation of the loss only): report the raw sum
                w_2d = torch.ones((), device=points.device)
            if graph_x is None:
                loss = loss + w_2d * loss_2d
            if self.head_global is not None:
                pooled, loss_g, preds["pred_global"] = self._loss_global(enc[-1], global_target, global_bank,
                                                                         global_rows)
                preds["target_global"] = global_target
                if auto:
                    w_g, raw_g = balance_weight(loss_3d, loss_g, pooled, cfg.global_ratio, ref_at=x)
                else:
                    w_g = torch.ones((), device=points.device)
                loss = loss + w_g * loss_g
        out = {"loss": loss + self._idle_term(), "loss_3d": loss_3d, "loss_2d": loss_2d, "loss_global": loss_g,
               "w_2d": w_2d, "w_global": w_g, "grad_ratio_2d": raw_2d, "grad_ratio_global": raw_g}
        if cfg.use_2d and not torch.is_grad_enabled():  # evaluation (held-out R2): expose predictions
            out.update(preds)
        return out

    def _ramp(self, progress: float | None) -> float:
        """Share of ``balance_ratio`` in force at ``progress`` (linear warm-up, then 1)."""
        warm = self.cfg.balance_warmup
        if progress is None or warm <= 0:
            return 1.0
        return min(1.0, max(0.0, progress) / warm)

    def _idle_term(self) -> torch.Tensor:
        """Exactly 0, but connected to the encoder LayerNorms of levels finer than the head
        level: pre-training never reads them (they serve ``encode_levels``), and DDP without
        ``find_unused_parameters`` fails on parameters that get no gradient."""
        idle = [p for lvl in range(self.cfg.head_level) for p in self.encoder.norms[lvl].parameters()]
        if not idle:
            return torch.zeros((), device=self.head_3d.weight.device)
        return sum(p.sum() for p in idle) * 0.0

    def _loss_2d(self, x: torch.Tensor, visible: torch.Tensor, points: torch.Tensor, h,
                 view_features: torch.Tensor | None, proj: torch.Tensor | None) -> torch.Tensor:
        cfg = self.cfg
        if view_features is None or proj is None:
            raise ValueError("targets='2d3d' needs view_features and proj (or use targets='3d')")
        if view_features.shape[1] != cfg.views or view_features.shape[-1] != cfg.teacher_channels:
            raise ValueError(f"view_features {tuple(view_features.shape)} do not match the model "
                             f"(views={cfg.views}, teacher_channels={cfg.teacher_channels})")
        b_idx, g_idx = visible.nonzero(as_tuple=True)
        k = cfg.group_sizes[cfg.head_level]
        if not len(b_idx):  # no token to regress (target2d_tokens='masked' with nothing masked)
            zero = x.sum() * 0.0
            return zero, x.new_zeros(0, k, 0), x.new_zeros(0, k, 0)
        if cfg.projects_targets:
            if not self._basis_ready:
                raise ValueError(f"target_dims={cfg.target_dims} but the model has no target basis: call set_target_basis() "
                                 "(i2p pretrain fits it on the cache) or load a checkpoint that holds one")
            view_features = project_channels(view_features, self.target_basis)
        target = feature_targets(view_features, points, h, cfg.head_level, proj, cfg.image_size, b_idx, g_idx)
        if cfg.target_l2:  # each view's C-vector of each member to unit length
            t = target.view(len(b_idx), k, cfg.views, self.target_channels)
            target = (t / t.norm(dim=-1, keepdim=True).clamp_min(1e-6)).flatten(2)
        if cfg.target2d == "token":  # one target per token: the mean over its members
            target, k = target.mean(dim=1, keepdim=True), 1
        pred = self.head_2d(x[b_idx, g_idx]).float().view(len(b_idx), k, -1)
        err = token_mse(pred, target)
        return per_sample_mean(err, b_idx, len(points)), pred, target

    def _loss_global(self, top, global_target: torch.Tensor | None, bank: torch.Tensor | None = None,
                     rows: torch.Tensor | None = None):
        """The global term on the max-pooled visible top-level tokens; returns ``(pooled
        tokens, loss, head output)``. 'mse': regression of the teacher's pooled feature;
        'nce': cross-entropy of picking the sample's own teacher feature (cosine / tau) among
        the bank's (or the batch's)."""
        if global_target is None:
            raise ValueError("global_ratio > 0 needs global_target (the teacher's pooled feature)")
        neg = torch.finfo(top.tokens.dtype).min
        pooled = top.tokens.masked_fill(~top.valid[..., None], neg).amax(dim=1)
        pred = self.head_global(pooled).float()
        if self.cfg.global_loss == "nce":
            keys = global_target if bank is None else bank
            if bank is None:
                rows = torch.arange(len(pred), device=pred.device)
            elif rows is None:
                raise ValueError("global_bank needs global_rows (each sample's row in the bank)")
            logits = nn.functional.normalize(pred, dim=-1) @ nn.functional.normalize(keys.float(), dim=-1).T
            return pooled, nn.functional.cross_entropy(logits / self.cfg.global_tau, rows), pred
        err = nn.functional.mse_loss(pred, global_target.float(), reduction="none").mean(dim=1)
        return pooled, err.mean(), pred

    # ------------------------------------------------------------------ feature extraction
    def encode_levels(self, points: torch.Tensor) -> list[LevelOutput]:
        """Unmasked encoder outputs of every level (tokens, centres, ...), finest first."""
        return self.encoder(points)

    def encode(self, points: torch.Tensor) -> torch.Tensor:
        """LayerNorm'd coarsest tokens ``[B, G_top, enc_dims[-1]]``, in centre order, no masking."""
        return self.encode_levels(points)[-1].tokens


def build_model(cfg: ModelConfig) -> I2PMAE:
    """Validate ``cfg`` for pre-training and build the network."""
    cfg.validate()
    return I2PMAE(cfg)


# The parameters whose name in the official model contains 'token' (``h_encoder.token_embed``,
# ``mask_token``, ``token_prop``), by their i2p names: the official ``add_weight_decay`` exempts
# them from weight decay.
OFFICIAL_TOKEN_PARAMS = ("encoder.embeds.", "decoder.mask_token", "decoder.fuse.")


def decay_exempt(name: str, p: torch.Tensor, rule: str = "i2p") -> bool:
    """Whether parameter ``name`` gets no weight decay: 1-D tensors and biases; with ``rule=
    'official'`` also the official 'token' parameters (:data:`OFFICIAL_TOKEN_PARAMS`, and any
    name containing 'token')."""
    if p.ndim <= 1 or name.endswith(".bias"):
        return True
    return rule == "official" and ("token" in name or name.startswith(OFFICIAL_TOKEN_PARAMS))


def optimizer_groups(model: nn.Module, weight_decay: float, rule: str = "i2p") -> list[dict]:
    """AdamW parameter groups as in Point-MAE / Point-M2AE: no weight decay on biases and 1-D
    parameters (norm scales), decay on everything else (:func:`decay_exempt`). Decoupled decay
    also shrinks parameters whose gradient is zero, so norms must be exempt."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if decay_exempt(name, p, rule) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
