"""Launch file, params file, RViz config and Fast DDS profile.

``launch_ros`` is not importable in the pip venv (no ROS 2 launch wheels), so the launch test runs
only in a colcon workspace with the package installed; in the venv the same executable and params
file are started directly (``vizloc_node --ros-args --params-file config/localize.yaml``).
"""
from __future__ import annotations

import importlib.util
import re
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray

from test_node_support import FASTDDS_PROFILE, PARAMS_FILE, REPO, NodeProcess, RosClient, diagnostics_values, domain_id_for
from vizloc_ros.params import LOCALIZER_PARAMETERS, NODE_PARAMETERS

pytestmark = pytest.mark.timeout(60)

DOMAIN_ID = domain_id_for(__name__)
LAUNCH_FILE = REPO / 'launch' / 'localize.launch.py'
RVIZ_FILE = REPO / 'config' / 'vizloc.rviz'


def _params() -> dict:
    return yaml.safe_load(PARAMS_FILE.read_text())['/**']['ros__parameters']


def test_params_file_documents_every_parameter_with_its_default() -> None:
    params = _params()
    text = PARAMS_FILE.read_text()
    lines = text.splitlines()
    for name, spec in NODE_PARAMETERS.items():
        assert name in params, f'{name} missing from config/localize.yaml'
        if name != 'localizers':
            assert params[name] == spec.default, f'{name}: yaml {params[name]!r} != declared default {spec.default!r}'
        index = next(i for i, line in enumerate(lines) if re.match(rf'\s+{name}:', line))
        assert lines[index - 1].strip().startswith('#'), f'{name} has no comment above it'
    for key in LOCALIZER_PARAMETERS:
        assert f'<name>.{key}' in text, f'per-localizer parameter {key} undocumented'
    for name in params['localizers']:
        assert set(params[name]) <= set(LOCALIZER_PARAMETERS), params[name]
        assert isinstance(params[name]['max_rate_hz'], float), 'floats must be written as floats'


def test_launch_file_is_standard_form() -> None:
    source = LAUNCH_FILE.read_text()
    compile(source, str(LAUNCH_FILE), 'exec')
    for needle in ("executable='vizloc_node'", "'localize.yaml'", "'fastdds_shm.xml'", 'SetEnvironmentVariable',
                   "'FASTDDS_DEFAULT_PROFILES_FILE' not in os.environ", "DeclareLaunchArgument('use_sim_time'",
                   "DeclareLaunchArgument('autostart'", "DeclareLaunchArgument('namespace'", "('camera_info',",
                   "('image', image)", 'def generate_launch_description'):
        assert needle in source, needle


@pytest.mark.skipif(importlib.util.find_spec('launch_ros') is None,
                    reason='launch_ros is not importable (pip venv without ROS 2 launch); runs in a colcon workspace')
def test_launch_description_starts_an_active_node(monkeypatch: pytest.MonkeyPatch) -> None:  # pragma: no cover - colcon only
    from launch import LaunchService

    monkeypatch.setenv('ROS_DOMAIN_ID', str(DOMAIN_ID))  # the launched node inherits it

    spec = importlib.util.spec_from_file_location('localize_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    service = LaunchService(argv=['namespace:=launch_test'])
    service.include_launch_description(module.generate_launch_description())
    thread = threading.Thread(target=service.run, daemon=True)
    client = RosClient(DOMAIN_ID)
    try:
        thread.start()
        assert client.wait_for_state('active', node='/launch_test/vizloc', timeout_s=30.0) == 'active'
    finally:
        service.shutdown()
        thread.join(timeout=15)
        client.close()


def test_executable_with_the_params_file_skips_unusable_localizers(tmp_path: Path) -> None:
    """`vizloc_node --ros-args --params-file config/localize.yaml` as shipped: no model bundles here, so
    the three built-in localizers are logged and skipped, and the node still comes up active."""
    client = RosClient(DOMAIN_ID)
    try:
        client.record(DiagnosticArray, '/diagnostics')
        with NodeProcess(DOMAIN_ID, {'diagnostics_period_s': 0.2}, log_path=tmp_path / 'node.log') as node:
            assert client.wait_for_state('active') == 'active', node.log()
            assert client.wait_for(lambda: all(diagnostics_values(client.messages('/diagnostics'), f'localizer {n}')
                                               for n in ('room', 'gps', 'scene')), 10.0), node.log()
            for name in ('room', 'gps', 'scene'):
                diag = diagnostics_values(client.messages('/diagnostics'), f'localizer {name}')
                assert diag['_level'] == '2' and diag['configured'] == 'false', diag
                assert 'not configured' in diag['_message']
                assert f'localizer {name} skipped (misconfigured)' in node.log()
            assert node.alive()
            assert node.stop() == 0, node.log()
    finally:
        client.close()


def test_rviz_config_shows_image_poses_markers_and_path() -> None:
    config = yaml.safe_load(RVIZ_FILE.read_text())
    manager = config['Visualization Manager']
    assert manager['Global Options']['Fixed Frame'] == NODE_PARAMETERS['map_frame'].default
    displays = {d['Class']: d for d in manager['Displays']}
    paths = {d['Topic']['Value'] for d in manager['Displays'] if d['Class'] == 'rviz_default_plugins/Path'}
    assert paths == {f'/vizloc/{name}/path' for name in _params()['localizers']}, 'one path per localizer'
    assert displays['rviz_default_plugins/Image']['Topic']['Reliability Policy'] == 'Best Effort'
    assert displays['rviz_default_plugins/PoseWithCovariance']['Topic']['Value'].startswith('/vizloc/')
    assert displays['rviz_default_plugins/MarkerArray']['Topic']['Value'] == '/vizloc/markers'


def test_fastdds_profile_gives_shm_a_16mb_segment() -> None:
    root = ET.parse(FASTDDS_PROFILE).getroot()
    ns = {'f': root.tag.split('}')[0].strip('{')}
    descriptors = {d.find('f:transport_id', ns).text: d for d in root.iterfind('.//f:transport_descriptor', ns)}
    shm = [d for d in descriptors.values() if d.find('f:type', ns).text == 'SHM']
    assert len(shm) == 1 and int(shm[0].find('f:segment_size', ns).text) >= 16 * 1024 * 1024
    participant = root.find('f:participant', ns)
    assert participant.get('is_default_profile') == 'true'
    used = [t.text for t in participant.iterfind('.//f:userTransports/f:transport_id', ns)]
    assert shm[0].find('f:transport_id', ns).text in used
    assert participant.find('.//f:useBuiltinTransports', ns).text == 'false'
    assert 'FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds_shm.xml' in (REPO / 'Makefile').read_text()


def test_node_executable_prints_usage_without_starting_ros() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, '-m', 'vizloc_ros.node', '--help'], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.startswith('usage: vizloc_node')
    assert 'config/localize.yaml' in out.stdout


def test_foxglove_layout_names_the_node_topics() -> None:
    import json

    layout = json.loads((REPO / 'config' / 'foxglove_layout.json').read_text())
    panels = layout['configById']
    kinds = {key.split('!')[0] for key in panels}
    assert {'map', '3D', 'Image', 'Plot'} <= kinds  # NavSatFix map, 3D, image, plots
    localizers = _params()['localizers']
    node_topics = {f'/vizloc/{n}/{t}' for n in localizers for t in ('fix', 'pose', 'path')} | {'/vizloc/markers'}
    gt = {'/ground_truth/fix', '/ground_truth/pose'}
    assert set(panels['map!vizloc']['topicColors']) <= node_topics | gt
    assert set(panels['3D!vizloc']['topics']) <= node_topics | gt
    assert {f'/vizloc/{n}/path' for n in localizers} <= set(panels['3D!vizloc']['topics'])
    assert panels['Image!vizloc']['imageMode']['imageTopic'] == '/camera/image_raw'
    for path in panels['Plot!vizloc']['paths']:
        assert path['value'].split('.')[0] in node_topics | gt
