"""Loading localizer plugins with pluggy: entry points, blocking, and the typed registry."""
from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field
from typing import Iterable

import pluggy

from . import hookspecs
from .localizer import LocalizerRegistry

__all__ = ['PluginLoadReport', 'load_registry']

logger = logging.getLogger(__name__)


@dataclass
class PluginLoadReport:
    """What happened at start-up: the registry plus loaded, blocked and failed plugins."""

    registry: LocalizerRegistry
    loaded: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def load_registry(blocked: Iterable[str] = (), extra_plugins: Iterable[object] = ()) -> PluginLoadReport:
    """Discover plugins in the ``vizloc_ros.localizers`` entry-point group and collect their types.

    ``blocked`` names entry points (plugin names) that must not load. ``extra_plugins`` are
    objects/modules registered directly (used by tests and embedding applications).
    A plugin whose hook raises is reported in ``failed`` and skipped; the others still load.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    blocked = sorted(set(blocked))
    for name in blocked:
        pm.set_blocked(name)
    report = PluginLoadReport(registry=LocalizerRegistry(), blocked=blocked)
    # Load entry points one by one (rather than pm.load_setuptools_entrypoints) so that a plugin that
    # fails to import is reported and skipped while the others still load.
    for ep in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
        if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # any import-time failure of third-party code
            report.failed[ep.name] = f'import of {ep.value} failed: {exc!r}'
            logger.error('localizer plugin %s (%s) failed to import: %r', ep.name, ep.value, exc)
            continue
        pm.register(plugin, name=ep.name)
    for plugin in extra_plugins:
        name = getattr(plugin, '__name__', None) or type(plugin).__name__
        if not pm.is_blocked(name):
            pm.register(plugin, name=name)
    pm.check_pending()

    # Call the hook through pluggy once per plugin (a subset caller holding only that plugin), so that one
    # failing plugin is reported and skipped and each registration is stamped with its plugin's name.
    for impl in pm.hook.vizloc_register_localizers.get_hookimpls():
        name = impl.plugin_name
        others = [p for p in pm.get_plugins() if p is not impl.plugin]
        caller = pm.subset_hook_caller('vizloc_register_localizers', remove_plugins=others)
        try:
            caller(registry=report.registry.for_plugin(name))
        except Exception as exc:  # one broken plugin must not take the node down
            report.failed[name] = repr(exc)
            logger.error('plugin %s failed to register its localizers: %r', name, exc)
            continue
        report.loaded.append(name)
    logger.info('localizer plugins loaded: %s; blocked: %s; types: %s',
                report.loaded or 'none', blocked or 'none', sorted(report.registry.types) or 'none')
    return report
