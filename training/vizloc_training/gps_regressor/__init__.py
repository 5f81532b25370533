"""GPS regressor localizer training (seed 001): image -> position in a local ENU frame with a
heteroscedastic Gaussian head, train-split-only normalisation, calibration and robustness tables.

Modules: :mod:`.data` (dataset -> arrays, train-only ENU frame), :mod:`.model`, :mod:`.losses`,
:mod:`.train` (``PRESETS``, ``train``), :mod:`.evaluate`, :mod:`.robustness`.
"""
