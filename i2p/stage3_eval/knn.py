"""kNN probe: how well do frozen features cluster by class without training anything?

Similarity is cosine: features are L2-normalised and searched with an exact inner-product
index (``faiss.IndexFlatIP``), so the numbers do not depend on an approximate index's settings.
On a CUDA device with a GPU-enabled faiss build (faiss-gpu on GPU hosts) the index is moved to
the GPU; with faiss-cpu, or on cpu, it stays on the CPU. Without faiss (it is an optional
extra) the same exact search runs in torch: one matrix product per block of queries and a
top-k, on the requested device. Both are exact, so they find the same neighbours up to ties
between equal similarities. The backend is chosen at run time and recorded in the result.

Votes among the ``k`` nearest training shapes:
* ``majority``: the most frequent label; ties broken by the larger summed similarity.
* ``weighted``: each neighbour votes ``exp(sim / T)`` (T = 0.07), the weighting of
  Wu et al. 2018 "instance discrimination" kNN, so closer neighbours count more.
"""

from __future__ import annotations

import numpy as np

from i2p.common.errors import UserError

VOTES = ("majority", "weighted")
TEMPERATURE = 0.07


def l2_normalize(X: np.ndarray) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, 1e-12)


def _faiss_index(dim: int, device: str):
    import faiss

    index = faiss.IndexFlatIP(dim)
    backend = "faiss-cpu"
    if str(device).startswith("cuda"):
        num_gpus = getattr(faiss, "get_num_gpus", lambda: 0)()
        if num_gpus > 0 and hasattr(faiss, "StandardGpuResources"):
            res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(res, 0, index)
            index._i2p_res = res  # keep the resources alive as long as the index
            backend = "faiss-gpu"
    return index, backend


def _torch_search(a: np.ndarray, b: np.ndarray, k: int, device: str, block: int = 1024):
    """Exact inner-product top-k in torch, ``block`` queries at a time (bounded memory)."""
    import torch

    dev = torch.device(device if str(device).startswith("cuda") and torch.cuda.is_available() else "cpu")
    ref = torch.from_numpy(a).to(dev)
    sims, idx = [], []
    for lo in range(0, len(b), block):
        s = torch.from_numpy(b[lo:lo + block]).to(dev) @ ref.T
        top = s.topk(k, dim=1, largest=True, sorted=True)
        sims.append(top.values.cpu().numpy())
        idx.append(top.indices.cpu().numpy())
    return np.concatenate(sims).astype(np.float32), np.concatenate(idx).astype(np.int64), f"torch-exact ({dev.type})"


def search(train: np.ndarray, query: np.ndarray, k: int, device: str = "cpu"):
    """Cosine top-k: returns ``(similarities [Q,k], indices [Q,k], backend)``; faiss when it
    imports, otherwise the exact torch search."""
    a, b = l2_normalize(train), l2_normalize(query)
    try:
        index, backend = _faiss_index(a.shape[1], device)
    except ImportError:
        return _torch_search(a, b, k, device)
    index.add(a)
    sims, idx = index.search(b, k)
    return sims, idx, backend


def vote(neighbor_labels: np.ndarray, sims: np.ndarray, num_classes: int, mode: str = "majority") -> np.ndarray:
    """Class scores from neighbour labels/similarities -> predicted label per query."""
    q = np.arange(len(neighbor_labels))[:, None]
    if mode == "majority":
        counts = np.zeros((len(neighbor_labels), num_classes))
        np.add.at(counts, (q, neighbor_labels), 1.0)
        simsum = np.zeros_like(counts)
        np.add.at(simsum, (q, neighbor_labels), sims)
        # counts are integers <= k, similarities in [-1, 1]: scaling keeps counts dominant.
        scores = counts * (2.0 * sims.shape[1] + 1.0) + simsum
    elif mode == "weighted":
        scores = np.zeros((len(neighbor_labels), num_classes))
        np.add.at(scores, (q, neighbor_labels), np.exp(sims / TEMPERATURE))
    else:
        raise UserError(f"unknown kNN vote {mode!r}: choose one of {', '.join(VOTES)}")
    return scores.argmax(axis=1)


def run_knn(X_train, y_train, X_test, y_test, k: int = 20, vote_mode: str = "majority",
            device: str = "cpu") -> dict:
    """kNN probe on precomputed features. ``k`` larger than the train set is clamped (said in
    the result as ``k_used``)."""
    if k < 1:
        raise UserError(f"--k must be >= 1 (got {k})")
    if vote_mode not in VOTES:
        raise UserError(f"unknown kNN vote {vote_mode!r}: choose one of {', '.join(VOTES)}")
    y_train = np.asarray(y_train, dtype=np.int64)
    y_test = np.asarray(y_test, dtype=np.int64)
    if len(y_train) == 0 or len(y_test) == 0:
        raise UserError("kNN needs at least one train and one test shape")
    k_used = min(int(k), len(y_train))
    sims, idx, backend = search(X_train, X_test, k_used, device)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    pred = vote(y_train[idx], sims, num_classes, vote_mode)
    return {"accuracy": float(np.mean(pred == y_test)), "k": int(k), "k_used": k_used,
            "vote": vote_mode, "similarity": "cosine (L2-normalised, exact inner product)",
            "backend": backend, "predictions": pred}
