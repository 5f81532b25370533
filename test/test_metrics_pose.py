"""Pose metrics (training/vizloc_training/metrics/pose.py): errors, CrossLoc thresholds, coverage."""
from __future__ import annotations

import math

import numpy as np
import pytest
import transforms3d

from vizloc_training.metrics.pose import (AERIAL_THRESHOLDS, INDOOR_THRESHOLDS, ellipsoid_coverage, pose_errors,
                                          rotation_error_deg, scene_coordinate_error_m, summarize_pose_errors,
                                          translation_error_m)


def _pose(position, axis=(0, 0, 1), angle_deg=0.0) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = transforms3d.axangles.axangle2mat(axis, math.radians(angle_deg))
    T[:3, 3] = position
    return T


def test_translation_and_rotation_errors() -> None:
    gt = _pose([10.0, 0.0, 100.0], angle_deg=30.0)
    est = _pose([13.0, 4.0, 100.0], angle_deg=37.5)
    assert translation_error_m(est, gt)[0] == pytest.approx(5.0)
    assert rotation_error_deg(est, gt)[0] == pytest.approx(7.5)
    # rotation about another axis composes: angle of R_est^T R_gt
    est2 = gt.copy()
    est2[:3, :3] = gt[:3, :3] @ transforms3d.axangles.axangle2mat((1, 0, 0), math.radians(4.0))
    assert rotation_error_deg(est2, gt)[0] == pytest.approx(4.0)


def test_summary_counts_failures_and_thresholds() -> None:
    gt = [_pose([0, 0, 0])] * 4
    est = [_pose([2.0, 0, 0], angle_deg=1.0), _pose([8.0, 0, 0], angle_deg=6.0), _pose([25.0, 0, 0]), None]
    t, r = pose_errors(est, gt)
    assert np.isinf(t[3]) and np.isinf(r[3])
    summary = summarize_pose_errors(t, r, AERIAL_THRESHOLDS)
    assert summary.failures == 1 and summary.count == 4
    assert summary.median_translation_m == pytest.approx((8.0 + 25.0) / 2)
    assert summary.mean_translation_m == pytest.approx((2.0 + 8.0 + 25.0) / 3)
    assert summary.within['30m_10deg'] == pytest.approx(75.0)
    assert summary.within['10m_7deg'] == pytest.approx(50.0)
    assert summary.within['5m_5deg'] == pytest.approx(25.0)
    assert summary.within['3m_3deg'] == pytest.approx(25.0)
    indoor = summarize_pose_errors(np.array([0.03, 0.06]), np.array([1.0, 1.0]), INDOOR_THRESHOLDS)
    assert indoor.within['5cm_5deg'] == pytest.approx(50.0)
    assert set(indoor.as_dict()) >= {'median_translation_m', 'pct_within_5cm_5deg', 'no_fix'}


def test_scene_coordinate_error_and_coverage() -> None:
    pred = np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [100.0, 0.0, 0.0]])
    gt = np.zeros((3, 3))
    assert scene_coordinate_error_m(pred, gt, np.array([True, True, False])) == pytest.approx(2.5)
    assert math.isnan(scene_coordinate_error_m(pred, gt, np.zeros(3, bool)))
    rng = np.random.default_rng(0)
    cov = np.diag([4.0, 1.0, 9.0])
    errors = rng.multivariate_normal(np.zeros(3), cov, size=4000)
    covs = np.broadcast_to(cov, (4000, 3, 3))
    assert ellipsoid_coverage(errors, covs) == pytest.approx(0.95, abs=0.015)
    assert ellipsoid_coverage(errors, covs / 4.0) < 0.7  # overconfident covariance is detected
    with pytest.raises(ValueError):
        summarize_pose_errors(np.array([]), np.array([]))
