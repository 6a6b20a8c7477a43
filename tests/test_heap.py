"""The ``i2p`` command's malloc setting (``i2p.common.heap``): freed memory stays mapped, so a
step's large temporaries do not fault their pages in again every step."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from i2p.common import heap

CHURN = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from i2p.common.heap import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else None
    def churn(rounds):
        for _ in range(rounds):
            held = [np.ones(500_000) for _ in range(40)]  # 40 x 4 MB live at once, like a step's activations
            del held
    churn(3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn(10)
    print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
""")


def _run(mode: str, **env) -> tuple[str, float]:
    clean = {k: v for k, v in os.environ.items() if k not in heap.ENV}
    out = subprocess.run([sys.executable, "-c", CHURN, mode], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_memory_is_not_faulted_in_again():
    plain_applied, plain = _run("plain")
    keep_applied, keep = _run("keep")
    if plain < 10_000:  # e.g. another allocator preloaded: nothing is given back, nothing to keep
        pytest.skip(f"this malloc does not return freed heap memory ({plain:.0f} faults per round)")
    # glibc: 160 MB freed at the heap's top each round is trimmed, then faulted in again
    assert keep_applied == "True"
    assert keep < plain / 100


def test_a_users_own_setting_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    for key in ("MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(key, raising=False)
    assert heap.keep_freed_memory() is False
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "12345" and "MALLOC_TOP_PAD_" not in os.environ


def test_children_inherit_the_setting(monkeypatch):
    for key in heap.ENV:
        monkeypatch.delenv(key, raising=False)
    heap.keep_freed_memory()
    assert {k: os.environ[k] for k in heap.ENV} == heap.ENV
