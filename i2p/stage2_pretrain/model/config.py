"""Architecture and objective settings of the I2P-MAE 3D network.

One flat dataclass so that a checkpoint can store it as a plain dict (``to_dict``) and stage 3
can rebuild exactly the encoder that was trained (``from_dict``). Defaults are the paper's
(I2P-MAE / Point-M2AE pre-training config); ``tiny()`` is a CPU-sized variant for tests and
smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from i2p.common import config as cfgutil

MASK_MODES = ("saliency", "random")
TARGETS = ("2d3d", "3d")
TOKEN_MERGES = ("i2p", "official")
EVAL_MODES = ("i2p", "official")
DECODER_STYLES = ("i2p", "official")


@dataclass
class ModelConfig:
    num_points: int = 2048
    group_sizes: tuple[int, ...] = (16, 8, 8)
    num_groups: tuple[int, ...] = (512, 256, 64)
    enc_dims: tuple[int, ...] = (96, 192, 384)
    enc_depths: tuple[int, ...] = (5, 5, 5)
    num_heads: int = 6
    mlp_ratio: float = 4.0
    drop_path: float = 0.1
    # Hidden widths of the level-1 mini-PointNet (Point-MAE uses 128 -> 256, then 512).
    embed_hidden: tuple[int, int] = (128, 256)
    # Norm inside the mini-PointNets: 'batch' (the reference code's BatchNorm) or 'layer'
    # (LayerNorm: no batch statistics, so a DDP run equals a single-process run exactly and
    # train/eval behave alike; everything else in the network is already batch-independent).
    embed_norm: str = "batch"
    dec_dims: tuple[int, ...] = (384, 192)
    dec_depths: tuple[int, ...] = (1, 1)
    mask_ratio: float = 0.8
    views: int = 3
    teacher_channels: int = 0  # C of the cached teacher features; 0 = no 2D head
    image_size: int = 224  # S used by back-projection (must match the cache)
    mask_mode: str = "saliency"
    temperature: float = 1.0
    targets: str = "2d3d"
    # Weight of the 2D loss. None (the default): found each step by gradient-norm balancing
    # (``balance_ratio``); a number: that fixed weight (the paper's is 1.0), a manual override.
    lambda_2d: float | None = None
    # Automatic balance: the 2D term is weighted so that the gradient it sends into the head
    # features is ``balance_ratio`` times the 3D term's. A ratio of norms of the same tensor is
    # unitless, so it does not move with the teacher's feature scale or width, nor with the
    # 3D loss's scale (group sizes, point density). 0.1 chosen on validation in domain; 0.3
    # was +1.9 ± 2.1 on classes pretraining never saw but behind elsewhere (docs/RESULTS.md,
    # "The balance ratio, out of domain"), so the default stayed.
    balance_ratio: float = 0.1
    # Fraction of the run over which the balance ratio rises linearly from 0 to
    # ``balance_ratio`` (0 = from the first step). Why: early on the 3D loss and its gradient
    # are large and fall ~10x within an epoch, so a ratio in force from step 1 spends a large
    # 2D weight on the first steps, before the encoder has any 3D structure; a fixed small
    # lambda spends little there. Unitless, so still scale-free. 0.1 chosen on validation
    # (docs/RESULTS.md, "The 2D/3D balance": +8 points of CV accuracy on 3 seeds vs 0).
    balance_warmup: float = 0.1
    # L2-normalise each back-projected target vector (per point, per view) after gathering.
    target_l2: bool = False
    # Global distillation: the max-pooled visible top-level tokens predict the teacher's
    # pooled feature (each view mean-pooled, views side by side, standardised per channel),
    # balanced like the 2D term with this gradient ratio (against the 3D gradient); 0 = off.
    global_ratio: float = 0.0
    # 'mse': regress the standardised teacher feature; 'nce': contrastive -- the projected
    # student feature must pick its own shape's teacher feature among the teacher features of
    # every training shape (the "bank"; in-batch when no bank is given), temperature
    # ``global_tau``. NCE learns the teacher's similarity structure without having to
    # reproduce its hundreds of noisy channels.
    global_loss: str = "mse"
    global_tau: float = 0.1
    # What the global term pools. 'visible': the masked pass's visible tokens (what the encoder
    # already computed). 'full': a second encoder pass over every token of the same cloud, no
    # mask -- feature distillation of the whole shape, as the encoder is used downstream
    # (a transfer lever: a whole-shape teacher feature is barely predictable from 20% of the
    # tokens; costs one more encoder forward and backward).
    global_input: str = "visible"
    # What the 2D head reads. 'decoder' (the paper's): the decoder's head-level tokens. 'encoder':
    # the encoder's own LayerNorm'd head-level tokens (the features every probe pools), so the
    # teacher's semantics must be linearly readable from the encoder rather than recoverable by
    # the decoder's transformer (a transfer lever: linear probes read the encoder). The 3D term
    # stays on the decoder; the balance is measured at those encoder tokens (two-pass form).
    head2d_input: str = "decoder"
    # What one 2D target is. 'points' (the paper's): the teacher feature back-projected at each
    # of a visible token's k member points, so the head predicts k x V x C values per token.
    # 'token': the mean of those k member targets, one V x C vector per token (a k-times smaller
    # head): the region's semantics rather than the per-point detail within ~8 neighbours, a
    # transfer lever (issue 21) and the cheaper objective (issue 20).
    target2d: str = "points"
    # Which head-level tokens regress 2D targets. 'visible' (the paper's): the encoder saw them,
    # the decoder carries their features up. 'masked': the tokens the encoder did NOT see, so
    # the decoder must infer the teacher's semantics of hidden regions from the context (masked
    # feature prediction, as MaskFeat / BEiT v2 do with a 2D teacher; a transfer lever, issue
    # 21). 'all': both. The head's cost grows with the token count (x4 for 'masked' at the
    # 80% mask ratio).
    target2d_tokens: str = "visible"
    # Channels of each view's 2D target. 0, or r >= the teacher's C: every channel. 0 < r < C:
    # the targets' coordinates on their own top-r principal directions (the standardised maps
    # back-projected at the cache's points, fitted once per run on its first samples:
    # ``teacher_targets.principal_basis``; stored in the model as the ``target_basis``
    # buffer). Projection and back-projection are both linear, so these are exactly the full
    # targets' coordinates in that subspace: the MSE is the full MSE less the variance outside
    # the subspace, which no prediction inside it can reduce. Why: the 2D head and the
    # back-projection shrink C/r times (issue 20).
    target_dims: int = 0
    fps_random_start: bool = False  # True: FPS starts at a generator-drawn index per sample
    # Token merging at levels >= 2. 'i2p': the member tokens' features and their xyz relative
    # to the centre, through a mini-PointNet of width C_prev + 3 (12,668,968 encoder parameters
    # at the paper sizes). 'official': the official Token_Embed (models/modules.py): member
    # features only, first MLP C_prev -> C_prev, second 2*C_prev -> C_l -> C_l (12,654,976).
    token_merge: str = "i2p"
    # The encoder computation. 'i2p': our own. 'official': the official code's, exactly
    # (see docs/FIDELITY.md): FPS skips points with squared norm <= 1e-3 (the pointnet2 kernel),
    # every token is embedded and masked members feed their own embedding to the next level,
    # and the unmasked pass (features for probes) applies the official eval visibility rule:
    # a finer token is encoded only if the kNN group of some encoded coarser token holds it.
    eval_mode: str = "i2p"
    # The official config's ``local_radius`` (eval_mode='official' only). In the official
    # encoder it never restricts attention between real tokens; it only lets the zero padding
    # rows of a batch (centre (0,0,0)) take part in attention within that radius, so official
    # features of a batch whose clouds have different visible-token counts depend on the batch.
    # Kept to reproduce that computation; () or zeros = every cloud as if alone.
    official_local_radius: tuple[float, ...] = ()
    # The pre-training decoder's token propagation and init (docs/FIDELITY.md P13, P14). 'i2p':
    # Linear-LayerNorm-GELU fusion, truncated-normal linears (no batch statistics anywhere in
    # the decoder). 'official': the official PointNetFeaturePropagation (Conv-BN-GELU fuse and
    # ``dec_up_blocks`` residual Conv-BN blocks, BatchNorm over the batch's tokens) and the
    # official init (xavier-uniform transformer linears, PyTorch defaults for the rest and the
    # heads). Not part of an encoder export.
    decoder_style: str = "i2p"
    dec_up_blocks: int = 1  # residual blocks after each official fusion (official decoder_up_blocks)
    # Visible coarsest tokens. 'i2p': round(G * (1 - mask_ratio)). 'official': G - int(mask_ratio
    # * G) (I2P_MAE.py:98-99). Equal at the paper sizes (13 of 64); G=32: 6 vs 7.
    visible_count: str = "i2p"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes, ignored by the model

    def __post_init__(self) -> None:
        for name in ("group_sizes", "num_groups", "enc_dims", "enc_depths", "embed_hidden",
                     "dec_dims", "dec_depths"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        self.official_local_radius = tuple(float(v) for v in self.official_local_radius)
        self.validate()

    # ------------------------------------------------------------------ presets
    @classmethod
    def base(cls, **overrides: Any) -> "ModelConfig":
        """The published architecture with the product's objective (automatic 2D/3D balance)."""
        return cls(**overrides)

    @classmethod
    def paper(cls, **overrides: Any) -> "ModelConfig":
        """The published pre-training recipe: the published sizes and the objective
        L3d + 1.0 * L2d, nothing added, the official decoder (``decoder_style='official'``) and
        visible-token count (``visible_count='official'``).
        The encoder has 12,668,968 parameters with i2p's token merging (``token_merge='i2p'``, the
        default) and 12,654,976 with the official one."""
        base = dict(lambda_2d=1.0, global_ratio=0.0, target_l2=False, decoder_style="official",
                    visible_count="official")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def tiny(cls, **overrides: Any) -> "ModelConfig":
        """A small model that runs several steps per second on a 2-core CPU at the `tiny` preset's batch."""
        base = dict(num_points=1024, num_groups=(256, 128, 32), enc_dims=(48, 96, 192),
                    enc_depths=(1, 1, 1), num_heads=3, embed_hidden=(32, 64),
                    dec_dims=(192, 96), dec_depths=(1, 1))
        base.update(overrides)
        return cls(**base)

    # ------------------------------------------------------------------ helpers
    @property
    def num_levels(self) -> int:
        return len(self.num_groups)

    @property
    def head_level(self) -> int:
        """Index of the level whose tokens carry the reconstruction heads (1 = level 2)."""
        return self.num_levels - len(self.dec_dims)

    def num_visible(self) -> int:
        """Visible coarsest-level tokens, at least 1: round(G * (1 - mask_ratio)), or with
        ``visible_count='official'`` the official G - int(mask_ratio * G)."""
        g = self.num_groups[-1]
        if self.visible_count == "official":
            return max(1, g - int(self.mask_ratio * g))
        return max(1, int(round(g * (1.0 - self.mask_ratio))))

    @property
    def use_2d(self) -> bool:
        return self.targets == "2d3d"

    @property
    def projects_targets(self) -> bool:
        """Whether the 2D targets are projected onto ``target_dims`` principal directions
        (fewer than the teacher's channels; otherwise every channel is a target)."""
        return self.use_2d and 0 < self.target_dims < self.teacher_channels

    def validate(self) -> None:
        n = self.num_levels
        if not (len(self.group_sizes) == len(self.enc_dims) == len(self.enc_depths) == n):
            raise ValueError("group_sizes, num_groups, enc_dims and enc_depths need one entry per level")
        if len(self.dec_dims) != len(self.dec_depths) or not 1 <= len(self.dec_dims) <= n:
            raise ValueError("dec_dims and dec_depths need the same length, between 1 and the number of levels")
        prev = self.num_points
        for lvl, (g, k) in enumerate(zip(self.num_groups, self.group_sizes)):
            if not 0 < g <= prev or not 0 < k <= prev:
                raise ValueError(f"level {lvl + 1}: {g} groups of {k} from {prev} candidates is impossible")
            prev = g
        for d in (*self.enc_dims, *self.dec_dims):
            if d % self.num_heads:
                raise ValueError(f"dimension {d} is not divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError("mask_ratio must lie in [0, 1)")
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {self.mask_mode!r}")
        if self.token_merge not in TOKEN_MERGES:
            raise ValueError(f"token_merge must be one of {TOKEN_MERGES}, got {self.token_merge!r}")
        if self.eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode must be one of {EVAL_MODES}, got {self.eval_mode!r}")
        if self.decoder_style not in DECODER_STYLES:
            raise ValueError(f"decoder_style must be one of {DECODER_STYLES}, got {self.decoder_style!r}")
        if self.visible_count not in ("i2p", "official"):
            raise ValueError(f"visible_count must be 'i2p' or 'official', got {self.visible_count!r}")
        if self.dec_up_blocks < 0:
            raise ValueError("dec_up_blocks must be >= 0")
        if self.official_local_radius and len(self.official_local_radius) != n:
            raise ValueError("official_local_radius needs one entry per level (or none)")
        if self.embed_norm not in ("batch", "layer"):
            raise ValueError(f"embed_norm must be 'batch' or 'layer', got {self.embed_norm!r}")
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got {self.targets!r}")
        if self.lambda_2d is not None and self.lambda_2d < 0:
            raise ValueError("lambda_2d must be >= 0 (or null for the automatic balance)")
        if self.balance_ratio <= 0 or self.global_ratio < 0:
            raise ValueError("balance_ratio must be > 0 and global_ratio >= 0")
        if not 0 <= self.balance_warmup < 1:
            raise ValueError("balance_warmup must be in [0, 1) (a fraction of the run)")
        if self.global_loss not in ("mse", "nce") or self.global_tau <= 0:
            raise ValueError("global_loss must be 'mse' or 'nce' and global_tau > 0")
        if self.global_input not in ("visible", "full"):
            raise ValueError("global_input must be 'visible' or 'full'")
        if self.head2d_input not in ("decoder", "encoder"):
            raise ValueError("head2d_input must be 'decoder' or 'encoder'")
        if self.target2d_tokens not in ("visible", "masked", "all"):
            raise ValueError("target2d_tokens must be 'visible', 'masked' or 'all'")
        if self.target2d not in ("points", "token"):
            raise ValueError("target2d must be 'points' or 'token'")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if self.target_dims < 0:
            raise ValueError(f"target_dims must be >= 0 (0 = every teacher channel), got {self.target_dims}")
        if self.teacher_channels < 0 or self.views < 1:
            raise ValueError("teacher_channels must be >= 0 and views >= 1")
        # targets='2d3d' with teacher_channels == 0 is allowed here (a config is often made
        # before the cache is opened); build_model refuses it.

    def to_dict(self) -> dict[str, Any]:
        return cfgutil.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """The config a checkpoint stores; ValueError names an unknown or ill-typed field."""
        d = dict(d)
        if "balance_ratio" in d and "balance_warmup" not in d:
            d["balance_warmup"] = 0.0  # a run saved before the warm-up existed resumes as it ran
        if "teacher_channels" in d and "target_dims" not in d:
            d["target_dims"] = 0  # saved before principal-direction targets: every channel
        try:
            return cfgutil.from_dict(cls, d)
        except cfgutil.ConfigError as exc:
            raise ValueError(str(exc)) from None
