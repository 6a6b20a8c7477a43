from i2p.cli import entrypoint

entrypoint()
