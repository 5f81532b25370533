"""The one hookspec module of vizloc_ros (pluggy project name ``vizloc_ros``).

A plugin is a module (or object) exposing hook implementations, advertised through the
``vizloc_ros.localizers`` entry-point group. Built-in localizers in ``plugins/`` use exactly the
same group as third-party packages. Example (see docs/plugins.md and examples/example_plugin/)::

    # pyproject.toml
    [project.entry-points."vizloc_ros.localizers"]
    my_localizer = "my_package.plugin"

    # my_package/plugin.py
    from vizloc_ros.hookspecs import hookimpl
    from vizloc_ros.localizer import LocalizerType

    @hookimpl
    def vizloc_register_localizers(registry):
        registry.register(LocalizerType(name='my_localizer', factory=MyLocalizer, options_type=MyOptions))

    @hookimpl
    def vizloc_register_trainers(registrar):  # optional: `vizloc-train my_localizer` trains it
        registrar.register(TrainerType(name='my_localizer', train='my_package.train:train',
                                       presets='my_package.train:PRESETS'))

Hooks run once, at start-up (the node's ``on_configure``, ``vizloc-train``'s argument parsing); they
register factories and dotted paths, they never run per frame and never import torch.
"""
from __future__ import annotations

import pluggy

from .localizer import PluginRegistrar
from .trainers import TrainerRegistrar

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


@hookspec
def vizloc_register_trainers(registrar: TrainerRegistrar) -> None:
    """Register the trainers of this plugin's localizer types with
    ``registrar.register(TrainerType(name, train='module:train', presets='module:PRESETS'))``.

    Called by ``vizloc-train`` (:func:`vizloc_ros.plugin_manager.load_trainer_registry`) once per
    plugin. Only dotted paths are registered: the trainer module (torch and all) is imported when its
    type is trained, never by the node.
    """
