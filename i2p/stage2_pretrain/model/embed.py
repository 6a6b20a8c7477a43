"""Token embeddings: a mini-PointNet per level that turns a kNN group into one token.

Level 1 embeds the 16 member points' coordinates relative to the centre (Point-MAE's
two-stage PointNet: shared MLP, max-pool, concat the pooled feature back to every member,
shared MLP, max-pool). Higher levels merge the encoded features of their member tokens (the
"token merging" of Point-M2AE); we also concatenate each member's position relative to the
centre, which gives the merge the local geometry explicitly at negligible cost
(``token_merge='i2p'``). ``token_merge='official'`` is the official Token_Embed instead: member
features only, first MLP C -> C -> C, second 2C -> C_out -> C_out (what official checkpoints hold).

Embeddings are computed on a FLAT list of visible groups ``[n, K, C_in]`` (never on padding),
so BatchNorm statistics only see real tokens and masked tokens cost nothing. The norm is
BatchNorm as in the reference code, or LayerNorm (``ModelConfig.embed_norm``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _PointwiseBN(nn.Module):
    """BatchNorm1d over the channel (last) axis of an ``[n, K, C]`` tensor."""

    def __init__(self, c: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k, c = x.shape
        return self.bn(x.reshape(n * k, c)).view(n, k, c)


def _norm(c: int, kind: str) -> nn.Module:
    return _PointwiseBN(c) if kind == "batch" else nn.LayerNorm(c)


def _rows(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Apply a shared MLP to rows ``[m, C]`` (its pointwise BatchNorm as plain BatchNorm1d)."""
    for layer in layers:
        x = layer.bn(x) if isinstance(layer, _PointwiseBN) else layer(x)
    return x


class MiniPointNet(nn.Module):
    """``[n, K, C_in] -> [n, C_out]``: f = MLP1(x); g = max_K f; y = MLP2([g, f]); max_K y.

    MLP1 is C_in -> hidden -> mid, MLP2 is 2*mid -> second_hidden -> C_out (second_hidden
    defaults to 2*mid)."""

    def __init__(self, c_in: int, hidden: int, mid: int, c_out: int, norm: str = "batch",
                 second_hidden: int | None = None):
        super().__init__()
        h2 = 2 * mid if second_hidden is None else second_hidden
        self.first = nn.Sequential(nn.Linear(c_in, hidden), _norm(hidden, norm), nn.ReLU(inplace=True),
                                   nn.Linear(hidden, mid))
        self.second = nn.Sequential(nn.Linear(2 * mid, h2), _norm(h2, norm), nn.ReLU(inplace=True),
                                    nn.Linear(h2, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k, _ = x.shape
        # The shared MLPs run on [n*K, C] rows, so the in-place ReLU acts on the norm's own
        # output rather than on a reshaped view of it (a view would make autograd record a
        # CopySlices node that clones the whole gradient).
        f = _rows(self.first, x.reshape(n * k, -1)).view(n, k, -1)
        g = f.max(dim=1, keepdim=True).values  # [n, 1, mid]
        # second[0](cat([g, f])) computed without the concatenation: the pooled half of the
        # weight multiplies g once per GROUP instead of once per member (W [g; f] = W_g g + W_f f).
        # Same parameters and state dict as the concatenated form; about a third fewer FLOPs
        # in the level-1 embedding, which dominates the step on CPU.
        lin = self.second[0]
        mid = f.shape[-1]
        y = F.linear(f, lin.weight[:, mid:]) + F.linear(g, lin.weight[:, :mid], lin.bias)
        y = _rows(self.second[1:], y.view(n * k, -1))
        return y.view(n, k, -1).max(dim=1).values


class TokenEmbed(nn.Module):
    """Level-specific token embedding.

    ``level == 0``: input is relative xyz ``[n, K, 3]``.
    ``level > 0``: input is member features ``[n, K, C_prev]`` plus relative xyz ``[n, K, 3]``
    (``merge='official'``: the member features only, the xyz is ignored).
    """

    def __init__(self, level: int, c_prev: int, c_out: int, hidden: tuple[int, int], norm: str = "batch",
                 merge: str = "i2p"):
        super().__init__()
        self.level = level
        self.use_xyz = level > 0 and merge != "official"
        if level == 0:
            self.net = MiniPointNet(3, hidden[0], hidden[1], c_out, norm)
        elif merge == "official":
            self.net = MiniPointNet(c_prev, c_prev, c_prev, c_out, norm, second_hidden=c_out)
        else:
            c_in = c_prev + 3
            self.net = MiniPointNet(c_in, c_in, c_in, c_out, norm)

    def forward(self, rel_xyz: torch.Tensor, member_feats: torch.Tensor | None = None) -> torch.Tensor:
        if rel_xyz.shape[0] == 0:  # no visible group anywhere in the batch (not reachable in practice)
            return rel_xyz.new_zeros(0, self.net.second[-1].out_features)
        if self.level == 0:
            return self.net(rel_xyz)
        if not self.use_xyz:
            return self.net(member_feats)
        return self.net(torch.cat([member_feats, rel_xyz.to(member_feats.dtype)], dim=-1))
