"""Core value types: intrinsics scaling, frame validation, estimate validation."""
import math

import numpy as np
import pytest

from vizloc_ros.types import (CameraIntrinsics, Frame, GeoEstimate, InvalidInputError, LocalizationResult,
                              PoseEstimate, RoomEstimate)


def test_intrinsics_scaled_matches_resized_pixel_centres():
    K = np.array([[500.0, 0.0, 319.5], [0.0, 500.0, 239.5], [0.0, 0.0, 1.0]])
    cam = CameraIntrinsics(K=K, width=640, height=480)
    half = cam.scaled(320, 240)
    # Principal point at the centre of the full image stays at the centre of the half image.
    assert half.K[0, 2] == pytest.approx(159.5)
    assert half.K[1, 2] == pytest.approx(119.5)
    assert half.K[0, 0] == pytest.approx(250.0)
    # A 3D point projects to corresponding pixel positions (u' = (u + 0.5) s - 0.5).
    X = np.array([0.3, -0.2, 2.0])
    u_full = (K @ X)[:2] / X[2]
    u_half = (half.K @ X)[:2] / X[2]
    assert u_half == pytest.approx((u_full + 0.5) * 0.5 - 0.5)
    assert half.hfov_deg == pytest.approx(cam.hfov_deg)


def test_intrinsics_from_fov_and_focal():
    cam = CameraIntrinsics.from_fov(90.0, 200, 100)
    assert cam.K[0, 0] == pytest.approx(100.0)
    assert cam.K[0, 2] == pytest.approx(100.0)
    assert cam.hfov_deg == pytest.approx(90.0)
    with pytest.raises(InvalidInputError):
        CameraIntrinsics.from_fov(0.0, 200, 100)
    with pytest.raises(InvalidInputError, match='focal'):
        CameraIntrinsics(K=np.diag([0.0, 1.0, 1.0]), width=10, height=10)
    with pytest.raises(InvalidInputError, match='shape'):
        CameraIntrinsics(K=np.eye(2), width=10, height=10)


def test_frame_validates_image_and_rescales_camera():
    rgb = np.zeros((48, 64, 3), np.uint8)
    cam = CameraIntrinsics.from_focal(100.0, 128, 96)
    frame = Frame(rgb_HW3=rgb, stamp_ns=5, frame_id='cam', camera=cam)
    assert (frame.camera.width, frame.camera.height) == (64, 48)
    assert frame.camera.K[0, 0] == pytest.approx(50.0)
    small = frame.resized(32, 24)
    assert small.rgb_HW3.shape == (24, 32, 3)
    assert small.camera.K[0, 0] == pytest.approx(25.0)
    for bad in (np.zeros((48, 64), np.uint8), np.zeros((48, 64, 3), np.float32), np.zeros((0, 64, 3), np.uint8),
                'not an image'):
        with pytest.raises(InvalidInputError):
            Frame(rgb_HW3=bad, stamp_ns=0, frame_id='cam')


def test_estimates_validate_shapes_and_ranges():
    with pytest.raises(InvalidInputError, match='impossible'):
        GeoEstimate(lat_deg=91.0, lon_deg=0.0, alt_m=0.0, cov_enu_m2=np.eye(3), localizer='x', latency_ms=1.0)
    with pytest.raises(InvalidInputError, match='cov_enu_m2'):
        GeoEstimate(lat_deg=1.0, lon_deg=0.0, alt_m=math.nan, cov_enu_m2=np.eye(2), localizer='x', latency_ms=1.0)
    with pytest.raises(InvalidInputError, match='non-finite'):
        PoseEstimate(T_map_camera=np.full((4, 4), np.nan), cov_6x6=np.eye(6), localizer='x', latency_ms=1.0)
    with pytest.raises(InvalidInputError, match='status'):
        LocalizationResult(stamp_ns=0, frame_id='c', localizer='x', latency_ms=0.0, status='maybe')
    room = RoomEstimate(label='b', confidence=0.5, probabilities={'a': 0.2, 'b': 0.5, 'c': 0.3}, localizer='x',
                        latency_ms=1.0)
    assert room.top_k(2) == [('b', 0.5), ('c', 0.3)]
