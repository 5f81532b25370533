"""Evaluation metrics as pure numpy functions, one module per family.

* :mod:`.classification` — accuracy, top-k, per-class precision/recall, confusion matrix (room classifier)
* :mod:`.geo` — geodesic error statistics (GPS regressor, geo-cells)
* :mod:`.pose` — translation/rotation errors and thresholds (scene coordinates)

Import the submodule you need; this package module holds no logic.
"""
