"""Scene-coordinate regression (CrossLoc / DSAC* / ACE) trainer: encoder, head, losses, mapping, export.

Modules: :mod:`.model` (stride-8 encoder + per-scene head), :mod:`.losses` (Laplace/Gaussian NLL,
ACE reprojection curriculum), :mod:`.data` (1/8-grid targets, feature buffer), :mod:`.train`
(``PRESETS``, ``train(args)``), :mod:`.evaluate` (pose metrics through the runtime plugin).
"""
