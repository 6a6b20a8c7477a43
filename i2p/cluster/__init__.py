"""Adapters from the stages to batch schedulers: Slurm batch scripts and their submission
(``i2p submit``). Nothing in a stage imports this package; stage 1's own dask distribution
lives in :mod:`i2p.stage1_project.dask_build`, the graceful stop on SIGTERM/SIGUSR1 that every
stage honours in :mod:`i2p.common.signals`."""
