"""What a probe of the running node found (robustness issue), each reproduced against an in-process node.

A fault-injecting plugin (test/faulty_plugin.py) runs beside a good localizer; lifecycle transitions
race a localizer that outlives the deactivate timeout; mistyped node parameters; odd input stamps.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import NavSatFix

import faulty_plugin
from example_plugin_support import EXAMPLE_TYPE
from faulty_plugin import FaultyPlugin
from test_node_inprocess import Spinner, make_node
from test_node_support import RosClient, domain_id_for
from vizloc_ros.conversions import camera_info_from_intrinsics, image_msg_from_rgb, stamp_to_ns
from vizloc_ros.types import CameraIntrinsics

pytestmark = pytest.mark.timeout(120)

DOMAIN_ID = domain_id_for(__name__)
BAD_ESTIMATES = ('nan_covariance', 'non_psd', 'bad_rotation', 'latitude_123', 'forced_latitude_123', 'forced_bad_rotation')


@pytest.fixture(scope='module')
def client() -> Iterator[RosClient]:
    c = RosClient(DOMAIN_ID, name='robustness_client')
    c.camera_publishers()
    yield c
    c.close()


def _start(client: RosClient, params: dict[str, Any]) -> tuple[Any, Spinner]:
    node = make_node(client, params, plugins=(FaultyPlugin(),))
    spinner = Spinner(SingleThreadedExecutor(context=client.context))
    spinner.executor.add_node(node)
    return node, spinner


def test_faulty_plugins_are_isolated_counted_and_publish_nothing(client: RosClient, example_bundle: Path) -> None:
    faults = ('raise', 'system_exit', *BAD_ESTIMATES)
    params: dict[str, Any] = {'localizers': ['good', *faults], 'good.type': EXAMPLE_TYPE,
                              'good.bundle': str(example_bundle), 'good.backend': 'onnxruntime'}
    for fault in faults:
        params[f'{fault}.type'] = 'test_faulty'
        params[f'{fault}.fault'] = fault
    node, spinner = _start(client, params)
    try:
        for name in ('good', *faults):
            client.record(NavSatFix, f'/vizloc/{name}/fix')
            client.record(PoseWithCovarianceStamped, f'/vizloc/{name}/pose')
        assert node.autostart()
        assert client.wait_for_image_subscriber()
        n = 24
        client.publish_stream(n, rate_hz=20.0)
        assert client.wait_for(lambda: len(client.messages('/vizloc/good/fix')) >= n - 4, 5.0)
        time.sleep(0.3)
        for fault in faults:
            stats = node.workers[fault].stats.summary()
            kind = 'plugin_error' if fault in ('raise', 'system_exit') else 'invalid_output'
            # The worker outlived every fault (SystemExit killed it silently before): it saw most frames.
            assert stats['errors_by_kind'].get(kind, 0) >= n // 2, (fault, stats)
            assert set(stats['errors_by_kind']) == {kind}, (fault, stats)  # not bad_input
            assert node.workers[fault].thread_alive, fault
            assert not client.messages(f'/vizloc/{fault}/fix') and not client.messages(f'/vizloc/{fault}/pose'), fault
        assert node.workers['good'].stats.summary()['errors'] == 0
        diag = '\n'.join(f'{s.name} {s.message}' for s in node.diagnostics_array().status)
        assert 'SystemExit' in diag
    finally:
        spinner.close()
        node.destroy_node()


def test_a_localizer_outliving_the_deactivate_timeout_never_gets_a_second_worker(client: RosClient) -> None:
    """Finding 1: after deactivate/activate, two threads ran inside one plugin and a stale result was published."""
    node, spinner = _start(client, {'localizers': ['slow'], 'slow.type': 'test_faulty', 'slow.fault': 'sleep',
                                    'slow.sleep_s': 1.0, 'worker_join_timeout_s': 0.1})
    faulty_plugin.MAX_INSIDE.pop('slow', None)
    try:
        client.record(NavSatFix, '/vizloc/slow/fix')
        assert node.autostart()
        assert client.wait_for_image_subscriber()
        stale = 1_000_000_000
        client.pub_image.publish(image_msg_from_rgb(np.zeros((24, 32, 3), np.uint8), stale, 'camera'))
        assert client.wait_for(lambda: faulty_plugin.INSIDE.get('slow') == 1, 5.0)
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS  # join times out after 0.1 s
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert client.wait_for_image_subscriber()
        fresh = client.publish_stream(12, rate_hz=5.0)
        assert client.wait_for(lambda: len(client.messages('/vizloc/slow/fix')) >= 1, 5.0)
        workers = [t for t in threading.enumerate() if t.name == 'vizloc-slow']
        assert len(workers) == 1, workers
        assert faulty_plugin.MAX_INSIDE['slow'] == 1, 'two threads were inside one localizer'
        published = {stamp_to_ns(m.header.stamp) for m in client.messages('/vizloc/slow/fix')}
        assert stale not in published, 'a result of the previous activation was published'
        assert published <= set(fresh)
        assert node.workers['slow'].stats.summary()['errors_by_kind'].get('stale_result') == 1
    finally:
        spinner.close()
        node.destroy_node()


@pytest.mark.parametrize('name, value, hint', [
    ('diagnostic_period_s', 0.5, "did you mean 'diagnostics_period_s'"),
    ('localisers', '["x"]', "did you mean 'localizers'"),
    ('bogus_param', 3, 'known node parameters'),
])
def test_unknown_node_parameters_refuse_configure_naming_the_closest_key(client: RosClient, capfd: Any,
                                                                          name: str, value: Any, hint: str) -> None:
    """Finding 7: node-level typos were silently ignored."""
    node = make_node(client, {'autostart': False, 'localizers': ['ok'], 'ok.type': 'test_faulty', name: value},
                     plugins=(FaultyPlugin(),))
    try:
        capfd.readouterr()
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        err = capfd.readouterr().err
        assert f"unknown parameter '{name}'" in err and hint in err, err
        assert node.workers == {}
    finally:
        node.destroy_node()


def test_localizers_defined_in_the_params_file_but_not_listed_only_warn(client: RosClient, capfd: Any) -> None:
    """config/localize.yaml defines room, gps and scene; a launch argument may list only some of them."""
    node = make_node(client, {'autostart': False, 'localizers': ['ok'], 'ok.type': 'test_faulty'},
                     plugins=(FaultyPlugin(),))
    try:
        capfd.readouterr()
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert "localizer 'scene' is defined but not listed" in capfd.readouterr().err
    finally:
        node.destroy_node()


def _stamp(stamp_ns: int) -> Time:
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def test_odd_stamps_are_counted_and_outputs_carry_the_input_stamp_and_marker_faults_stay_apart(
        client: RosClient) -> None:
    """Finding 9 (zero, negative, backwards stamps), finding 4 (a degenerate CameraInfo at the node)."""
    node, spinner = _start(client, {'localizers': ['ok'], 'ok.type': 'test_faulty', 'ok.fault': 'sleep'})
    try:
        client.record(NavSatFix, '/vizloc/ok/fix')
        assert node.autostart()
        assert client.wait_for_image_subscriber()
        camera = CameraIntrinsics.from_fov(60.0, 32, 24)
        bad_info = camera_info_from_intrinsics(camera, 1, 'camera')
        k = list(bad_info.k)
        k[8] = 0.0
        bad_info.k = k
        client.pub_info.publish(bad_info)
        stamps = [5_000_000_000, 4_000_000_000, 0, -1_000_000_000, 6_000_000_000]
        for stamp_ns in stamps:
            msg = image_msg_from_rgb(np.zeros((24, 32, 3), np.uint8), 0, 'camera')
            msg.header.stamp = _stamp(stamp_ns)
            client.pub_image.publish(msg)
            assert client.wait_for(lambda s=stamp_ns: s in {stamp_to_ns(m.header.stamp)
                                                            for m in client.messages('/vizloc/ok/fix')}, 5.0), stamp_ns
        assert node.stamp_counts == {'zero_stamps': 1, 'negative_stamps': 1, 'backwards_stamps': 1}
        assert node.camera_info_errors == 1
        values = {kv.key: kv.value for s in node.diagnostics_array().status for kv in s.values}
        assert values['backwards_stamps'] == '1' and values['camera_info_errors'] == '1'

        # A fault in the markers must not turn an already published frame into a publish error.
        def broken_markers(*args: Any) -> None:
            raise np.linalg.LinAlgError('Singular matrix')

        node.publish_markers = broken_markers
        before = node.workers['ok'].stats.summary()['frames_processed']
        client.pub_image.publish(image_msg_from_rgb(np.zeros((24, 32, 3), np.uint8), 7_000_000_000, 'camera'))
        assert client.wait_for(lambda: 7_000_000_000 in {stamp_to_ns(m.header.stamp)
                                                         for m in client.messages('/vizloc/ok/fix')}, 5.0)
        time.sleep(0.1)
        stats = node.workers['ok'].stats.summary()
        assert stats['frames_processed'] == before + 1
        assert stats['errors_by_kind'] == {'markers_error': 1}
    finally:
        spinner.close()
        node.destroy_node()
