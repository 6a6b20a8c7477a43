"""Running the stages on a cluster: Slurm batch scripts (``i2p submit``), stage 1 over dask
(``i2p cache build --dask``) and the graceful stop on SIGTERM/SIGUSR1 every stage honours."""
