"""Geo-localization error metrics (pure numpy): distances, the seed-001 error table, ellipse coverage.

All functions take and return plain numpy arrays / floats; names carry units (``_m`` metres,
``_deg`` degrees, ``_pct`` percent, ``_m2`` square metres).

* :func:`haversine_m` - great-circle distance on a sphere (the seed's formula, R = 6 371 000 m).
* :func:`enu_error_m` - horizontal error vector (east, north) of predictions in the local
  East-North-Up frame at each ground-truth point (pyproj, via :class:`vizloc_ros.geodesy.LocalENU`).
* :func:`geo_error_stats` - the seed's metric table: mean, median, P75, P90, P95, P99, max error and
  the share of predictions within 5/10/20/50 m.
* :func:`ellipse_coverage` - share of errors inside the predicted p-probability ellipse of a 2-D
  Gaussian (calibration of a predicted covariance; 0.95 expected for a calibrated 95 % ellipse).
* :func:`fit_variance_scale` - the single covariance scale (temperature) that makes the p-ellipse
  cover a share ``p`` of the given errors.
* :func:`degradation` - the seed's robustness ratio (augmented-test mean error / regular mean error).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = [
    'EARTH_RADIUS_M',
    'DEFAULT_THRESHOLDS_M',
    'haversine_m',
    'enu_error_m',
    'geo_error_stats',
    'chi2_2dof_quantile',
    'mahalanobis_sq_2d',
    'ellipse_coverage',
    'fit_variance_scale',
    'degradation',
]

#: Mean Earth radius used by the seed's haversine formula (metres).
EARTH_RADIUS_M = 6_371_000.0
#: The seed's "within" thresholds (metres).
DEFAULT_THRESHOLDS_M = (5.0, 10.0, 20.0, 50.0)
#: Percentiles of the seed's table.
_PERCENTILES = (75, 90, 95, 99)


def haversine_m(lat1_deg, lon1_deg, lat2_deg, lon2_deg, radius_m: float = EARTH_RADIUS_M) -> np.ndarray:
    """Great-circle distance in metres between (lat1, lon1) and (lat2, lon2) in degrees (broadcasting).

    Uses the numerically stable form ``2 R asin(sqrt(a))`` with ``a`` clipped to [0, 1].
    """
    lat1 = np.radians(np.asarray(lat1_deg, dtype=np.float64))
    lat2 = np.radians(np.asarray(lat2_deg, dtype=np.float64))
    dlat = lat2 - lat1
    dlon = np.radians(np.asarray(lon2_deg, dtype=np.float64) - np.asarray(lon1_deg, dtype=np.float64))
    a = np.sin(dlat / 2.0) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin(dlon / 2.0) ** 2
    return 2.0 * radius_m * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def enu_error_m(pred_lat_deg, pred_lon_deg, true_lat_deg, true_lon_deg) -> np.ndarray:
    """(N, 2) east/north error (prediction - truth) in metres, in the ENU frame at each truth point.

    Heights are taken equal (horizontal error). ``np.linalg.norm(..., axis=1)`` is the horizontal
    error on the WGS84 ellipsoid; it differs from the spherical :func:`haversine_m` by up to ~0.5 %
    (the ellipsoid's radii of curvature vs the mean radius). The GPS regressor's error table uses
    :func:`haversine_m` (the seed's metric); ENU error vectors serve the ellipse coverage.
    """
    from vizloc_ros.geodesy import LocalENU  # pyproj-backed; imported lazily to keep this module light

    pred_lat = np.atleast_1d(np.asarray(pred_lat_deg, dtype=np.float64))
    pred_lon = np.atleast_1d(np.asarray(pred_lon_deg, dtype=np.float64))
    true_lat = np.atleast_1d(np.asarray(true_lat_deg, dtype=np.float64))
    true_lon = np.atleast_1d(np.asarray(true_lon_deg, dtype=np.float64))
    if not (pred_lat.shape == pred_lon.shape == true_lat.shape == true_lon.shape) or pred_lat.ndim != 1:
        raise ValueError(f'enu_error_m needs four 1-D arrays of one length, got shapes '
                         f'{pred_lat.shape} {pred_lon.shape} {true_lat.shape} {true_lon.shape}')
    out = np.empty((pred_lat.size, 2), dtype=np.float64)
    for i in range(pred_lat.size):
        enu = LocalENU(float(true_lat[i]), float(true_lon[i]), 0.0)
        e, n, _ = enu.to_enu(pred_lat[i], pred_lon[i], 0.0)
        out[i] = (float(e), float(n))
    return out


def _errors_1d(errors_m) -> np.ndarray:
    errors = np.asarray(errors_m, dtype=np.float64).reshape(-1)
    if errors.size == 0:
        raise ValueError('no errors given: cannot compute statistics of an empty set')
    if not np.all(np.isfinite(errors)) or np.any(errors < 0):
        raise ValueError('errors must be finite, non-negative distances in metres')
    return errors


def _threshold_key(threshold_m: float) -> str:
    return f'within_{threshold_m:g}m_pct'


def geo_error_stats(errors_m, thresholds_m: Sequence[float] = DEFAULT_THRESHOLDS_M) -> dict[str, float]:
    """The seed-001 table of distance errors (metres).

    Keys: ``count``, ``mean_m``, ``std_m``, ``median_m``, ``p75_m``, ``p90_m``, ``p95_m``, ``p99_m``,
    ``min_m``, ``max_m`` and ``within_<t>m_pct`` per threshold (percent of errors <= t).
    Percentiles use numpy's default linear interpolation.
    """
    errors = _errors_1d(errors_m)
    stats: dict[str, float] = {
        'count': float(errors.size),
        'mean_m': float(errors.mean()),
        'std_m': float(errors.std()),
        'median_m': float(np.median(errors)),
    }
    for q, value in zip(_PERCENTILES, np.percentile(errors, _PERCENTILES)):
        stats[f'p{q}_m'] = float(value)
    stats['min_m'] = float(errors.min())
    stats['max_m'] = float(errors.max())
    for threshold in thresholds_m:
        stats[_threshold_key(float(threshold))] = float(100.0 * np.mean(errors <= threshold))
    return stats


def chi2_2dof_quantile(prob: float) -> float:
    """Quantile of the chi-square distribution with 2 degrees of freedom: ``-2 ln(1 - p)``."""
    if not 0.0 < prob < 1.0:
        raise ValueError(f'probability must be in (0, 1), got {prob}')
    return -2.0 * math.log1p(-prob)


def mahalanobis_sq_2d(err_N2, cov_N22) -> np.ndarray:
    """Squared Mahalanobis distance ``e^T C^-1 e`` of each (N, 2) error under its (N, 2, 2) covariance.

    ``cov_N22`` may also be a single (2, 2) matrix shared by all errors.
    Raises ValueError for covariances that are not symmetric positive definite.
    """
    err = np.asarray(err_N2, dtype=np.float64)
    cov = np.asarray(cov_N22, dtype=np.float64)
    if err.ndim != 2 or err.shape[1] != 2:
        raise ValueError(f'errors must have shape (N, 2), got {err.shape}')
    if cov.shape == (2, 2):
        cov = np.broadcast_to(cov, (err.shape[0], 2, 2))
    if cov.shape != (err.shape[0], 2, 2):
        raise ValueError(f'covariances must have shape (N, 2, 2) or (2, 2), got {cov.shape}')
    a, b, c, d = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 0], cov[:, 1, 1]
    if not np.allclose(b, c, rtol=1e-6, atol=1e-9):
        raise ValueError('covariances must be symmetric')
    det = a * d - b * c
    if np.any(a <= 0) or np.any(det <= 0):
        raise ValueError('covariances must be positive definite')
    ex, ey = err[:, 0], err[:, 1]
    return (d * ex * ex - 2.0 * b * ex * ey + a * ey * ey) / det


def ellipse_coverage(err_N2, cov_N22, prob: float = 0.95) -> float:
    """Share (0..1) of errors inside their predicted ``prob`` confidence ellipse.

    An error is inside when its squared Mahalanobis distance is <= the chi-square(2) quantile of
    ``prob``. For calibrated Gaussian predictions the result is close to ``prob``.
    """
    d2 = mahalanobis_sq_2d(err_N2, cov_N22)
    return float(np.mean(d2 <= chi2_2dof_quantile(prob)))


def fit_variance_scale(err_N2, cov_N22, prob: float = 0.95) -> float:
    """The scale ``s`` such that ``s * cov`` puts a share ``prob`` of the errors inside the ellipse.

    Temperature scaling for covariances: ``s = quantile_prob(d^2) / chi2_2(prob)`` (d^2 = squared
    Mahalanobis distance under ``cov``), fitted on a validation split and applied at test/run time.
    """
    d2 = mahalanobis_sq_2d(err_N2, cov_N22)
    if d2.size == 0:
        raise ValueError('no errors given: cannot fit a variance scale')
    scale = float(np.quantile(d2, prob) / chi2_2dof_quantile(prob))
    if not math.isfinite(scale) or scale <= 0.0:
        raise ValueError(f'fitted variance scale is not positive and finite: {scale}')
    return scale


def degradation(regular_errors_m, augmented_errors_m) -> float:
    """The seed's robustness ratio: mean error on the augmented test set / mean on the regular one."""
    regular = _errors_1d(regular_errors_m).mean()
    augmented = _errors_1d(augmented_errors_m).mean()
    if regular <= 0.0:
        raise ValueError('regular mean error is zero: degradation ratio undefined')
    return float(augmented / regular)
