"""Core value types: intrinsics scaling, frame validation, estimate validation."""
import math

import numpy as np
import pytest

from vizloc_ros.types import (CameraIntrinsics, Frame, GeoEstimate, InvalidInputError, InvalidOutputError,
                              LocalizationResult, check_covariance, check_result, fault_kind,
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
    # Unusable estimates are the localizer's fault, not the input's: InvalidOutputError (node: invalid_output).
    with pytest.raises(InvalidOutputError, match='impossible'):
        GeoEstimate(lat_deg=91.0, lon_deg=0.0, alt_m=0.0, cov_enu_m2=np.eye(3))
    with pytest.raises(InvalidOutputError, match='cov_enu_m2'):
        GeoEstimate(lat_deg=1.0, lon_deg=0.0, alt_m=math.nan, cov_enu_m2=np.eye(2))
    with pytest.raises(InvalidOutputError, match='non-finite'):
        PoseEstimate(T_map_camera=np.full((4, 4), np.nan), cov_6x6=np.eye(6))
    with pytest.raises(InvalidOutputError, match='status'):
        LocalizationResult(status='maybe')
    assert not issubclass(InvalidOutputError, InvalidInputError)


def _geo(cov) -> GeoEstimate:
    return GeoEstimate(lat_deg=1.0, lon_deg=2.0, alt_m=0.0, cov_enu_m2=cov)


@pytest.mark.parametrize('cov, match', [
    (np.diag([1.0, -1.0, 1.0]), 'not positive semi-definite'),             # a negative variance
    (np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), 'not positive semi-definite'),  # eig -1
    (np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), 'not symmetric'),
    (np.diag([1.0, 1.0, np.inf]), 'non-finite'),
])
def test_non_psd_asymmetric_and_non_finite_covariances_are_refused(cov, match):
    """Finding 3 of the robustness probe: these passed validation and were published."""
    with pytest.raises(InvalidOutputError, match=match):
        _geo(cov)
    with pytest.raises(InvalidOutputError, match=match):
        check_covariance(cov, (3, 3), 'cov')


def test_psd_covariances_with_rounding_pass_and_come_back_symmetric():
    A = np.random.default_rng(0).normal(size=(6, 6))
    cov = A @ A.T + 1e-3 * np.eye(6)
    cov[0, 1] += 1e-12 * np.abs(cov).max()  # float rounding of a product, far below the tolerance
    out = check_covariance(cov, (6, 6), 'cov')
    assert np.array_equal(out, out.T)
    assert np.all(np.linalg.eigvalsh(_geo(np.zeros((3, 3))).cov_enu_m2) >= 0)  # singular but PSD is allowed


@pytest.mark.parametrize('R', [np.zeros((3, 3)), np.diag([1.0, 1.0, -1.0]), 2.0 * np.eye(3),
                               np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])])
def test_poses_whose_rotation_is_not_a_rotation_are_refused(R):
    """A zero 'rotation' was published as a made-up 180 deg quaternion; reflections and scales too."""
    T = np.eye(4)
    T[:3, :3] = R
    with pytest.raises(InvalidOutputError, match='not a rotation'):
        PoseEstimate(T_map_camera=T, cov_6x6=np.eye(6))


def test_check_result_repeats_the_checks_on_an_estimate_altered_after_construction():
    geo = _geo(np.eye(3))
    result = LocalizationResult(geo=geo)
    check_result(result)
    object.__setattr__(geo, 'lat_deg', 123.0)  # what a careless plugin can still do to a frozen dataclass
    with pytest.raises(InvalidOutputError, match='impossible'):
        check_result(result)
    with pytest.raises(InvalidOutputError, match='not LocalizationResult'):
        check_result('ok')


    room = RoomEstimate(label='b', confidence=0.5, probabilities={'a': 0.2, 'b': 0.5, 'c': 0.3})
    assert room.top_k(2) == [('b', 0.5), ('c', 0.3)]


def test_the_host_stamps_the_result_and_names_each_fault_once():
    """A localizer returns only its estimates; run_localizer (node workers, vizloc-eval) times the call,
    checks and stamps the result, and turns each fault into one /diagnostics heading."""
    from vizloc_ros.localizer import LocalizeFault, run_localizer

    frame = Frame(rgb_HW3=np.zeros((4, 4, 3), np.uint8), stamp_ns=42, frame_id='cam')

    class Stub:
        def __init__(self, outcome):
            self.outcome = outcome

        def localize(self, frame):
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome

    bare = LocalizationResult(geo=_geo(np.eye(3)))
    assert (bare.stamp_ns, bare.frame_id, bare.localizer) == (0, '', '') and math.isnan(bare.latency_ms)
    result, start_ns, end_ns = run_localizer(Stub(bare), frame, 'gps')
    assert (result.stamp_ns, result.frame_id, result.localizer, result.geo) == (42, 'cam', 'gps', bare.geo)
    assert result.latency_ms >= 0.0 and end_ns >= start_ns
    assert result.stamped(frame, 'other', 2.5).latency_ms == 2.5
    for outcome, kind in ((InvalidInputError('dark'), 'bad_input'), (InvalidOutputError('nan'), 'invalid_output'),
                          (RuntimeError('bug'), 'plugin_error'), (ValueError('bug'), 'plugin_error'),
                          (SystemExit(3), 'plugin_error'), ('not a result', 'invalid_output')):
        with pytest.raises(LocalizeFault) as info:
            run_localizer(Stub(outcome), frame, 'x')
        assert info.value.kind == kind, outcome
        assert fault_kind(info.value.cause) == kind
    with pytest.raises(KeyboardInterrupt):  # still stops the host
        run_localizer(Stub(KeyboardInterrupt()), frame, 'x')
