"""The bundle contract of the ``gps_regressor`` localizer, shared by the trainer (which builds it) and the plugin
(which parses it). Torch-free.

A gps_regressor bundle's ONNX model maps a uint8 RGB image (the bundle's input size, ``stretch`` resize) to
``mean_en_m`` (N, 2) and ``cov_en_m2`` (N, 2, 2): the predicted horizontal position and its covariance in
metres in the bundle's *scene frame* (``geo``, a :class:`vizloc_ros.geodesy.GeoReference`; the trainer
uses a local East-North-Up frame at the training split's centroid). ``variance_scale`` is the calibration
factor fitted on the validation split (1.0 = none) that the plugin multiplies the covariance by.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from vizloc_ros.contract import BundleContract, ContractError, geo_reference
from vizloc_ros.geodesy import GeoReference

__all__ = ['LOCALIZER_TYPE', 'OUTPUT_MEAN', 'OUTPUT_COV', 'GPSRegressorContract']

LOCALIZER_TYPE = 'gps_regressor'
OUTPUT_MEAN = 'mean_en_m'
OUTPUT_COV = 'cov_en_m2'


@dataclass(frozen=True)
class GPSRegressorContract(BundleContract):
    """``bundle.yaml`` metadata of a gps_regressor bundle (see the module docstring).

    ``geo``: the scene frame of the outputs (required); ``variance_scale``: covariance calibration factor;
    ``altitude_known``: the training data had altitudes; ``alt_std_m``: their standard deviation (m; None
    when unknown); ``resize``: always ``stretch``; ``backbone``, ``backbone_weights``: how the network was
    initialised (information).
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
        return cls(**values, geo=geo)
