"""Subprocess entry of one benchmark section: ``python -m benchmarks.section NAME ...``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import Sizes
from benchmarks.run import run_section


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("--sizes", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    res = run_section(a.name, Sizes(**json.loads(a.sizes)), Path(a.workdir), a.threads)
    Path(a.result).write_text(json.dumps(res, default=float))


if __name__ == "__main__":
    main()
