"""Stage 1: project each cloud to depth images (:mod:`projection`), run the frozen 2D teacher
(:mod:`teachers`), write the cache (:mod:`build`, in one process or over dask workers:
:mod:`dask_build`); ``i2p cache build|info|verify`` (:mod:`cli`)."""
