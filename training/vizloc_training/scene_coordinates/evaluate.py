"""Evaluation of a scene-coordinate network: CrossLoc's pose metrics through the runtime solver.

:func:`evaluate_images` runs the torch network (identical to the exported ONNX within the export
parity tolerance) on prepared test images and solves each pose with
:func:`vizloc_plugins.scene_coordinates.cell_correspondences` and ``solve_pnp_ransac`` (and, with a
keyframe map, :func:`~vizloc_plugins.scene_coordinates.pose_with_keyframes`) -- the same code the node runs. Metrics:
median/mean translation (m) and rotation (deg) errors, % within CrossLoc's thresholds (aerial) or
5 cm/5 deg (indoor), mean scene-coordinate error on cells with ground truth, mean inlier ratio,
no-fix count, and the share of position errors inside the 95 % covariance ellipsoid.
:func:`calibrate_covariance_scale` fits the factor that makes that share 95 % (done on ``val``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from vizloc_plugins.keyframes import KeyframeMap
from vizloc_plugins.pnp import Evidence, PnPSolution, RansacOptions, solve_pnp_ransac
from vizloc_plugins.scene_coordinates import cell_correspondences, pose_with_keyframes
from vizloc_plugins.scene_coordinates_contract import SceneRansac
from vizloc_ros.types import CameraIntrinsics

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
    """Pose metrics of one source over the images; ``network`` is the network alone when the result is
    what a bundle with a keyframe map publishes (same pass, same network outputs)."""

    metrics: dict[str, float]
    translation_m: np.ndarray
    rotation_deg: np.ndarray
    position_errors_N3: np.ndarray
    position_covs_N33: np.ndarray
    inlier_ratios: list[float] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # per image: keyframes, network or none
    network: 'EvaluationResult | None' = None


def _summarise(images: list[PreparedImage], solutions: list[PnPSolution | None], sources: list[str],
               thresholds: str, extra: dict[str, float]) -> EvaluationResult:
    estimates = [s.T_map_camera if s is not None else None for s in solutions]
    errors = np.full((len(images), 3), np.nan)
    covs = np.tile(np.eye(3), (len(images), 1, 1))
    for i, (solution, image) in enumerate(zip(solutions, images)):
        if solution is not None:
            errors[i] = solution.T_map_camera[:3, 3] - image.T_world_camera[:3, 3]
            covs[i] = solution.cov_6x6[:3, :3]
    inlier_ratios = [s.inlier_ratio for s in solutions if s is not None]
    t_err, r_err = pose_errors(estimates, [im.T_world_camera for im in images])
    metrics = summarize_pose_errors(t_err, r_err,
                                    INDOOR_THRESHOLDS if thresholds == 'indoor' else AERIAL_THRESHOLDS).as_dict()
    metrics.update(extra)
    metrics['mean_inlier_ratio'] = float(np.mean(inlier_ratios)) if inlier_ratios else 0.0
    metrics['position_95pct_ellipsoid_coverage'] = ellipsoid_coverage(errors, covs)
    return EvaluationResult(metrics, t_err, r_err, errors, covs, inlier_ratios, sources)


@torch.no_grad()
def evaluate_images(net: SceneCoordinateNet, images: list[PreparedImage], ransac: SceneRansac, *,
                    thresholds: str = 'aerial', covariance_scale: float = 1.0,
                    keyframes: KeyframeMap | None = None) -> EvaluationResult:
    """Pose of every image through the runtime solver with the ``ransac`` settings (seed 0), and the metrics.

    With ``keyframes`` (a loaded map) the keyframe pose of each image (matched at the prepared image's
    size and intrinsics) competes with the network's through
    :func:`vizloc_plugins.scene_coordinates.pose_with_keyframes`, as in the node; metric ``keyframe_share``
    is the share of images posed by it, and ``network`` holds the network alone from the same pass.
    """
    net.eval()
    device = next(net.parameters()).device
    options = RansacOptions(hypotheses=ransac.hypotheses, inlier_threshold_px=ransac.inlier_threshold_px,
                            min_inliers=ransac.min_inliers, min_inlier_ratio=ransac.min_inlier_ratio, seed=0)
    network_solutions: list[PnPSolution | None] = []
    published: list[PnPSolution | None] = []
    sources: list[str] = []
    coord_errors = []
    network_ms, published_ms = [], []
    for image in images:
        coords, log_scale = net(imagenet_normalise(to_unit(image.rgb_HW3[None], device)))  # as the export bakes in
        coords_np = coords[0].cpu().numpy()
        log_scale_np = log_scale[0].cpu().numpy()
        if image.coords_3hw is not None:
            coord_errors.append(scene_coordinate_error_m(coords_np.reshape(3, -1).T, image.coords_3hw.reshape(3, -1).T,
                                                         image.valid_hw.reshape(-1)))
        started = time.perf_counter()
        points, pixels, weights = cell_correspondences(coords_np, log_scale_np, image.K)
        network = solve_pnp_ransac(points, pixels, image.K, options, weights_N=weights)
        if network is not None:
            network = replace(network, cov_6x6=network.cov_6x6 * covariance_scale)
        network_solutions.append(network)
        network_ms.append((time.perf_counter() - started) * 1e3)
        solution, source = network, ('network' if network is not None else 'none')
        if keyframes is not None:
            camera = CameraIntrinsics(K=image.K, width=image.rgb_HW3.shape[1], height=image.rgb_HW3.shape[0])
            solution, source, _, _ = pose_with_keyframes(keyframes, image.rgb_HW3, camera, network,
                                                         Evidence(points, pixels, image.K, options.inlier_threshold_px))
        published_ms.append((time.perf_counter() - started) * 1e3)
        published.append(solution)
        sources.append(source)
    common = {'mean_scene_coordinate_error_m': float(np.nanmean(coord_errors)) if coord_errors else float('nan')}
    network_sources = ['network' if s is not None else 'none' for s in network_solutions]
    network_result = _summarise(images, network_solutions, network_sources, thresholds,
                                {**common, 'ransac_p50_ms': float(np.median(network_ms)) if network_ms else float('nan')})
    if keyframes is None:
        result = network_result
    else:
        result = _summarise(images, published, sources, thresholds,
                            {**common, 'ransac_p50_ms': float(np.median(published_ms)) if published_ms else float('nan'),
                             'keyframe_share': float(np.mean([s == 'keyframes' for s in sources])) if sources else 0.0})
        result.network = network_result
    logger.info('evaluation on %d images: %s', len(images), {k: round(v, 4) for k, v in result.metrics.items()})
    return result


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
