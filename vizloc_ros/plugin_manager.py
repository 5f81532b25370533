"""Loading plugins with pluggy: entry points, blocking, and the typed registries (localizers, trainers)."""
from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, TypeVar

import pluggy

from . import hookspecs
from .localizer import LocalizerRegistry
from .trainers import TrainerRegistry

__all__ = ['PluginLoadReport', 'TrainerLoadReport', 'load_registry', 'load_trainer_registry']

logger = logging.getLogger(__name__)


_R = TypeVar('_R')


@dataclass
class _LoadReport(Generic[_R]):
    registry: _R
    loaded: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class PluginLoadReport(_LoadReport[LocalizerRegistry]):
    """What happened at start-up: the registry plus loaded, blocked and failed plugins."""


@dataclass
class TrainerLoadReport(_LoadReport[TrainerRegistry]):
    """What ``vizloc-train`` found: the trainer registry plus loaded, blocked and failed plugins."""


def load_registry(blocked: Iterable[str] = (), extra_plugins: Iterable[object] = ()) -> PluginLoadReport:
    """Discover plugins in the ``vizloc_ros.localizers`` entry-point group and collect their types.

    ``blocked`` names entry points (plugin names) that must not load. ``extra_plugins`` are
    objects/modules registered directly (used by tests and embedding applications).
    A plugin whose hook raises is reported in ``failed`` and skipped; the others still load.
    """
    blocked = sorted(set(blocked))
    report = PluginLoadReport(registry=LocalizerRegistry(), blocked=blocked)
    pm = _plugin_manager(blocked, extra_plugins, report.failed)
    report.loaded = _call_each(pm, 'vizloc_register_localizers',
                               lambda name: {'registry': report.registry.for_plugin(name)}, report.failed)
    logger.info('localizer plugins loaded: %s; blocked: %s; types: %s',
                report.loaded or 'none', blocked or 'none', sorted(report.registry.types) or 'none')
    return report


def load_trainer_registry(blocked: Iterable[str] = (), extra_plugins: Iterable[object] = ()) -> TrainerLoadReport:
    """The trainers registered through ``vizloc_register_trainers`` by the plugins of the same
    entry-point group as :func:`load_registry` (arguments and failure handling as there)."""
    blocked = sorted(set(blocked))
    report = TrainerLoadReport(registry=TrainerRegistry(), blocked=blocked)
    pm = _plugin_manager(blocked, extra_plugins, report.failed)
    report.loaded = _call_each(pm, 'vizloc_register_trainers',
                               lambda name: {'registrar': report.registry.for_plugin(name)}, report.failed)
    logger.debug('trainer plugins loaded: %s; trainers: %s', report.loaded or 'none', sorted(report.registry.types))
    return report


def _plugin_manager(blocked: list[str], extra_plugins: Iterable[object],
                    failed: dict[str, str]) -> pluggy.PluginManager:
    """A plugin manager holding the entry-point plugins (minus ``blocked``) and ``extra_plugins``;
    plugins that fail to import go to ``failed``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    # Load entry points one by one (rather than pm.load_setuptools_entrypoints) so that a plugin that
    # fails to import is reported and skipped while the others still load.
    for ep in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
        if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # any import-time failure of third-party code
            failed[ep.name] = f'import of {ep.value} failed: {exc!r}'
            logger.error('localizer plugin %s (%s) failed to import: %r', ep.name, ep.value, exc)
            continue
        pm.register(plugin, name=ep.name)
    for plugin in extra_plugins:
        name = getattr(plugin, '__name__', None) or type(plugin).__name__
        # an extra plugin that is installed as well (the same module, loaded through its entry point)
        # is registered once, under its entry-point name
        if not pm.is_blocked(name) and not pm.is_registered(plugin):
            pm.register(plugin, name=name)
    pm.check_pending()
    return pm


def _call_each(pm: pluggy.PluginManager, hook_name: str, kwargs_for: Callable[[str], dict[str, Any]],
               failed: dict[str, str]) -> list[str]:
    """Call hook ``hook_name`` once per implementing plugin; returns the plugins that succeeded.

    Each call goes through pluggy with a subset caller holding only that plugin, so that one failing
    plugin is reported in ``failed`` and skipped, and each registration is stamped with its plugin's name.
    """
    loaded = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        name = impl.plugin_name
        others = [p for p in pm.get_plugins() if p is not impl.plugin]
        caller = pm.subset_hook_caller(hook_name, remove_plugins=others)
        try:
            caller(**kwargs_for(name))
        except Exception as exc:  # one broken plugin must not take the node down
            failed[name] = repr(exc)
            logger.error('plugin %s failed in %s: %r', name, hook_name, exc)
            continue
        loaded.append(name)
    return loaded
