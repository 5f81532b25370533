"""6-DoF pose metrics (CrossLoc / DSAC* printout), pure numpy.

Errors are between estimated and ground-truth camera poses ``T_world_camera`` (4x4, metres):
translation error = distance between camera centres (m); rotation error = angle of
``R_est^T R_gt`` (degrees). Failed localizations (no pose) count as infinite error: they are in
every denominator and inside no threshold, and the median/mean are computed over all frames
(median is inf when more than half failed; mean over the successful frames is reported apart).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ['AERIAL_THRESHOLDS', 'INDOOR_THRESHOLDS', 'translation_error_m', 'rotation_error_deg', 'pose_errors',
           'PoseErrorSummary', 'summarize_pose_errors', 'scene_coordinate_error_m', 'ellipsoid_coverage']

#: CrossLoc's accuracy thresholds (metres, degrees) for aerial scenes.
AERIAL_THRESHOLDS: tuple[tuple[float, float], ...] = ((30.0, 10.0), (20.0, 10.0), (10.0, 10.0), (10.0, 7.0),
                                                      (5.0, 5.0), (3.0, 3.0))
#: The classic indoor threshold (5 cm, 5 deg), plus a coarser one.
INDOOR_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.05, 5.0), (0.10, 5.0), (0.25, 5.0))


def _as_poses(T: np.ndarray) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape == (4, 4):
        T = T[None]
    if T.ndim != 3 or T.shape[1:] != (4, 4):
        raise ValueError(f'poses must have shape (N, 4, 4) or (4, 4), got {T.shape}')
    return T


def translation_error_m(T_est: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    """Camera-centre distance (m) for each pair of ``T_world_camera`` poses."""
    a, b = _as_poses(T_est), _as_poses(T_gt)
    return np.linalg.norm(a[:, :3, 3] - b[:, :3, 3], axis=1)


def rotation_error_deg(T_est: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    """Angle (deg) of the relative rotation ``R_est^T R_gt`` for each pair of poses."""
    a, b = _as_poses(T_est), _as_poses(T_gt)
    relative = np.einsum('nji,njk->nik', a[:, :3, :3], b[:, :3, :3])
    cos = (np.trace(relative, axis1=1, axis2=2) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def pose_errors(T_est: Sequence[np.ndarray | None], T_gt: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(translation_m, rotation_deg) per frame; ``None`` estimates (no fix) give ``inf``."""
    if len(T_est) != len(T_gt):
        raise ValueError(f'{len(T_est)} estimates for {len(T_gt)} ground-truth poses')
    t_err = np.full(len(T_gt), np.inf)
    r_err = np.full(len(T_gt), np.inf)
    for i, (est, gt) in enumerate(zip(T_est, T_gt)):
        if est is not None:
            t_err[i] = translation_error_m(est, gt)[0]
            r_err[i] = rotation_error_deg(est, gt)[0]
    return t_err, r_err


@dataclass(frozen=True)
class PoseErrorSummary:
    """The CrossLoc printout: medians/means and the share of frames within (m, deg) thresholds."""

    count: int
    failures: int
    median_translation_m: float
    median_rotation_deg: float
    mean_translation_m: float
    mean_rotation_deg: float
    within: dict[str, float]

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {
            'frames': float(self.count),
            'no_fix': float(self.failures),
            'median_translation_m': self.median_translation_m,
            'median_rotation_deg': self.median_rotation_deg,
            'mean_translation_m': self.mean_translation_m,
            'mean_rotation_deg': self.mean_rotation_deg,
        }
        out.update({f'pct_within_{k}': v for k, v in self.within.items()})
        return out


def _threshold_key(metres: float, degrees: float) -> str:
    if metres < 1.0:
        return f'{metres * 100:g}cm_{degrees:g}deg'
    return f'{metres:g}m_{degrees:g}deg'


def summarize_pose_errors(translation_m: np.ndarray, rotation_deg: np.ndarray,
                          thresholds: Sequence[tuple[float, float]] = AERIAL_THRESHOLDS) -> PoseErrorSummary:
    """Median (over all frames, failures = inf) and mean (over successful frames) errors and % within thresholds."""
    t = np.asarray(translation_m, dtype=np.float64).reshape(-1)
    r = np.asarray(rotation_deg, dtype=np.float64).reshape(-1)
    if t.shape != r.shape:
        raise ValueError(f'translation and rotation errors differ in length: {t.shape} vs {r.shape}')
    if t.size == 0:
        raise ValueError('no pose errors to summarize')
    ok = np.isfinite(t) & np.isfinite(r)
    within = {_threshold_key(m, d): float(100.0 * np.mean((t <= m) & (r <= d))) for m, d in thresholds}
    return PoseErrorSummary(
        count=int(t.size), failures=int((~ok).sum()),
        median_translation_m=float(np.median(t)), median_rotation_deg=float(np.median(r)),
        mean_translation_m=float(t[ok].mean()) if ok.any() else math.inf,
        mean_rotation_deg=float(r[ok].mean()) if ok.any() else math.inf,
        within=within)


def scene_coordinate_error_m(pred_N3: np.ndarray, gt_N3: np.ndarray, valid_N: np.ndarray | None = None) -> float:
    """Mean Euclidean distance (m) between predicted and ground-truth scene coordinates (valid ones)."""
    pred = np.asarray(pred_N3, dtype=np.float64).reshape(-1, 3)
    gt = np.asarray(gt_N3, dtype=np.float64).reshape(-1, 3)
    if pred.shape != gt.shape:
        raise ValueError(f'prediction {pred.shape} and ground truth {gt.shape} differ in shape')
    mask = np.ones(len(pred), dtype=bool) if valid_N is None else np.asarray(valid_N, dtype=bool).reshape(-1)
    if not mask.any():
        return math.nan
    return float(np.linalg.norm(pred[mask] - gt[mask], axis=1).mean())


# chi-square 95% quantiles for 1..6 degrees of freedom
_CHI2_95 = {1: 3.841459, 2: 5.991465, 3: 7.814728, 4: 9.487729, 5: 11.070498, 6: 12.591587}


def ellipsoid_coverage(errors_ND: np.ndarray, covariances_NDD: np.ndarray) -> float:
    """Share of error vectors inside their 95 % confidence ellipsoid (``e^T C^-1 e <= chi2_95(D)``).

    A calibrated covariance gives ~0.95. Frames with non-finite errors are skipped.
    """
    errors = np.asarray(errors_ND, dtype=np.float64)
    covs = np.asarray(covariances_NDD, dtype=np.float64)
    if errors.ndim != 2 or covs.shape != (errors.shape[0], errors.shape[1], errors.shape[1]):
        raise ValueError(f'errors (N, D) and covariances (N, D, D) do not match: {errors.shape}, {covs.shape}')
    dims = errors.shape[1]
    if dims not in _CHI2_95:
        raise ValueError(f'ellipsoid coverage supports 1..6 dimensions, got {dims}')
    ok = np.all(np.isfinite(errors), axis=1) & np.all(np.isfinite(covs), axis=(1, 2))
    if not ok.any():
        return math.nan
    mahalanobis2 = np.einsum('ni,ni->n', errors[ok], np.linalg.solve(covs[ok], errors[ok][..., None])[..., 0])
    return float(np.mean(mahalanobis2 <= _CHI2_95[dims]))
