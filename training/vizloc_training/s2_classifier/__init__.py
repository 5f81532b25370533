"""S2 geo-cell classifier training (seed 002, PlaNet): adaptive S2 partition of the training split,
a classifier over the cells (optionally with a parent-cell head), km-scale metrics and the best-cell oracle.

Modules: :mod:`.model`, :mod:`.evaluate` (km table, oracle), :mod:`.train` (``PRESETS``, ``train``).
The bundle contract and the cell partition live torch-free beside the plugin
(:class:`vizloc_plugins.s2_classifier.S2ClassifierContract`, :mod:`vizloc_plugins.s2_cells`).
"""
