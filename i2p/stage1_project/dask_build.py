"""Stage 1 over dask: ``i2p cache build ... --dask local:K | tcp://HOST:PORT``.

The driver asks one worker to create (or check) the store and list the shards still to do, then
hands shards to workers, at most one in flight per worker thread, so a SIGTERM/SIGUSR1 to the
driver stops handing out work, lets the shards in progress finish and be marked, and returns;
re-running does the rest. Each worker keeps its dataset and teacher between shards
(:func:`worker_build_shards`), so a teacher is created once per worker.
The store is byte-for-byte the one a single process builds: a shard's bytes do not depend on
who computed it.

``local:K`` starts a ``LocalCluster`` of K single-threaded worker *processes* (spawned: the
program that calls this must guard its entry point with ``if __name__ == "__main__"``, which
``i2p`` and ``python -m i2p`` do). ``tcp://HOST:PORT`` (or ``HOST:PORT``) connects to a running
scheduler, e.g. one from ``dask_jobqueue.SLURMCluster``; its workers need i2p installed, the
store URL reachable (a shared file system or object store) and any teacher registered outside
i2p importable.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import threading
import time
from dataclasses import replace
from typing import Callable

from i2p.cache import store as cs
from i2p.common.errors import CacheError, UserError
from i2p.stage1_project.build import (PHASES, BuildConfig, BuildReport, _account, _make_dataset, _make_teacher,
                                      _progress, build_shards, finalize, prepare_store)


# ---- callable from a dask worker -----------------------------------------------------------
# A worker process keeps its dataset and teacher between tasks: the teacher is created once per
# worker (per teacher settings), not once per shard.

_WORKER_STATE: dict = {}
_WORKER_LOCK = threading.Lock()


def _worker_cached(key: tuple, make: Callable):
    with _WORKER_LOCK:
        if key not in _WORKER_STATE:
            _WORKER_STATE[key] = (make(), time.time())
            return _WORKER_STATE[key][0], True
        return _WORKER_STATE[key][0], False


def _worker_setup(cfg: BuildConfig, teacher_module: str | None):
    if teacher_module:
        importlib.import_module(teacher_module)  # registers a teacher defined outside i2p
    ds, _ = _worker_cached(("data", cfg.data, cfg.split, cfg.points, cfg.seed, cfg.limit),
                           lambda: _make_dataset(cfg))
    (teacher, device), created = _worker_cached(("teacher", cfg.teacher, cfg.teacher_weights, cfg.device),
                                                lambda: _make_teacher(cfg))
    return ds, teacher, device, created


def worker_plan(cfg: BuildConfig, teacher_module: str | None = None) -> dict:
    """On a worker: create or check the store; return the layout and the shards still to do."""
    ds, teacher, _, created = _worker_setup(cfg, teacher_module)
    _, layout, mine, todo = prepare_store(cfg, ds, teacher, warn=False)
    from i2p.stage1_project.teachers import teacher_fingerprint

    return {"num_samples": layout.num_samples, "num_shards": layout.num_shards, "mine": mine, "todo": todo,
            "shard_sizes": {s: layout.shard_range(s)[1] - layout.shard_range(s)[0] for s in todo},
            "teacher_random": teacher_fingerprint(teacher)["is_random"], "teacher_created": created,
            "pid": os.getpid(), "host": platform.node()}


def worker_build_shards(cfg: BuildConfig, shards: list[int], teacher_module: str | None = None) -> list[dict]:
    """On a worker: build ``shards`` of the (already created) store; one record per shard."""
    ds, teacher, device, created = _worker_setup(cfg, teacher_module)
    root = cs.open_store(cfg.out, mode="r+")
    layout = cs.layout_of(root)
    if layout.num_samples != len(ds):
        raise CacheError(f"{cfg.out} has {layout.num_samples} samples, the data {len(ds)}")
    done = cs.done_shards(root)
    out = []
    for rec in build_shards(cfg, [s for s in shards if s not in done], ds, teacher, device, root, layout):
        out.append({**rec, "pid": os.getpid(), "host": platform.node(), "teacher_created": created})
        created = False
    return out



def parse_dask(address: str) -> tuple[str, int | str]:
    """``local:K`` -> ("local", K); ``tcp://H:P`` / ``H:P`` -> ("remote", address)."""
    if address.startswith("local"):
        _, _, k = address.partition(":")
        try:
            n = int(k) if k else 2
        except ValueError:
            raise UserError(f"--dask {address!r}: expected local:K with an integer K, e.g. local:4") from None
        if n < 1:
            raise UserError(f"--dask {address}: need at least one worker")
        return "local", n
    if "://" in address or ":" in address:
        return "remote", address if "://" in address else f"tcp://{address}"
    raise UserError(f"--dask {address!r}: expected local:K or tcp://HOST:PORT")


def _teacher_module(name: str) -> str | None:
    """The module that registered ``name`` when it is not part of i2p (workers import it)."""
    from i2p.stage1_project import teachers as tmod

    fn = tmod._REGISTRY.get(name)
    if fn is None:
        prefix = name.split(":", 1)[0]
        fn = tmod._FAMILIES.get(prefix, (None, None))[1]
    mod = getattr(fn, "__module__", None)
    if not mod or mod.startswith("i2p."):
        return None
    if mod == "__main__":
        raise UserError(f"teacher {name} is registered in __main__, which dask workers cannot import: "
                        "register it in an importable module")
    return mod


def connect(address: str):
    """(client, cluster or None) for ``local:K`` or a scheduler address."""
    from dask.distributed import Client, LocalCluster

    kind, value = parse_dask(address)
    if kind == "local":
        cluster = LocalCluster(n_workers=int(value), threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        return Client(cluster), cluster
    try:
        return Client(value, timeout="30s"), None
    except OSError as exc:
        raise UserError(f"--dask {address}: cannot reach the dask scheduler ({exc})") from None


def build_cache_dask(cfg: BuildConfig, address: str) -> BuildReport:
    """Build (or finish) the cache of ``cfg`` with the shards spread over dask workers."""
    import zarr
    from dask.distributed import wait

    from i2p.common.signals import StopOnSignal

    if cfg.teacher_weights == "random":
        import warnings
        warnings.warn(f"teacher {cfg.teacher} uses RANDOM weights (--teacher-weights random): "
                      "features carry no 2D knowledge; this is recorded in the cache", stacklevel=1)
    t_start = time.perf_counter()
    tmod = _teacher_module(cfg.teacher)
    client, cluster = connect(address)
    try:
        plan = client.submit(worker_plan, cfg, tmod, pure=False).result()
        # the store now exists: later tasks must never wipe it again
        wcfg = replace(cfg, overwrite=False, progress=False)
        todo = list(plan["todo"])
        report = BuildReport(cfg.out, plan["num_samples"], plan["num_shards"], 0, len(plan["mine"]) - len(todo))
        totals = dict.fromkeys(PHASES, 0.0)
        bar = _progress(sum(plan["shard_sizes"][s] for s in todo), cfg.progress)
        running: dict = {}
        try:
            with StopOnSignal() as stop:
                while todo or running:
                    slots = max(1, sum(client.nthreads().values())) - len(running)
                    while todo and slots > 0 and stop.signal is None:
                        s = todo.pop(0)
                        running[client.submit(worker_build_shards, wcfg, [s], tmod, pure=False,
                                              key=f"i2p-shard-{s:05d}-{time.time_ns()}")] = s
                        slots -= 1
                    if stop.signal is not None:
                        todo.clear()
                    if not running:
                        break
                    done, _ = wait(list(running), return_when="FIRST_COMPLETED")
                    for fut in done:
                        running.pop(fut)
                        for rec in fut.result():
                            _account(report, totals, rec, bar)
                            key = f"{rec['host']}:{rec['pid']}"
                            w = report.workers.setdefault(key, {"shards": [], "teacher_created": 0})
                            w["shards"].append(rec["shard"])
                            w["teacher_created"] += int(rec["teacher_created"])
                report.stopped_by_signal = stop.name
        finally:
            if bar is not None:
                bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    report.timings = totals
    report.seconds = time.perf_counter() - t_start
    report.complete = finalize(zarr.open_group(cfg.out, mode="r+"))
    return report

