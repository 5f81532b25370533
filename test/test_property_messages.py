"""Property-based tests (hypothesis): generated Image / CompressedImage / CameraInfo messages.

Whatever the encoding, size, step, data length, compressed bytes or K/D values, the conversion
functions return a usable value or raise InvalidInputError (nothing else escapes), and a running node
fed the same messages counts every refusal and keeps localizing the good frames that follow.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, NavSatFix

from faulty_plugin import FaultyPlugin
from test_node_inprocess import Spinner, make_node
from test_node_support import RosClient, domain_id_for
from vizloc_ros import conversions as conv
from vizloc_ros.types import CameraIntrinsics, Frame, InvalidInputError

DOMAIN_ID = domain_id_for(__name__)
ENCODINGS = ['rgb8', 'bgr8', 'mono8', 'rgba8', 'bgra8', 'mono16', 'rgb16', '8UC3', '16UC1', '32FC1', 'yuv422',
             'bayer_rggb8', 'jpeg', '', 'RGB8', 'nonsense']
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def image_msgs(draw: Any) -> Image:
    width = draw(st.integers(0, 24) | st.sampled_from([5000, 100_000]))
    height = draw(st.integers(0, 16) | st.sampled_from([4000, 100_000]))
    encoding = draw(st.sampled_from(ENCODINGS))
    step = draw(st.integers(0, 200) | st.just(width * 3))
    n_bytes = draw(st.integers(0, 1200) | st.just(step * height if step * height < 4096 else 0))
    data = draw(st.binary(min_size=n_bytes, max_size=n_bytes))
    msg = Image(width=width, height=height, encoding=encoding, step=step, is_bigendian=draw(st.integers(0, 1)))
    msg.data = data
    return msg


def _jpeg(rgb: np.ndarray, ext: str = '.jpg') -> bytes:
    return cv2.imencode(ext, rgb)[1].tobytes()


@st.composite
def compressed_msgs(draw: Any) -> CompressedImage:
    rgb = np.full((draw(st.integers(1, 12)), draw(st.integers(1, 12)), 3), draw(st.integers(0, 255)), np.uint8)
    base = _jpeg(rgb, draw(st.sampled_from(['.jpg', '.png'])))
    kind = draw(st.sampled_from(['valid', 'truncated', 'flipped', 'random', 'header_size']))
    if kind == 'truncated':
        base = base[:draw(st.integers(0, len(base)))]
    elif kind == 'flipped':
        i = draw(st.integers(0, len(base) - 1))
        base = base[:i] + bytes([base[i] ^ draw(st.integers(1, 255))]) + base[i + 1:]
    elif kind == 'random':
        base = draw(st.binary(max_size=300))
    elif kind == 'header_size' and base.startswith(b'\x89PNG'):
        base = base[:16] + draw(st.binary(min_size=8, max_size=8)) + base[24:]
    return CompressedImage(format=draw(st.sampled_from(['jpeg', 'png', 'rgb8; jpeg compressed bgr8', ''])),
                           data=base)


FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from([0.0, 1.0, 320.0, 240.0, 500.0])


@st.composite
def camera_infos(draw: Any) -> CameraInfo:
    width, height = draw(st.integers(-2, 700)), draw(st.integers(-2, 500))
    K = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]
    for i in draw(st.lists(st.integers(0, 8), max_size=4)):
        K[i] = draw(FLOATS)
    K = K[:draw(st.sampled_from([9, 9, 9, 0, 4]))]
    msg = CameraInfo(width=max(width, 0), height=max(height, 0), distortion_model='plumb_bob')
    msg.k = K
    msg.d = draw(st.lists(FLOATS, max_size=5))
    return msg


def _check_frame(frame: Frame) -> None:
    assert frame.rgb_HW3.dtype == np.uint8 and frame.rgb_HW3.ndim == 3 and frame.rgb_HW3.shape[2] == 3
    assert frame.rgb_HW3.shape[0] * frame.rgb_HW3.shape[1] <= conv.DEFAULT_MAX_IMAGE_PIXELS


@SETTINGS
@given(msg=image_msgs())
def test_any_image_message_converts_or_raises_invalid_input(msg: Image) -> None:
    try:
        frame = conv.frame_from_image_msg(msg)
    except InvalidInputError:
        return
    _check_frame(frame)
    assert frame.rgb_HW3.shape[:2] == (msg.height, msg.width)


@SETTINGS
@given(msg=compressed_msgs())
def test_any_compressed_message_converts_or_raises_invalid_input(msg: CompressedImage) -> None:
    try:
        frame = conv.frame_from_compressed_msg(msg)
    except InvalidInputError:
        return
    _check_frame(frame)


@SETTINGS
@given(msg=camera_infos())
def test_any_camera_info_gives_a_pinhole_camera_or_raises_invalid_input(msg: CameraInfo) -> None:
    try:
        camera = conv.intrinsics_from_camera_info(msg)
    except InvalidInputError:
        return
    K = camera.K
    assert np.all(np.isfinite(K)) and np.all(np.isfinite(camera.D))
    assert K[0, 0] > 0 and K[1, 1] > 0 and list(K[2]) == [0.0, 0.0, 1.0] and K[1, 0] == 0.0
    assert 0 <= K[0, 2] <= camera.width and 0 <= K[1, 2] <= camera.height
    CameraIntrinsics(K=K, width=camera.width, height=camera.height).scaled(32, 24)  # usable downstream


# -- the same messages through a running node ------------------------------------------------------------

@pytest.fixture(scope='module')
def running() -> Iterator[tuple[RosClient, Any]]:
    client = RosClient(DOMAIN_ID, name='property_client')
    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    client.camera_publishers(qos=reliable)
    client.pub_compressed = client.node.create_publisher(CompressedImage, 'image/compressed', reliable)
    node = make_node(client, {'localizers': ['ok'], 'ok.type': 'test_faulty', 'ok.fault': 'sleep',
                              'input_qos': 'reliable', 'error_log_throttle_s': 60.0}, plugins=(FaultyPlugin(),))
    spinner = Spinner(SingleThreadedExecutor(context=client.context))
    spinner.executor.add_node(node)
    client.record(NavSatFix, '/vizloc/ok/fix')
    assert node.autostart()
    assert client.wait_for_image_subscriber()
    yield client, node
    spinner.close()
    node.destroy_node()
    client.close()


def _settled(node: Any, sent: int, timeout_s: float = 5.0) -> bool:
    """Every sent frame is either localized or counted as bad input (nothing is lost or queued)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = node.workers['ok'].stats.summary()
        if stats['frames_processed'] + node.bad_inputs + stats['frames_dropped'] >= sent:
            return True
        time.sleep(0.01)
    return False


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(images=st.lists(image_msgs(), min_size=1, max_size=3), infos=st.lists(camera_infos(), max_size=2))
def test_a_running_node_counts_every_refusal_and_localizes_the_next_good_frame(running: Any, images: list[Image],
                                                                               infos: list[CameraInfo]) -> None:
    client, node = running
    bad_before, info_errors_before = node.bad_inputs, node.camera_info_errors
    expect_bad = 0
    for info in infos:
        client.pub_info.publish(info)
    for msg in images:
        try:
            conv.frame_from_image_msg(msg)
        except InvalidInputError:
            expect_bad += 1
        sent = node.workers['ok'].stats.summary()['frames_offered'] + 1
        client.pub_image.publish(msg)
        assert _settled(node, sent)
    assert node.bad_inputs - bad_before == expect_bad
    expect_info_errors = 0
    for info in infos:
        try:
            conv.intrinsics_from_camera_info(info)
        except InvalidInputError:
            expect_info_errors += 1
    assert client.wait_for(lambda: node.camera_info_errors - info_errors_before == expect_info_errors, 5.0)
    # a good frame after the bad ones is localized, with its own stamp
    stamp_ns = time.time_ns()
    client.pub_image.publish(conv.image_msg_from_rgb(np.full((12, 16, 3), 90, np.uint8), stamp_ns, 'camera'))
    assert client.wait_for(lambda: any(conv.stamp_to_ns(m.header.stamp) == stamp_ns
                                       for m in client.messages('/vizloc/ok/fix')), 5.0)
    assert node.workers['ok'].thread_alive
