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
        problems.extend(shard_problems(root, layout, shard, skipped))
    labels = np.asarray(root["label"][:])
    if (labels < 0).any():
        problems.append(f"{int((labels < 0).sum())} samples without a label")
    return problems


def _bad_samples(arr, lo: int, hi: int, keep: np.ndarray) -> tuple[list[int], list[int]]:
    """(unreadable, non-finite) sample indices of ``arr[lo:hi]``, read one sample at a time."""
    unreadable, nonfinite = [], []
    for i in range(lo, hi):
        if not keep[i - lo]:
            continue
        try:
            x = np.asarray(arr[i])
        except Exception:  # noqa: BLE001 - corrupt chunk (CRC, codec) or shard index
            unreadable.append(i)
            continue
        if not np.isfinite(x.astype(np.float32)).all():
            nonfinite.append(i)
    return unreadable, nonfinite


def shard_problems(root, layout, shard: int, skipped=frozenset()) -> list[str]:
    """One line per array of ``shard`` that is damaged: unreadable or non-finite samples, named."""
    lo, hi = layout.shard_range(shard)
    keep = np.array([i not in skipped for i in range(lo, hi)])
    out = []
    for name in layout.array_specs():  # DATA_ARRAYS, plus the aug_* arrays of --aug-renders
        try:
            if np.isfinite(root[name][lo:hi][keep].astype(np.float32)).all():
                continue
        except Exception:  # noqa: BLE001 - any read failure: look sample by sample
            pass
        unreadable, nonfinite = _bad_samples(root[name], lo, hi, keep)
        if not unreadable and not nonfinite:  # only the shard as a whole failed to read
            out.append(f"shard {shard}: {name} unreadable")
        for what, idx in (("unreadable", unreadable), ("has unwritten or non-finite values", nonfinite)):
            if idx:
                out.append(f"shard {shard}: {name} {what} for {len(idx)} samples "
                           f"({', '.join(map(str, idx[:8]))}{', ...' if len(idx) > 8 else ''})")
    return out


def damaged_shards(root, shards: list[int]) -> dict[int, list[str]]:
    """Shard -> its problems, for the finished ``shards`` that are damaged (a build redoes them)."""
    if not shards:
        return {}
    layout = cs.layout_of(root)
    skipped = {k["index"] for m in cs.done_shards(root).values() for k in m.get("skips", [])}
    found = {s: shard_problems(root, layout, s, skipped) for s in shards}
    return {s: p for s, p in found.items() if p}
