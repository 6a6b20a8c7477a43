"""i2p performance benchmarks: ``python -m benchmarks [--quick] [--out DIR]`` (see ``run.py``)."""
