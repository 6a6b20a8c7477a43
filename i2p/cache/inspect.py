"""``i2p cache info`` and ``i2p cache verify``: what a cache holds and whether it is whole."""

from __future__ import annotations

import numpy as np

from i2p.cache import store as cs


def cache_info(url: str) -> dict:
    root = cs.open_store(url)
    s = dict(root.attrs["settings"])
    layout = cs.layout_of(root)
    done = cs.done_shards(root)
    labels = np.asarray(root["label"][:])
    skips = root.attrs.get("skips") or sorted(
        (k for m in done.values() for k in m.get("skips", [])), key=lambda k: k["index"])
    timings = root.attrs.get("timings") or {}
    return {
        "path": url,
        "format_version": root.attrs["format_version"],
        "i2p_version": root.attrs.get("i2p_version"),
        "complete": bool(root.attrs.get("complete", False)) and len(done) == layout.num_shards,
        "samples": layout.num_samples,
        "valid_samples": layout.num_samples - len(skips),
        "classes": int(len(np.unique(labels[labels >= 0]))),
        "shards_done": len(done),
        "shards_total": layout.num_shards,
        "teacher": s["teacher"],
        "teacher_weights_sha256": s["teacher_weights_sha256"],
        "teacher_weights_source": s["teacher_weights_source"],
        "teacher_random": s["teacher_random"],
        "views": s["views"],
        "image_size": s["image_size"],
        "points": s["num_points"],
        "feature_shape": s["feature_shape"],
        "aug_renders": s.get("aug_renders", 0),
        "data_spec": s["data_spec"],
        "split": s["split"],
        "data_fingerprint": s["data_fingerprint"],
        "skips": skips,
        "timings_s": timings,
        "throughput_shapes_per_s": root.attrs.get("throughput_shapes_per_s"),
    }


def verify_cache(url: str, progress: bool = False) -> list[str]:
    """Every shard marked done and readable, every non-skipped sample written and finite.

    Returns the problems found (empty list: the cache is whole).
    """
    root = cs.open_store(url)
    layout = cs.layout_of(root)
    done = cs.done_shards(root)
    problems = []
    missing = [s for s in range(layout.num_shards) if s not in done]
    if missing:
        problems.append(f"{len(missing)} of {layout.num_shards} shards not built (first: {missing[0]})")
    skipped = {k["index"] for m in done.values() for k in m.get("skips", [])}
    shards = sorted(done)
    if progress:
        from tqdm.auto import tqdm
        shards = tqdm(shards, desc="verify", unit="shard")
    for shard in shards:
        lo, hi = layout.shard_range(shard)
        keep = np.array([i not in skipped for i in range(lo, hi)])
        for name in layout.array_specs():  # DATA_ARRAYS, plus the aug_* arrays of --aug-renders
            try:
                block = root[name][lo:hi]
            except Exception as exc:  # unreadable / corrupt shard file
                problems.append(f"shard {shard}: {name} unreadable ({type(exc).__name__}: {exc})")
                continue
            good = block[keep].reshape(int(keep.sum()), -1)
            finite = np.isfinite(good.astype(np.float32)).all(axis=1)
            if not finite.all():
                bad = lo + int(np.flatnonzero(keep)[np.flatnonzero(~finite)[0]])
                problems.append(f"shard {shard}: {name} has unwritten or non-finite values "
                                f"for {int((~finite).sum())} samples (first: {bad})")
    labels = np.asarray(root["label"][:])
    if (labels < 0).any():
        problems.append(f"{int((labels < 0).sum())} samples without a label")
    return problems
