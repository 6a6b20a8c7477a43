"""Keep freed heap memory mapped between steps (glibc only): the ``i2p`` command's malloc setting.

Why: glibc gives freed memory at the top of its heap back to the system as soon as more than
``M_TRIM_THRESHOLD`` (128 KiB at start) is free there, and the next allocation of that size
faults every page in again. A training step allocates and frees the same large temporaries
every step (teacher maps, targets, activations), and reading a batch from the cache (decoded
chunks, collated copies) churns the heap just before them. Measured on a 2-core CPU
(``python -m benchmarks --quick --sections stage2``, 15 interleaved paper-model steps): the
cache-fed step was 1.06-1.10x the same steps fed from memory although the read itself is 1.1%
of the step; with freed memory kept, 1.015x. Tiny-model steps (batch 16) were 8-9% faster in
both the I2P and the 3D-only objective.

The price: the process keeps up to ``TRIM_THRESHOLD`` of freed memory mapped (its resident size
stays near its peak), which is what a long training job holds anyway. A user's own
``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_`` win (glibc has applied them already), and the
setting is also put into the environment for child processes started with ``spawn``.
"""

from __future__ import annotations

import ctypes
import os
import sys

TRIM_THRESHOLD = 1 << 30  # free bytes at the heap's top before glibc returns them
TOP_PAD = 64 << 20  # extra bytes requested from the system with each heap growth
# Blocks at least this large get their own mmap (freed at once, faulted in at every use).
# Setting any parameter switches off glibc's own rising threshold, so it is set too: 32 MiB,
# glibc's ceiling on 64-bit systems (HEAP_MAX / 2).
MMAP_THRESHOLD = 32 << 20
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # mallopt parameter numbers (malloc.h)
ENV = {"MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD), "MALLOC_TOP_PAD_": str(TOP_PAD),
       "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}


def keep_freed_memory() -> bool:
    """Apply :data:`TRIM_THRESHOLD` and :data:`TOP_PAD` to this process's glibc malloc (and to
    the environment children inherit). Returns whether this call changed the running process:
    False off Linux/glibc (musl, macOS, Windows have no such trimming or no ``mallopt``) and when
    the user set either variable."""
    if any(name in os.environ for name in ENV):
        return False
    for name, value in ENV.items():
        os.environ[name] = value
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)), bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)),
                bool(mallopt(_M_TOP_PAD, TOP_PAD))])
