"""The bundle contract of the ``gps_regressor`` localizer, shared by the trainer (which builds it) and the plugin
(which parses it). Torch-free.

A gps_regressor bundle's ONNX model maps a uint8 RGB image (the bundle's input size, ``stretch`` resize) to
``mean_en_m`` (N, 2) and ``cov_en_m2`` (N, 2, 2): the predicted horizontal position and its covariance in
metres in the bundle's *scene frame* (``geo``, a :class:`vizloc_ros.geodesy.GeoReference`; the trainer
uses a local East-North-Up frame at the training split's centroid). ``variance_scale`` is the calibration
factor fitted on the validation split (1.0 = none) that the plugin multiplies the covariance by.
``keyframes`` (:class:`GPSKeyframes`), when present, describes the bundle's keyframe map: the training
images' SIFT keypoints with the images' positions (files ``keyframes.npz`` + ``keyframes.faiss``,
:class:`vizloc_plugins.keyframes.PlaceMap`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from vizloc_ros.contract import BundleContract, ContractError, geo_reference, nested
from vizloc_ros.geodesy import GeoReference

__all__ = ['LOCALIZER_TYPE', 'OUTPUT_MEAN', 'OUTPUT_COV', 'GPSKeyframes', 'GPSRegressorContract']

LOCALIZER_TYPE = 'gps_regressor'
OUTPUT_MEAN = 'mean_en_m'
OUTPUT_COV = 'cov_en_m2'


@dataclass(frozen=True)
class GPSKeyframes:
    """The bundle's keyframe map of training images (``metadata.keyframes``) and how the localizer uses it.

    Matching: ``n_features`` SIFT keypoints per image (map images and queries first reduced to at most
    ``max_side_px`` on their longer side: phone photos and HD frames cost no more than VGA); the
    ``candidates`` training images with most votes
    of each query descriptor's ``neighbours`` nearest map descriptors; Lowe's ``ratio``; two-view
    verification (fundamental matrix or homography, USAC, ``threshold_px``); an image with at least
    ``min_inliers`` inliers is verified. Position: each verified image heads a place (the verified images
    within ``place_radius_m`` with ``min_relative_inliers`` to 1 x its inliers), scored by its inliers
    times the network estimate's density there, places outside the network's ``prior_gate`` ellipse
    rejected (0 = no gate); the best place's images averaged with their inliers as
    weights (:meth:`vizloc_plugins.keyframes.PlaceMap.locate`); covariance: ``covariance_scale`` (m^2, the
    variance per axis of a place whose best image has ``min_inliers`` inliers; calibrated on the validation
    split) x ``(min_inliers / inliers)^2``. ``frames``/``points``: size of the map (provenance).
    """

    n_features: int = 650  # 500 until 2026-12-05 (docs/localizers/gps_regressor.md, "More SIFT keypoints")
    max_side_px: int = 640
    candidates: int = 10
    neighbours: int = 3
    ratio: float = 0.8
    threshold_px: float = 3.0
    min_inliers: int = 15
    place_radius_m: float = 25.0
    min_relative_inliers: float = 0.3
    prior_gate: float = 0.999
    covariance_scale: float = 1.0
    frames: int = 0
    points: int = 0

    def __post_init__(self) -> None:
        if min(self.n_features, self.candidates, self.neighbours) < 1 or self.min_inliers < 8 or self.max_side_px < 64:
            raise ContractError('keyframes: need n_features, candidates, neighbours >= 1, min_inliers >= 8 and '
                                'max_side_px >= 64')
        if not 0.0 < self.ratio < 1.0:
            raise ContractError(f'keyframes: ratio must be in (0, 1), got {self.ratio}')
        if not 0.0 <= self.prior_gate < 1.0:
            raise ContractError(f'keyframes: prior_gate must be in [0, 1), got {self.prior_gate}')
        if not 0.0 <= self.min_relative_inliers <= 1.0:
            raise ContractError(f'keyframes: min_relative_inliers must be in [0, 1], got {self.min_relative_inliers}')
        positive = (self.threshold_px, self.place_radius_m, self.covariance_scale)
        if not all(math.isfinite(v) and v > 0.0 for v in positive):
            raise ContractError('keyframes: threshold_px, place_radius_m and covariance_scale must be > 0')


@dataclass(frozen=True)
class GPSRegressorContract(BundleContract):
    """``bundle.yaml`` metadata of a gps_regressor bundle (see the module docstring).

    ``geo``: the scene frame of the outputs (required); ``variance_scale``: covariance calibration factor;
    ``altitude_known``: the training data had altitudes; ``alt_std_m``: their standard deviation (m; None
    when unknown); ``resize``: always ``stretch``; ``backbone``, ``backbone_weights``: how the network was
    initialised (information); ``keyframes``: :class:`GPSKeyframes` when the bundle carries a keyframe map.
    """

    TYPE: ClassVar[str] = LOCALIZER_TYPE
    OUTPUTS: ClassVar[tuple[str, ...]] = (OUTPUT_MEAN, OUTPUT_COV)
    PROVENANCE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {'target_frame', 'loss', 'head', 'anchors', 'outputs', 'preset', 'config', 'train_args', 'dataset', 'history'})

    geo: GeoReference | None = None
    variance_scale: float = 1.0
    altitude_known: bool = False
    alt_std_m: float | None = None
    resize: str = 'stretch'
    backbone: str = ''
    backbone_weights: Mapping[str, str] = dataclasses.field(default_factory=dict)
    keyframes: GPSKeyframes | None = None

    def __post_init__(self) -> None:
        if self.geo is None:
            raise ContractError('gps_regressor bundle metadata has no "geo" (geo-reference of the regression frame)')
        if not (math.isfinite(self.variance_scale) and self.variance_scale > 0.0):
            raise ContractError(f'variance_scale must be positive, got {self.variance_scale}')
        if self.alt_std_m is not None and not (math.isfinite(self.alt_std_m) and self.alt_std_m >= 0.0):
            raise ContractError(f'alt_std_m must be >= 0 (or None), got {self.alt_std_m}')
        if self.resize != 'stretch':
            raise ContractError(f'gps_regressor bundles use resize "stretch", got {self.resize!r}')

    @classmethod
    def _from_fields(cls, values: dict[str, Any]) -> 'GPSRegressorContract':
        geo = geo_reference(values.pop('geo', None))
        keyframes = values.pop('keyframes', None)
        return cls(**values, geo=geo, keyframes=nested(GPSKeyframes, keyframes, 'keyframes') if keyframes else None)
