"""The vizloc node in the test process: Single- and MultiThreadedExecutor, lifecycle callbacks, threading model.

Plugins: the example plugin (imported from source, passed as ``extra_plugins``) and a small
in-test plugin whose localizer can be slow, raise, answer 'no_fix' or require camera intrinsics,
and records reset()/close() calls.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from geometry_msgs.msg import PoseWithCovarianceStamped
from rcl_interfaces.msg import ParameterType
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import Image, NavSatFix, NavSatStatus
from std_msgs.msg import String

from example_plugin_support import EXAMPLE_TYPE, example_plugin_module
from test_node_support import PARAMS_FILE, RosClient, domain_id_for
from vizloc_ros.conversions import stamp_to_ns
from vizloc_ros.hookspecs import hookimpl
from vizloc_ros.localizer import LocalizerType
from vizloc_ros.node import VizlocNode
from vizloc_ros.types import CovarianceType, Frame, GeoEstimate, LocalizationResult, PoseEstimate, RoomEstimate

pytestmark = pytest.mark.timeout(90)

DOMAIN_ID = domain_id_for(__name__)
CALLS: list[tuple[str, str]] = []  # (localizer name, 'reset' | 'close')
SEEN_FX: list[float] = []


@dataclass(frozen=True)
class RecordOptions:
    sleep_ms: float = field(default=0.0, metadata={'description': 'time localize() takes (ms)'})
    fail_every: int = field(default=0, metadata={'description': 'raise RuntimeError on every n-th frame (0: never)'})
    no_fix_every: int = field(default=0, metadata={'description': "status 'no_fix' on every n-th frame (0: never)"})
    needs_camera: bool = field(default=False, metadata={'description': 'requires_camera_info'})
    with_image: bool = field(default=False, metadata={'description': "add a 'heatmap' image to the results"})


class RecordLocalizer:
    backend_name = 'python'

    def __init__(self, config: Any, options: RecordOptions, context: Any) -> None:
        self.name = config.name
        self.options = options
        self.requires_camera_info = options.needs_camera
        self.count = 0

    def localize(self, frame: Frame) -> LocalizationResult:
        self.count += 1
        if self.options.sleep_ms:
            time.sleep(self.options.sleep_ms / 1e3)
        if self.options.fail_every and self.count % self.options.fail_every == 0:
            raise RuntimeError(f'simulated plugin failure on frame {self.count}')
        if frame.camera is not None:
            SEEN_FX.append(float(frame.camera.K[0, 0]))
        status = 'no_fix' if self.options.no_fix_every and self.count % self.options.no_fix_every == 0 else 'ok'
        T = np.eye(4)
        T[:3, 3] = frame.rgb_HW3.reshape(-1, 3).mean(axis=0) / 255.0
        return LocalizationResult(
            status=status,
            room=RoomEstimate('lab', 0.8, {'lab': 0.8, 'hall': 0.2}),
            geo=GeoEstimate(46.5, 6.6, 400.0, np.diag([4.0, 4.0, 100.0])),
            pose=PoseEstimate(T, np.eye(6) * 0.01),
            covariance_type=CovarianceType.APPROXIMATED,
            images={'heatmap': np.ascontiguousarray(frame.rgb_HW3[::2, ::2, ::-1])} if self.options.with_image else {})

    def reset(self) -> None:
        CALLS.append((self.name, 'reset'))

    def close(self) -> None:
        CALLS.append((self.name, 'close'))


class RecordPlugin:
    __name__ = 'record_plugin'

    @hookimpl
    def vizloc_register_localizers(self, registry: Any) -> None:
        registry.register(LocalizerType('test_record', RecordLocalizer, RecordOptions, needs_bundle=False))


@pytest.fixture(scope='module')
def client() -> Iterator[RosClient]:
    c = RosClient(DOMAIN_ID, name='inprocess_client')
    c.camera_publishers()
    yield c
    c.close()


@pytest.fixture(scope='module')
def bundle(example_bundle: Path) -> Path:
    return example_bundle


class Spinner:
    """Spins ``executor`` in a thread until closed."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.executor.shutdown()


def make_node(client: RosClient, params: dict[str, Any], plugins: tuple[object, ...] = ()) -> VizlocNode:
    """A VizlocNode in the client's context with config/localize.yaml, ``params`` and the test plugins."""
    cli = ['--ros-args', '--params-file', str(PARAMS_FILE)]
    for key, value in params.items():
        text = ('[' + ','.join(f'"{v}"' if isinstance(v, str) else repr(v) for v in value) + ']')\
            if isinstance(value, list) else (
            str(value).lower() if isinstance(value, bool) else str(value))
        cli += ['-p', f'{key}:={text}']
    return VizlocNode(context=client.context, cli_args=cli,
                      extra_plugins=[example_plugin_module(), RecordPlugin(), *plugins])


def test_multithreaded_executor_outputs_plugin_errors_and_no_fix(client: RosClient, bundle: Path, capfd: Any) -> None:
    node = make_node(client, {
        'localizers': ['color', 'flaky', 'nofix'],
        'color.type': EXAMPLE_TYPE, 'color.bundle': str(bundle), 'color.backend': 'onnxruntime',
        'flaky.type': 'test_record', 'flaky.fail_every': 2, 'flaky.with_image': True,
        'nofix.type': 'test_record', 'nofix.no_fix_every': 1,
    })
    spinner = Spinner(MultiThreadedExecutor(num_threads=2, context=client.context))
    spinner.executor.add_node(node)
    try:
        for name in ('color', 'flaky', 'nofix'):
            client.record(NavSatFix, f'/vizloc/{name}/fix')
            client.record(PoseWithCovarianceStamped, f'/vizloc/{name}/pose')
            client.record(String, f'/vizloc/{name}/room')
        client.record(Image, '/vizloc/flaky/heatmap')
        assert node.autostart()
        assert node.state_label() == 'active'
        assert client.wait_for_image_subscriber()
        # best-effort camera QoS and the latest-frame slots lose frames on a loaded machine (a 2-core one has
        # delivered 7 of 12 frames to the node and dropped 1 of those): bursts of 12 until ten outputs each
        stamps: list[int] = []
        for _ in range(6):
            stamps += client.publish_stream(12, rate_hz=20.0)
            if client.wait_for(lambda: min(len(client.messages(f'/vizloc/{n}/fix')) for n in ('color', 'nofix')) >= 10,
                               2.0):
                break
        assert client.wait_for(lambda: len(client.messages('/vizloc/color/fix')) >= 10, 5.0)
        assert client.wait_for(lambda: len(client.messages('/vizloc/nofix/fix')) >= 10, 5.0)
        client.wait_for(lambda: len(client.messages('/vizloc/flaky/fix'))
                        == node.workers['flaky'].stats.summary()['frames_processed'], 3.0)
        time.sleep(0.2)

        color = client.messages('/vizloc/color/fix')
        assert {stamp_to_ns(m.header.stamp) for m in color} <= set(stamps)
        assert all(m.status.status == NavSatStatus.STATUS_FIX for m in color)

        # flaky raises on every 2nd frame: about half the frames give outputs, the rest count as plugin errors.
        flaky_stats = node.workers['flaky'].stats.summary()
        assert flaky_stats['errors_by_kind'].get('plugin_error', 0) >= 4
        assert flaky_stats['frames_processed'] >= 4
        flaky_fix = client.messages('/vizloc/flaky/fix')
        assert len(flaky_fix) == flaky_stats['frames_processed']
        assert all(m.position_covariance_type == NavSatFix.COVARIANCE_TYPE_APPROXIMATED for m in flaky_fix)
        assert list(flaky_fix[0].position_covariance) == [4.0, 0, 0, 0, 4.0, 0, 0, 0, 100.0]

        # LocalizationResult.images -> ~/<name>/<image name> (rgb8, the image's stamp).
        assert client.wait_for(lambda: len(client.messages('/vizloc/flaky/heatmap')) == len(flaky_fix), 3.0)
        heatmaps = client.messages('/vizloc/flaky/heatmap')
        assert {stamp_to_ns(m.header.stamp) for m in heatmaps} == {stamp_to_ns(m.header.stamp) for m in flaky_fix}
        assert (heatmaps[0].encoding, heatmaps[0].width, heatmaps[0].height) == ('rgb8', 32, 24)

        # no_fix: NavSatFix with STATUS_NO_FIX, no pose and no room.
        nofix = client.messages('/vizloc/nofix/fix')
        assert all(m.status.status == NavSatStatus.STATUS_NO_FIX for m in nofix)
        assert not client.messages('/vizloc/nofix/pose') and not client.messages('/vizloc/nofix/room')
        assert node.workers['nofix'].stats.summary()['no_fix'] >= 10

        # Python logging of vizloc_ros / vizloc_plugins / plugin packages reaches the rclpy logger.
        capfd.readouterr()
        logging.getLogger('vizloc_plugins.some_module').warning('bridged-message-42')
        err = capfd.readouterr().err
        assert 'bridged-message-42' in err and '[vizloc]' in err
        assert 'simulated plugin failure' in _diag_text(node)
    finally:
        spinner.close()
        node.destroy_node()


def _diag_text(node: VizlocNode) -> str:
    return '\n'.join(f'{s.name} {s.message} ' + ' '.join(f'{kv.key}={kv.value}' for kv in s.values)
                     for s in node.diagnostics_array().status)


def test_slow_localizer_drops_frames_and_throttling(client: RosClient) -> None:
    """The latest-frame slot: a 100 ms localizer at 30 Hz processes ~1 in 3 frames, the rest are dropped."""
    node = make_node(client, {
        'localizers': ['slow', 'limited'],
        'slow.type': 'test_record', 'slow.sleep_ms': 100.0,
        'limited.type': 'test_record', 'limited.max_rate_hz': 5.0,
    })
    spinner = Spinner(SingleThreadedExecutor(context=client.context))
    spinner.executor.add_node(node)
    try:
        assert node.autostart()
        assert client.wait_for_image_subscriber()
        t0 = time.monotonic()
        client.publish_stream(30, rate_hz=30.0)
        time.sleep(0.4)
        elapsed_s = time.monotonic() - t0
        slow = node.workers['slow'].stats.summary()
        limited = node.workers['limited'].stats.summary()
        assert slow['frames_offered'] >= 25
        # At most one frame per 100 ms is processed; the others were overwritten in the slot (dropped).
        assert 3 <= slow['frames_processed'] <= elapsed_s / 0.1 + 1, (slow, elapsed_s)
        assert slow['frames_dropped'] >= 10, slow
        # Nothing is queued: every offered frame was processed, dropped, or is the one left in the slot.
        assert slow['frames_offered'] - slow['frames_processed'] - slow['frames_dropped'] in (0, 1)
        assert slow['latency_p50_ms'] >= 95.0
        assert slow['overhead_p95_ms'] < 100.0, slow
        # max_rate_hz = 5: at most one frame per 200 ms is accepted, the others are throttled (not dropped).
        assert 2 <= limited['frames_processed'] <= elapsed_s * 5 + 1, (limited, elapsed_s)
        assert limited['frames_throttled'] >= 20, limited
        assert limited['frames_dropped'] == 0
    finally:
        spinner.close()
        node.destroy_node()


def test_lifecycle_in_process_misconfigured_localizers_are_skipped(client: RosClient, bundle: Path) -> None:
    CALLS.clear()
    SEEN_FX.clear()
    node = make_node(client, {
        'autostart': False,
        'localizers': ['rec', 'cam', 'badopt', 'badtype', 'nobundle', 'unknown'],
        'rec.type': 'test_record',
        'cam.type': 'test_record', 'cam.needs_camera': True,
        'badopt.type': 'test_record', 'badopt.no_such_option': 3,
        'badtype.type': 'test_record', 'badtype.sleep_ms': 5,  # an int for a float option
        'nobundle.type': EXAMPLE_TYPE, 'nobundle.bundle': str(bundle.parent / 'missing'),
        'unknown.type': 'no_such_type',
    })
    spinner = Spinner(SingleThreadedExecutor(context=client.context))
    spinner.executor.add_node(node)
    try:
        assert node.state_label() == 'unconfigured'
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert sorted(node.workers) == ['cam', 'rec']
        errors = node.config_errors
        assert sorted(errors) == ['badopt', 'badtype', 'nobundle', 'unknown']
        assert 'no_such_option' in errors['badopt']
        assert 'badtype.sleep_ms' in errors['badtype'] and 'float' in errors['badtype']
        assert 'no such bundle directory' in errors['nobundle']
        assert "'no_such_type'" in errors['unknown']
        levels = {s.name.rsplit(' ', 1)[-1]: s.level for s in node.diagnostics_array().status}
        assert levels['badopt'] == b'\x02' or levels['badopt'] == 2

        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        client.record(NavSatFix, '/vizloc/rec/fix')
        client.record(NavSatFix, '/vizloc/cam/fix')
        assert client.wait_for_image_subscriber()
        # Images without CameraInfo: 'cam' waits, 'rec' runs.
        from vizloc_ros.conversions import image_msg_from_rgb

        for i in range(5):
            client.pub_image.publish(image_msg_from_rgb(np.full((48, 64, 3), 10 * i, np.uint8), time.time_ns(), 'camera'))
            time.sleep(0.05)
        assert client.wait_for(lambda: len(client.messages('/vizloc/rec/fix')) >= 4, 5.0)
        assert not client.messages('/vizloc/cam/fix')
        assert node.workers['cam'].stats.summary()['frames_waiting_camera_info'] >= 4
        client.publish_stream(6, rate_hz=30.0)  # with CameraInfo (60 deg hfov, 64 px wide)
        assert client.wait_for(lambda: len(client.messages('/vizloc/cam/fix')) >= 4, 5.0)
        assert SEEN_FX and SEEN_FX[-1] == pytest.approx(32.0 / np.tan(np.radians(30.0)))

        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert sorted(CALLS) == [('cam', 'reset'), ('rec', 'reset')]
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert sorted(c for c in CALLS if c[1] == 'close') == [('cam', 'close'), ('rec', 'close')]
        assert node.workers == {} and node.state_label() == 'unconfigured'
        # Configure again: the same parameters, fresh localizers.
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert sorted(node.workers) == ['cam', 'rec']
    finally:
        spinner.close()
        node.destroy_node()
    assert CALLS.count(('rec', 'close')) == 2  # destroy_node closed the reconfigured localizers


def test_wrong_node_parameter_fails_configure_and_the_node_stays_alive(client: RosClient) -> None:
    node = make_node(client, {'autostart': True, 'image_transport': 'jpeg', 'localizers': ['rec'], 'rec.type': 'test_record'})
    try:
        assert not node.autostart()
        assert node.state_label() == 'unconfigured'
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.workers == {}
    finally:
        node.destroy_node()


def test_given_parameters_and_lifecycle_state_come_from_public_rclpy(client: RosClient) -> None:
    """The node sees the parameters it was given (params file + ``-p``) without rclpy's private
    members, empty lists included, and tracks its lifecycle state in its transition callbacks."""
    node = make_node(client, {'localizers': ['rec'], 'rec.type': 'test_record', 'rec.sleep_ms': 1.0})
    try:
        given = node.parameter_overrides
        assert given['rec.type'] == 'test_record' and given['rec.sleep_ms'] == 1.0
        assert given['localizers'] == ['rec'] and 'blocked_plugins' in given  # `[]` in the params file
        assert not node.has_parameter('rec.type')  # taken, not declared untyped: declared on configure
        assert node.describe_parameter('blocked_plugins').type == ParameterType.PARAMETER_STRING_ARRAY
        states = [node.state_label()]
        for transition in (node.trigger_configure, node.trigger_activate, node.trigger_deactivate,
                           node.trigger_cleanup, node.trigger_shutdown):
            assert transition() == TransitionCallbackReturn.SUCCESS
            states.append(node.state_label())
        assert states == ['unconfigured', 'inactive', 'active', 'inactive', 'unconfigured', 'finalized']
    finally:
        node.destroy_node()
