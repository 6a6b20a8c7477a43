"""Stage 3: evaluation protocols for a pretrained (or random) encoder.

``features`` (encoder loading, pooled features), ``svm`` / ``fewshot`` / ``knn`` (protocols on
feature matrices), ``finetune`` (encoder + head), ``report`` (result.json / result.md /
confusion.png, ``compare``), ``runner`` (end-to-end runs) and ``cli`` (the ``i2p eval`` app).
Submodules are imported on use so that ``import i2p`` stays cheap.
"""
