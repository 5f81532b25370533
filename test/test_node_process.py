"""The vizloc node as users run it: the ``vizloc_node`` executable in a subprocess with config/localize.yaml.

The example plugin (examples/example_plugin) is pip-installed into a temporary directory that is put
on the node's PYTHONPATH, exactly as a third-party plugin; the test process publishes Image +
CameraInfo at 30 Hz and checks what comes back (stamps, frames, covariances), lifecycle services,
compressed input, plugin blocking, bad input and runtime parameter refusal, and the frame loss
between processes with the Fast DDS shared-memory profile.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from lifecycle_msgs.msg import Transition
from nav_msgs.msg import Path as PathMsg
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import CompressedImage, Image, NavSatFix, NavSatStatus
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from example_plugin_support import EXAMPLE_PLUGIN_NAME, EXAMPLE_TYPE
from test_node_support import NodeProcess, RosClient, diagnostics_values, domain_id_for
from vizloc_ros.conversions import ns_to_stamp, stamp_to_ns

pytestmark = pytest.mark.timeout(120)

DOMAIN_ID = domain_id_for(__name__)
ROOMS = ['red', 'green', 'blue', 'white', 'black']


@pytest.fixture(scope='module')
def plugin_site(example_plugin_site: Path) -> Path:
    return example_plugin_site


@pytest.fixture(scope='module')
def bundle(example_bundle: Path) -> Path:
    return example_bundle


@pytest.fixture(scope='module')
def client() -> RosClient:
    c = RosClient(DOMAIN_ID)
    yield c
    c.close()


def _color_params(bundle: Path, **extra: object) -> dict[str, object]:
    params: dict[str, object] = {'localizers': ['color'], 'color.type': EXAMPLE_TYPE, 'color.bundle': str(bundle),
                                 'color.backend': 'onnxruntime', 'diagnostics_period_s': 0.2}
    params.update(extra)
    return params


@pytest.fixture(scope='module')
def active_node(plugin_site: Path, bundle: Path, client: RosClient, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp('log') / 'node.log'
    with NodeProcess(DOMAIN_ID, _color_params(bundle), python_paths=(plugin_site,), log_path=log) as node:
        for msg_type, topic in [(NavSatFix, '/vizloc/color/fix'), (PoseWithCovarianceStamped, '/vizloc/color/pose'),
                                (String, '/vizloc/color/room'), (MarkerArray, '/vizloc/markers'),
                                (PathMsg, '/vizloc/color/path'), (DiagnosticArray, '/diagnostics')]:
            client.record(msg_type, topic)
        client.camera_publishers()
        state = client.wait_for_state('active')
        assert state == 'active', f'node did not reach active (state {state!r}); log:\n{node.log()}'
        assert client.wait_for_image_subscriber(), f'node never subscribed to /image; log:\n{node.log()}'
        yield node
        assert node.alive(), f'node died; log:\n{node.log()}'


def test_outputs_carry_the_image_stamps(active_node: NodeProcess, client: RosClient) -> None:
    client.clear()
    stamps = client.publish_stream(30, rate_hz=30.0)
    assert client.wait_for(lambda: len(client.messages('/vizloc/color/fix')) >= 20, 10.0), active_node.log()
    time.sleep(0.3)
    fixes = client.messages('/vizloc/color/fix')
    poses = client.messages('/vizloc/color/pose')
    rooms = client.messages('/vizloc/color/room')
    published = set(stamps)
    fix_stamps = [stamp_to_ns(m.header.stamp) for m in fixes]
    assert set(fix_stamps) <= published, 'a NavSatFix carries a stamp that no image had'
    assert fix_stamps == sorted(fix_stamps)
    assert {stamp_to_ns(m.header.stamp) for m in poses} <= published
    assert len(poses) == len(fixes) and len(rooms) == len(fixes)
    for fix in fixes:
        assert fix.header.frame_id == 'camera'
        assert fix.status.status == NavSatStatus.STATUS_FIX
        assert fix.position_covariance_type == NavSatFix.COVARIANCE_TYPE_KNOWN
        assert fix.position_covariance[0] == pytest.approx(25.0)  # position_sigma_m = 5 -> 25 m^2, ENU
        assert abs(fix.latitude - 47.3769) < 0.01 and abs(fix.longitude - 8.5417) < 0.01
    for pose in poses:
        assert pose.header.frame_id == 'map'
        assert pose.pose.covariance[0] == pytest.approx(25.0)
        assert pose.pose.pose.orientation.w == pytest.approx(1.0)
    assert {r.data for r in rooms} <= set(ROOMS)
    # Consecutive frames differ in colour, so the localizer's translation follows the frames:
    # the frame with the stamp of pose k had red channel (37*i)%256, where i is its index.
    index = {s: i for i, s in enumerate(stamps)}
    for pose in poses:
        i = index[stamp_to_ns(pose.header.stamp)]
        red = ((37 * i) % 256) / 255.0
        assert pose.pose.pose.position.x == pytest.approx((red - 0.5) * 100.0, abs=1.0)
    markers = client.messages('/vizloc/markers')
    assert markers and {m.ns for m in markers[-1].markers} == {'color'}
    assert client.messages('/vizloc/color/path')[-1].poses
    assert client.wait_for(lambda: 'backend' in diagnostics_values(client.messages('/diagnostics'), 'localizer color'), 5)
    diag = diagnostics_values(client.messages('/diagnostics'), 'localizer color')
    assert diag['backend'].startswith('onnxruntime'), diag
    assert int(diag['frames_processed']) >= len(fixes) - 1
    assert float(diag['latency_p50_ms']) > 0.0


def _bad_image(kind: str, stamp_ns: int) -> object:
    if kind == 'compressed_corrupt':
        msg = CompressedImage(format='jpeg', data=b'\xff\xd8\xff\xe0 definitely not a jpeg')
    else:
        msg = Image(height=48, width=64, encoding='rgb8', step=64 * 3)
        if kind == 'short':
            msg.data = bytes(100)  # far fewer bytes than 48 rows of 192
        elif kind == 'encoding':
            msg.encoding = 'bogus42'
            msg.data = bytes(48 * 64 * 3)
        elif kind == 'step':
            msg.step = 10  # smaller than width * 3
            msg.data = bytes(48 * 64 * 3)
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = 'camera'
    return msg


def test_bad_inputs_are_counted_and_the_node_keeps_running(active_node: NodeProcess, client: RosClient) -> None:
    client.clear()
    for kind in ('short', 'encoding', 'step'):
        client.pub_image.publish(_bad_image(kind, time.time_ns()))
        time.sleep(0.1)
    assert client.wait_for(
        lambda: int(diagnostics_values(client.messages('/diagnostics'), ': input').get('bad_inputs', 0)) >= 3, 5.0), \
        diagnostics_values(client.messages('/diagnostics'), ': input')
    diag = diagnostics_values(client.messages('/diagnostics'), 'localizer color')
    assert int(diag.get('errors.bad_input', 0)) >= 3
    assert not client.messages('/vizloc/color/fix'), 'a malformed image produced an output'
    assert active_node.alive()
    client.publish_stream(10, rate_hz=30.0)
    assert client.wait_for(lambda: client.messages('/vizloc/color/fix'), 5.0), 'no output after bad inputs'
    assert 'image data has 100 bytes' in active_node.log()  # the first error of a kind is logged, then throttled


def _set_parameter(client: RosClient, name: str, value: ParameterValue) -> tuple[bool, str]:
    request = SetParameters.Request(parameters=[ParameterMsg(name=name, value=value)])
    result = client.call(SetParameters, '/vizloc/set_parameters', request, idempotent=True).results[0]
    return result.successful, result.reason


def test_runtime_parameter_changes_are_validated(active_node: NodeProcess, client: RosClient) -> None:
    ok, reason = _set_parameter(client, 'image_transport',
                                ParameterValue(type=ParameterType.PARAMETER_STRING, string_value='compressed'))
    assert not ok and 'cannot change while the node is configured' in reason
    ok, reason = _set_parameter(client, 'input_qos', ParameterValue(type=ParameterType.PARAMETER_STRING, string_value='fast'))
    assert not ok and "'sensor_data'" in reason
    ok, reason = _set_parameter(client, 'color.max_rate_hz', ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=-1.0))
    assert not ok, 'a negative rate was accepted'
    ok, reason = _set_parameter(client, 'color.max_rate_hz', ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=5.0))
    assert ok, reason
    client.clear()
    t0 = time.monotonic()
    client.publish_stream(45, rate_hz=30.0)  # 1.5 s at 30 Hz -> about 8 outputs at 5 Hz
    elapsed_s = time.monotonic() - t0
    time.sleep(0.5)
    n = len(client.messages('/vizloc/color/fix'))
    assert 3 <= n <= elapsed_s * 5 + 1, f'{n} outputs in {elapsed_s:.2f} s with max_rate_hz = 5'
    ok, reason = _set_parameter(client, 'color.max_rate_hz', ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=0.0))
    assert ok, reason
    assert active_node.alive()
    # The two refusals of our callback are counted (the range check is rclpy's, before our callback).
    assert client.wait_for(lambda: int(diagnostics_values(client.messages('/diagnostics'), ': input')
                                       .get('parameter_errors', 0)) >= 2, 3.0)
    assert 'parameter change refused: image_transport cannot change' in active_node.log()


def test_frame_loss_between_processes_with_the_shm_profile(active_node: NodeProcess, client: RosClient) -> None:
    """640x480 rgb8 at 30 Hz to the node's best-effort subscription: the node must receive >= 90 %.

    Without config/fastdds_shm.xml (512 KB SHM segment) most of these frames are lost.
    """
    n = 90
    frame = np.full((480, 640, 3), 90, np.uint8)
    from vizloc_ros.conversions import image_msg_from_rgb

    template = [image_msg_from_rgb(frame, 0, 'camera')]

    def received() -> int:
        return int(diagnostics_values(client.messages('/diagnostics'), ': input').get('frames_received', -1))

    client.clear()
    assert client.wait_for(lambda: received() >= 0, 5.0)
    before = received()
    client.publish_stream(n, rate_hz=30.0, raw_messages=template)
    last = -1
    end = time.monotonic() + 5.0
    while time.monotonic() < end:  # wait until the count settles
        time.sleep(0.5)
        now = received()
        if now == last:
            break
        last = now
    got = received() - before
    loss = 1.0 - got / n
    print(f'frame loss between processes: {n - got}/{n} = {loss:.1%}')
    assert loss <= 0.10, f'node received {got} of {n} frames (loss {loss:.1%}); log:\n{active_node.log()[-2000:]}'


def test_lifecycle_services_compressed_input_and_plugin_blocking(plugin_site: Path, bundle: Path, client: RosClient,
                                                                 tmp_path: Path) -> None:
    """autostart false -> walk the states by lifecycle_msgs services; blocked plugin; then compressed input."""
    ns = '/cam2'
    node_name = f'{ns}/vizloc'
    params = _color_params(bundle, autostart=False, blocked_plugins=[EXAMPLE_PLUGIN_NAME])
    with NodeProcess(DOMAIN_ID, params, python_paths=(plugin_site,), namespace=ns, log_path=tmp_path / 'node.log') as node:
        fix_topic = f'{node_name}/color/fix'
        client.record(NavSatFix, fix_topic)
        client.camera_publishers(compressed=True, namespace=ns)
        assert client.wait_for_state('unconfigured', node=node_name) == 'unconfigured', node.log()

        # Blocked plugin: the color localizer cannot be built; configure still succeeds (others would run).
        assert client.change_state(Transition.TRANSITION_CONFIGURE, node=node_name)
        assert client.lifecycle_state(node_name) == 'inactive'
        assert 'localizer color skipped' in node.log() and EXAMPLE_TYPE in node.log()
        assert client.change_state(Transition.TRANSITION_CLEANUP, node=node_name)
        assert client.lifecycle_state(node_name) == 'unconfigured'

        # Unconfigured: graph-shaping parameters may change now.
        request = SetParameters.Request(parameters=[
            ParameterMsg(name='blocked_plugins', value=ParameterValue(type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=[])),
            ParameterMsg(name='image_transport', value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value='compressed')),
        ])
        results = client.call(SetParameters, f'{node_name}/set_parameters', request, idempotent=True).results
        assert all(r.successful for r in results), [r.reason for r in results]

        assert client.change_state(Transition.TRANSITION_CONFIGURE, node=node_name)
        client.publish_stream(10, rate_hz=30.0)
        time.sleep(0.3)
        assert not client.messages(fix_topic), 'an inactive node published'

        assert client.change_state(Transition.TRANSITION_ACTIVATE, node=node_name)
        assert client.lifecycle_state(node_name) == 'active'
        assert client.wait_for_image_subscriber()
        stamps = client.publish_stream(20, rate_hz=30.0)
        assert client.wait_for(lambda: len(client.messages(fix_topic)) >= 10, 8.0), node.log()
        assert {stamp_to_ns(m.header.stamp) for m in client.messages(fix_topic)} <= set(stamps)

        # Corrupt JPEG: counted, no output, node alive.
        client.clear()
        client.pub_image.publish(_bad_image('compressed_corrupt', time.time_ns()))
        time.sleep(0.5)
        assert not client.messages(fix_topic)
        assert node.alive() and 'cannot decode compressed image' in node.log()

        assert client.change_state(Transition.TRANSITION_DEACTIVATE, node=node_name)
        client.clear()
        client.publish_stream(10, rate_hz=30.0)
        time.sleep(0.3)
        assert not client.messages(fix_topic), 'a deactivated node published'
        assert client.change_state(Transition.TRANSITION_CLEANUP, node=node_name)
        assert client.lifecycle_state(node_name) == 'unconfigured'
        assert node.alive()
        assert node.stop() == 0, node.log()
