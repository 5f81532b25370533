"""Localizer plugin ``scene_coordinates``: dense scene-coordinate regression + DSAC*-style RANSAC PnP.

The bundle's ONNX model (encoder + scene head, preprocessing baked in, see
``vizloc_training.scene_coordinates``) maps a uint8 RGB image of the bundle's input size to

* ``coords``: ``[N, 3, H/8, W/8]`` scene coordinates in metres (the scene/map frame), and
* ``log_scale``: ``[N, 1, H/8, W/8]`` log of the predicted Laplace scale in metres (uncertainty).

Cell (i, j) stands for input pixel ``(8 j + 4, 8 i + 4)`` (DSAC*/ACE convention; pixel k's centre at k). The frame is resized to the
input size with a plain resize ("stretch"), its CameraInfo intrinsics scaled the same way
(``CameraIntrinsics.scaled``); distorted cameras get their cell pixels undistorted
(``cv2.undistortPoints``) before PnP. :func:`vizloc_plugins.pnp.solve_pnp_ransac` then gives the
pose and its covariance; fewer than ``min_inliers`` inliers gives ``status='no_fix'``. A bundle with
a keyframe map (``metadata.keyframes``, :mod:`vizloc_plugins.keyframes`) also matches the frame, at
its own resolution, against the mapping frames' SIFT keypoints and their 3D points (LO-RANSAC PnP);
:func:`select_pose` publishes the pose that explains more of both sources (option ``keyframes``
turns the map off). The RANSAC
settings default to the bundle's (``metadata.ransac``); the bundle metadata is
:class:`vizloc_plugins.scene_coordinates_contract.SceneCoordinatesContract`.

Outputs: :class:`PoseEstimate` (``T_map_camera`` in the scene frame, 6x6 covariance in
geometry_msgs order, multiplied by the covariance scale calibrated at training time) and, when the
bundle carries the dataset's geo-reference (``metadata.geo``, a geo.yaml mapping), a
:class:`GeoEstimate` (``GeoReference.scene_to_wgs84_fix``: WGS84, covariance rotated to ENU at the
position). No torch here.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from vizloc_ros.hookspecs import hookimpl
from vizloc_ros.trainers import TrainerRegistrar, TrainerType
from vizloc_ros.bundle import BundleError
from vizloc_ros.localizer import ConfigError, LocalizerConfig, LocalizerContext, LocalizerType
from vizloc_ros.types import (CameraIntrinsics, Frame, InvalidInputError, InvalidOutputError, LocalizationResult,
                              PoseEstimate, ResultStatus)

from .keyframes import KEYFRAMES_INDEX, KEYFRAMES_NPZ, KeyframeError, KeyframeMap, KeyframeMatch
from .pnp import Evidence, PnPSolution, RansacOptions, geo_estimate_from_pose, solve_pnp_ransac, undistort_pixels
from .scene_coordinates_contract import (LOCALIZER_TYPE, OUTPUT_COORDS, OUTPUT_LOG_SCALE, OUTPUT_STRIDE,
                                         SceneCoordinatesContract)

__all__ = ['LOCALIZER_TYPE', 'OUTPUT_STRIDE', 'SceneCoordinatesOptions', 'SceneCoordinateLocalizer',
           'cell_centres_px', 'cell_correspondences', 'estimate_pose', 'pose_with_keyframes', 'select_pose',
           'vizloc_register_localizers', 'vizloc_register_trainers']

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneCoordinatesOptions:
    hypotheses: int = field(default=0, metadata={
        'description': 'RANSAC pose hypotheses (P3P on 4 cells each; 0 = bundle default)'})
    inlier_threshold_px: float = field(default=0.0, metadata={
        'description': 'inlier reprojection threshold in pixels of the network input image (0 = bundle default)'})
    min_inliers: int = field(default=0, metadata={
        'description': 'fewer RANSAC inliers than this gives status no_fix (0 = bundle default)'})
    min_inlier_ratio: float = field(default=0.0, metadata={
        'description': 'fewer inliers than this share of the cells gives status no_fix (0 = bundle default)'})
    use_uncertainty: bool = field(default=True, metadata={
        'description': 'weight RANSAC inlier votes by the predicted confidence'})
    covariance_scale: float = field(default=0.0, metadata={
        'description': 'factor on the PnP covariance (0 = the calibrated factor stored in the bundle)'})
    keyframes: bool = field(default=True, metadata={
        'description': "match frames against the bundle's keyframe map (SIFT + LO-RANSAC PnP) when it has one"})
    seed: int = field(default=0, metadata={'description': 'RANSAC random seed (-1 = random each frame)'})
    intra_op_num_threads: int = field(default=0, metadata={
        'description': 'ONNX Runtime CPU threads for backend onnxruntime (0 = library default)'})

    def __post_init__(self) -> None:
        if self.hypotheses < 0:
            raise ValueError(f'hypotheses must be >= 1 (or 0 = bundle default), got {self.hypotheses}')
        if self.inlier_threshold_px < 0.0 or self.covariance_scale < 0.0:
            raise ValueError('inlier_threshold_px and covariance_scale must be >= 0')
        if not 0.0 <= self.min_inlier_ratio <= 1.0:
            raise ValueError(f'min_inlier_ratio must be in [0, 1], got {self.min_inlier_ratio}')
        if self.min_inliers != 0 and self.min_inliers < 4:
            raise ValueError(f'min_inliers must be 0 (bundle default) or >= 4, got {self.min_inliers}')


def cell_centres_px(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) input-image pixel centres of an h x w output grid, each (h, w)."""
    u = np.arange(w, dtype=np.float64) * OUTPUT_STRIDE + OUTPUT_STRIDE // 2
    v = np.arange(h, dtype=np.float64) * OUTPUT_STRIDE + OUTPUT_STRIDE // 2
    return np.meshgrid(u, v)


def cell_correspondences(coords_3hw: np.ndarray, log_scale_1hw: np.ndarray | None, K_input: np.ndarray, *,
                         use_uncertainty: bool = True, dist_coeffs: np.ndarray | None = None,
                         distortion_model: str = 'plumb_bob') -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The network's 2D-3D correspondences of one image (no batch axis): (scene points (N, 3), undistorted
    input-image pixels (N, 2), confidence weights (N,) or None), finite cells only.

    ``dist_coeffs``/``distortion_model`` (CameraInfo) undistort the cell pixels
    (``cv2.undistortPoints``; ``cv2.fisheye.undistortPoints`` for ``equidistant``).
    """
    coords = np.asarray(coords_3hw, dtype=np.float64)
    if coords.ndim != 3 or coords.shape[0] != 3:
        raise InvalidOutputError(f'coords must be (3, h, w), got {coords.shape}')
    h, w = coords.shape[1:]
    uu, vv = cell_centres_px(h, w)
    pixels = np.stack([uu.reshape(-1), vv.reshape(-1)], axis=1)
    points = coords.reshape(3, -1).T
    finite = np.all(np.isfinite(points), axis=1)
    weights = None
    if use_uncertainty and log_scale_1hw is not None:
        scale = np.exp(np.asarray(log_scale_1hw, dtype=np.float64).reshape(-1))
        finite &= np.isfinite(scale)
        reference = np.median(scale[finite]) if finite.any() else 1.0
        weights = np.clip(reference / np.maximum(scale, 1e-12), 0.0, 1.0)[finite]
    points, pixels = points[finite], pixels[finite]
    return points, undistort_pixels(pixels, K_input, dist_coeffs, distortion_model), weights


def estimate_pose(coords_3hw: np.ndarray, log_scale_1hw: np.ndarray | None, K_input: np.ndarray,
                  options: RansacOptions, *, use_uncertainty: bool = True, covariance_scale: float = 1.0,
                  dist_coeffs: np.ndarray | None = None, distortion_model: str = 'plumb_bob') -> PnPSolution | None:
    """Pose from one image's network outputs (no batch axis) and the input-size intrinsics
    (:func:`cell_correspondences`, then :func:`vizloc_plugins.pnp.solve_pnp_ransac`)."""
    points, pixels, weights = cell_correspondences(coords_3hw, log_scale_1hw, K_input, use_uncertainty=use_uncertainty,
                                                   dist_coeffs=dist_coeffs, distortion_model=distortion_model)
    solution = solve_pnp_ransac(points, pixels, K_input, options, weights_N=weights)
    if solution is None or covariance_scale == 1.0:
        return solution
    return replace(solution, cov_6x6=solution.cov_6x6 * covariance_scale)


def select_pose(network: PnPSolution | None, keyframe: PnPSolution | None, cells: Evidence,
                matches: Evidence | None) -> tuple[PnPSolution | None, str, dict[str, float]]:
    """The pose to publish from the network's and the keyframe map's: (solution, source, scores), source
    ``keyframes``, ``network`` or ``none``.

    With both poses, each is scored by the share of the network's ``cells`` plus the share of the
    keyframe ``matches`` it explains; the keyframe pose wins unless the network pose scores higher. A
    right keyframe pose explains its matches and the cells the network got right; a keyframe pose at
    a repeated texture elsewhere explains its matches but few cells, and a network pose that RANSAC
    fitted to noise explains few cells and no matches.
    """
    if keyframe is None:
        return network, ('network' if network is not None else 'none'), {}
    if network is None or matches is None:
        return keyframe, 'keyframes', {}
    scores = {'keyframe_score': cells.share(keyframe.T_map_camera) + matches.share(keyframe.T_map_camera),
              'network_score': cells.share(network.T_map_camera) + matches.share(network.T_map_camera)}
    if scores['network_score'] > scores['keyframe_score']:
        return network, 'network', scores
    return keyframe, 'keyframes', scores


def pose_with_keyframes(keyframes: KeyframeMap, rgb_HW3: np.ndarray, camera: CameraIntrinsics,
                        network: PnPSolution | None, cells: Evidence
                        ) -> tuple[PnPSolution | None, str, dict[str, float], KeyframeMatch]:
    """The keyframe pose of an RGB image (its own resolution, ``camera`` its intrinsics and distortion)
    put against the network's by :func:`select_pose`: (solution, source, scores, the match). What the
    node publishes and the trainer evaluates."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb_HW3), cv2.COLOR_RGB2GRAY)
    match = keyframes.match(gray, camera.K, dist_coeffs=camera.D, distortion_model=camera.distortion_model)
    solution, source, scores = select_pose(network, match.solution, cells, match.evidence)
    return solution, source, scores, match


class SceneCoordinateLocalizer:
    """Runs the scene-coordinate bundle on frames with CameraInfo and solves the pose with RANSAC PnP."""

    requires_camera_info = True

    def __init__(self, config: LocalizerConfig, options: SceneCoordinatesOptions, context: LocalizerContext) -> None:
        from vizloc_ros.runner import BundleModel

        self.name = config.name
        self.options = options
        self.model = BundleModel(config.bundle, backend=config.backend, expected_type=LOCALIZER_TYPE,
                                 cache_dir=context.cache_dir,
                                 intra_op_num_threads=options.intra_op_num_threads or None)
        try:
            self._configure(SceneCoordinatesContract.from_bundle(self.model.bundle))
        except ConfigError:
            self.model.close()
            raise

    def _configure(self, contract: SceneCoordinatesContract) -> None:
        """RANSAC settings and covariance scale: the option where given (non-zero), else the bundle's."""
        options, defaults = self.options, contract.ransac
        self.ransac = RansacOptions(hypotheses=options.hypotheses or defaults.hypotheses,
                                    inlier_threshold_px=options.inlier_threshold_px or defaults.inlier_threshold_px,
                                    min_inliers=options.min_inliers or defaults.min_inliers,
                                    min_inlier_ratio=options.min_inlier_ratio or defaults.min_inlier_ratio,
                                    seed=None if options.seed < 0 else options.seed)
        self.covariance_scale = options.covariance_scale or contract.covariance_scale
        self.geo = contract.geo
        self.keyframes: KeyframeMap | None = None
        if contract.keyframes is not None and options.keyframes:
            try:
                bundle = self.model.bundle
                self.keyframes = KeyframeMap(bundle.file(KEYFRAMES_NPZ), bundle.file(KEYFRAMES_INDEX),
                                             contract.keyframes, seed=max(options.seed, 0))
            except (KeyframeError, BundleError) as exc:
                raise ConfigError(f'{self.name}: {exc}') from exc

    @property
    def backend_name(self) -> str:
        return self.model.backend_name

    def localize(self, frame: Frame) -> LocalizationResult:
        if frame.camera is None:
            raise InvalidInputError(f'{self.name}: frame {frame.frame_id!r} has no CameraInfo (intrinsics required)')
        started = time.perf_counter()
        outputs = self.model.run(frame, [OUTPUT_COORDS, OUTPUT_LOG_SCALE])
        network_ms = (time.perf_counter() - started) * 1e3
        spec = self.model.input
        camera = frame.camera.scaled(spec.width, spec.height)
        coords, log_scale = outputs[OUTPUT_COORDS][0], outputs[OUTPUT_LOG_SCALE][0]
        points, pixels, weights = cell_correspondences(
            coords, log_scale, camera.K, use_uncertainty=self.options.use_uncertainty, dist_coeffs=camera.D,
            distortion_model=camera.distortion_model)
        network = solve_pnp_ransac(points, pixels, camera.K, self.ransac, weights_N=weights)
        if network is not None:
            network = replace(network, cov_6x6=network.cov_6x6 * self.covariance_scale)
        ransac_ms = (time.perf_counter() - started) * 1e3 - network_ms
        diagnostics = {'network_ms': f'{network_ms:.1f}', 'ransac_ms': f'{ransac_ms:.1f}',
                       'cells': str(int(np.prod(outputs[OUTPUT_COORDS].shape[2:]))),
                       'network_inliers': str(network.num_inliers if network is not None else 0)}
        solution, source = network, 'network' if network is not None else 'none'
        if self.keyframes is not None:
            matching_started = time.perf_counter()
            solution, source, scores, match = pose_with_keyframes(
                self.keyframes, frame.rgb_HW3, frame.camera, network,
                Evidence(points, pixels, camera.K, self.ransac.inlier_threshold_px))
            diagnostics.update({'keyframe_ms': f'{(time.perf_counter() - matching_started) * 1e3:.1f}',
                                'keyframe_matches': str(match.matches),
                                'keyframe_inliers': str(match.solution.num_inliers if match.solution is not None else 0),
                                'keyframes': ','.join(match.keyframes[:3]),
                                **{k: f'{v:.3f}' for k, v in scores.items()}})
        diagnostics['source'] = source
        if solution is None:
            diagnostics['reason'] = (f'fewer than {self.ransac.min_inliers} RANSAC inliers or an inlier ratio below '
                                     f'{self.ransac.min_inlier_ratio:.2f}')
            if self.keyframes is not None:
                diagnostics['reason'] += (f' (network), fewer than {self.keyframes.settings.min_inliers} PnP '
                                          'inliers (keyframes)')
            return LocalizationResult(status=ResultStatus.NO_FIX, diagnostics=diagnostics)
        diagnostics.update({'inliers': str(solution.num_inliers), 'inlier_ratio': f'{solution.inlier_ratio:.3f}',
                            'reprojection_rmse_px': f'{solution.reprojection_rmse_px:.2f}'})
        pose = PoseEstimate(T_map_camera=solution.T_map_camera, cov_6x6=solution.cov_6x6,
                            inlier_ratio=solution.inlier_ratio)
        geo = None
        if self.geo is not None:
            geo = geo_estimate_from_pose(self.geo, solution.T_map_camera, solution.cov_6x6)
        return LocalizationResult(pose=pose, geo=geo, diagnostics=diagnostics)

    def reset(self) -> None:
        """No temporal state."""

    def close(self) -> None:
        self.model.close()
        self.keyframes = None  # the map's arrays and FAISS index go with it


def _factory(config: LocalizerConfig, options: SceneCoordinatesOptions, context: LocalizerContext
             ) -> SceneCoordinateLocalizer:
    return SceneCoordinateLocalizer(config, options, context)


@hookimpl
def vizloc_register_localizers(registry: Any) -> None:
    registry.register(LocalizerType(
        name=LOCALIZER_TYPE, factory=_factory, options_type=SceneCoordinatesOptions,
        description='6-DoF pose from dense scene-coordinate regression + RANSAC PnP (CrossLoc/DSAC*/ACE); '
                    'needs CameraInfo; publishes pose and, with a geo-referenced bundle, NavSatFix'))


@hookimpl
def vizloc_register_trainers(registrar: TrainerRegistrar) -> None:
    # a dotted path: the trainer (torch) is imported by `vizloc-train scene_coordinates` only
    registrar.register(TrainerType.in_module(
        LOCALIZER_TYPE, 'vizloc_training.scene_coordinates.train',
        'dense scene-coordinate regression over a posed RGB-D dataset'))
