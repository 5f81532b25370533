"""Localizer plugin ``s2_classifier``: world-scale geolocation by S2-cell classification (seed 002, PlaNet).

A bundle (written by ``vizloc-train s2_classifier``) holds an ONNX model with output ``probs``
(N x C softmax over S2 cells) and, with the hierarchical head, ``parent_probs`` (N x P softmax over
coarser ancestor cells); the cell partition (PlaNet's adaptive partition of the training split,
:mod:`vizloc_plugins.s2_cells`) is the bundle file ``cells.csv``. What the plugin reads from the
bundle is described by one typed contract,
:class:`vizloc_plugins.s2_classifier_contract.S2ClassifierContract` (``metadata.s2_classifier`` + the
outputs + the cells file), which the trainer builds and this plugin parses.

Per frame (:func:`estimate_fix`):

1. run the model -> cell probabilities;
2. with ``region_km`` > 0, first decide the region: the circle of that radius around one of the
   most probable cells that holds the most probability mass (the marginal over regions: a city whose
   probability is spread over many small cells beats one stray cell elsewhere that is the single
   most probable); cells outside it are left out of the steps below (``region_km`` 0: PlaNet's rule,
   the most probable cell decides);
3. take the ``top_k`` most probable cells that lie within ``neighbourhood_km`` of the most probable
   one (cells in other districts or on other continents must not pull the estimate into the space
   between them; the bundle's defaults are 3 cells within 2.5 km);
4. the position is their probability-weighted mean **on the unit sphere** (weighted sum of the cells'
   unit vectors, normalised), each cell standing for its training centroid (``cell_position:
   train_mean``) or its geometric centre;
5. the horizontal covariance in ENU at the estimate is the mixture covariance: the weighted mean of
   the cells' extent variances (uniform over the cell: area / 12 per axis) plus the weighted spread
   of the cell positions around the estimate (law of total variance,
   :func:`vizloc_plugins.gps_regressor.combine_gaussians`);
6. altitude unknown (NaN, variance ``UNKNOWN_ALTITUDE_SIGMA_M``²). The node publishes the
   :class:`GeoEstimate` as NavSatFix on ``~/<name>/fix``. Below ``min_confidence`` (probability
   mass of the cells used) the result is ``no_fix``.

Diagnostics: ``cell`` (token of the best cell), ``confidence``, ``mass_used``, ``cells_used``, ``region_mass``, and with
a hierarchical bundle ``parent_cell`` / ``parent_confidence``. No torch here.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from vizloc_ros.hookspecs import hookimpl
from vizloc_ros.trainers import TrainerRegistrar, TrainerType
from vizloc_ros.localizer import ConfigError, LocalizerConfig, LocalizerContext, LocalizerType
from vizloc_ros.types import CovarianceType, Frame, GeoEstimate, InvalidOutputError, LocalizationResult, ResultStatus

from .gps_regressor import UNKNOWN_ALTITUDE_SIGMA_M, combine_gaussians
from .s2_cells import CELL_POSITIONS, EARTH_RADIUS_M, unit_to_latlon
from .s2_classifier_contract import LOCALIZER_TYPE, OUTPUT_PARENT_PROBS, OUTPUT_PROBS, S2ClassifierContract

__all__ = ['LOCALIZER_TYPE', 'S2ClassifierContract', 'S2ClassifierOptions', 'S2ClassifierLocalizer', 'S2Fix',
           'estimate_fix', 'vizloc_register_localizers', 'vizloc_register_trainers']

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class S2Fix:
    """The fix from one probability vector: position, ENU horizontal covariance and what it used."""

    lat_deg: float
    lon_deg: float
    cov_en_m2: np.ndarray  # 2x2 east/north at the estimate
    best_cell: int
    best_prob: float
    mass_used: float
    cells_used: int
    region_mass: float  # probability mass of the chosen region (1.0 without a region rule)


#: The region rule considers circles around this many of the most probable cells only (the mass of a
#: circle around an improbable cell is never the largest in practice, and this bounds the work to
#: REGION_CANDIDATES x C dot products for partitions of any size).
REGION_CANDIDATES = 32


def _region(candidates: np.ndarray, probs: np.ndarray, positions: np.ndarray,
            region_km: float) -> tuple[np.ndarray, float]:
    """(mask of the cells in the region holding the most mass, that mass): the circle of ``region_km``
    around one of ``candidates`` (cell indices, most probable first); ties go to the more probable centre."""
    cos_limit = math.cos(min(math.pi, region_km * 1e3 / EARTH_RADIUS_M))
    within = positions[candidates] @ positions.T >= cos_limit  # (M, C)
    mass = within @ probs
    j = int(np.argmax(mass))
    return within[j], float(mass[j])


def estimate_fix(probs_C: np.ndarray, positions_C3: np.ndarray, extent_var_m2_C: np.ndarray, *, top_k: int = 3,
                 neighbourhood_km: float = 2.5, region_km: float = 0.0) -> S2Fix:
    """Probability-weighted position over the top cells on the unit sphere (see the module docstring)."""
    from vizloc_ros.geodesy import LocalENU

    probs = np.asarray(probs_C, dtype=np.float64).reshape(-1)
    positions = np.asarray(positions_C3, dtype=np.float64)
    if positions.shape != (probs.size, 3) or np.shape(extent_var_m2_C) != (probs.size,):
        raise InvalidOutputError(f'model gives {probs.size} cell probabilities, the partition has '
                                 f'{positions.shape[0]} cells')
    if not np.all(np.isfinite(probs)):
        raise InvalidOutputError('cell probabilities are not finite')
    order = np.argsort(-probs, kind='stable')
    region_mass = 1.0
    if region_km > 0.0:
        in_region, region_mass = _region(order[:REGION_CANDIDATES], probs, positions, region_km)
        order = order[in_region[order]]  # never empty: the region's centre is in it
    top = order[:max(int(top_k), 1)]
    best = int(top[0])
    cos_limit = math.cos(min(math.pi, neighbourhood_km * 1e3 / EARTH_RADIUS_M))
    near = top[positions[top] @ positions[best] >= cos_limit]
    weights = probs[near]
    if weights.sum() <= 0.0:
        weights = np.ones_like(weights)
    mean = (weights / weights.sum()) @ positions[near]
    norm = float(np.linalg.norm(mean))
    if norm < 1e-9:  # cannot happen for cells within a hemisphere of each other; guard anyway
        mean = positions[best]
    lat, lon = (float(v[0]) for v in unit_to_latlon(mean[None]))
    cell_lat, cell_lon = unit_to_latlon(positions[near])
    e, n, _ = LocalENU(lat, lon, 0.0).to_enu(cell_lat, cell_lon, np.zeros(near.size))
    means_en = np.stack([np.asarray(e, np.float64), np.asarray(n, np.float64)], axis=1)
    extent = np.asarray(extent_var_m2_C, dtype=np.float64)[near]
    covs = extent[:, None, None] * np.eye(2)[None]
    _, cov = combine_gaussians(means_en, covs, weights)
    return S2Fix(lat_deg=lat, lon_deg=lon, cov_en_m2=cov, best_cell=best, best_prob=float(probs[best]),
                 mass_used=float(probs[near].sum()), cells_used=int(near.size), region_mass=region_mass)


@dataclass(frozen=True)
class S2ClassifierOptions:
    """Options of the ``s2_classifier`` localizer (ROS parameters ``<name>.<option>``)."""

    top_k: int = field(default=0, metadata={
        'description': "average over this many most probable cells; 0 = the bundle's default (1 = best cell only)"})
    neighbourhood_km: float = field(default=0.0, metadata={
        'description': "only cells within this great-circle distance (km) of the best cell join the average; "
                       "0 = the bundle's default"})
    region_km: float = field(default=0.0, metadata={
        'description': "first choose the circle of this radius (km) around a probable cell that holds the most "
                       "probability, then the best cell inside it; 0 = the bundle's default (bundles without "
                       "one: the most probable cell decides); a radius below the cell size (0.001) switches it off"})
    cell_position: str = field(default='', metadata={
        'description': "point standing for a cell: 'train_mean' (centroid of its training images), 'center' "
                       "(geometric cell centre) or '' (the bundle's choice)"})
    min_confidence: float = field(default=0.0, metadata={
        'description': "below this probability mass of the cells used the result status is 'no_fix'"})

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ConfigError(f'top_k must be >= 0 (0 = from the bundle), got {self.top_k}')
        for name in ('neighbourhood_km', 'region_km'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ConfigError(f'{name} must be >= 0 (0 = from the bundle), got {value}')
        if self.cell_position not in ('', *CELL_POSITIONS):
            raise ConfigError(f"cell_position must be one of {['', *CELL_POSITIONS]}, got {self.cell_position!r}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f'min_confidence must be in [0, 1], got {self.min_confidence}')


class S2ClassifierLocalizer:
    """The ``s2_classifier`` localizer (see the module docstring)."""

    requires_camera_info = False

    def __init__(self, config: LocalizerConfig, options: S2ClassifierOptions, context: LocalizerContext) -> None:
        from vizloc_ros.runner import BundleModel

        self.name = config.name
        self.model = BundleModel(config.bundle, backend=config.backend, expected_type=LOCALIZER_TYPE,
                                 cache_dir=context.cache_dir)
        try:
            self.contract = S2ClassifierContract.from_bundle(self.model.bundle)
            partition = self.contract.partition
            if partition is None:  # from_bundle always sets it
                raise ConfigError(f'{config.bundle}: no cell partition')
            self.top_k = options.top_k or self.contract.top_k
            self.neighbourhood_km = options.neighbourhood_km or self.contract.neighbourhood_km
            self.region_km = options.region_km or self.contract.region_km
            self.positions_C3 = partition.positions_N3(options.cell_position or self.contract.cell_position)
            self.extent_var_m2 = partition.extent_var_m2()
            self.tokens = partition.tokens
            self.parent_tokens, _ = self.contract.parents()
            self.min_confidence = options.min_confidence
        except ConfigError:
            self.model.close()
            raise
        self.backend_name = self.model.backend_name
        logger.info('%s: s2_classifier over %d cells (top_k %d, neighbourhood %.1f km, region %.0f km) on %s',
                    self.name, len(self.tokens), self.top_k, self.neighbourhood_km, self.region_km, self.backend_name)

    def localize(self, frame: Frame) -> LocalizationResult:
        out = self.model.run(frame, self.contract.output_names)
        probs = np.asarray(out[OUTPUT_PROBS], dtype=np.float64).reshape(-1)
        fix = estimate_fix(probs, self.positions_C3, self.extent_var_m2, top_k=self.top_k,
                           neighbourhood_km=self.neighbourhood_km, region_km=self.region_km)
        diagnostics = {'cell': self.tokens[fix.best_cell], 'confidence': f'{fix.best_prob:.3f}',
                       'mass_used': f'{fix.mass_used:.3f}', 'cells_used': str(fix.cells_used),
                       'region_mass': f'{fix.region_mass:.3f}'}
        if self.parent_tokens:
            parent = np.asarray(out[OUTPUT_PARENT_PROBS], dtype=np.float64).reshape(-1)
            if parent.size != len(self.parent_tokens):
                raise InvalidOutputError(f'parent_probs has {parent.size} values, the bundle has '
                                         f'{len(self.parent_tokens)} parent cells')
            j = int(np.argmax(parent))
            diagnostics.update(parent_cell=self.parent_tokens[j], parent_confidence=f'{parent[j]:.3f}')
        cov_enu = np.zeros((3, 3))
        cov_enu[:2, :2] = fix.cov_en_m2
        cov_enu[2, 2] = UNKNOWN_ALTITUDE_SIGMA_M ** 2
        diagnostics['sigma_m'] = f'{math.sqrt(max(0.5 * np.trace(fix.cov_en_m2), 0.0)):.0f}'
        if fix.mass_used < self.min_confidence:
            return LocalizationResult(status=ResultStatus.NO_FIX,
                                      diagnostics={**diagnostics, 'reason': 'below min_confidence'})
        geo = GeoEstimate(lat_deg=fix.lat_deg, lon_deg=fix.lon_deg, alt_m=math.nan, cov_enu_m2=cov_enu)
        return LocalizationResult(geo=geo, diagnostics=diagnostics,
                                  covariance_type=CovarianceType.APPROXIMATED)  # from cell extents and spread

    def reset(self) -> None:
        """Single-frame localizer: no temporal state."""

    def close(self) -> None:
        self.model.close()


@hookimpl
def vizloc_register_localizers(registry) -> None:
    registry.register(LocalizerType(
        name=LOCALIZER_TYPE, factory=S2ClassifierLocalizer, options_type=S2ClassifierOptions,
        description='image -> WGS84 position at world scale by classification over adaptive S2 cells '
                    '(PlaNet); probability-weighted fix over the top cells with ENU covariance'))


@hookimpl
def vizloc_register_trainers(registrar: TrainerRegistrar) -> None:
    # a dotted path: the trainer (torch) is imported by `vizloc-train s2_classifier` only
    registrar.register(TrainerType.in_module(
        LOCALIZER_TYPE, 'vizloc_training.s2_classifier.train',
        'classification over an adaptive S2-cell partition of a GPS dataset'))
