"""RANSAC PnP (plugins/vizloc_plugins/pnp.py): exact recovery with outliers, NO_FIX on noise, covariance."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import transforms3d

from vizloc_plugins.pnp import PnPError, RansacOptions, pose_covariance_map, project_points, solve_pnp_ransac

K = np.array([[400.0, 0.0, 319.5], [0.0, 400.0, 239.5], [0.0, 0.0, 1.0]])
W, H = 640, 480


def _true_pose(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A downward-looking aerial camera ~100 m above the ground, tilted a little."""
    R_map_camera = transforms3d.euler.euler2mat(math.pi + rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3),
                                                rng.uniform(-math.pi, math.pi), 'sxyz')
    position = np.array([rng.uniform(-50, 50), rng.uniform(-50, 50), 100.0 + rng.uniform(-20, 20)])
    return R_map_camera, position


def _correspondences(rng: np.random.Generator, n: int, outlier_ratio: float, threshold_px: float):
    R_map_camera, position = _true_pose(rng)
    pixels = np.stack([rng.uniform(0, W - 1, n), rng.uniform(0, H - 1, n)], axis=1)
    depth = rng.uniform(60.0, 140.0, n)
    rays = np.linalg.solve(K, np.concatenate([pixels, np.ones((n, 1))], axis=1).T).T
    points = (R_map_camera @ (rays * depth[:, None]).T).T + position
    R_camera_map = R_map_camera.T
    rvec, _ = cv2.Rodrigues(R_camera_map)
    tvec = -R_camera_map @ position
    outliers = rng.random(n) < outlier_ratio
    for i in np.flatnonzero(outliers):
        while True:  # outliers that are far from their true reprojection (3x threshold)
            candidate = points[i] + rng.normal(0.0, 30.0, 3)
            uv, z = project_points(candidate[None], rvec.reshape(1, 3), tvec.reshape(1, 3), K)
            if z[0, 0] <= 0 or np.linalg.norm(uv[0, 0] - pixels[i]) > 3 * threshold_px:
                points[i] = candidate
                break
    return points, pixels, R_map_camera, position, outliers


@pytest.mark.parametrize('outlier_ratio', [0.3, 0.5])
def test_ransac_recovers_exact_pose_with_outliers(outlier_ratio: float) -> None:
    rng = np.random.default_rng(7)
    options = RansacOptions(hypotheses=128, inlier_threshold_px=5.0, min_inliers=50, seed=1)
    points, pixels, R_true, c_true, outliers = _correspondences(rng, 600, outlier_ratio, options.inlier_threshold_px)
    solution = solve_pnp_ransac(points, pixels, K, options)
    assert solution is not None
    assert np.linalg.norm(solution.T_map_camera[:3, 3] - c_true) < 1e-6
    R_err = solution.T_map_camera[:3, :3].T @ R_true
    angle_deg = math.degrees(math.acos(np.clip((np.trace(R_err) - 1) / 2, -1, 1)))
    assert angle_deg < 1e-6
    np.testing.assert_array_equal(solution.inlier_mask, ~outliers)
    assert solution.inlier_ratio == pytest.approx(1.0 - outliers.mean())
    assert solution.reprojection_rmse_px < 1e-6


def test_ransac_pure_noise_gives_no_fix() -> None:
    rng = np.random.default_rng(3)
    n = 500
    points = rng.uniform(-100, 100, (n, 3)) + np.array([0, 0, 150.0])
    pixels = np.stack([rng.uniform(0, W, n), rng.uniform(0, H, n)], axis=1)
    options = RansacOptions(hypotheses=128, inlier_threshold_px=5.0, min_inliers=50, seed=0)
    assert solve_pnp_ransac(points, pixels, K, options) is None


def test_covariance_is_spd_and_matches_monte_carlo() -> None:
    rng = np.random.default_rng(11)
    sigma_px = 1.0
    points, pixels_exact, R_true, c_true, _ = _correspondences(rng, 300, 0.0, 5.0)
    options = RansacOptions(hypotheses=32, inlier_threshold_px=6.0, min_inliers=50, seed=2)
    positions = []
    rotations = []
    covs = []
    for trial in range(40):
        noisy = pixels_exact + rng.normal(0.0, sigma_px, pixels_exact.shape)
        solution = solve_pnp_ransac(points, noisy, K, options)
        assert solution is not None
        positions.append(solution.T_map_camera[:3, 3])
        # small rotation about the map axes: R_est = exp([d]x) R_true
        dR = solution.T_map_camera[:3, :3] @ R_true.T
        rotations.append(cv2.Rodrigues(dR)[0].reshape(3))
        covs.append(solution.cov_6x6)
    cov = covs[0]
    assert cov.shape == (6, 6)
    np.testing.assert_allclose(cov, cov.T, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(cov) > 0)
    # predicted position covariance agrees with the spread of the estimates (within a factor 2)
    empirical = np.cov(np.asarray(positions).T)
    predicted = np.mean(covs, axis=0)[:3, :3]
    ratio = np.trace(empirical) / np.trace(predicted)
    assert 0.5 < ratio < 2.0, ratio
    empirical_rot = np.cov(np.asarray(rotations).T)
    predicted_rot = np.mean(covs, axis=0)[3:, 3:]
    ratio_rot = np.trace(empirical_rot) / np.trace(predicted_rot)
    assert 0.5 < ratio_rot < 2.0, ratio_rot
    # position/rotation cross-correlation sign agrees too (the largest off-diagonal block entry)
    joint = np.cov(np.concatenate([np.asarray(positions), np.asarray(rotations)], axis=1).T)
    k = np.unravel_index(np.argmax(np.abs(joint[:3, 3:])), (3, 3))
    assert np.sign(joint[:3, 3:][k]) == np.sign(np.mean(covs, axis=0)[:3, 3:][k])


def test_covariance_rejects_too_few_points_and_bad_inputs() -> None:
    with pytest.raises(PnPError):
        pose_covariance_map(np.zeros((3, 3)), np.zeros((3, 2)), np.zeros(3), np.ones(3), K)
    with pytest.raises(PnPError):
        solve_pnp_ransac(np.zeros((10, 3)), np.zeros((9, 2)), K)
    with pytest.raises(PnPError):
        solve_pnp_ransac(np.full((10, 3), np.nan), np.zeros((10, 2)), K)
    with pytest.raises(PnPError):
        RansacOptions(min_inliers=2)
    with pytest.raises(PnPError):
        RansacOptions(min_inlier_ratio=1.5)


def test_min_inlier_ratio_rejects_a_small_consistent_subset() -> None:
    rng = np.random.default_rng(5)
    points, pixels, _, _, outliers = _correspondences(rng, 400, 0.85, 5.0)
    assert outliers.mean() > 0.8
    loose = RansacOptions(hypotheses=256, inlier_threshold_px=5.0, min_inliers=20, seed=3)
    strict = RansacOptions(hypotheses=256, inlier_threshold_px=5.0, min_inliers=20, min_inlier_ratio=0.25, seed=3)
    assert solve_pnp_ransac(points, pixels, K, loose) is not None
    assert solve_pnp_ransac(points, pixels, K, strict) is None
