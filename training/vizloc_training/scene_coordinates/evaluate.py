"""Evaluation of a scene-coordinate network: CrossLoc's pose metrics through the runtime solver.

:func:`evaluate_images` runs the torch network (identical to the exported ONNX within the export
parity tolerance) on prepared test images and solves each pose with
:func:`vizloc_plugins.scene_coordinates.cell_correspondences` and ``solve_pnp_ransac`` (and, with a
keyframe map, :func:`~vizloc_plugins.scene_coordinates.select_pose`) -- the same code the node runs. Metrics:
median/mean translation (m) and rotation (deg) errors, % within CrossLoc's thresholds (aerial) or
5 cm/5 deg (indoor), mean scene-coordinate error on cells with ground truth, mean inlier ratio,
no-fix count, and the share of position errors inside the 95 % covariance ellipsoid.
:func:`calibrate_covariance_scale` fits the factor that makes that share 95 % (done on ``val``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch

from vizloc_plugins.keyframes import KeyframeMap
from vizloc_plugins.pnp import Evidence, RansacOptions, solve_pnp_ransac
from vizloc_plugins.scene_coordinates import cell_correspondences, select_pose
from vizloc_plugins.scene_coordinates_contract import SceneKeyframes, SceneRansac

from ..metrics.pose import (AERIAL_THRESHOLDS, INDOOR_THRESHOLDS, ellipsoid_coverage, pose_errors,
                            scene_coordinate_error_m, summarize_pose_errors)
from ..train.images import imagenet_normalise, to_unit
from .data import PreparedImage
from .model import SceneCoordinateNet

__all__ = ['EvaluationResult', 'evaluate_images', 'calibrate_covariance_scale']

logger = logging.getLogger(__name__)

_CHI2_95_3D = 7.814728


@dataclass
class EvaluationResult:
    metrics: dict[str, float]
    translation_m: np.ndarray
    rotation_deg: np.ndarray
    position_errors_N3: np.ndarray
    position_covs_N33: np.ndarray
    inlier_ratios: list[float] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # per image: keyframes, network or none


@torch.no_grad()
def evaluate_images(net: SceneCoordinateNet, images: list[PreparedImage], ransac: SceneRansac, *,
                    thresholds: str = 'aerial', covariance_scale: float = 1.0,
                    keyframes: tuple[KeyframeMap, SceneKeyframes] | None = None) -> EvaluationResult:
    """Pose of every image through the runtime solver with the ``ransac`` settings (seed 0), and the metrics.

    With ``keyframes`` (a loaded map and its settings) the keyframe pose of each image (matched at the
    prepared image's size and intrinsics) competes with the network's through
    :func:`vizloc_plugins.scene_coordinates.select_pose`, as in the node; metric ``keyframe_share``
    is the share of images posed by it.
    """
    net.eval()
    device = next(net.parameters()).device
    options = RansacOptions(hypotheses=ransac.hypotheses, inlier_threshold_px=ransac.inlier_threshold_px,
                            min_inliers=ransac.min_inliers, min_inlier_ratio=ransac.min_inlier_ratio, seed=0)
    estimates: list[np.ndarray | None] = []
    errors = np.full((len(images), 3), np.nan)
    covs = np.tile(np.eye(3), (len(images), 1, 1))
    coord_errors = []
    inlier_ratios = []
    ransac_ms = []
    sources: list[str] = []
    for i, image in enumerate(images):
        coords, log_scale = net(imagenet_normalise(to_unit(image.rgb_HW3[None], device)))  # as the export bakes in
        coords_np = coords[0].cpu().numpy()
        log_scale_np = log_scale[0].cpu().numpy()
        if image.coords_3hw is not None:
            coord_errors.append(scene_coordinate_error_m(coords_np.reshape(3, -1).T, image.coords_3hw.reshape(3, -1).T,
                                                         image.valid_hw.reshape(-1)))
        started = time.perf_counter()
        points, pixels, weights = cell_correspondences(coords_np, log_scale_np, image.K)
        solution = solve_pnp_ransac(points, pixels, image.K, options, weights_N=weights)
        if solution is not None:
            solution = replace(solution, cov_6x6=solution.cov_6x6 * covariance_scale)
        source = 'network' if solution is not None else 'none'
        if keyframes is not None:
            keyframe_map, settings = keyframes
            match = keyframe_map.match(cv2.cvtColor(image.rgb_HW3, cv2.COLOR_RGB2GRAY), image.K)
            keyframe = match.solution
            if keyframe is not None:
                keyframe = replace(keyframe, cov_6x6=keyframe.cov_6x6 * settings.covariance_scale)
            solution, source, _ = select_pose(solution, keyframe,
                                              Evidence(points, pixels, image.K, options.inlier_threshold_px),
                                              match.evidence)
        ransac_ms.append((time.perf_counter() - started) * 1e3)
        sources.append(source)
        if solution is None:
            estimates.append(None)
            continue
        estimates.append(solution.T_map_camera)
        errors[i] = solution.T_map_camera[:3, 3] - image.T_world_camera[:3, 3]
        covs[i] = solution.cov_6x6[:3, :3]
        inlier_ratios.append(solution.inlier_ratio)
    t_err, r_err = pose_errors(estimates, [im.T_world_camera for im in images])
    summary = summarize_pose_errors(t_err, r_err, INDOOR_THRESHOLDS if thresholds == 'indoor' else AERIAL_THRESHOLDS)
    metrics = summary.as_dict()
    metrics['mean_scene_coordinate_error_m'] = float(np.nanmean(coord_errors)) if coord_errors else float('nan')
    metrics['mean_inlier_ratio'] = float(np.mean(inlier_ratios)) if inlier_ratios else 0.0
    metrics['position_95pct_ellipsoid_coverage'] = ellipsoid_coverage(errors, covs)
    metrics['ransac_p50_ms'] = float(np.median(ransac_ms)) if ransac_ms else float('nan')
    if keyframes is not None:
        metrics['keyframe_share'] = float(np.mean([s == 'keyframes' for s in sources])) if sources else 0.0
    logger.info('evaluation on %d images: %s', len(images), {k: round(v, 4) for k, v in metrics.items()})
    return EvaluationResult(metrics, t_err, r_err, errors, covs, inlier_ratios, sources)


def calibrate_covariance_scale(result: EvaluationResult, coverage: float = 0.95, source: str | None = None) -> float:
    """Factor k for the covariance so that ``coverage`` of the position errors fall inside the 95 % ellipsoid,
    over the images posed by ``source`` (``keyframes``/``network``; None = all).

    1.0 when there are fewer than 5 successful frames (nothing to calibrate on).
    """
    ok = np.all(np.isfinite(result.position_errors_N3), axis=1)
    if source is not None:
        ok &= np.array([s == source for s in result.sources], bool)
    if ok.sum() < 5:
        return 1.0
    e = result.position_errors_N3[ok]
    c = result.position_covs_N33[ok]
    mahalanobis2 = np.einsum('ni,ni->n', e, np.linalg.solve(c, e[..., None])[..., 0])
    k = float(np.quantile(mahalanobis2, coverage) / _CHI2_95_3D)
    return float(np.clip(k, 1e-3, 1e6))
