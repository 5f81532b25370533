"""/diagnostics levels that mean something (diagnostic_updater semantics): windows, STALE, frequency, failed configure."""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.executors import SingleThreadedExecutor

from faulty_plugin import FaultyPlugin
from test_node_inprocess import Spinner, make_node
from test_node_support import RosClient, domain_id_for
from vizloc_ros.conversions import image_msg_from_rgb
from vizloc_ros.diagnostics import FrameTiming, InputMonitor, LocalizerStats, input_level

DOMAIN_ID = domain_id_for(__name__)
OK, WARN, ERROR, STALE = 0, 1, 2, 3


def _level(status: Any) -> int:
    return status.level[0] if isinstance(status.level, bytes) else int(status.level)


def test_errors_are_judged_over_a_window_not_forever() -> None:
    stats = LocalizerStats('loc', 'x')
    stats.offered(dropped_previous=False)
    stats.error('plugin_error', 'boom')
    assert _level(stats.to_status('/vizloc', window_s=0.3)) == ERROR  # errors, nothing localized
    t = time.time_ns()
    stats.offered(dropped_previous=False)
    stats.processed(FrameTiming(t, t, t, t, t))
    assert _level(stats.to_status('/vizloc', window_s=0.3)) == WARN   # errors and output
    time.sleep(0.4)
    stats.offered(dropped_previous=False)
    stats.processed(FrameTiming(t, t, t, t, t))
    status = stats.to_status('/vizloc', window_s=0.3)
    assert _level(status) == OK, status.message  # one old error no longer holds it at WARN
    assert {kv.key: kv.value for kv in status.values}['errors'] == '1'  # still counted


def test_input_level_stale_frequency_and_inactive() -> None:
    common = {'stale_after_s': 1.0, 'expected_rate_hz': 10.0, 'rate_tolerance': 0.1}
    assert input_level({'rate_hz': 10.0, 'since_last_s': 0.1, 'recent_bad': 0}, active=True, **common)[0] == OK
    assert input_level({'rate_hz': 10.0, 'since_last_s': 1.5, 'recent_bad': 0}, active=True, **common)[0] == STALE
    assert input_level({'rate_hz': 0.0, 'since_last_s': math.inf, 'recent_bad': 0}, active=True, **common)[0] == STALE
    level, message = input_level({'rate_hz': 8.5, 'since_last_s': 0.1, 'recent_bad': 0}, active=True, **common)
    assert level == WARN and '9.0..11.0' in message
    assert input_level({'rate_hz': 10.5, 'since_last_s': 0.1, 'recent_bad': 2}, active=True, **common)[0] == WARN
    assert input_level({'rate_hz': 0.0, 'since_last_s': math.inf, 'recent_bad': 0}, active=False, **common)[0] == OK
    monitor = InputMonitor(window_s=10.0)
    for i in range(11):
        monitor.received(now_ns=i * 100_000_000)
    state = monitor.state(now_ns=1_050_000_000)
    assert state['rate_hz'] == 10.0 and abs(state['since_last_s'] - 0.05) < 1e-9


def test_the_node_reports_a_failed_configure_and_a_stopped_camera() -> None:
    client = RosClient(DOMAIN_ID, name='diag_client')
    client.camera_publishers()
    client.record(DiagnosticArray, '/diagnostics')
    failed = make_node(client, {'localizers': ['ok'], 'ok.type': 'test_faulty', 'diagnostic_period_s': 0.2,
                                'diagnostics_period_s': 0.2}, plugins=(FaultyPlugin(),))
    node = None
    spinner = Spinner(SingleThreadedExecutor(context=client.context))
    spinner.executor.add_node(failed)
    try:
        assert not failed.autostart()  # 'diagnostic_period_s' is a typo
        assert client.wait_for(lambda: any(s.name.endswith(': configure') and _level(s) == ERROR
                                           for a in client.messages('/diagnostics') for s in a.status), 3.0)
        spinner.executor.remove_node(failed)
        failed.destroy_node()
        client.clear()
        node = make_node(client, {'localizers': ['ok'], 'ok.type': 'test_faulty', 'ok.fault': 'sleep',
                                  'diagnostics_period_s': 0.2, 'input_timeout_s': 0.5}, plugins=(FaultyPlugin(),))
        spinner.executor.add_node(node)
        assert node.autostart()
        assert client.wait_for_image_subscriber()
        for i in range(10):
            client.pub_image.publish(image_msg_from_rgb(np.zeros((12, 16, 3), np.uint8), time.time_ns(), 'camera'))
            time.sleep(0.05)

        def input_levels() -> list[int]:
            return [_level(s) for a in client.messages('/diagnostics') for s in a.status if s.name.endswith(': input')]

        assert client.wait_for(lambda: OK in input_levels(), 3.0)
        client.clear()
        time.sleep(0.8)  # the camera stops
        assert client.wait_for(lambda: input_levels() and input_levels()[-1] == STALE, 3.0), input_levels()
        assert _level(DiagnosticStatus(level=bytes([STALE]))) == STALE
    finally:
        spinner.close()
        if node is not None:
            node.destroy_node()
        client.close()
