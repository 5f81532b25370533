"""ROS message <-> core type conversions, markers, node parameter rules and diagnostics statistics (no nodes)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import transforms3d
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, NavSatFix, NavSatStatus

from vizloc_ros import conversions as conv
from vizloc_ros.diagnostics import ErrorThrottle, FrameTiming, LocalizerStats
from vizloc_ros.markers import PathBuffer, ellipsoid_axes, frustum_points_map, markers_for_result
from vizloc_ros.params import NodeParams, check_parameter_change
from vizloc_ros.localizer import ConfigError
from vizloc_ros.types import (CameraIntrinsics, GeoEstimate, InvalidInputError, LocalizationResult, PoseEstimate,
                              RoomEstimate)

RNG = np.random.default_rng(0)


def _rgb(h: int = 6, w: int = 8) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _image(rgb_or_raw: np.ndarray, encoding: str, step: int | None = None, stamp_ns: int = 1_500_000_123) -> Image:
    msg = Image(height=rgb_or_raw.shape[0], width=rgb_or_raw.shape[1], encoding=encoding)
    row_bytes = rgb_or_raw[0].nbytes
    msg.step = step or row_bytes
    rows = rgb_or_raw.reshape(rgb_or_raw.shape[0], -1)
    if msg.step > row_bytes:
        rows = np.concatenate([rows, np.full((rows.shape[0], msg.step - row_bytes), 77, np.uint8)], axis=1)
    msg.data = rows.tobytes()
    msg.header.stamp = conv.ns_to_stamp(stamp_ns)
    msg.header.frame_id = 'cam_optical'
    return msg


def test_rgb8_is_a_zero_copy_view_with_stamp_and_frame() -> None:
    rgb = _rgb()
    msg = _image(rgb, 'rgb8')
    frame = conv.frame_from_image_msg(msg)
    assert np.array_equal(frame.rgb_HW3, rgb)
    assert np.shares_memory(frame.rgb_HW3, np.frombuffer(msg.data, np.uint8)), 'rgb8 was copied'
    assert not frame.rgb_HW3.flags.writeable
    assert frame.stamp_ns == 1_500_000_123 and frame.frame_id == 'cam_optical'


def test_padded_rows_and_other_encodings() -> None:
    rgb = _rgb()
    padded = conv.frame_from_image_msg(_image(rgb, 'rgb8', step=8 * 3 + 5))
    assert np.array_equal(padded.rgb_HW3, rgb)
    bgr = conv.frame_from_image_msg(_image(np.ascontiguousarray(rgb[..., ::-1]), 'bgr8'))
    assert np.array_equal(bgr.rgb_HW3, rgb)
    bgr_padded = conv.frame_from_image_msg(_image(np.ascontiguousarray(rgb[..., ::-1]), 'bgr8', step=8 * 3 + 4))
    assert np.array_equal(bgr_padded.rgb_HW3, rgb)
    gray = rgb[..., 0].copy()
    mono = conv.frame_from_image_msg(_image(gray[..., None], 'mono8'))
    assert np.array_equal(mono.rgb_HW3, np.repeat(gray[..., None], 3, axis=2))
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert np.array_equal(conv.frame_from_image_msg(_image(rgba, 'rgba8')).rgb_HW3, rgb)


@pytest.mark.parametrize('mutate, message', [
    (lambda m: setattr(m, 'data', bytes(10)), 'image data has 10 bytes'),
    (lambda m: setattr(m, 'encoding', 'weird'), "unsupported image encoding 'weird'"),
    (lambda m: setattr(m, 'step', 3), 'smaller than width'),
    (lambda m: setattr(m, 'width', 0), 'empty size'),
])
def test_malformed_images_raise_invalid_input(mutate, message) -> None:
    msg = _image(_rgb(), 'rgb8')
    mutate(msg)
    with pytest.raises(InvalidInputError, match=message):
        conv.frame_from_image_msg(msg)


def test_compressed_roundtrip_and_corrupt_jpeg() -> None:
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :24] = (250, 10, 10)
    rgb[:, 24:] = (10, 10, 250)
    msg = conv.compressed_msg_from_rgb(rgb, 42, 'cam', quality=95)
    frame = conv.frame_from_msg(msg)
    assert frame.rgb_HW3.shape == (32, 48, 3) and frame.stamp_ns == 42
    assert np.abs(frame.rgb_HW3.astype(int) - rgb).mean() < 4.0  # RGB order kept through JPEG
    ok, png = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert np.array_equal(conv.frame_from_msg(CompressedImage(format='png', data=png.tobytes())).rgb_HW3, rgb)
    broken = CompressedImage(format='jpeg', data=bytes(msg.data)[:40])
    with pytest.raises(InvalidInputError, match='cannot decode compressed image'):
        conv.frame_from_msg(broken)
    with pytest.raises(InvalidInputError, match='no data'):
        conv.frame_from_msg(CompressedImage(format='jpeg'))


def test_camera_info_roundtrip_and_refusals() -> None:
    camera = CameraIntrinsics.from_fov(70.0, 640, 480)
    info = conv.camera_info_from_intrinsics(camera, 5, 'cam')
    back = conv.intrinsics_from_camera_info(info)
    assert np.allclose(back.K, camera.K) and (back.width, back.height) == (640, 480)
    with pytest.raises(InvalidInputError, match='not calibrated'):
        conv.intrinsics_from_camera_info(CameraInfo(width=640, height=480))
    info.binning_x = 2
    with pytest.raises(InvalidInputError, match='binning'):
        conv.intrinsics_from_camera_info(info)
    # A CameraInfo for another resolution is rescaled to the image by Frame.
    frame = conv.frame_from_image_msg(_image(_rgb(240, 320), 'rgb8'), back)
    assert frame.camera.K[0, 0] == pytest.approx(camera.K[0, 0] / 2)


def _degenerate(mutate) -> CameraInfo:
    info = conv.camera_info_from_intrinsics(CameraIntrinsics.from_fov(70.0, 640, 480), 5, 'cam')
    mutate(info)
    return info


def _set_k(info: CameraInfo, index: int, value: float) -> None:
    k = list(info.k)
    k[index] = value
    info.k = k


@pytest.mark.parametrize('mutate, message', [
    (lambda m: _set_k(m, 8, 0.0), 'not a camera matrix'),                               # K[2,2] = 0
    (lambda m: setattr(m, 'k', [1.0, 2.0, 3.0, 2.0, 4.0, 6.0, 3.0, 6.0, 9.0]), 'not a camera matrix'),  # rank 1
    (lambda m: setattr(m, 'k', []), 'K must have 9 values'),                               # rclpy accepts []
    (lambda m: setattr(m, 'd', [math.nan] * 5), 'non-finite distortion'),
    (lambda m: _set_k(m, 2, 5000.0), 'principal point'),
    (lambda m: _set_k(m, 4, -100.0), 'focal lengths must be positive'),
    (lambda m: _set_k(m, 0, math.inf), 'non-finite'),
])
def test_degenerate_camera_info_is_refused(mutate, message) -> None:
    """Finding 4 of the robustness probe: these were accepted, and markers then raised on every frame."""
    with pytest.raises(InvalidInputError, match=message):
        conv.intrinsics_from_camera_info(_degenerate(mutate))


def _encoded(ext: str, width: int, height: int, *params: int) -> np.ndarray:
    ok, data = cv2.imencode(ext, np.zeros((height, width), np.uint8), list(params))
    assert ok
    return data.reshape(-1)


@pytest.mark.parametrize('ext, params', [('.png', ()), ('.jpg', ()), ('.jpg', (cv2.IMWRITE_JPEG_PROGRESSIVE, 1))])
def test_compressed_image_size_is_read_from_the_header(ext, params) -> None:
    for width, height in ((1, 1), (37, 5), (640, 480), (1000, 3)):
        w, h, kind = conv.compressed_image_size(_encoded(ext, width, height, *params))
        assert (w, h) == (width, height) and kind == ('png' if ext == '.png' else 'jpeg')
    with pytest.raises(InvalidInputError, match='neither PNG nor JPEG'):
        conv.compressed_image_size(b'GIF89a....')


def test_decompression_bomb_is_refused_before_decoding(monkeypatch) -> None:
    """Finding 5: a 1 MB PNG claiming 20000x20000 pixels was decoded (RSS +2.3 GB, 11 s)."""
    png = bytearray(_encoded('.png', 64, 48).tobytes())
    png[16:24] = (20000).to_bytes(4, 'big') + (20000).to_bytes(4, 'big')  # IHDR claims 20000x20000
    decoded = []
    monkeypatch.setattr(conv.cv2, 'imdecode', lambda *a: decoded.append(1))
    with pytest.raises(InvalidInputError, match='max_image_pixels'):
        conv.frame_from_msg(CompressedImage(format='png', data=bytes(png)))
    assert not decoded, 'refused from the header, nothing was decoded'
    monkeypatch.undo()
    # A real JPEG just over the limit, and the limit as a parameter.
    jpeg = _encoded('.jpg', 4100, 4100)
    with pytest.raises(InvalidInputError, match='max_image_pixels'):
        conv.frame_from_msg(CompressedImage(format='jpeg', data=jpeg.tobytes()))
    small = _encoded('.jpg', 64, 48)
    assert conv.frame_from_msg(CompressedImage(format='jpeg', data=small.tobytes()), max_pixels=64 * 48).width == 64
    with pytest.raises(InvalidInputError, match='max_image_pixels'):
        conv.frame_from_msg(CompressedImage(format='jpeg', data=small.tobytes()), max_pixels=64 * 48 - 1)


def test_raw_image_claiming_a_huge_size_is_refused_before_its_data_is_read() -> None:
    msg = _image(_rgb(), 'rgb8')
    msg.width, msg.height, msg.step = 20000, 20000, 60000
    with pytest.raises(InvalidInputError, match='max_image_pixels'):
        conv.frame_from_image_msg(msg)


def _result(status: str = 'ok', approximated: bool = False) -> LocalizationResult:
    R = transforms3d.euler.euler2mat(0.1, -0.2, 0.3)
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = (1.0, 2.0, 3.0)
    cov6 = np.diag([0.04, 0.09, 0.16, 0.01, 0.01, 0.02])
    return LocalizationResult(
        stamp_ns=7, frame_id='cam', localizer='loc', latency_ms=1.0, status=status,
        room=RoomEstimate('kitchen', 0.7, {'kitchen': 0.7, 'hall': 0.3}),
        geo=GeoEstimate(47.0, 8.0, math.nan, np.diag([1.0, 4.0, 400.0])),
        pose=PoseEstimate(T, cov6),
        covariance_type='approximated' if approximated else 'known')


def test_navsatfix_pose_and_room_messages() -> None:
    stamp = conv.ns_to_stamp(1_234_567_890_123)
    fix = conv.navsatfix_from_result(_result(), stamp, 'cam')
    assert conv.stamp_to_ns(fix.header.stamp) == 1_234_567_890_123 and fix.header.frame_id == 'cam'
    assert fix.status.status == NavSatStatus.STATUS_FIX
    # unknown altitude: finite (navsat_transform drops NaN altitudes) with a variance that gives it no weight
    assert (fix.latitude, fix.longitude, fix.altitude) == (47.0, 8.0, 0.0)
    assert list(fix.position_covariance) == [1.0, 0, 0, 0, 4.0, 0, 0, 0, conv.UNKNOWN_ALTITUDE_VARIANCE_M2]
    known = LocalizationResult(stamp_ns=7, frame_id='cam', localizer='loc', latency_ms=1.0,
                               geo=GeoEstimate(47.0, 8.0, 412.5, np.diag([1.0, 4.0, 9.0])))
    known_fix = conv.navsatfix_from_result(known, stamp, 'cam')
    assert known_fix.altitude == 412.5 and list(known_fix.position_covariance)[8] == 9.0
    assert fix.position_covariance_type == NavSatFix.COVARIANCE_TYPE_KNOWN
    approx = conv.navsatfix_from_result(_result(approximated=True), stamp, 'cam')
    assert approx.position_covariance_type == NavSatFix.COVARIANCE_TYPE_APPROXIMATED
    no_fix = conv.navsatfix_from_result(_result('no_fix'), stamp, 'cam')
    assert no_fix.status.status == NavSatStatus.STATUS_NO_FIX and math.isnan(no_fix.latitude)
    only_room = LocalizationResult(stamp_ns=7, frame_id='cam', localizer='loc', latency_ms=1.0, room=_result().room)
    assert conv.navsatfix_from_result(only_room, stamp, 'cam') is None

    result = _result()
    pose = conv.pose_msg_from_estimate(result.pose, stamp, 'map')
    assert pose.header.frame_id == 'map'
    q = pose.pose.pose.orientation
    R = transforms3d.quaternions.quat2mat([q.w, q.x, q.y, q.z])
    assert np.allclose(R, result.pose.T_map_camera[:3, :3], atol=1e-12)
    assert (pose.pose.pose.position.x, pose.pose.pose.position.y, pose.pose.pose.position.z) == (1.0, 2.0, 3.0)
    assert np.allclose(np.reshape(pose.pose.covariance, (6, 6)), result.pose.cov_6x6)
    assert conv.room_msg_from_estimate(result.room).data == 'kitchen'


def test_markers_ellipsoid_frustum_and_path() -> None:
    lengths, R = ellipsoid_axes(np.diag([4.0, 1.0, 0.25]))
    assert sorted(lengths) == pytest.approx([2.0, 4.0, 8.0])  # 2 sigma each side: 4 * sigma
    assert np.linalg.det(R) == pytest.approx(1.0)
    camera = CameraIntrinsics.from_fov(90.0, 100, 100)
    pts = frustum_points_map(np.eye(4), camera, depth_m=1.0)
    assert pts.shape == (16, 3) and np.allclose(np.abs(pts[1]), [1.0, 1.0, 1.0])
    stamp = conv.ns_to_stamp(9)
    markers = markers_for_result(_result(), stamp, 'cam', 'map', camera)
    assert [m.id for m in markers.markers] == [0, 1, 2] and all(m.ns == 'loc' for m in markers.markers)
    assert 'kitchen' in markers.markers[0].text and markers.markers[1].header.frame_id == 'map'
    assert not markers_for_result(_result('no_fix'), stamp, 'cam', 'map').markers[1:]
    path = PathBuffer('map', 3)
    for i in range(5):
        path.append(conv.pose_msg_from_estimate(_result().pose, conv.ns_to_stamp(i), 'map'))
    out = path.to_msg()
    assert [p.header.stamp.nanosec for p in out.poses] == [2, 3, 4] and out.header.frame_id == 'map'
    assert out.header.stamp.nanosec == 4 and len(path) == 3
    path.set_max_length(2)
    assert [p.header.stamp.nanosec for p in path.to_msg().poses] == [3, 4]


def test_parameter_rules() -> None:
    kw = dict(declared=True, localizer_names=['room'])
    assert check_parameter_change('image_transport', 'jpeg', configured=False, **kw).startswith('image_transport must be one of')
    assert check_parameter_change('image_transport', 'compressed', configured=False, **kw) is None
    assert 'cannot change while the node is configured' in check_parameter_change(
        'image_transport', 'compressed', configured=True, **kw)
    assert check_parameter_change('room.max_rate_hz', 2.0, configured=True, **kw) is None
    assert 'cannot change' in check_parameter_change('room.bundle', '/x', configured=True, **kw)
    assert check_parameter_change('room.backend', 'cuda', configured=False, **kw).startswith('room.backend must be one of')
    assert check_parameter_change('publish_markers', False, configured=True, **kw) is None
    assert 'read-only' in check_parameter_change('autostart', False, configured=False, **kw)
    assert check_parameter_change('autostart', False, configured=False, declared=False, localizer_names=[]) is None
    with pytest.raises(ConfigError, match='duplicate'):
        NodeParams(localizers=('a', 'a'))
    with pytest.raises(ConfigError, match='input_qos'):
        NodeParams(input_qos='fast')


def test_parameter_descriptors_come_from_the_dataclass_fields() -> None:
    import dataclasses

    from vizloc_ros.localizer import LocalizerConfig
    from vizloc_ros.params import LOCALIZER_PARAMETERS, NODE_PARAMETERS, RUNTIME_PARAMETERS

    defaults = NodeParams()
    assert list(NODE_PARAMETERS) == [f.name for f in dataclasses.fields(NodeParams)]
    for f in dataclasses.fields(NodeParams):
        spec = NODE_PARAMETERS[f.name]
        value = getattr(defaults, f.name)
        assert spec.default == (list(value) if isinstance(value, tuple) else value)
        assert spec.description == f.metadata['description'] and spec.choices == tuple(f.metadata['choices'])
    assert NODE_PARAMETERS['path_max_length'].int_range == (1, 100000)
    assert NODE_PARAMETERS['rate_tolerance'].float_range == (0.0, 1.0)
    assert NODE_PARAMETERS['autostart'].read_only and 'publish_markers' in RUNTIME_PARAMETERS
    assert list(LOCALIZER_PARAMETERS) == [f.name for f in dataclasses.fields(LocalizerConfig) if f.name != 'name']
    assert LOCALIZER_PARAMETERS['max_rate_hz'].runtime and LOCALIZER_PARAMETERS['type'].default == ''


def test_localizer_stats_and_throttle() -> None:
    stats = LocalizerStats('loc', 'example', backend='onnxruntime:CPUExecutionProvider')
    t0 = 1_000_000_000_000
    for i in range(10):
        stats.offered(dropped_previous=(i % 2 == 1))
        # 10 ms model, 2 ms (i even) or 4 ms (odd) overhead, one frame every 100 ms
        r = t0 + i * 100_000_000
        stats.processed(FrameTiming(stamp_ns=r, received_ns=r, model_start_ns=r + 1_000_000,
                                    model_end_ns=r + 11_000_000, published_ns=r + (12 if i % 2 == 0 else 14) * 1_000_000))
    stats.error('bad_input', 'x')
    s = stats.summary()
    assert s['frames_offered'] == 10 and s['frames_dropped'] == 5 and s['errors'] == 1
    assert s['latency_p50_ms'] == pytest.approx(10.0)
    assert s['overhead_p50_ms'] == pytest.approx(3.0) and s['overhead_p95_ms'] == pytest.approx(4.0)
    assert stats.rate_hz(now_ns=t0 + 1_000_000_000) == pytest.approx(10.0, rel=0.02)
    status = stats.to_status('/vizloc')
    assert status.hardware_id == 'onnxruntime:CPUExecutionProvider'
    assert {kv.key for kv in status.values} >= {'rate_hz', 'latency_p95_ms', 'frames_dropped', 'errors.bad_input', 'backend'}
    throttle = ErrorThrottle(60.0)
    assert throttle.should_log('a') == (True, 0)
    assert throttle.should_log('a') == (False, 0)
    assert throttle.should_log('b') == (True, 0)
