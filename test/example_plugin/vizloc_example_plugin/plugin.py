"""The pluggy plugin module named by the ``vizloc_ros.localizers`` entry point.

It only registers the localizer type; the hook runs once when the node configures, never per frame.
"""
from __future__ import annotations

from vizloc_ros.hookspecs import hookimpl
from vizloc_ros.localizer import LocalizerRegistry, LocalizerType

from .localizer import LOCALIZER_TYPE, ExampleColorLocalizer, ExampleColorOptions


@hookimpl
def vizloc_register_localizers(registry: LocalizerRegistry) -> None:
    registry.register(LocalizerType(
        name=LOCALIZER_TYPE,
        factory=ExampleColorLocalizer.create,
        options_type=ExampleColorOptions,
        description='Example: mean image colour -> room label, GPS fix and pose (for plugin authors and tests).',
    ))
