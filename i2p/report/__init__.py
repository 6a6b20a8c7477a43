"""``i2p report``: one self-contained HTML file for a run (settings, curves, figures, results)."""
