"""The bundle contract of the ``scene_coordinates`` localizer, shared by the trainer (which builds it) and the
plugin (which parses it). Torch-free.

A scene_coordinates bundle's ONNX model maps a uint8 RGB image (the bundle's input size, ``stretch``
resize) to ``coords`` (N x 3 x H/8 x W/8 scene coordinates in metres) and ``log_scale`` (N x 1 x H/8 x
W/8, log of the predicted Laplace scale in metres); cell (i, j) stands for input pixel
``(8 j + 4, 8 i + 4)``. The bundle carries the RANSAC PnP defaults the trainer evaluated with
(:class:`SceneRansac`; plugin options override each), the covariance scale calibrated on the validation
split and, for a geo-referenced scene, the scene frame's :class:`vizloc_ros.geodesy.GeoReference`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from vizloc_ros.contract import BundleContract, ContractError, geo_reference, nested
from vizloc_ros.geodesy import GeoReference

__all__ = ['LOCALIZER_TYPE', 'OUTPUT_COORDS', 'OUTPUT_LOG_SCALE', 'OUTPUT_STRIDE', 'SceneRansac', 'SceneKeyframes',
           'SceneCoordinatesContract']

LOCALIZER_TYPE = 'scene_coordinates'
OUTPUT_COORDS = 'coords'
OUTPUT_LOG_SCALE = 'log_scale'
#: Input pixels per output cell.
OUTPUT_STRIDE = 8


@dataclass(frozen=True)
class SceneRansac:
    """RANSAC PnP defaults of a bundle (``metadata.ransac``): pose ``hypotheses``, inlier reprojection
    threshold in pixels of the network input, and the ``min_inliers`` / ``min_inlier_ratio`` below which
    the localizer answers ``no_fix``."""

    hypotheses: int = 256
    inlier_threshold_px: float = 10.0
    min_inliers: int = 30
    min_inlier_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.hypotheses < 1 or self.min_inliers < 4:
            raise ContractError(f'ransac: need hypotheses >= 1 and min_inliers >= 4, got {self.hypotheses}, '
                                f'{self.min_inliers}')
        if not (math.isfinite(self.inlier_threshold_px) and self.inlier_threshold_px > 0.0):
            raise ContractError(f'ransac: inlier_threshold_px must be > 0, got {self.inlier_threshold_px}')
        if not 0.0 <= self.min_inlier_ratio <= 1.0:
            raise ContractError(f'ransac: min_inlier_ratio must be in [0, 1], got {self.min_inlier_ratio}')


@dataclass(frozen=True)
class SceneKeyframes:
    """The bundle's keyframe map (``metadata.keyframes``, files ``keyframes.npz`` + ``keyframes.faiss``,
    see :mod:`vizloc_plugins.keyframes`) and how the localizer uses it.

    Matching: ``n_features`` SIFT keypoints per image, the ``candidates`` keyframes with most votes of
    each query descriptor's ``neighbours`` nearest map descriptors, Lowe's ``ratio``; pose: LO-RANSAC
    PnP with ``threshold_px`` (pixels of the camera image), at least ``min_inliers`` inliers. With a
    network pose too, the pose that explains more of both sources' correspondences is published
    (:func:`vizloc_plugins.scene_coordinates.select_pose`). ``covariance_scale``: factor on its PnP covariance, calibrated on the validation split.
    ``frames``/``points``: size of the map (provenance).
    """

    n_features: int = 500
    candidates: int = 5
    neighbours: int = 3
    ratio: float = 0.8
    threshold_px: float = 4.0
    min_inliers: int = 30
    covariance_scale: float = 1.0
    frames: int = 0
    points: int = 0

    def __post_init__(self) -> None:
        if min(self.n_features, self.candidates, self.neighbours) < 1 or self.min_inliers < 4:
            raise ContractError('keyframes: need n_features, candidates, neighbours >= 1 and min_inliers >= 4')
        if not 0.0 < self.ratio < 1.0:
            raise ContractError(f'keyframes: ratio must be in (0, 1), got {self.ratio}')
        if not (self.threshold_px > 0.0 and math.isfinite(self.covariance_scale) and self.covariance_scale > 0.0):
            raise ContractError('keyframes: threshold_px and covariance_scale must be > 0')


@dataclass(frozen=True)
class SceneCoordinatesContract(BundleContract):
    """``bundle.yaml`` metadata of a scene_coordinates bundle (see the module docstring).

    ``output_stride``: always :data:`OUTPUT_STRIDE`; ``resize``: always ``stretch`` (the intrinsics are
    scaled the same way); ``ransac``: :class:`SceneRansac`; ``covariance_scale``: factor on the PnP
    covariance; ``geo``: the scene frame on Earth (None = a local map, no NavSatFix); ``keyframes``:
    :class:`SceneKeyframes` when the bundle carries a keyframe map (None = network cells only).
    """

    TYPE: ClassVar[str] = LOCALIZER_TYPE
    OUTPUTS: ClassVar[tuple[str, ...]] = (OUTPUT_COORDS, OUTPUT_LOG_SCALE)
    PROVENANCE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {'cell_centre', 'scene_mean_m', 'scene_scale_m', 'supervision', 'uncertainty', 'encoder', 'head', 'dataset',
         'train_images', 'args', 'preset', 'config'})

    output_stride: int = OUTPUT_STRIDE
    resize: str = 'stretch'
    ransac: SceneRansac = dataclasses.field(default_factory=SceneRansac)
    covariance_scale: float = 1.0
    geo: GeoReference | None = None
    keyframes: SceneKeyframes | None = None

    def __post_init__(self) -> None:
        if self.output_stride != OUTPUT_STRIDE:
            raise ContractError(f'output_stride {self.output_stride} is not {OUTPUT_STRIDE}')
        if self.resize != 'stretch':
            raise ContractError(f'scene_coordinates bundles must use resize "stretch", got {self.resize!r}')
        if not (math.isfinite(self.covariance_scale) and self.covariance_scale > 0.0):
            raise ContractError(f'covariance_scale must be > 0, got {self.covariance_scale}')

    @classmethod
    def _from_fields(cls, values: dict[str, Any]) -> 'SceneCoordinatesContract':
        ransac, geo = values.pop('ransac', None), geo_reference(values.pop('geo', None))
        keyframes = values.pop('keyframes', None)
        return cls(**values, ransac=nested(SceneRansac, ransac, 'ransac') if ransac else SceneRansac(), geo=geo,
                   keyframes=nested(SceneKeyframes, keyframes, 'keyframes') if keyframes else None)
