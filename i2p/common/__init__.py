"""What every step shares, written once: errors, the config system, atomic writes, checkpoints,
device choice, LR schedules, the stop-on-signal helper, geometry and point ops, the dataset
readers. Imports nothing else of i2p (see docs/ARCHITECTURE.md)."""
