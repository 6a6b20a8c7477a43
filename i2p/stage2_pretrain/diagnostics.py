"""What a pre-training run logs, and where: :class:`MetricsLog` (``metrics.jsonl`` and
TensorBoard, read back by ``i2p report``), the 2D/3D balance diagnostics (the gradient norm each
loss term sends into the encoder, how much of the 2D targets the heads predict on shapes the
run never trained on) and the periodic linear-SVM probe."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Callable

import torch

from i2p.common.atomic import write_text


def _records(path: Path) -> list[tuple[str, dict]]:
    """(line, record) of every readable line of a metrics.jsonl (a line cut by a kill is skipped:
    the rest of the log is still good)."""
    out = []
    if not path.is_file():
        return out
    for ln in path.read_text().splitlines():
        try:
            rec = json.loads(ln)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append((ln.strip(), rec))
    return out


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (empty when there is none)."""
    return [rec for _, rec in _records(Path(path))]


class MetricsLog:
    """metrics.jsonl + TensorBoard (rank 0 only; ``tensorboard=False``: the JSON log alone, as
    ``i2p eval finetune`` keeps it). On resume, lines past the checkpoint's step are dropped so
    the log reads as one uninterrupted run."""

    def __init__(self, run_dir: Path, resume_step: int, enabled: bool, tensorboard: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            keep = [ln for ln, rec in _records(self.path) if rec.get("step", 0) <= resume_step]
            write_text(self.path, "".join(ln + "\n" for ln in keep))
        if not tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1)
        except Exception:  # tensorboard missing: the JSON log is the record
            self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


def probe_svm(model, probe_cache: str, device: torch.device) -> dict:
    """Monitoring only: 3-fold cross-validated linear-SVM accuracy on a labelled cache."""
    import numpy as np
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from i2p.cache.reader import CacheDataset

    ds = CacheDataset(probe_cache, with_targets=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=0)
    model.eval()
    feats = []
    with torch.no_grad():
        for batch in loader:
            feats.append(model.encode(batch["points"].to(device)).amax(dim=1).float().cpu())
    model.train()
    x, y = torch.cat(feats).numpy(), ds.labels
    folds = int(min(3, np.bincount(y).max()))
    if folds < 2:
        return {}
    clf = make_pipeline(StandardScaler(), LinearSVC(C=0.01, max_iter=5000))
    acc = cross_val_score(clf, x, y, cv=folds).mean()
    return {"probe_svm_acc": float(acc)}


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
