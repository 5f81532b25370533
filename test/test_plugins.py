"""Plugin discovery (a pip-installed third-party plugin), blocking, failing and duplicate plugins,
and the example_color localizer itself."""
from __future__ import annotations

import importlib.metadata
import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pyproj
import pytest

from example_plugin_support import (EXAMPLE_PLUGIN_NAME, EXAMPLE_TYPE, example_plugin_module, install_example_plugin,
                                    make_example_bundle, subprocess_env)
from vizloc_ros.bundle import BundleError
from vizloc_ros.geodesy import LocalENU
from vizloc_ros.hookspecs import ENTRY_POINT_GROUP, hookimpl
from vizloc_ros.localizer import (ConfigError, Localizer, LocalizerConfig, LocalizerContext, LocalizerRegistry,
                                  LocalizerType, option_fields, run_localizer)
from vizloc_ros.plugin_manager import load_registry
from vizloc_ros.types import Frame


def installed_entry_points() -> list[str]:
    """Plugins installed in this environment; blocked in in-process tests so that only ours load."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})


class _Factory:
    def __call__(self, config, options, context):  # never called here
        raise AssertionError('not used')


def make_plugin(name: str, types: list[str], fail: Exception | None = None) -> object:
    class Plugin:
        __name__ = name

        @hookimpl
        def vizloc_register_localizers(self, registry):
            for t in types:
                registry.register(LocalizerType(name=t, factory=_Factory(), needs_bundle=False))
            if fail is not None:
                raise fail

    return Plugin()


# -- discovery of a pip-installed plugin, in a fresh interpreter ------------------------------------

def test_pip_installed_plugin_is_discovered_and_can_be_blocked(tmp_path):
    site = install_example_plugin(tmp_path / 'site')
    assert (site / 'vizloc_example_plugin').is_dir()
    assert list(site.glob('vizloc_example_plugin-*.dist-info/entry_points.txt'))
    bundle = make_example_bundle(tmp_path / 'bundle')
    code = textwrap.dedent(f'''
        import json, sys
        import numpy as np
        from vizloc_ros.localizer import LocalizerConfig, LocalizerContext
        from vizloc_ros.plugin_manager import load_registry
        from vizloc_ros.types import Frame
        from importlib.metadata import entry_points
        # only the example: plugins being developed next to it must not decide this test
        others = [ep.name for ep in entry_points(group='vizloc_ros.localizers') if ep.name != {EXAMPLE_PLUGIN_NAME!r}]
        found = load_registry(blocked=others)
        t = found.registry.get({EXAMPLE_TYPE!r})
        loc = found.registry.create(LocalizerConfig(name='colour', type=t.name, bundle={str(bundle)!r}),
                                    {{'rooms': ['blue', 'green']}}, LocalizerContext(cache_dir={str(tmp_path)!r}))
        image = np.zeros((20, 30, 3), np.uint8); image[..., 2] = 255
        result = loc.localize(Frame(image, 1, 'camera'))
        loc.close()
        blocked = load_registry(blocked=[*others, {EXAMPLE_PLUGIN_NAME!r}])
        print(json.dumps({{'loaded': found.loaded, 'plugin': t.plugin, 'options': t.options_type.__name__,
                          'room': result.room.label, 'backend': loc.backend_name,
                          'blocked_types': sorted(blocked.registry.types), 'blocked': blocked.blocked,
                          'blocked_loaded': blocked.loaded, 'torch': 'torch' in sys.modules}}))
    ''')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=90,
                          env=subprocess_env(site), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert EXAMPLE_PLUGIN_NAME in out['loaded']
    assert out['plugin'] == EXAMPLE_PLUGIN_NAME and out['options'] == 'ExampleColorOptions'
    assert out['room'] == 'blue' and out['backend'].startswith('onnxruntime:')
    assert EXAMPLE_TYPE not in out['blocked_types'] and EXAMPLE_PLUGIN_NAME in out['blocked']
    assert EXAMPLE_PLUGIN_NAME not in out['blocked_loaded']
    assert out['torch'] is False


def test_without_the_install_the_type_is_unknown_with_a_helpful_message():
    report = load_registry(blocked=installed_entry_points())
    assert EXAMPLE_TYPE not in report.registry
    with pytest.raises(ConfigError, match='entry-point group vizloc_ros.localizers'):
        report.registry.get(EXAMPLE_TYPE)


# -- failing and duplicate plugins -----------------------------------------------------------------

def test_a_failing_plugin_is_reported_and_the_others_still_load():
    good = make_plugin('good_plugin', ['good_type'])
    bad = make_plugin('bad_plugin', [], fail=RuntimeError('CUDA library missing'))
    report = load_registry(blocked=installed_entry_points(), extra_plugins=[bad, good])
    assert report.loaded == ['good_plugin']
    assert set(report.failed) == {'bad_plugin'} and 'CUDA library missing' in report.failed['bad_plugin']
    assert sorted(report.registry.types) == ['good_type']
    assert report.registry.get('good_type').plugin == 'good_plugin'


def test_duplicate_type_names_are_refused():
    first = make_plugin('first_plugin', ['dup'])
    second = make_plugin('second_plugin', ['dup'])
    report = load_registry(blocked=installed_entry_points(), extra_plugins=[first, second])
    assert len(report.loaded) == 1 and len(report.failed) == 1
    (failed_name, message), = report.failed.items()
    assert 'registered twice' in message and report.registry.get('dup').plugin in report.loaded
    assert failed_name not in report.loaded
    registry = LocalizerRegistry()
    registry.register(LocalizerType(name='x', factory=_Factory(), needs_bundle=False))
    with pytest.raises(ConfigError, match="'x' registered twice"):
        registry.register(LocalizerType(name='x', factory=_Factory(), needs_bundle=False))


def test_extra_plugins_can_be_blocked_by_name():
    report = load_registry(blocked=[*installed_entry_points(), 'good_plugin'],
                           extra_plugins=[make_plugin('good_plugin', ['good_type'])])
    assert len(report.registry) == 0 and 'good_plugin' in report.blocked


# -- the example_color localizer ---------------------------------------------------------------------

@pytest.fixture(scope='module')
def example(tmp_path_factory):
    report = load_registry(blocked=installed_entry_points(), extra_plugins=[example_plugin_module()])
    bundle = make_example_bundle(tmp_path_factory.mktemp('example') / 'bundle')
    context = LocalizerContext(cache_dir=tmp_path_factory.mktemp('cache'))
    return report.registry, bundle, context


def test_example_localizer_maps_colour_to_room_geo_and_pose(example):
    registry, bundle, context = example
    options = {'origin_lat_deg': 46.5, 'origin_lon_deg': 6.6, 'origin_alt_m': 400.0, 'metres_per_unit': 200,
               'position_sigma_m': 3.0, 'rooms': ['red', 'green', 'gray']}
    loc = registry.create(LocalizerConfig(name='colour', type=EXAMPLE_TYPE, bundle=str(bundle)), options, context)
    try:
        assert isinstance(loc, Localizer) and loc.requires_camera_info is False
        assert loc.backend_name == 'onnxruntime:CPUExecutionProvider'
        image = np.zeros((48, 64, 3), np.uint8)  # not the model's 32x32: the localizer resizes
        image[:, :32] = (255, 0, 0)
        image[:, 32:] = (255, 128, 0)
        result, _, _ = run_localizer(loc, Frame(image, stamp_ns=123, frame_id='cam'), 'colour')  # as the node calls it
    finally:
        loc.close()
    mean = np.array([1.0, 64.0 / 255.0, 0.0])
    assert (result.stamp_ns, result.frame_id, result.localizer, result.status) == (123, 'cam', 'colour', 'ok')
    assert result.room.label == 'red' and result.room.confidence > 0.5
    assert sum(result.room.probabilities.values()) == pytest.approx(1.0)
    t_enu = (mean - 0.5) * 200.0
    np.testing.assert_allclose(result.pose.T_map_camera[:3, 3], t_enu, atol=0.2)
    np.testing.assert_allclose(result.pose.T_map_camera[:3, :3], np.eye(3))
    np.testing.assert_allclose(np.diag(result.pose.cov_6x6)[:3], 9.0)
    np.testing.assert_allclose(result.geo.cov_enu_m2, np.eye(3) * 9.0)
    # the fix is t_enu from the origin: check with an independent geodesic, not with LocalENU
    _, _, dist = pyproj.Geod(ellps='WGS84').inv(6.6, 46.5, result.geo.lon_deg, result.geo.lat_deg)
    assert dist == pytest.approx(math.hypot(t_enu[0], t_enu[1]), abs=0.05)
    assert result.geo.lon_deg > 6.6 and result.geo.lat_deg < 46.5  # east (red high), south (green low)
    assert result.geo.alt_m == pytest.approx(400.0 + t_enu[2], abs=0.05)
    e, n, u = LocalENU(46.5, 6.6, 400.0).to_enu(result.geo.lat_deg, result.geo.lon_deg, result.geo.alt_m)
    np.testing.assert_allclose([e, n, u], result.pose.T_map_camera[:3, 3], atol=1e-6)
    assert result.latency_ms > 0.0 and result.diagnostics['frames_seen'] == '1'


def test_example_localizer_reset_close_and_bad_config(example, tmp_path):
    registry, bundle, context = example
    config = LocalizerConfig(name='colour', type=EXAMPLE_TYPE, bundle=str(bundle))
    loc = registry.create(config, {}, context)
    for stamp in range(3):
        loc.localize(Frame(np.full((32, 32, 3), 255, np.uint8), stamp, 'cam'))
    assert loc.frames_seen == 3
    loc.reset()
    assert loc.frames_seen == 0
    loc.close()
    assert not loc._model.is_loaded
    with pytest.raises(ConfigError, match=r"colour: unknown option\(s\) \['room'\]"):
        registry.create(config, {'room': ['red']}, context)
    with pytest.raises(ConfigError, match='rooms must be non-empty colour names'):
        registry.create(config, {'rooms': ['mauve']}, context)
    with pytest.raises(ConfigError, match='colour.metres_per_unit must be a number'):
        registry.create(config, {'metres_per_unit': 'far'}, context)
    with pytest.raises(ConfigError, match='bundle is required'):
        registry.create(LocalizerConfig(name='colour', type=EXAMPLE_TYPE), {}, context)
    with pytest.raises(ConfigError, match='no such bundle directory'):
        registry.create(LocalizerConfig(name='colour', type=EXAMPLE_TYPE, bundle=str(tmp_path / 'x')), {}, context)
    from onnx_models import mean_color_model
    from vizloc_ros.bundle import InputSpec, write_bundle
    other = write_bundle(tmp_path / 'other', 'room_classifier', mean_color_model(tmp_path / 'm.onnx', 8, 8),
                         InputSpec(height=8, width=8))
    with pytest.raises(BundleError, match="not 'example_color'"):
        registry.create(LocalizerConfig(name='colour', type=EXAMPLE_TYPE, bundle=str(other)), {}, context)


def test_example_options_are_documented_ros_parameters():
    example_plugin_module()
    from vizloc_example_plugin import ExampleColorOptions

    fields = option_fields(ExampleColorOptions)
    names = [name for name, *_ in fields]
    assert names[:3] == ['origin_lat_deg', 'origin_lon_deg', 'origin_alt_m'] and 'rooms' in names
    assert all(description for *_, description in fields)
    rooms = next(f for f in fields if f[0] == 'rooms')
    assert rooms[1] == list[str] and rooms[2] == ['red', 'green', 'blue', 'white', 'black']


def test_make_bundle_command_line(tmp_path, capsys):
    example_plugin_module()
    from vizloc_example_plugin.bundle import main
    from vizloc_ros.bundle import load_bundle

    main([str(tmp_path / 'cli_bundle'), '--size', '16x8'])
    assert capsys.readouterr().out.strip() == str(tmp_path / 'cli_bundle')
    bundle = load_bundle(tmp_path / 'cli_bundle', expected_type=EXAMPLE_TYPE)
    assert (bundle.input.width, bundle.input.height) == (16, 8) and bundle.outputs == ('mean_rgb',)
