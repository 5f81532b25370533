"""Score one localizer's estimates against the bag's ground truth.

Matching: an estimate and a ground-truth sample belong together when their stamps are equal (the
evaluation bags stamp ground truth with the image stamp); ``max_dt_ns`` allows the nearest ground
truth within that distance for other bags.

Position error (``*_error_m``): for a localizer that publishes poses, the distance between its
``base_frame`` position and the ground-truth base position (``/ground_truth/pose``, the camera's
optical-frame pose, through the same extrinsic); otherwise the geodesic (WGS84) horizontal distance
between its NavSatFix and ``/ground_truth/fix``. Rotation error: the angle of ``R_gt^T R_est``, for poses with an
orientation (rotational variances below ROTATION_UNKNOWN_VAR_RAD2).
Trajectory APE (translation, metres) is computed by ``evo`` (``metrics.APE`` on
``PoseTrajectory3D``) with optional SE(3) / Sim(3) alignment.

``coverage_95_pct``: share of position estimates whose horizontal error lies inside the predicted
95 % ellipse (squared Mahalanobis distance with the published 2x2 horizontal covariance <= the
chi-square 2-dof 95 % quantile, -2 ln 0.05 = 5.991).

The numbers come from the project's metric functions (``vizloc_training.metrics``: ``geo``,
``pose``, ``classification``; pure numpy, imported here on use), so vizloc-eval and the trainers'
evaluations compute the same tables; vizloc-eval therefore needs the ``vizloc_training``
distribution installed (``pip install ./training``), not torch at import time.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from ..frames import CameraExtrinsic
from .run import Estimate, EvalRun, GroundTruthSample

__all__ = ['GroundTruth', 'LocalizerReport', 'score_localizer', 'score_run', 'THRESHOLDS_M',
           'ALIGNMENTS']

logger = logging.getLogger(__name__)

#: within-X-metres thresholds of the seeds' tables (001: 5/10/50 m; CrossLoc: 1/5/10 m)
THRESHOLDS_M = (1.0, 5.0, 10.0, 50.0)
ALIGNMENTS = ('none', 'se3', 'sim3')
#: A pose whose rotational variances reach this (rad^2, ~57 deg sigma) has no orientation (e.g. the
#: room classifier's room-centre pose publishes 1e6): its rotation error is not scored.
ROTATION_UNKNOWN_VAR_RAD2 = 1.0

GroundTruth = dict[int, GroundTruthSample]


@dataclass
class LocalizerReport:
    """The numbers of one localizer (keys carry their units; NaN where not applicable)."""

    localizer: str
    type: str
    frames: int
    estimates: int
    no_fix: int
    errors: int
    dropped: int
    waiting_camera_info: int
    latency_ms_p50: float
    latency_ms_p95: float
    position_source: str = 'none'
    matched: int = 0
    mean_error_m: float = math.nan
    median_error_m: float = math.nan
    p90_error_m: float = math.nan
    p95_error_m: float = math.nan
    max_error_m: float = math.nan
    within_pct: dict[str, float] = field(default_factory=dict)
    median_rotation_deg: float = math.nan
    coverage_95_pct: float = math.nan
    accuracy_pct: float = math.nan
    room_frames: int = 0
    ape: dict[str, Any] = field(default_factory=dict)
    #: per matched frame, for the plots: stamp_ns, error_m, sigma_m (horizontal), rotation_deg
    series: dict[str, list[float]] = field(default_factory=dict)
    #: rooms: labels (sorted union of truth and predictions) and confusion[truth][pred] counts
    room_labels: list[str] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    last_error: str = ''

    def summary(self) -> dict[str, Any]:
        """report.json's entry: everything except the per-frame series."""
        out = {k: v for k, v in asdict(self).items() if k != 'series'}
        for key, value in self.within_pct.items():
            out[key] = value
        del out['within_pct']
        return out


def _nearest(ground_truth: GroundTruth, stamps: np.ndarray, stamp_ns: int, max_dt_ns: int) -> GroundTruthSample | None:
    exact = ground_truth.get(stamp_ns)
    if exact is not None or max_dt_ns <= 0 or stamps.size == 0:
        return exact
    i = int(np.searchsorted(stamps, stamp_ns))
    best = min((j for j in (i - 1, i) if 0 <= j < stamps.size), key=lambda j: abs(int(stamps[j]) - stamp_ns))
    return ground_truth[int(stamps[best])] if abs(int(stamps[best]) - stamp_ns) <= max_dt_ns else None


def _stats(errors: np.ndarray, frames: int) -> dict[str, float]:
    """The seed-001 table (``geo_error_stats``), with within-X as a share of *frames*: a localizer
    that answers fewer frames scores less."""
    from vizloc_training.metrics.geo import geo_error_stats

    stats = geo_error_stats(errors, THRESHOLDS_M)
    out = {'mean_error_m': stats['mean_m'], 'median_error_m': stats['median_m'], 'p90_error_m': stats['p90_m'],
           'p95_error_m': stats['p95_m'], 'max_error_m': stats['max_m']}
    share = errors.size / max(1, frames)
    within = {f'within_{t:g}m_pct': stats[f'within_{t:g}m_pct'] * share for t in THRESHOLDS_M}
    return {**out, 'within': within}


def _coverage(d_N2: np.ndarray, cov_N22: np.ndarray) -> float:
    """``ellipse_coverage`` in percent; NaN when a published covariance is not positive definite."""
    from vizloc_training.metrics.geo import ellipse_coverage

    try:
        return 100.0 * ellipse_coverage(d_N2, cov_N22, 0.95)
    except ValueError as exc:
        logger.warning('coverage not computed: %s', exc)
        return math.nan


def evo_ape(stamps_ns: Iterable[int], T_est: list[np.ndarray], T_gt: list[np.ndarray], alignment: str = 'none',
            tum_paths: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """evo's APE (translation part, m) of matched pose pairs; ``alignment`` none / se3 / sim3.

    ``tum_paths``: (estimate, ground truth) files to write the trajectories to (TUM format).
    """
    from evo.core import metrics
    from evo.core.trajectory import PoseTrajectory3D

    if alignment not in ALIGNMENTS:
        raise ValueError(f'alignment must be one of {ALIGNMENTS}, got {alignment!r}')
    t = np.asarray(list(stamps_ns), dtype=np.float64) / 1e9
    est = PoseTrajectory3D(poses_se3=[np.asarray(T) for T in T_est], timestamps=t)
    ref = PoseTrajectory3D(poses_se3=[np.asarray(T) for T in T_gt], timestamps=t.copy())
    scale = 1.0
    if alignment != 'none':
        if len(t) < 3:
            raise ValueError(f'{alignment} alignment needs at least 3 poses, got {len(t)}')
        _r, _t, scale = est.align(ref, correct_scale=(alignment == 'sim3'))
    if tum_paths is not None:
        from evo.tools import file_interface

        file_interface.write_tum_trajectory_file(tum_paths[0], est)
        file_interface.write_tum_trajectory_file(tum_paths[1], ref)
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((ref, est))
    stats = {f'{k}_m': float(v) for k, v in ape.get_all_statistics().items()}
    return {'alignment': alignment, 'scale': float(scale), 'poses': int(len(t)), **stats}


def score_localizer(name: str, estimates: list[Estimate], ground_truth: GroundTruth, extrinsic: CameraExtrinsic, *,
                    type_name: str = '', dropped: int = 0, alignment: str = 'none', max_dt_ns: int = 0,
                    tum_paths: tuple[Any, Any] | None = None, frames: int | None = None) -> LocalizerReport:
    """The report of one localizer; see the module docstring for each number.

    ``frames``: images offered (default: one estimate per frame, as offline); live runs pass the
    bag's count, so unanswered frames count against within-X and accuracy.
    """
    from vizloc_training.metrics.classification import confusion_matrix
    from vizloc_training.metrics.pose import rotation_error_deg, translation_error_m

    from ..geodesy import LocalENU, geodesic_distance_m

    frames = len(estimates) if frames is None else max(frames, len(estimates))
    latencies = np.array([e.latency_ms for e in estimates if math.isfinite(e.latency_ms)])
    answered = [e for e in estimates if e.status == 'ok']
    rep = LocalizerReport(
        localizer=name, type=type_name, frames=frames, estimates=len(answered),
        no_fix=sum(e.status == 'no_fix' for e in estimates), errors=sum(e.status == 'error' for e in estimates),
        dropped=dropped, waiting_camera_info=sum(e.status == 'waiting_camera_info' for e in estimates),
        latency_ms_p50=float(np.percentile(latencies, 50)) if latencies.size else math.nan,
        latency_ms_p95=float(np.percentile(latencies, 95)) if latencies.size else math.nan,
        last_error=next((e.error for e in reversed(estimates) if e.error), ''))
    gt_stamps = np.array(sorted(ground_truth), dtype=np.int64)
    pairs = [(e, _nearest(ground_truth, gt_stamps, e.stamp_ns, max_dt_ns)) for e in answered]
    pairs = [(e, g) for e, g in pairs if g is not None]

    T_camera_base = np.linalg.inv(extrinsic.T_base_camera)
    pose_pairs = [(e, g) for e, g in pairs if e.T_map_base is not None and g.T_map_camera is not None]
    fix_pairs = [(e, g) for e, g in pairs if e.fix_lla is not None and g.fix_lla is not None]
    errors = np.zeros(0)
    if pose_pairs:
        rep.position_source = 'pose'
        T_gt = [g.T_map_camera @ T_camera_base for _, g in pose_pairs]  # ground-truth base pose
        T_est = [e.T_map_base for e, _ in pose_pairs]
        errors = translation_error_m(np.array(T_est), np.array(T_gt))
        oriented = np.array([float(np.max(np.diag(e.cov_6x6)[3:])) < ROTATION_UNKNOWN_VAR_RAD2 for e, _ in pose_pairs])
        rotations = np.where(oriented, rotation_error_deg(np.array(T_est), np.array(T_gt)), math.nan)
        if oriented.any():
            rep.median_rotation_deg = float(np.nanmedian(rotations))
        d = np.array([a[:2, 3] - b[:2, 3] for a, b in zip(T_est, T_gt)])
        covs = np.array([e.cov_6x6[:2, :2] for e, _ in pose_pairs])
        rep.coverage_95_pct = _coverage(d, covs)
        sigma = np.sqrt(np.trace(covs, axis1=1, axis2=2) / 2.0)
        rep.series = {'stamp_ns': [float(e.stamp_ns) for e, _ in pose_pairs], 'error_m': errors.tolist(),
                      'sigma_m': sigma.tolist(), 'rotation_deg': rotations.tolist(),
                      'est_x': [float(T[0, 3]) for T in T_est], 'est_y': [float(T[1, 3]) for T in T_est],
                      'gt_x': [float(T[0, 3]) for T in T_gt], 'gt_y': [float(T[1, 3]) for T in T_gt]}
        try:
            rep.ape = evo_ape([e.stamp_ns for e, _ in pose_pairs], T_est, T_gt, alignment, tum_paths)
        except ValueError as exc:
            rep.ape = {'alignment': alignment, 'error': str(exc)}
    elif fix_pairs:
        rep.position_source = 'fix'
        est = np.array([e.fix_lla for e, _ in fix_pairs])
        gt = np.array([g.fix_lla for _, g in fix_pairs])
        errors = geodesic_distance_m(est[:, 0], est[:, 1], gt[:, 0], gt[:, 1]).reshape(-1)
        origin = gt[0]
        enu = LocalENU(origin[0], origin[1], 0.0)
        ee, en, _ = enu.to_enu(est[:, 0], est[:, 1], 0.0 * est[:, 0])
        ge, gn, _ = enu.to_enu(gt[:, 0], gt[:, 1], 0.0 * gt[:, 0])
        d = np.stack([ee - ge, en - gn], axis=1)
        covs = np.array([e.cov_enu_m2[:2, :2] for e, _ in fix_pairs])
        rep.coverage_95_pct = _coverage(d, covs)
        sigma = np.sqrt(np.trace(covs, axis1=1, axis2=2) / 2.0)
        rep.series = {'stamp_ns': [float(e.stamp_ns) for e, _ in fix_pairs], 'error_m': errors.tolist(),
                      'sigma_m': sigma.tolist(), 'est_x': ee.tolist(), 'est_y': en.tolist(),
                      'gt_x': ge.tolist(), 'gt_y': gn.tolist()}
    if errors.size:
        rep.matched = int(errors.size)
        stats = _stats(np.asarray(errors, dtype=np.float64), frames)
        rep.within_pct = stats.pop('within')
        for key, value in stats.items():
            setattr(rep, key, value)

    room_pairs = [(e.room, g.room) for e, g in pairs if e.room is not None and g.room is not None]
    room_truth_frames = sum(1 for g in ground_truth.values() if g.room) if frames > len(estimates) else sum(
        1 for e in estimates if (g := _nearest(ground_truth, gt_stamps, e.stamp_ns, max_dt_ns)) is not None and g.room)
    if room_pairs:
        labels = sorted({t for _, t in room_pairs} | {p for p, _ in room_pairs})
        index = {label: i for i, label in enumerate(labels)}
        confusion = confusion_matrix([index[p] for p, _ in room_pairs], [index[t] for _, t in room_pairs], len(labels))
        rep.room_labels, rep.confusion = labels, confusion.tolist()
        rep.room_frames = room_truth_frames
        # over every frame with a ground-truth room: an unanswered frame counts as wrong
        rep.accuracy_pct = 100.0 * sum(p == t for p, t in room_pairs) / max(1, room_truth_frames)
    return rep


def score_run(run: EvalRun, *, alignment: str = 'none', max_dt_ns: int = 0,
              tum_dir: Any = None) -> dict[str, LocalizerReport]:
    """:func:`score_localizer` for every localizer of ``run``."""
    from pathlib import Path

    out = {}
    for name, estimates in run.estimates.items():
        tum = None
        if tum_dir is not None:
            tum = (Path(tum_dir) / f'{name}_estimate.tum', Path(tum_dir) / f'{name}_ground_truth.tum')
        out[name] = score_localizer(name, estimates, run.ground_truth, run.extrinsic, type_name=run.types.get(name, ''),
                                    dropped=run.dropped.get(name, 0), alignment=alignment, max_dt_ns=max_dt_ns,
                                    tum_paths=tum, frames=run.frames_total or len(run.frame_stamps_ns))
    return out
