"""/diagnostics levels that mean something (vizloc_ros.diagnostics + the node).

Unit part with injected clocks: diagnostic_updater's FrequencyStatus semantics, the input monitor
(no frames -> ERROR, camera stopped -> STALE, rate check, bad input judged over a recent window),
localizer errors that stop counting once they are old. Node part: a node whose configure fails
still publishes an ERROR on /diagnostics; a node whose camera stops reports STALE.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.executors import SingleThreadedExecutor

from test_node_support import PARAMS_FILE, RosClient, domain_id_for
from vizloc_ros.diagnostics import ERROR_WINDOW_S, FrameTiming, FrequencyStatus, InputMonitor, LocalizerStats
from vizloc_ros.node import VizlocNode

pytestmark = pytest.mark.timeout(60)

DOMAIN_ID = domain_id_for(__name__)
S = 1_000_000_000  # ns per second


def _level(status: Any) -> int:
    level = status.level
    return int.from_bytes(level, 'little') if isinstance(level, bytes) else int(level)


def test_frequency_status_follows_diagnostic_updater() -> None:
    f = FrequencyStatus(10.0, 10.0, tolerance=0.1, window_s=5.0)
    assert f.level(now_ns=0)[:2] == (2, 'No events recorded.')
    for i in range(50):  # 10 Hz for 5 s
        f.tick(now_ns=i * S // 10)
    assert f.level(now_ns=5 * S - 1)[:2] == (0, 'Desired frequency met')
    assert f.level(now_ns=7 * S)[:2] == (1, 'Frequency too low.')  # 30 of 50 events still in the window
    assert f.level(now_ns=11 * S)[:2] == (2, 'No events recorded.')
    for i in range(100):
        f.tick(now_ns=20 * S + i * S // 20)  # 20 Hz
    assert f.level(now_ns=25 * S - 1)[:2] == (1, 'Frequency too high.')


def test_input_monitor_no_frames_stale_rate_and_recent_bad_input() -> None:
    m = InputMonitor(expected_rate_hz=10.0, stale_after_s=2.0, window_s=1.0)
    t0 = m.started_ns
    assert m.level(t0 + S)[0] == 0  # still within the grace period
    level, message, _ = m.level(t0 + 3 * S)
    assert level == 2 and 'no frames received' in message
    for i in range(30):  # 10 Hz for 3 s
        m.frame(t0 + 3 * S + i * S // 10)
    last = t0 + 3 * S + 29 * S // 10
    assert m.level(last + 1)[0] == 0
    m.bad(last)
    level, message, values = m.level(last + 1)
    assert level == 1 and '1 bad input' in message and values['bad_inputs_recent'] == '1'
    level, message, _ = m.level(last + int(2.5 * S))
    assert level == 3 and 'camera stopped' in message  # STALE: the camera stopped
    for i in range(10):  # back, at 5 Hz: too slow for the expected 10 Hz
        m.frame(last + int(ERROR_WINDOW_S * S) + S + i * S // 5)
    back = last + int(ERROR_WINDOW_S * S) + S + 9 * S // 5
    level, message, values = m.level(back + 1)
    assert level == 1 and 'Frequency too low' in message and values['bad_inputs_recent'] == '0'


def test_localizer_errors_are_judged_over_a_recent_window() -> None:
    stats = LocalizerStats('loc', 'example')
    stats.error('plugin_error', 'boom')
    now = time.time_ns()
    assert _level(stats.to_status('/vizloc', now_ns=now)) == 2  # errors and nothing localized
    r = now + S
    stats.offered(dropped_previous=False)
    stats.processed(FrameTiming(stamp_ns=r, received_ns=r, model_start_ns=r, model_end_ns=r + 1000, published_ns=r + 2000))
    assert _level(stats.to_status('/vizloc', now_ns=r + 3000)) == 1  # recent error beside good frames
    later = now + int((ERROR_WINDOW_S + 1) * S)
    status = stats.to_status('/vizloc', now_ns=later)
    assert _level(status) == 0  # the old error no longer keeps it WARN
    values = {kv.key: kv.value for kv in status.values}
    assert values['errors'] == '1' and values['errors_recent'] == '0'


@pytest.fixture(scope='module')
def client() -> Iterator[RosClient]:
    c = RosClient(DOMAIN_ID, name='diag_client')
    c.camera_publishers()
    c.record(DiagnosticArray, '/diagnostics')
    yield c
    c.close()


def _spin_until(executor: Any, client: RosClient, predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
        if predicate():
            return True
    return False


def _statuses(client: RosClient, suffix: str) -> list[Any]:
    return [s for a in client.messages('/diagnostics') for s in a.status if s.name.endswith(suffix)]


def test_node_publishes_diagnostics_when_configure_failed(client: RosClient) -> None:
    client.clear()
    node = VizlocNode(context=client.context, cli_args=['--ros-args', '--params-file', str(PARAMS_FILE),
                                                        '-p', 'localizers:=["a","a"]', '-p', 'diagnostics_period_s:=0.2'])
    executor = SingleThreadedExecutor(context=client.context)
    executor.add_node(node)
    try:
        assert not node.autostart()
        assert _spin_until(executor, client, lambda: _statuses(client, ': node'), 10.0)
        status = _statuses(client, ': node')[-1]
        assert _level(status) == DiagnosticStatus.ERROR[0] and 'configure failed' in status.message
        assert 'duplicate' in status.message
    finally:
        node.destroy_node()
        executor.shutdown()


def test_node_input_goes_stale_when_the_camera_stops(client: RosClient) -> None:
    import numpy as np

    client.clear()
    node = VizlocNode(context=client.context, cli_args=[
        '--ros-args', '--params-file', str(PARAMS_FILE), '-p', 'diagnostics_period_s:=0.2', '-p', 'stale_after_s:=0.6'])
    executor = SingleThreadedExecutor(context=client.context)
    executor.add_node(node)
    try:
        assert node.autostart()
        input_status = lambda: _statuses(client, ': input')  # noqa: E731
        assert _spin_until(executor, client, lambda: any('no frames received' in s.message for s in input_status()), 10.0)
        assert _level([s for s in input_status() if 'no frames' in s.message][-1]) == 2
        assert client.wait_for_image_subscriber()
        for i in range(10):
            client.publish_frame(np.zeros((8, 8, 3), np.uint8), 1_000 + i)
            executor.spin_once(timeout_sec=0.05)
        assert node.frames_received > 0
        client.clear()
        assert _spin_until(executor, client, lambda: any('camera stopped' in s.message for s in input_status()), 10.0)
        assert _level([s for s in input_status() if 'camera stopped' in s.message][-1]) == 3  # STALE
    finally:
        node.destroy_node()
        executor.shutdown()
