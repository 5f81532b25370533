"""The pluggy plugin module named by the ``vizloc_ros.localizers`` entry point.

It registers the localizer type (for the node) and its trainer (for ``vizloc-train``). Hooks run once
at start-up, never per frame; the trainer is registered as dotted paths, so neither the node nor
``vizloc-train --help`` imports it.
"""
from __future__ import annotations

from vizloc_ros.hookspecs import hookimpl
from vizloc_ros.localizer import LocalizerRegistry, LocalizerType
from vizloc_ros.trainers import TrainerRegistrar, TrainerType

from .localizer import LOCALIZER_TYPE, ExampleColorLocalizer, ExampleColorOptions


@hookimpl
def vizloc_register_localizers(registry: LocalizerRegistry) -> None:
    registry.register(LocalizerType(
        name=LOCALIZER_TYPE,
        factory=ExampleColorLocalizer.create,
        options_type=ExampleColorOptions,
        description='Example: mean image colour -> room label, GPS fix and pose (for plugin authors and tests).',
    ))


@hookimpl
def vizloc_register_trainers(registrar: TrainerRegistrar) -> None:
    registrar.register(TrainerType(
        name=LOCALIZER_TYPE,
        train='vizloc_example_plugin.train:train',
        presets='vizloc_example_plugin.train:PRESETS',
        description='Example: measures the colour table of a Rooms dataset whose rooms are colour names.',
    ))
