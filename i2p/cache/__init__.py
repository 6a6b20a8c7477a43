"""The stage-1 cache as a store format: :mod:`store` (layout, create, open, shard markers),
:mod:`reader` (training reads), :mod:`augment` (the transforms of augmented renders) and
:mod:`inspect` (``i2p cache info|verify``). It imports nothing of i2p but :mod:`i2p.common`;
building a cache is stage 1's job (:mod:`i2p.stage1_project.build`)."""
