"""Figures that show what the pipeline does to one shape (``i2p viz``).

:mod:`i2p.viz.data` computes what is drawn with the pipeline's own functions,
:mod:`i2p.viz.figures` draws it with matplotlib (headless), :mod:`i2p.viz.cli` is the command.
"""
