"""Run the i2p CLI in a subprocess with the test teacher registered.

``I2P_TEST_KILL_AT_SHARD=k`` makes the process SIGKILL itself after shard k's arrays are
written but before its completion marker: the worst moment for a crash.
``I2P_TEST_KILL_AT_STEP=s`` makes a pretrain SIGKILL itself right after logging step s.
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
if kill_step is not None:
    from i2p.stage2_pretrain.diagnostics import MetricsLog

    _write = MetricsLog.write

    def _killing_write(self, record):
        _write(self, record)
        if record.get("step") == int(kill_step):
            os.kill(os.getpid(), signal.SIGKILL)

    MetricsLog.write = _killing_write

from i2p.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
