"""The trainer registry: which ``vizloc-train`` type is trained by which function, filled by plugins.

A plugin ships a localizer *and* its training in one package by implementing the hook
:func:`vizloc_ros.hookspecs.vizloc_register_trainers` next to ``vizloc_register_localizers``::

    @hookimpl
    def vizloc_register_trainers(registrar):
        registrar.register(TrainerType(name='my_localizer', train='my_package.train:train',
                                       presets='my_package.train:PRESETS'))

Entries are dotted paths (``module:attribute``), imported only when that type is trained, so the
runtime and the plugin modules stay torch-free and ``vizloc-train --help`` imports no trainer.
``train(args: vizloc_training.train.config.TrainArgs) -> Path`` writes the bundle and returns its
directory; ``PRESETS`` maps preset names to settings: instances of the trainer's typed config dataclass
(``dataclasses.replace(BASE, ...)``; plain dicts are accepted too), resolved against the command line by
``vizloc_training.train.config.resolve_preset``.
:func:`vizloc_ros.plugin_manager.load_trainer_registry` fills the registry from the same entry points
the node loads its localizers from.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .localizer import ConfigError

__all__ = ['TrainerError', 'TrainerType', 'TrainerRegistry', 'TrainerRegistrar', 'import_dotted']

logger = logging.getLogger(__name__)

_DOTTED = re.compile(r'^[A-Za-z_][\w.]*:[A-Za-z_]\w*$')


class TrainerError(ConfigError):
    """A trainer registered twice, badly named, not importable, or not registered at all."""


def import_dotted(path: str) -> Any:
    """The attribute named by ``'package.module:attribute'`` (imports the module)."""
    module_name, _, attribute = path.partition(':')
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise TrainerError(f'cannot import {path!r}: {exc}') from exc


@dataclass(frozen=True)
class TrainerType:
    """One trainable localizer type: ``name`` (the localizer type its bundles are for), ``train`` and
    ``presets`` (dotted ``module:attribute`` paths, imported lazily), a one-line ``description`` and the
    registering ``plugin`` (stamped by the registry)."""

    name: str
    train: str
    presets: str
    description: str = ''
    plugin: str = ''

    def __post_init__(self) -> None:
        if not re.match(r'^[a-z][a-z0-9_]*$', self.name):
            raise TrainerError(f'trainer type name must be lower_snake_case, got {self.name!r}')
        for what in ('train', 'presets'):
            if not _DOTTED.match(getattr(self, what)):
                raise TrainerError(f'{self.name}: {what} must be a dotted path "module:attribute", '
                                   f'got {getattr(self, what)!r}')

    @classmethod
    def in_module(cls, name: str, module: str, description: str = '') -> 'TrainerType':
        """The usual layout: ``train`` and ``PRESETS`` of trainer module ``module``."""
        return cls(name=name, train=f'{module}:train', presets=f'{module}:PRESETS', description=description)

    def load_train(self) -> Callable[..., Any]:
        """The training function (imports the trainer module, and with it torch)."""
        return import_dotted(self.train)

    def load_presets(self) -> Mapping[str, Any]:
        """The trainer's named presets (config dataclass instances, or dicts)."""
        return import_dotted(self.presets)


@dataclass
class TrainerRegistry:
    """Trainer types by name, filled through the ``vizloc_register_trainers`` hook."""

    types: dict[str, TrainerType] = field(default_factory=dict)

    def register(self, trainer: TrainerType, plugin: str = '') -> None:
        """Add a trainer; ``plugin`` is stamped on it unless it names one itself."""
        if trainer.name in self.types:
            raise TrainerError(f'trainer {trainer.name!r} registered twice '
                               f'(by {self.types[trainer.name].plugin!r} and {plugin or "?"!r})')
        if not trainer.plugin:
            trainer = dataclasses.replace(trainer, plugin=plugin)
        self.types[trainer.name] = trainer
        logger.debug('registered trainer %s (%s) from plugin %s', trainer.name, trainer.train, trainer.plugin)

    def for_plugin(self, plugin: str) -> 'TrainerRegistrar':
        """What the hook hands to plugin ``plugin``: registrations are stamped with its name."""
        return TrainerRegistrar(self, plugin)

    def get(self, name: str) -> TrainerType:
        try:
            return self.types[name]
        except KeyError:
            raise TrainerError(f'no plugin registered a trainer for {name!r}; registered: '
                               f'{sorted(self.types) or "none"}. Is the plugin package installed '
                               f'(entry-point group vizloc_ros.localizers) and not blocked?') from None


@dataclass(frozen=True)
class TrainerRegistrar:
    """The ``registrar`` argument of ``vizloc_register_trainers``: one plugin's view of the registry."""

    registry: TrainerRegistry
    plugin: str

    def register(self, trainer: TrainerType) -> None:
        self.registry.register(trainer, plugin=self.plugin)
