"""The one hookspec module of vizloc_ros (pluggy project name ``vizloc_ros``).

A plugin is a module (or object) exposing hook implementations, advertised through the
``vizloc_ros.localizers`` entry-point group. Built-in localizers in ``plugins/`` use exactly the
same group as third-party packages. Example (see docs/plugins.md and test/example_plugin/)::

    # pyproject.toml
    [project.entry-points."vizloc_ros.localizers"]
    my_localizer = "my_package.plugin"

    # my_package/plugin.py
    from vizloc_ros.hookspecs import hookimpl
    from vizloc_ros.localizer import LocalizerType

    @hookimpl
    def vizloc_register_localizers(registry):
        registry.register(LocalizerType(name='my_localizer', factory=MyLocalizer, options_type=MyOptions))

Hooks run once, at start-up (``on_configure``); they register factories, they never run per frame.
"""
from __future__ import annotations

import pluggy

from .localizer import PluginRegistrar

PROJECT_NAME = 'vizloc_ros'
ENTRY_POINT_GROUP = 'vizloc_ros.localizers'

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def vizloc_register_localizers(registry: PluginRegistrar) -> None:
    """Register this plugin's localizer types with ``registry.register(LocalizerType(...))``.

    Called once per plugin when the node configures. Raise
    :class:`vizloc_ros.localizer.ConfigError` if the plugin cannot work in this environment (the
    node logs it and goes on with the other plugins).
    """
