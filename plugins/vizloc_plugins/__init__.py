"""Built-in localizer plugins of vizloc_ros.

Each module is a pluggy plugin registered through the ``vizloc_ros.localizers`` entry-point group
(see plugins/pyproject.toml), exactly like a third-party plugin.
"""
