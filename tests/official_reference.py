"""A literal, test-only model of the official I2P-MAE eval forward (``forward(pts, eval=True)``).

Written from the description of the official computation (fixture README and the official
code's structure), on an official state dict (official key names, Conv1d weights), in the
official batched style: per-cloud packing with zero padding, a float ``mask_vis`` multiplied
by -1e5, ``local_radius`` multiplied into it, explicit attention, the flattened-index scatter
of the eval visibility (with its token-0 side effect), and masked tokens passing their token
embedding to the next level. It shares no code with i2p's encoder, so it can check i2p on
configurations the fixtures do not cover (other sizes, 2 or 4 levels, dims that do not
double, points near the origin, local_radius > 0 with padding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kernel_fps(xyz: torch.Tensor, m: int) -> torch.Tensor:
    """The pointnet2 ``furthest_point_sample`` kernel, one cloud at a time, float32."""
    out = []
    for cloud in xyz:
        n = cloud.shape[0]
        x, y, z = cloud[:, 0], cloud[:, 1], cloud[:, 2]
        skip = (x * x + y * y + z * z) <= 1e-3
        temp = torch.full((n,), 1e10, dtype=torch.float32)
        idx = [0]
        old = 0
        for _ in range(1, m):
            px, py, pz = x[old], y[old], z[old]
            d = (x - px) * (x - px) + (y - py) * (y - py) + (z - pz) * (z - pz)
            temp = torch.where(skip, temp, torch.minimum(temp, d))
            cand = torch.where(skip, torch.full_like(temp, -1.0), temp)
            best = cand.max()
            old = int((cand == best).nonzero()[0]) if best > -1 else 0
            idx.append(old)
        out.append(torch.tensor(idx, dtype=torch.long))
    return torch.stack(out)


def kernel_knn(ref: torch.Tensor, query: torch.Tensor, k: int) -> torch.Tensor:
    """KNN_CUDA: k nearest ``ref`` points of each ``query`` point, squared distance summed in
    coordinate order, ascending, ties to the lower index."""
    diff = query[:, :, None, :] - ref[:, None, :, :]
    d = diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]
    return torch.sort(d, dim=-1, stable=True).indices[..., :k]


def group(xyz: torch.Tensor, g: int, k: int):
    """Group_v2: (neighborhood - centre, centre, flattened idx with batch offsets, fps, knn)."""
    b, n, _ = xyz.shape
    fps = kernel_fps(xyz, g)
    center = torch.stack([xyz[i, fps[i]] for i in range(b)])
    knn = kernel_knn(xyz, center, k)
    flat = (knn + torch.arange(b).view(-1, 1, 1) * n).view(-1)
    neigh = xyz.reshape(b * n, 3)[flat].view(b, g, k, 3) - center[:, :, None, :]
    return neigh, center, flat, fps, knn


def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        training=False, momentum=0.0, eps=1e-5)


def token_embed(sd, lvl: int, groups: torch.Tensor) -> torch.Tensor:
    """Token_Embed on ``[B, G, K, C]`` with Conv1d weights ``[out, in, 1]``."""
    b, g, k, c = groups.shape
    p = f"h_encoder.token_embed.{lvl}"
    x = groups.reshape(b * g, k, c).transpose(2, 1)
    f = F.conv1d(x, sd[p + ".first_conv.0.weight"], sd[p + ".first_conv.0.bias"])
    f = F.relu(_bn(f, sd, p + ".first_conv.1"))
    f = F.conv1d(f, sd[p + ".first_conv.3.weight"], sd[p + ".first_conv.3.bias"])
    glob = f.max(dim=2, keepdim=True).values
    f = torch.cat([glob.expand(-1, -1, k), f], dim=1)
    f = F.conv1d(f, sd[p + ".second_conv.0.weight"], sd[p + ".second_conv.0.bias"])
    f = F.relu(_bn(f, sd, p + ".second_conv.1"))
    f = F.conv1d(f, sd[p + ".second_conv.3.weight"], sd[p + ".second_conv.3.bias"])
    return f.max(dim=2).values.reshape(b, g, -1)


def _ln(x, sd, p):
    return F.layer_norm(x, (x.shape[-1],), sd[p + ".weight"], sd[p + ".bias"], eps=1e-5)


def block(x, sd, p, heads: int, mask):
    b, n, c = x.shape
    h = _ln(x, sd, p + ".norm1")
    qkv = (h @ sd[p + ".attn.qkv.weight"].T).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)) * (c // heads) ** -0.5
    attn = (attn + (mask * -100000.0).unsqueeze(1)).softmax(dim=-1)
    a = (attn @ v).transpose(1, 2).reshape(b, n, c)
    x = x + F.linear(a, sd[p + ".attn.proj.weight"], sd[p + ".attn.proj.bias"])
    h = _ln(x, sd, p + ".norm2")
    h = F.linear(h, sd[p + ".mlp.fc1.weight"], sd[p + ".mlp.fc1.bias"])
    h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
    return x + F.linear(h, sd[p + ".mlp.fc2.weight"], sd[p + ".mlp.fc2.bias"])


@torch.no_grad()
def official_eval(sd: dict, section: dict, pts: torch.Tensor):
    """``(svm feature (max), levels)`` of the official eval forward; ``sd``: official state dict
    without ``module.``; ``section``: the official model config."""
    groups, sizes = section["num_groups"], section["group_sizes"]
    depths, heads = section["encoder_depths"], section["num_heads"]
    radius = section.get("local_radius") or [0] * len(groups)
    neighs, centers, idxs, fpss, knns = [], [], [], [], []
    xyz = pts
    for g, k in zip(groups, sizes):
        ne, ce, idx, fps, knn = group(xyz, g, k)
        neighs.append(ne); centers.append(ce); idxs.append(idx); fpss.append(fps); knns.append(knn)  # noqa: E702
        xyz = ce
    n_lv = len(groups)
    b = pts.shape[0]
    masked = [torch.zeros(b, groups[-1], dtype=torch.bool)]
    for i in range(n_lv - 1, 0, -1):
        g, k = groups[i], sizes[i]
        idx = idxs[i].reshape(b * g, -1)
        sel = (~masked[-1].reshape(-1, 1)).long() * idx
        pos = torch.ones(b * groups[i - 1]).scatter(0, sel.reshape(-1), 0).bool()
        masked.append(pos.reshape(b, groups[i - 1]))
    masked.reverse()
    levels = []
    x_vis = None
    for i in range(n_lv):
        if i == 0:
            gin = token_embed(sd, 0, neighs[0])
        else:
            b_, g1, _ = x_vis.shape
            g2, k2 = groups[i], sizes[i]
            gin = token_embed(sd, i, x_vis.reshape(b_ * g1, -1)[idxs[i], :].reshape(b_, g2, k2, -1))
        vis = ~masked[i]
        lens = vis.long().sum(dim=1)
        lmax = int(lens.max())
        c = gin.shape[-1]
        xv = torch.zeros(b, lmax, c)
        mc = torch.zeros(b, lmax, 3)
        mask_vis = torch.ones(b, lmax, lmax)
        for bz in range(b):
            xv[bz, :lens[bz]] = gin[bz][vis[bz]]
            mc[bz, :lens[bz]] = centers[i][bz][vis[bz]]
            mask_vis[bz, :lens[bz], :lens[bz]] = 0
        att = (torch.cdist(mc, mc) >= radius[i]).float() * mask_vis if radius[i] > 0 else mask_vis
        p = f"h_encoder.encoder_pos_embeds.{i}"
        pos = F.linear(F.gelu(F.linear(mc, sd[p + ".0.weight"], sd[p + ".0.bias"])), sd[p + ".2.weight"],
                       sd[p + ".2.bias"])
        for j in range(depths[i]):
            xv = block(xv + pos, sd, f"h_encoder.encoder_blocks.{i}.blocks.{j}", heads, att)
        valid = ~(mask_vis[:, :, 0].bool())
        block_out = torch.zeros(b, groups[i], c)
        block_out[vis] = xv[valid]
        normed = _ln(xv, sd, f"h_encoder.encoder_norms.{i}")
        tokens = torch.zeros(b, groups[i], c)
        tokens[vis] = normed[valid]
        levels.append({"fps_idx": fpss[i], "centers": centers[i], "knn_idx": knns[i], "masked": masked[i],
                       "token_embed": gin.clone(), "block_out": block_out, "tokens": tokens})
        if i < n_lv - 1:
            gin[vis] = xv[valid]
            x_vis = gin
        else:
            x_vis = normed
    return x_vis.max(1).values, levels
