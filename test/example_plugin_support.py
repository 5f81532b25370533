"""Helpers and fixtures around the example third-party plugin (examples/example_plugin/) for all tests.

* :func:`install_example_plugin` -- ``pip install --no-deps --target DIR examples/example_plugin``, the
  way a user installs a plugin (entry point and all); installed once per test session and copied
  for later calls. Put ``DIR`` on ``PYTHONPATH`` of a subprocess (or a launched node) and
  :func:`vizloc_ros.plugin_manager.load_registry` discovers the ``example_color`` type.
* :func:`subprocess_env` -- an environment for such a subprocess.
* :func:`make_example_bundle` -- writes an ``example_color`` model bundle into a directory.
* :func:`example_plugin_module` -- the plugin module (installed, e.g. by scripts/bootstrap.sh, or
  else imported from the source tree), for in-process use:
  ``load_registry(extra_plugins=[example_plugin_module()])``.
* fixtures ``example_plugin_site`` (session: the install dir) and ``example_bundle`` (session: a
  bundle dir). Use them with ``pytest_plugins = ['example_plugin_support']`` in conftest.py.
"""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

import pytest

__all__ = ['EXAMPLE_PLUGIN_SRC', 'EXAMPLE_PLUGIN_NAME', 'EXAMPLE_TYPE', 'install_example_plugin', 'subprocess_env',
           'make_example_bundle', 'example_plugin_module', 'example_plugin_site', 'example_bundle']

EXAMPLE_PLUGIN_SRC = Path(__file__).resolve().parents[1] / 'examples' / 'example_plugin'
#: The entry-point name (= plugin name used for blocking) and the localizer type it registers.
EXAMPLE_PLUGIN_NAME = 'vizloc_example_plugin'
EXAMPLE_TYPE = 'example_color'

_lock = threading.Lock()
_installed: Path | None = None


def install_example_plugin(target_dir: str | os.PathLike) -> Path:
    """Install examples/example_plugin into ``target_dir`` (``pip --target``) and return ``target_dir``.

    The first call per process runs pip (from a copy of the source, so the source tree stays clean);
    later calls copy that installation.
    """
    global _installed
    target = Path(target_dir)
    with _lock:
        if _installed is not None and _installed.is_dir():
            if _installed != target:
                shutil.copytree(_installed, target, dirs_exist_ok=True)
            return target
        with tempfile.TemporaryDirectory(prefix='vizloc_example_src_') as tmp:
            src = Path(tmp) / 'example_plugin'
            shutil.copytree(EXAMPLE_PLUGIN_SRC, src, ignore=shutil.ignore_patterns('build', '*.egg-info', '__pycache__'))
            cmd = [sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-build-isolation', '--no-index',
                   '--disable-pip-version-check', '--quiet', '--target', str(target), str(src)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
            if proc.returncode != 0:
                raise RuntimeError(f'pip install of the example plugin failed ({proc.returncode}):\n'
                                   f'{proc.stdout}\n{proc.stderr}')
        _installed = target
        return target


def subprocess_env(*extra_paths: str | os.PathLike) -> dict[str, str]:
    """``os.environ`` with ``extra_paths`` prepended to PYTHONPATH (e.g. an install_example_plugin dir)."""
    env = dict(os.environ)
    parts = [str(p) for p in extra_paths] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else [])
    env['PYTHONPATH'] = os.pathsep.join(parts)
    return env


def example_plugin_module() -> ModuleType:
    """``vizloc_example_plugin.plugin``: the installed package (``make setup`` installs it in editable
    mode), or, in an environment without it, imported from the source tree (test-only fallback)."""
    try:
        return importlib.import_module('vizloc_example_plugin.plugin')
    except ImportError:
        pass
    src = str(EXAMPLE_PLUGIN_SRC)
    if src not in sys.path:
        sys.path.append(src)
    return importlib.import_module('vizloc_example_plugin.plugin')


def make_example_bundle(out_dir: str | os.PathLike, *, height: int = 32, width: int = 32) -> Path:
    """Write an ``example_color`` bundle (mean-colour ONNX model) to ``out_dir`` and return its path."""
    example_plugin_module()
    from vizloc_example_plugin import make_bundle

    return make_bundle(out_dir, height=height, width=width)


@pytest.fixture(scope='session')
def example_plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the example plugin pip-installed; add it to a subprocess's PYTHONPATH."""
    return install_example_plugin(tmp_path_factory.mktemp('example_plugin_site'))


@pytest.fixture(scope='session')
def example_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32x32 ``example_color`` bundle directory (read-only by convention: copy before modifying)."""
    return make_example_bundle(tmp_path_factory.mktemp('example_bundle') / 'bundle')
