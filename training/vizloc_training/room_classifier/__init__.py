"""Room classifier localizer (seed 000): room-level place recognition from single frames.

``train.py`` (``PRESETS``, ``train(args)``), ``model.py`` (backbone + linear head, CAM export),
``data.py`` (rooms dataset in memory, augmentation), ``evaluate.py`` (split metrics, test
trajectory with and without temporal smoothing).
"""
