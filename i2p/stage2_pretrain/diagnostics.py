"""Diagnostics of the 2D/3D balance that a pre-training run logs (metrics.jsonl, TensorBoard,
``i2p report``): the gradient norm each loss term sends into the encoder, and how much of
the 2D targets the heads predict on shapes the run never trained on."""

from __future__ import annotations

import copy
from typing import Callable

import torch


def unaugmented(full_ds):
    """A copy of a ``MultiCacheDataset`` that reads without augmentation: held-out R2 is
    measured in the cache's frame."""
    plain = copy.copy(full_ds)
    plain.parts = [copy.copy(p) for p in full_ds.parts]
    for p in plain.parts:
        p.augment = False
    plain.datasets = plain.parts
    return plain


def encoder_grad_norms(model, out: dict) -> dict:
    """The gradient norm that each weighted loss term sends into the encoder's parameters
    (one extra backward pass per term; the step's own backward is unchanged)."""
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    terms = {"3d": out["loss_3d"], "2d": out["w_2d"] * out["loss_2d"], "global": out["w_global"] * out["loss_global"]}
    res = {}
    for name, term in terms.items():
        if not term.requires_grad:
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        res[f"enc_grad_{name}"] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
    if res.get("enc_grad_3d"):
        for name in ("2d", "global"):
            if f"enc_grad_{name}" in res:
                res[f"enc_grad_ratio_{name}"] = res[f"enc_grad_{name}"] / res["enc_grad_3d"]
    return res


@torch.no_grad()
def heldout_r2(model, held_ds, forward: Callable[[dict], dict], batch_size: int, nce: bool,
               bank: dict | None = None) -> dict:
    """Share of the 2D targets' variance that the 2D head explains on held-out samples
    (``forward(batch)`` is the training step's forward with fixed generators; eval mode), and
    the same for an 'mse' global term; for an 'nce' one (``nce``), the share of held-out shapes
    whose student feature picks their own teacher feature among the bank's and the held-out
    ones (``heldout_top1_global``). Near 0: the head learns nothing that generalises."""
    was = model.training
    model.eval()
    acc: dict[str, list] = {}
    try:
        for batch in torch.utils.data.DataLoader(held_ds, batch_size=batch_size, num_workers=0):
            out = forward(batch)
            for key in ("2d", "global"):
                if f"pred_{key}" in out:
                    acc.setdefault(key, []).append((out[f"pred_{key}"].double().cpu(),
                                                    out[f"target_{key}"].double().cpu()))
    finally:
        model.train(was)
    res = {}
    if nce and "global" in acc:
        pairs = acc.pop("global")
        pred = torch.nn.functional.normalize(torch.cat([p for p, _ in pairs]), dim=-1)
        own = torch.cat([t for _, t in pairs])
        keys = own if bank is None else torch.cat([bank["emb"].double().cpu(), own])
        hits = (pred @ torch.nn.functional.normalize(keys, dim=-1).T).argmax(dim=1)
        res["heldout_top1_global"] = float((hits == torch.arange(len(own)) + len(keys) - len(own)).double().mean())
    for key, pairs in acc.items():
        pred = torch.cat([p.reshape(-1, p.shape[-1]) for p, _ in pairs])
        tgt = torch.cat([t.reshape(-1, t.shape[-1]) for _, t in pairs])
        sst = ((tgt - tgt.mean(0)) ** 2).sum()
        res[f"heldout_r2_{key}"] = float(1 - ((pred - tgt) ** 2).sum() / sst.clamp_min(1e-12))
    return res
