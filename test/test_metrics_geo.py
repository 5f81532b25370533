"""Geo error metrics (training/vizloc_training/metrics/geo.py) against hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vizloc_training.metrics import geo

R = geo.EARTH_RADIUS_M


def test_haversine_exact_spherical_cases():
    # One degree of latitude along a meridian: R * pi / 180.
    assert geo.haversine_m(0.0, 0.0, 1.0, 0.0) == pytest.approx(R * math.pi / 180.0, rel=1e-12)
    # A quarter of the equator and the antipode.
    assert geo.haversine_m(0.0, 0.0, 0.0, 90.0) == pytest.approx(R * math.pi / 2.0, rel=1e-12)
    assert geo.haversine_m(0.0, 0.0, 0.0, 180.0) == pytest.approx(R * math.pi, rel=1e-12)
    # One degree of longitude at 60 deg latitude is a small circle of radius R cos 60 = R / 2; the
    # great circle is a little shorter: 2 R asin(cos(60) sin(0.5 deg)).
    expected = 2.0 * R * math.asin(0.5 * math.sin(math.radians(0.5)))
    assert geo.haversine_m(60.0, 10.0, 60.0, 11.0) == pytest.approx(expected, rel=1e-12)
    assert geo.haversine_m(12.3, 45.6, 12.3, 45.6) == 0.0


def test_haversine_known_city_pairs():
    # Published great-circle distances (R = 6371 km): London-Paris 343.6 km, New York-London 5570 km.
    london, paris, new_york = (51.5074, -0.1278), (48.8566, 2.3522), (40.7128, -74.0060)
    assert geo.haversine_m(*london, *paris) / 1000.0 == pytest.approx(343.56, abs=0.05)
    assert geo.haversine_m(*new_york, *london) / 1000.0 == pytest.approx(5570.2, abs=0.5)
    # Symmetric and vectorised.
    lats = np.array([london[0], new_york[0]])
    lons = np.array([london[1], new_york[1]])
    d = geo.haversine_m(lats, lons, paris[0], paris[1])
    assert d.shape == (2,)
    assert d[0] == pytest.approx(geo.haversine_m(*paris, *london))


def test_enu_error_matches_haversine_at_campus_scale():
    rng = np.random.default_rng(1)
    true_lat = 31.2620 + rng.uniform(-1e-3, 1e-3, 20)
    true_lon = 34.8041 + rng.uniform(-1e-3, 1e-3, 20)
    pred_lat = true_lat + rng.normal(0, 1e-4, 20)
    pred_lon = true_lon + rng.normal(0, 1e-4, 20)
    err = geo.enu_error_m(pred_lat, pred_lon, true_lat, true_lon)
    assert err.shape == (20, 2)
    # ENU is ellipsoidal (WGS84) and haversine spherical: they agree to ~0.5 %.
    np.testing.assert_allclose(np.linalg.norm(err, axis=1), geo.haversine_m(pred_lat, pred_lon, true_lat, true_lon),
                               rtol=6e-3)
    # A point north of the truth has a positive north and ~zero east error.
    north = geo.enu_error_m([31.2630], [34.8041], [31.2620], [34.8041])[0]
    assert north[1] == pytest.approx(110.9, abs=0.2) and abs(north[0]) < 1e-6


def test_error_stats_hand_computed():
    errors = np.arange(1.0, 101.0)  # 1, 2, ..., 100 m
    stats = geo.geo_error_stats(errors)
    assert stats['count'] == 100
    assert stats['mean_m'] == pytest.approx(50.5)
    assert stats['median_m'] == pytest.approx(50.5)
    # numpy linear interpolation: P_q = 1 + q/100 * 99.
    assert stats['p75_m'] == pytest.approx(75.25)
    assert stats['p90_m'] == pytest.approx(90.1)
    assert stats['p95_m'] == pytest.approx(95.05)
    assert stats['p99_m'] == pytest.approx(99.01)
    assert stats['min_m'] == 1.0 and stats['max_m'] == 100.0
    assert stats['within_5m_pct'] == pytest.approx(5.0)
    assert stats['within_10m_pct'] == pytest.approx(10.0)
    assert stats['within_20m_pct'] == pytest.approx(20.0)
    assert stats['within_50m_pct'] == pytest.approx(50.0)
    custom = geo.geo_error_stats([0.5, 2.5, 3.0], thresholds_m=(2.5,))
    assert custom['within_2.5m_pct'] == pytest.approx(200.0 / 3.0)


def test_error_stats_rejects_bad_input():
    with pytest.raises(ValueError, match='empty'):
        geo.geo_error_stats([])
    with pytest.raises(ValueError, match='finite'):
        geo.geo_error_stats([1.0, float('nan')])
    with pytest.raises(ValueError, match='non-negative'):
        geo.geo_error_stats([1.0, -2.0])


def test_chi2_quantile_and_mahalanobis():
    assert geo.chi2_2dof_quantile(0.95) == pytest.approx(5.991464547, rel=1e-9)
    assert geo.chi2_2dof_quantile(0.5) == pytest.approx(2.0 * math.log(2.0))
    cov = np.array([[4.0, 0.0], [0.0, 1.0]])
    d2 = geo.mahalanobis_sq_2d(np.array([[2.0, 0.0], [0.0, 1.0], [2.0, 1.0]]), cov)
    np.testing.assert_allclose(d2, [1.0, 1.0, 2.0])
    with pytest.raises(ValueError, match='positive definite'):
        geo.mahalanobis_sq_2d(np.zeros((1, 2)), np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match='symmetric'):
        geo.mahalanobis_sq_2d(np.zeros((1, 2)), np.array([[1.0, 0.5], [0.0, 1.0]]))


def test_ellipse_coverage_of_known_gaussian_sample():
    rng = np.random.default_rng(0)
    cov = np.array([[9.0, 3.0], [3.0, 4.0]])
    err = rng.multivariate_normal([0.0, 0.0], cov, size=20000)
    covs = np.broadcast_to(cov, (err.shape[0], 2, 2))
    assert geo.ellipse_coverage(err, covs, 0.95) == pytest.approx(0.95, abs=0.005)
    assert geo.ellipse_coverage(err, cov, 0.5) == pytest.approx(0.5, abs=0.01)
    # Over-confident by a factor 4 in variance: the 95 % ellipse covers P(chi2_2 <= 5.99 / 4).
    expected = 1.0 - math.exp(-geo.chi2_2dof_quantile(0.95) / 8.0)
    assert geo.ellipse_coverage(err, cov / 4.0, 0.95) == pytest.approx(expected, abs=0.01)
    # Temperature scaling recovers the factor.
    assert geo.fit_variance_scale(err, cov / 4.0, 0.95) == pytest.approx(4.0, rel=0.05)
    assert geo.fit_variance_scale(err, cov, 0.95) == pytest.approx(1.0, rel=0.05)


def test_degradation_ratio():
    assert geo.degradation([1.0, 3.0], [4.0, 4.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        geo.degradation([0.0, 0.0], [1.0])
