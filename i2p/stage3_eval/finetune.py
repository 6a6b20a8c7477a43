"""Fine-tuning: the pretrained encoder plus a classification head, trained end to end.

Head (Point-M2AE's): mean- and max-pooled level-3 tokens concatenated, MLP 256-256-classes
with BatchNorm, ReLU and dropout. Encoder attention may be restricted to local radii per level
(``local_radii``; Point-M2AE fine-tunes ModelNet40 with 0.32/0.64/1.28; 0 = global).
Cross-entropy with label smoothing, AdamW, cosine schedule with linear warm-up (set per step
from a pure function of the step, so a resumed run follows the same curve with no scheduler
state). Augmentation: per-axis scale U[2/3, 3/2] and shift U[-0.2, 0.2].

Model selection: by default on a validation split carved (stratified, seeded) from TRAIN, and
the test split is touched once, by the selected model. ``select_on="test"`` reproduces the
common best-on-test practice but the result then says so in its first line. ``select_on=
"last"`` takes the final epoch. Test-time voting averages softmax over ``votes`` passes (the
first unaugmented, the others augmented as in training).

The training loop, resumable bit for bit at any kill point, is :mod:`finetune_train`. Shapes are
loaded into memory once (ModelNet40 at 1024 points is ~120 MB).
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from i2p.common.errors import SampleError, UserError
from i2p.common.geometry import stable_seed
from i2p.stage3_eval import finetune_presets as fp
from i2p.stage3_eval.finetune_presets import augment  # noqa: F401  (i2p's training augmentation)

SELECT = ("val", "test", "last")
TEST_WARNING = ("model selected on the TEST split (best-on-test): this accuracy is optimistic, "
                "not a held-out number")


class Classifier(nn.Module):
    """``head``: 'i2p' (mean and max of the encoder's LayerNorm'd tokens, concatenated),
    'official-sum' / 'official-concat' (the official heads: a fresh LayerNorm on the last level,
    i.e. the encoder's last norm re-initialised, then mean + max summed / concatenated).
    ``group_sizes``: kNN group sizes for fine-tuning (the official ModelNet40 48/24/24, ...);
    None keeps the checkpoint's."""

    def __init__(self, encoder: nn.Module, num_classes: int, dim: int, hidden: int = 256,
                 dropout: float = 0.5, local_radii: tuple[float, ...] | None = None, head: str = "i2p",
                 group_sizes: tuple[int, ...] | None = None):
        super().__init__()
        self.encoder = encoder
        self.local_radii = tuple(local_radii) if local_radii and any(r > 0 for r in local_radii) else None
        self.pool = head
        if group_sizes:
            import dataclasses

            encoder.cfg = dataclasses.replace(encoder.cfg, group_sizes=tuple(group_sizes))
        if head != "i2p":
            encoder.norms[-1].reset_parameters()
        self.head = nn.Sequential(
            nn.Linear(dim if head == "official-sum" else 2 * dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(points, local_radii=self.local_radii, finetune=True)[-1].tokens
        if self.pool == "official-sum":
            return self.head(tokens.mean(dim=1) + tokens.max(dim=1).values)
        return self.head(torch.cat([tokens.mean(dim=1), tokens.max(dim=1).values], dim=-1))


def usable_samples(ds, indices=None, progress: bool = True):
    """``(samples, skipped)``: every sample of ``ds`` (or of ``indices``) that loads, with
    ``(id, reason)`` of those that do not; a split with none usable is a one-line UserError."""
    from tqdm.auto import tqdm

    idx = range(len(ds)) if indices is None else indices
    samples, skipped = [], []
    for i in tqdm(idx, desc=f"load {ds.split}", disable=not progress, leave=False):
        try:
            samples.append(ds.load(int(i)))
        except SampleError as err:
            skipped.append((ds.ids[int(i)], str(err)))
    if not samples:
        raise UserError(f"data {ds.spec}: no usable {ds.split} shapes"
                        + (f" (first problem: {skipped[0][1]})" if skipped else ""))
    return samples, skipped


def load_clouds(ds, indices=None, progress: bool = True):
    """All usable clouds of ``ds`` in memory: ``(points [n,P,3], labels [n], skipped)``."""
    samples, skipped = usable_samples(ds, indices, progress)
    return (np.stack([s.points for s in samples]).astype(np.float32),
            np.asarray([s.label for s in samples], dtype=np.int64), skipped)


def carve_validation(labels: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train idx, val idx): stratified when every class has >= 2 shapes, else plain random."""
    from sklearn.model_selection import StratifiedShuffleSplit, train_test_split

    n = len(labels)
    n_val = max(1, int(round(frac * n)))
    if not 0 < frac < 1 or n_val >= n:
        raise UserError(f"--val-frac must leave shapes on both sides (got {frac} of {n})")
    _, counts = np.unique(labels, return_counts=True)
    if counts.min() >= 2 and n_val >= len(counts) and n - n_val >= len(counts):
        sss = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
        tr, va = next(sss.split(np.zeros(n), labels))
    else:
        tr, va = train_test_split(np.arange(n), test_size=n_val, random_state=seed)
    return np.sort(tr), np.sort(va)


@torch.no_grad()
def predict(clf: Classifier, pts: np.ndarray, batch_size: int, device, votes: int = 1, seed: int = 0,
            pool: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities averaged over ``votes`` passes (pass 0 unaugmented). With ``pool``
    (the official voting, tools/runner_finetune.py ``validate_vote``): every pass draws a random
    ``pts.shape[1]`` of each pool cloud and scales and shifts it; the logits are averaged, and
    the returned scores are the softmax of that average."""
    clf.eval()
    gen = torch.Generator().manual_seed(stable_seed(seed, "vote"))
    rng = np.random.default_rng(stable_seed(seed, "vote-points"))
    probs = np.zeros((len(pts), clf.head[-1].out_features), dtype=np.float64)
    for v in range(max(1, votes)):
        for s in range(0, len(pts), batch_size):
            if pool is not None and votes > 1:
                x = augment(torch.from_numpy(fp.official_subsample(pool[s:s + batch_size], pts.shape[1], rng)).to(device), gen)
                probs[s:s + batch_size] += clf(x).float().cpu().numpy()
                continue
            x = torch.from_numpy(pts[s:s + batch_size]).to(device)
            if v:
                x = augment(x, gen)
            probs[s:s + batch_size] += F.softmax(clf(x).float(), dim=-1).cpu().numpy()
    probs /= max(1, votes)
    if pool is not None and votes > 1:
        probs = torch.softmax(torch.from_numpy(probs), dim=-1).numpy()
    return probs
