"""Run the i2p CLI in a subprocess with the test teacher registered.

``I2P_TEST_KILL_AT_SHARD=k`` makes the process SIGKILL itself after shard k's arrays are
written but before its completion marker: the worst moment for a crash.
``I2P_TEST_KILL_AT_STEP=s`` makes a pretrain (or a fine-tune) SIGKILL itself right after logging
step s; ``I2P_TEST_TERM_AT_STEP=s`` sends it SIGTERM there instead (a Slurm pre-emption).
``I2P_TEST_KILL_IN_CKPT=s`` makes it SIGKILL itself while writing the checkpoint of step s
(half of the bytes in the temporary file); ``I2P_TEST_KILL_IN_ROTATE=s`` between moving the
old ``last.ckpt`` to ``last.ckpt.prev`` and renaming the new one into place.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(__file__))

import conftest  # noqa: E402,F401  (registers the test-tiny teacher)

kill_at = os.environ.get("I2P_TEST_KILL_AT_SHARD")
if kill_at is not None:
    from i2p.cache import store as cs

    _orig = cs.mark_shard_done

    def _killing(root, shard, attrs):
        if shard == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        _orig(root, shard, attrs)

    cs.mark_shard_done = _killing

kill_step = os.environ.get("I2P_TEST_KILL_AT_STEP")
term_step = os.environ.get("I2P_TEST_TERM_AT_STEP")
if kill_step is not None or term_step is not None:
    from i2p.stage2_pretrain.diagnostics import MetricsLog

    _write = MetricsLog.write
    _sig, _at = (signal.SIGKILL, int(kill_step)) if kill_step is not None else (signal.SIGTERM, int(term_step))

    def _killing_write(self, record):
        _write(self, record)
        if record.get("step") == _at and "loss" in record:
            os.kill(os.getpid(), _sig)

    MetricsLog.write = _killing_write

ckpt_step = os.environ.get("I2P_TEST_KILL_IN_CKPT")
rotate_step = os.environ.get("I2P_TEST_KILL_IN_ROTATE")
if ckpt_step is not None or rotate_step is not None:
    import io

    import torch

    from i2p.common import checkpoint as ck

    _save, _replace = torch.save, os.replace
    _current = {}

    def _killing_save(obj, fh, *a, **k):
        if isinstance(obj, dict) and obj.get("format") == ck.FORMAT:
            _current["step"] = obj.get("step")
            if ckpt_step is not None and obj.get("step") == int(ckpt_step):
                buf = io.BytesIO()
                _save(obj, buf, *a, **k)
                data = buf.getvalue()
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return _save(obj, fh, *a, **k)

    def _killing_replace(src, dst):
        _replace(src, dst)
        if (rotate_step is not None and str(dst).endswith("last.ckpt.prev")
                and _current.get("step") == int(rotate_step)):
            os.kill(os.getpid(), signal.SIGKILL)

    ck.torch.save = _killing_save
    ck.os.replace = _killing_replace

from i2p.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
