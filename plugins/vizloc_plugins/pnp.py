"""DSAC*-style RANSAC PnP on dense 2D-3D correspondences, with a pose covariance. No torch.

Pipeline (after DSAC*, Brachmann & Rother 2021, built on OpenCV solvers, no hand-written solver):

1. **Hypotheses**: ``hypotheses`` minimal samples of 4 correspondences, each solved with
   ``cv2.solvePnP(..., flags=cv2.SOLVEPNP_AP3P)`` (P3P on 3 points, the 4th picks the solution).
   Samples whose image points are nearly collinear are redrawn.
2. **Scoring** (vectorised numpy): every hypothesis projects *all* scene points; its score is the
   soft inlier count ``sum(sigmoid(beta * (tau - err_px)))`` with ``tau = inlier_threshold_px``
   and ``beta = 5 / tau`` (DSAC*'s differentiable inlier count; points behind the camera count 0).
3. **Refinement**: the best hypothesis is refined with ``cv2.solvePnPRefineLM`` on its hard
   inliers (``err < tau``), re-selecting the inliers after each round until the set is stable.
4. **Covariance**: ``cv2.projectPoints`` gives the Jacobian J of the inlier reprojections w.r.t.
   ``(rvec, tvec)``; ``Sigma_p = s^2 (J^T J)^-1`` with ``s^2`` the inlier residual variance
   (``sum r^2 / (2n - 6)``). ``Sigma_p`` is propagated (numerical Jacobian, central differences)
   to the camera pose in the map frame in geometry_msgs/PoseWithCovariance order: camera position
   (x, y, z) and a small rotation (rx, ry, rz) of the camera about the *map* axes
   (``R' = exp([d]x) R_map_camera``); metres and radians.

Conventions: ``points_map_N3`` are scene (map) coordinates in metres; ``pixels_N2`` are pixel
centres (u right, v down) of the image whose intrinsics are ``K_3x3``; OpenCV's camera frame
(x right, y down, z forward). Returned ``T_map_camera`` maps camera coordinates to map coordinates.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ['RansacOptions', 'PnPSolution', 'PnPError', 'solve_pnp_ransac', 'solve_pnp_lo_ransac', 'count_inliers',
           'Evidence', 'pose_covariance_map',
           'project_points', 'undistort_pixels', 'geo_estimate_from_pose']

logger = logging.getLogger(__name__)

_MIN_CORRESPONDENCES = 4


class PnPError(ValueError):
    """Correspondences or intrinsics that RANSAC PnP cannot use (shape, non-finite values...)."""


@dataclass(frozen=True)
class RansacOptions:
    """RANSAC PnP settings.

    ``hypotheses``: number of minimal-sample pose hypotheses; ``inlier_threshold_px``: reprojection
    error (pixels of the image ``K`` belongs to) under which a correspondence is an inlier;
    ``min_inliers``: fewer inliers than this after refinement means no pose (no wrong answers);
    ``min_inlier_ratio``: the same for the share of correspondences that are inliers;
    ``refine_rounds``: maximum inlier re-selection + LM rounds; ``seed``: RNG seed (None = random);
    ``max_sample_tries``: candidate samples drawn per wanted hypothesis (degenerate ones are skipped).
    """

    hypotheses: int = 256
    inlier_threshold_px: float = 10.0
    min_inliers: int = 30
    min_inlier_ratio: float = 0.0
    refine_rounds: int = 8
    seed: int | None = 0
    max_sample_tries: int = 10
    min_depth_m: float = 0.01

    def __post_init__(self) -> None:
        if self.hypotheses < 1:
            raise PnPError(f'hypotheses must be >= 1, got {self.hypotheses}')
        if not self.inlier_threshold_px > 0.0:
            raise PnPError(f'inlier_threshold_px must be > 0, got {self.inlier_threshold_px}')
        if self.min_inliers < _MIN_CORRESPONDENCES:
            raise PnPError(f'min_inliers must be >= {_MIN_CORRESPONDENCES}, got {self.min_inliers}')
        if not 0.0 <= self.min_inlier_ratio <= 1.0:
            raise PnPError(f'min_inlier_ratio must be in [0, 1], got {self.min_inlier_ratio}')
        if self.refine_rounds < 0:
            raise PnPError(f'refine_rounds must be >= 0, got {self.refine_rounds}')


@dataclass(frozen=True)
class PnPSolution:
    """A RANSAC PnP result. ``rvec``/``tvec`` are OpenCV's (map -> camera) parameters."""

    T_map_camera: np.ndarray
    cov_6x6: np.ndarray
    rvec: np.ndarray
    tvec: np.ndarray
    inlier_mask: np.ndarray
    num_inliers: int
    inlier_ratio: float
    soft_score: float
    reprojection_rmse_px: float
    hypotheses_valid: int

    @property
    def position_map_m(self) -> np.ndarray:
        return self.T_map_camera[:3, 3]


def _check_inputs(points_map_N3: np.ndarray, pixels_N2: np.ndarray, K_3x3: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    points = np.ascontiguousarray(points_map_N3, dtype=np.float64)
    pixels = np.ascontiguousarray(pixels_N2, dtype=np.float64)
    K = np.asarray(K_3x3, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise PnPError(f'points_map_N3 must have shape (N, 3), got {points.shape}')
    if pixels.shape != (points.shape[0], 2):
        raise PnPError(f'pixels_N2 must have shape ({points.shape[0]}, 2), got {pixels.shape}')
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise PnPError(f'K must be a finite 3x3 camera matrix with positive focal lengths, got {K!r}')
    finite = np.all(np.isfinite(points), axis=1) & np.all(np.isfinite(pixels), axis=1)
    if not np.all(finite):
        raise PnPError(f'{int((~finite).sum())} correspondences contain non-finite values; filter them first')
    return points, pixels, K


def _rotations(rvecs_H3: np.ndarray) -> np.ndarray:
    """Rodrigues vectors -> rotation matrices (H, 3, 3), vectorised."""
    theta = np.linalg.norm(rvecs_H3, axis=1)
    safe = np.where(theta > 1e-12, theta, 1.0)
    k = rvecs_H3 / safe[:, None]
    zeros = np.zeros_like(theta)
    Kx = np.stack([np.stack([zeros, -k[:, 2], k[:, 1]], -1),
                   np.stack([k[:, 2], zeros, -k[:, 0]], -1),
                   np.stack([-k[:, 1], k[:, 0], zeros], -1)], axis=1)
    s = np.sin(theta)[:, None, None]
    c = (1.0 - np.cos(theta))[:, None, None]
    R = np.eye(3)[None] + s * Kx + c * (Kx @ Kx)
    small = theta <= 1e-12
    if np.any(small):
        R[small] = np.eye(3)
    return R


def project_points(points_map_N3: np.ndarray, rvecs_H3: np.ndarray, tvecs_H3: np.ndarray, K_3x3: np.ndarray,
                   dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Project N points under H poses: returns (pixels (H, N, 2), depth_m (H, N)). Vectorised (BLAS matmul)."""
    u, v, z = _project_uvz(points_map_N3, rvecs_H3, tvecs_H3, K_3x3, dtype)
    return np.stack([u, v], axis=-1), z


def _project_uvz(points_map_N3: np.ndarray, rvecs_H3: np.ndarray, tvecs_H3: np.ndarray, K_3x3: np.ndarray,
                 dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    R = _rotations(np.asarray(rvecs_H3, dtype=np.float64).reshape(-1, 3))
    t = np.asarray(tvecs_H3, dtype=np.float64).reshape(-1, 3)
    # centre the points first so that float32 keeps precision for scenes far from the origin
    centre = points_map_N3.mean(axis=0)
    t_centred = t + np.einsum('hij,j->hi', R, centre)
    P = (points_map_N3 - centre).T.astype(dtype)                               # (3, N)
    X = np.matmul(R.astype(dtype), P) + t_centred.astype(dtype)[:, :, None]     # (H, 3, N)
    z = X[:, 2]
    z_safe = np.where(np.abs(z) > 1e-9, z, dtype(1e-9))
    x_n = X[:, 0] / z_safe
    y_n = X[:, 1] / z_safe
    u = dtype(K_3x3[0, 0]) * x_n + dtype(K_3x3[0, 1]) * y_n + dtype(K_3x3[0, 2])
    v = dtype(K_3x3[1, 1]) * y_n + dtype(K_3x3[1, 2])
    return u, v, z


def _reprojection_errors(points: np.ndarray, pixels: np.ndarray, rvecs: np.ndarray, tvecs: np.ndarray,
                         K: np.ndarray, min_depth_m: float, dtype: type = np.float64) -> np.ndarray:
    """(H, N) reprojection errors in pixels; ``inf`` for points closer than ``min_depth_m``."""
    u, v, z = _project_uvz(points, rvecs, tvecs, K, dtype)
    du = u - pixels[:, 0].astype(dtype)
    dv = v - pixels[:, 1].astype(dtype)
    err = np.sqrt(du * du + dv * dv)
    err[z <= min_depth_m] = np.inf
    return err


def _sample_hypotheses(points: np.ndarray, pixels: np.ndarray, K: np.ndarray, options: RansacOptions,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``hypotheses`` AP3P poses from random 4-point samples (distinct, non-collinear in the image)."""
    n = points.shape[0]
    wanted = options.hypotheses
    # draw all candidate samples at once; invalid ones (repeated index, collinear) are skipped
    candidates = rng.integers(0, n, size=(wanted * options.max_sample_tries, 4))
    distinct = ((candidates[:, 0] != candidates[:, 1]) & (candidates[:, 0] != candidates[:, 2])
                & (candidates[:, 0] != candidates[:, 3]) & (candidates[:, 1] != candidates[:, 2])
                & (candidates[:, 1] != candidates[:, 3]) & (candidates[:, 2] != candidates[:, 3]))
    p = pixels[candidates]                                                  # (M, 4, 2)
    area = 0.5 * np.abs((p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1])
                        - (p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1]))
    candidates = candidates[distinct & (area >= 1.0)]
    rvecs, tvecs = [], []
    for idx in candidates:
        if len(rvecs) == wanted:
            break
        try:
            ok, rvec, tvec = cv2.solvePnP(points[idx], pixels[idx], K, None, flags=cv2.SOLVEPNP_AP3P)
        except cv2.error:
            continue
        if ok and np.isfinite(rvec).all() and np.isfinite(tvec).all():
            rvecs.append(rvec.reshape(3))
            tvecs.append(tvec.reshape(3))
    if not rvecs:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.asarray(rvecs), np.asarray(tvecs)


def solve_pnp_ransac(points_map_N3: np.ndarray, pixels_N2: np.ndarray, K_3x3: np.ndarray,
                     options: RansacOptions = RansacOptions(), weights_N: np.ndarray | None = None
                     ) -> PnPSolution | None:
    """Estimate the camera pose from 2D-3D correspondences; ``None`` when no pose has enough inliers.

    ``weights_N`` (optional, e.g. the network's confidence) multiplies each correspondence's soft
    inlier vote; it does not change the refinement.
    """
    points, pixels, K = _check_inputs(points_map_N3, pixels_N2, K_3x3)
    n = points.shape[0]
    if n < max(_MIN_CORRESPONDENCES, options.min_inliers):
        logger.debug('RANSAC PnP: %d correspondences < min_inliers %d', n, options.min_inliers)
        return None
    rng = np.random.default_rng(options.seed)
    rvecs, tvecs = _sample_hypotheses(points, pixels, K, options, rng)
    if rvecs.shape[0] == 0:
        return None
    tau = options.inlier_threshold_px
    beta = 5.0 / tau
    # scoring in float32 (only ranks hypotheses; refinement and inliers below are float64)
    err = _reprojection_errors(points, pixels, rvecs, tvecs, K, options.min_depth_m, np.float32)  # (H, N)
    soft = np.clip(beta * (err - tau), -50.0, 50.0, out=np.empty_like(err))
    np.exp(soft, out=soft)
    soft += 1.0
    np.reciprocal(soft, out=soft)
    if weights_N is not None:
        weights = np.asarray(weights_N, dtype=np.float64).reshape(-1)
        if weights.shape[0] != n:
            raise PnPError(f'weights_N must have {n} entries, got {weights.shape[0]}')
        soft *= weights.astype(np.float32)[None]
    scores = soft.sum(axis=1, dtype=np.float64)
    best = int(np.argmax(scores))
    rvec = rvecs[best].reshape(3, 1).copy()
    tvec = tvecs[best].reshape(3, 1).copy()
    inliers = _reprojection_errors(points, pixels, rvecs[best:best + 1], tvecs[best:best + 1], K,
                                   options.min_depth_m)[0] < tau

    for _ in range(options.refine_rounds):
        if inliers.sum() < _MIN_CORRESPONDENCES:
            break
        rvec, tvec = cv2.solvePnPRefineLM(points[inliers], pixels[inliers], K, None, rvec, tvec)
        new_inliers = _reprojection_errors(points, pixels, rvec.reshape(1, 3), tvec.reshape(1, 3), K,
                                           options.min_depth_m)[0] < tau
        if np.array_equal(new_inliers, inliers):
            break
        inliers = new_inliers
    num_inliers = int(inliers.sum())
    if num_inliers < options.min_inliers or num_inliers < options.min_inlier_ratio * n:
        logger.debug('RANSAC PnP: best pose has %d inliers of %d (min_inliers %d, min_inlier_ratio %.2f)',
                     num_inliers, n, options.min_inliers, options.min_inlier_ratio)
        return None
    # final LM pass on the final inlier set (the loop may have stopped after changing it)
    rvec, tvec = cv2.solvePnPRefineLM(points[inliers], pixels[inliers], K, None, rvec, tvec)
    residuals = _residuals(points[inliers], pixels[inliers], rvec, tvec, K)
    rmse = float(np.sqrt(np.mean(residuals ** 2) * 2.0))
    cov = pose_covariance_map(points[inliers], pixels[inliers], rvec, tvec, K)
    R_camera_map, _ = cv2.Rodrigues(rvec)
    T_map_camera = np.eye(4)
    T_map_camera[:3, :3] = R_camera_map.T
    T_map_camera[:3, 3] = (-R_camera_map.T @ tvec).reshape(3)
    return PnPSolution(
        T_map_camera=T_map_camera, cov_6x6=cov, rvec=rvec.reshape(3), tvec=tvec.reshape(3),
        inlier_mask=inliers, num_inliers=num_inliers, inlier_ratio=num_inliers / n,
        soft_score=float(scores[best]), reprojection_rmse_px=rmse, hypotheses_valid=int(rvecs.shape[0]))


def count_inliers(points_map_N3: np.ndarray, pixels_N2: np.ndarray, T_map_camera: np.ndarray, K_3x3: np.ndarray,
                  threshold_px: float, min_depth_m: float = 0.01) -> int:
    """How many correspondences the pose ``T_map_camera`` reprojects within ``threshold_px`` (in front of it)."""
    points, pixels, K = _check_inputs(points_map_N3, pixels_N2, K_3x3)
    R_camera_map = np.asarray(T_map_camera, dtype=np.float64)[:3, :3].T
    rvec, _ = cv2.Rodrigues(R_camera_map)
    tvec = -R_camera_map @ np.asarray(T_map_camera, dtype=np.float64)[:3, 3]
    errors = _reprojection_errors(points, pixels, rvec.reshape(1, 3), tvec.reshape(1, 3), K, min_depth_m)[0]
    return int(np.sum(errors < threshold_px))


@dataclass(frozen=True)
class Evidence:
    """One source's 2D-3D correspondences (scene points, undistorted pixels of the image whose intrinsics
    are ``K_3x3``) and the reprojection threshold they are judged with."""

    points_N3: np.ndarray
    pixels_N2: np.ndarray
    K_3x3: np.ndarray
    threshold_px: float

    def share(self, T_map_camera: np.ndarray) -> float:
        """Share of the correspondences that the pose reprojects within the threshold (0 when there are none)."""
        if len(self.points_N3) == 0:
            return 0.0
        return count_inliers(self.points_N3, self.pixels_N2, T_map_camera, self.K_3x3,
                             self.threshold_px) / len(self.points_N3)


def solve_pnp_lo_ransac(points_map_N3: np.ndarray, pixels_N2: np.ndarray, K_3x3: np.ndarray, width: int, height: int,
                        *, threshold_px: float = 4.0, seed: int = 0, max_iterations: int = 10000) -> PnPSolution | None:
    """poselib's LO-RANSAC PnP for sparse matches (local features), with :func:`pose_covariance_map`.

    For correspondences with a low inlier ratio, where the fixed hypothesis budget of
    :func:`solve_pnp_ransac` (dense network cells) is too small: poselib samples until its confidence is
    reached and refines locally. ``None`` when it finds no pose with at least 4 inliers.
    ``soft_score`` is the inlier count; ``hypotheses_valid`` poselib's iterations.
    """
    import poselib

    points, pixels, K = _check_inputs(points_map_N3, pixels_N2, K_3x3)
    if len(points) < _MIN_CORRESPONDENCES:
        return None
    camera = {'model': 'PINHOLE', 'width': int(width), 'height': int(height),
              'params': [float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])]}
    ransac = {'max_reproj_error': float(threshold_px), 'seed': int(seed), 'max_iterations': int(max_iterations)}
    pose, info = poselib.estimate_absolute_pose(np.ascontiguousarray(pixels), np.ascontiguousarray(points), camera,
                                                ransac, {})
    inliers = np.asarray(info.get('inliers', []), bool)
    if inliers.size != len(points) or inliers.sum() < _MIN_CORRESPONDENCES:
        return None
    R_camera_map = np.asarray(pose.R)
    tvec = np.asarray(pose.t, dtype=np.float64).reshape(3)
    if not (np.all(np.isfinite(R_camera_map)) and np.all(np.isfinite(tvec))):
        return None
    rvec, _ = cv2.Rodrigues(R_camera_map)
    try:
        cov = pose_covariance_map(points[inliers], pixels[inliers], rvec, tvec, K)
    except PnPError:
        return None
    residuals = _residuals(points[inliers], pixels[inliers], rvec, tvec.reshape(3, 1), K)
    T_map_camera = np.eye(4)
    T_map_camera[:3, :3] = R_camera_map.T
    T_map_camera[:3, 3] = -R_camera_map.T @ tvec
    num_inliers = int(inliers.sum())
    return PnPSolution(
        T_map_camera=T_map_camera, cov_6x6=cov, rvec=rvec.reshape(3), tvec=tvec, inlier_mask=inliers,
        num_inliers=num_inliers, inlier_ratio=num_inliers / len(points), soft_score=float(num_inliers),
        reprojection_rmse_px=float(np.sqrt(np.mean(residuals ** 2) * 2.0)),
        hypotheses_valid=int(info.get('iterations', 0)))


def _residuals(points: np.ndarray, pixels: np.ndarray, rvec: np.ndarray, tvec: np.ndarray, K: np.ndarray) -> np.ndarray:
    projected, _ = cv2.projectPoints(points, rvec, tvec, K, None)
    return (projected.reshape(-1, 2) - pixels).reshape(-1)


def _pose_map(params_6: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rvec, tvec) of the map->camera transform -> (R_map_camera, camera position in map)."""
    R_camera_map, _ = cv2.Rodrigues(params_6[:3].reshape(3, 1))
    return R_camera_map.T, -R_camera_map.T @ params_6[3:].reshape(3)


def _small_rotation_vector(dR: np.ndarray) -> np.ndarray:
    """Rotation vector of a rotation close to identity (first order, exact enough for differences).

    ``cv2.Rodrigues`` returns exactly zero below ~1e-5 rad, which would zero the derivative.
    """
    return 0.5 * np.array([dR[2, 1] - dR[1, 2], dR[0, 2] - dR[2, 0], dR[1, 0] - dR[0, 1]])


def pose_covariance_map(points_map_N3: np.ndarray, pixels_N2: np.ndarray, rvec: np.ndarray, tvec: np.ndarray,
                        K_3x3: np.ndarray, min_sigma_px: float = 0.05) -> np.ndarray:
    """6x6 covariance of the camera pose in the map frame (x, y, z, rx, ry, rz), metres and radians.

    ``Sigma_p = s^2 (J^T J)^-1`` for the OpenCV parameters (rvec, tvec) from the Jacobian of
    ``cv2.projectPoints`` and the residual variance ``s^2`` (at least ``min_sigma_px^2``, so that
    exact correspondences do not claim zero uncertainty), then propagated to the map frame.
    """
    points = np.asarray(points_map_N3, dtype=np.float64)
    pixels = np.asarray(pixels_N2, dtype=np.float64)
    n = points.shape[0]
    if n < _MIN_CORRESPONDENCES:
        raise PnPError(f'covariance needs at least {_MIN_CORRESPONDENCES} correspondences, got {n}')
    rvec = np.asarray(rvec, dtype=np.float64).reshape(3, 1)
    tvec = np.asarray(tvec, dtype=np.float64).reshape(3, 1)
    projected, jacobian = cv2.projectPoints(points, rvec, tvec, K_3x3, None)
    J = jacobian[:, :6]  # d(u,v)/d(rvec, tvec)
    residuals = projected.reshape(-1, 2) - pixels
    dof = max(2 * n - 6, 1)
    sigma2 = max(float(np.sum(residuals ** 2)) / dof, min_sigma_px ** 2)
    JTJ = J.T @ J
    try:
        cov_params = sigma2 * np.linalg.inv(JTJ)
    except np.linalg.LinAlgError:
        cov_params = sigma2 * np.linalg.pinv(JTJ)
    # propagate to (camera position in map, rotation about map axes) by central differences
    p0 = np.concatenate([rvec.reshape(3), tvec.reshape(3)])
    R0, c0 = _pose_map(p0)
    G = np.zeros((6, 6))
    for k in range(6):
        step = 1e-6 * max(1.0, abs(p0[k]))
        outputs = []
        for sign in (1.0, -1.0):
            p = p0.copy()
            p[k] += sign * step
            R, c = _pose_map(p)
            outputs.append(np.concatenate([c - c0, _small_rotation_vector(R @ R0.T)]))
        G[:, k] = (outputs[0] - outputs[1]) / (2.0 * step)
    cov = G @ cov_params @ G.T
    cov = 0.5 * (cov + cov.T)
    # guard against round-off making a tiny eigenvalue negative
    eigvals = np.linalg.eigvalsh(cov)
    if eigvals.min() <= 0.0:
        cov = cov + np.eye(6) * (abs(eigvals.min()) + 1e-12 * max(1.0, eigvals.max()))
    return cov


def rotation_error_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle of R_a^T R_b in degrees (small helper for diagnostics)."""
    cos = (np.trace(R_a.T @ R_b) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))


def undistort_pixels(pixels_N2: np.ndarray, K_3x3: np.ndarray, dist_coeffs: np.ndarray | None,
                     distortion_model: str = 'plumb_bob') -> np.ndarray:
    """Pixels of a distorted camera -> pixels of the ideal pinhole camera with the same ``K``
    (``cv2.undistortPoints``; ``cv2.fisheye.undistortPoints`` for ``equidistant``). No-op without distortion."""
    pixels = np.asarray(pixels_N2, dtype=np.float64)
    if dist_coeffs is None or not np.asarray(dist_coeffs).size or not np.any(np.asarray(dist_coeffs) != 0):
        return pixels
    D = np.asarray(dist_coeffs, dtype=np.float64).reshape(-1)
    if distortion_model == 'equidistant':
        return cv2.fisheye.undistortPoints(pixels.reshape(-1, 1, 2), K_3x3, D[:4], P=K_3x3).reshape(-1, 2)
    return cv2.undistortPoints(pixels.reshape(-1, 1, 2), K_3x3, D, P=K_3x3).reshape(-1, 2)


def geo_estimate_from_pose(geo, T_map_camera: np.ndarray, cov_6x6: np.ndarray):
    """WGS84 fix of a map-frame pose: its position and position covariance through
    :meth:`vizloc_ros.geodesy.GeoReference.scene_to_wgs84_fix`."""
    from vizloc_ros.types import GeoEstimate

    fix = geo.scene_to_wgs84_fix(np.asarray(T_map_camera)[:3, 3], np.asarray(cov_6x6)[:3, :3])
    return GeoEstimate(lat_deg=fix.lat_deg, lon_deg=fix.lon_deg, alt_m=fix.alt_m, cov_enu_m2=fix.cov_enu_m2)
