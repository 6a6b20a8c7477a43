"""Readers for every ``--data`` spec; importing this package registers them all.

Each reader lives in its own module and registers itself with ``@register_reader(KIND)``;
the imports below exist only for that side effect. Heavy libraries (trimesh, h5py) are
imported lazily inside the readers, so importing this package stays cheap.
"""

from i2p.common.datasets.base import (  # noqa: F401
    SPLITS,
    SPLITS_WITH_VAL,
    PointDataset,
    Sample,
    list_readers,
    parse_spec,
    register_reader,
)
from i2p.common.datasets.spec import create_dataset  # noqa: F401,E402
from i2p.common.datasets import (  # noqa: F401,E402  (registration side effects)
    meshes,
    modelnet40,
    modelnet40_h5,
    npz,
    primitives,
    scanobjectnn,
    shapenet55,
    shapenetpart,
)
