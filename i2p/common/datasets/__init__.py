"""Readers for every ``--data`` spec; importing this package registers them all."""

from i2p.common.datasets.base import (  # noqa: F401
    SPLITS,
    PointDataset,
    Sample,
    create_dataset,
    list_readers,
    parse_spec,
    register_reader,
)
