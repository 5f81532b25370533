"""Evaluation of a scene-coordinate network: CrossLoc's pose metrics through the runtime solver.

:func:`evaluate_images` runs the torch network (identical to the exported ONNX within the export
parity tolerance) on prepared test images and solves each pose with
:func:`vizloc_plugins.scene_coordinates.estimate_pose` -- the same code the node runs. Metrics:
median/mean translation (m) and rotation (deg) errors, % within CrossLoc's thresholds (aerial) or
5 cm/5 deg (indoor), mean scene-coordinate error on cells with ground truth, mean inlier ratio,
no-fix count, and the share of position errors inside the 95 % covariance ellipsoid.
:func:`calibrate_covariance_scale` fits the factor that makes that share 95 % (done on ``val``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from vizloc_plugins.pnp import RansacOptions
from vizloc_plugins.scene_coordinates import estimate_pose
from vizloc_plugins.scene_coordinates_contract import SceneRansac

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


@torch.no_grad()
def evaluate_images(net: SceneCoordinateNet, images: list[PreparedImage], ransac: SceneRansac, *,
                    thresholds: str = 'aerial', covariance_scale: float = 1.0) -> EvaluationResult:
    """Pose of every image through the runtime solver with the ``ransac`` settings (seed 0), and the metrics."""
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
    for i, image in enumerate(images):
        coords, log_scale = net(imagenet_normalise(to_unit(image.rgb_HW3[None], device)))  # as the export bakes in
        coords_np = coords[0].cpu().numpy()
        log_scale_np = log_scale[0].cpu().numpy()
        if image.coords_3hw is not None:
            coord_errors.append(scene_coordinate_error_m(coords_np.reshape(3, -1).T, image.coords_3hw.reshape(3, -1).T,
                                                         image.valid_hw.reshape(-1)))
        started = time.perf_counter()
        solution = estimate_pose(coords_np, log_scale_np, image.K, options, covariance_scale=covariance_scale)
        ransac_ms.append((time.perf_counter() - started) * 1e3)
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
    logger.info('evaluation on %d images: %s', len(images), {k: round(v, 4) for k, v in metrics.items()})
    return EvaluationResult(metrics, t_err, r_err, errors, covs, inlier_ratios)


def calibrate_covariance_scale(result: EvaluationResult, coverage: float = 0.95) -> float:
    """Factor k for the covariance so that ``coverage`` of the position errors fall inside the 95 % ellipsoid.

    1.0 when there are fewer than 5 successful frames (nothing to calibrate on).
    """
    ok = np.all(np.isfinite(result.position_errors_N3), axis=1)
    if ok.sum() < 5:
        return 1.0
    e = result.position_errors_N3[ok]
    c = result.position_covs_N33[ok]
    mahalanobis2 = np.einsum('ni,ni->n', e, np.linalg.solve(c, e[..., None])[..., 0])
    k = float(np.quantile(mahalanobis2, coverage) / _CHI2_95_3D)
    return float(np.clip(k, 1e-3, 1e6))
