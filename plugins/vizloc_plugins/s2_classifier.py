"""Localizer plugin ``s2_classifier``: world-scale geolocation by S2-cell classification (seed 002, PlaNet).

A bundle (written by ``vizloc-train s2_classifier``) holds an ONNX model with output ``probs``
(N x C softmax over S2 cells) and, with the hierarchical head, ``parent_probs`` (N x P softmax over
coarser ancestor cells); the cell partition (PlaNet's adaptive partition of the training split,
:mod:`vizloc_plugins.s2_cells`) is the bundle file ``cells.csv``. What the plugin reads from the
bundle is described by one typed contract, :class:`S2ClassifierContract` (``metadata.s2_classifier``
+ the outputs + the cells file), which the trainer builds and this plugin parses.

Per frame (:func:`estimate_fix`):

1. run the model -> cell probabilities;
2. take the ``top_k`` most probable cells that lie within ``neighbourhood_km`` of the most probable
   one (cells in other districts or on other continents must not pull the estimate into the space
   between them; the bundle's defaults are 3 cells within 2.5 km);
3. the position is their probability-weighted mean **on the unit sphere** (weighted sum of the cells'
   unit vectors, normalised), each cell standing for its training centroid (``cell_position:
   train_mean``) or its geometric centre;
4. the horizontal covariance in ENU at the estimate is the mixture covariance: the weighted mean of
   the cells' extent variances (uniform over the cell: area / 12 per axis) plus the weighted spread
   of the cell positions around the estimate (law of total variance,
   :func:`vizloc_plugins.gps_regressor.combine_gaussians`);
5. altitude unknown (NaN, variance ``UNKNOWN_ALTITUDE_SIGMA_M``²). The node publishes the
   :class:`GeoEstimate` as NavSatFix on ``~/<name>/fix``. Below ``min_confidence`` (probability
   mass of the cells used) the result is ``no_fix``.

Diagnostics: ``cell`` (token of the best cell), ``confidence``, ``mass_used``, ``cells_used``, and with
a hierarchical bundle ``parent_cell`` / ``parent_confidence``. No torch here.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from vizloc_ros.hookspecs import hookimpl
from vizloc_ros.localizer import ConfigError, LocalizerConfig, LocalizerContext, LocalizerType
from vizloc_ros.types import CovarianceType, Frame, GeoEstimate, InvalidOutputError, LocalizationResult

from .gps_regressor import UNKNOWN_ALTITUDE_SIGMA_M, combine_gaussians
from .s2_cells import CELL_POSITIONS, EARTH_RADIUS_M, CellPartition, S2CellError, unit_to_latlon

__all__ = ['LOCALIZER_TYPE', 'S2ClassifierContract', 'S2ClassifierOptions', 'S2ClassifierLocalizer', 'S2Fix',
           'estimate_fix', 'vizloc_register_localizers']

logger = logging.getLogger(__name__)

LOCALIZER_TYPE = 's2_classifier'


@dataclass(frozen=True)
class S2ClassifierContract:
    """What an ``s2_classifier`` bundle holds for the plugin (torch-free; built by the trainer).

    Stored as ``metadata.s2_classifier`` (:meth:`to_metadata`) plus the file ``cells_file``; the
    model outputs are :attr:`output_names`. Unknown keys in ``metadata.s2_classifier`` are errors.
    """

    TYPE: ClassVar[str] = LOCALIZER_TYPE
    METADATA_KEY: ClassVar[str] = 's2_classifier'
    OUTPUT_PROBS: ClassVar[str] = 'probs'
    OUTPUT_PARENT_PROBS: ClassVar[str] = 'parent_probs'

    cells_file: str = 'cells.csv'
    #: ``train_mean`` or ``center``: the point that stands for a cell in the fix.
    cell_position: str = 'train_mean'
    #: > 0: the model also outputs ``parent_probs`` over the cells' ancestors this many levels up.
    parent_levels_up: int = 0
    #: Partition parameters (PlaNet): split above t_max images, drop below t_min, never finer than max_level.
    t_max: int = 0
    t_min: int = 0
    max_level: int = 20
    #: Defaults of the fix (plugin options override them).
    top_k: int = 3
    neighbourhood_km: float = 2.5
    #: The partition itself (from ``cells_file``; not part of the metadata mapping).
    partition: CellPartition | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.cell_position not in CELL_POSITIONS:
            raise ConfigError(f's2_classifier: cell_position must be one of {CELL_POSITIONS}, got {self.cell_position!r}')
        if self.parent_levels_up < 0 or self.top_k < 1 or not self.neighbourhood_km > 0.0:
            raise ConfigError('s2_classifier: need parent_levels_up >= 0, top_k >= 1 and neighbourhood_km > 0')

    @property
    def output_names(self) -> list[str]:
        return [self.OUTPUT_PROBS, *([self.OUTPUT_PARENT_PROBS] if self.parent_levels_up else [])]

    def parents(self) -> tuple[tuple[str, ...], np.ndarray]:
        """(parent tokens, parent index per cell) of the hierarchical output (empty without it)."""
        if not self.parent_levels_up or self.partition is None:
            return (), np.zeros(0, dtype=np.int64)
        return self.partition.parents(self.parent_levels_up)

    def to_metadata(self) -> dict[str, Any]:
        """``{'s2_classifier': {...}}`` for the bundle metadata (the partition goes to :meth:`write_files`)."""
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name != 'partition'}
        return {self.METADATA_KEY: plain}

    def write_files(self, directory: Path) -> dict[str, Path]:
        """Write the bundle's extra files into ``directory``; returns ``{bundle name: path}``."""
        if self.partition is None:
            raise ValueError('contract has no partition to write')
        path = Path(directory) / self.cells_file
        path.write_text(self.partition.to_csv())
        return {self.cells_file: path}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], partition: CellPartition | None = None) -> 'S2ClassifierContract':
        raw = metadata.get(cls.METADATA_KEY)
        if not isinstance(raw, Mapping):
            raise ConfigError(f'bundle metadata has no {cls.METADATA_KEY!r} mapping (not an s2_classifier bundle?)')
        known = {f.name for f in fields(cls)} - {'partition'}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f'metadata.{cls.METADATA_KEY}: unknown keys {unknown}; known: {sorted(known)}')
        try:
            values = {f.name: type(getattr(cls, f.name, f.default))(raw[f.name]) if f.name in raw else f.default
                      for f in fields(cls) if f.name != 'partition'}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f'metadata.{cls.METADATA_KEY}: {exc}') from exc
        return cls(**values, partition=partition)

    @classmethod
    def from_bundle(cls, bundle) -> 'S2ClassifierContract':
        """Parse a loaded (verified) :class:`vizloc_ros.bundle.Bundle`: metadata, cells file, outputs."""
        contract = cls.from_metadata(bundle.metadata)
        if contract.cells_file not in bundle.files:
            raise ConfigError(f'{bundle.path}: bundle has no cell partition file {contract.cells_file!r}')
        try:
            partition = CellPartition.from_csv(bundle.file(contract.cells_file).read_text(),
                                               source=str(bundle.path / contract.cells_file))
        except (OSError, S2CellError) as exc:
            raise ConfigError(f'{bundle.path}: cannot read the cell partition: {exc}') from exc
        contract = replace(contract, partition=partition)
        missing = set(contract.output_names) - set(bundle.outputs)
        if missing:
            raise ConfigError(f'{bundle.path}: bundle outputs {list(bundle.outputs)} lack {sorted(missing)}')
        return contract


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


def estimate_fix(probs_C: np.ndarray, positions_C3: np.ndarray, extent_var_m2_C: np.ndarray, *, top_k: int = 3,
                 neighbourhood_km: float = 2.5) -> S2Fix:
    """Probability-weighted position over the top cells on the unit sphere (see the module docstring)."""
    from vizloc_ros.geodesy import LocalENU

    probs = np.asarray(probs_C, dtype=np.float64).reshape(-1)
    positions = np.asarray(positions_C3, dtype=np.float64)
    if positions.shape != (probs.size, 3) or np.shape(extent_var_m2_C) != (probs.size,):
        raise InvalidOutputError(f'model gives {probs.size} cell probabilities, the partition has '
                                 f'{positions.shape[0]} cells')
    if not np.all(np.isfinite(probs)):
        raise InvalidOutputError('cell probabilities are not finite')
    k = min(int(top_k), probs.size)
    top = np.argsort(-probs, kind='stable')[:k]
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
                 mass_used=float(probs[near].sum()), cells_used=int(near.size))


@dataclass(frozen=True)
class S2ClassifierOptions:
    """Options of the ``s2_classifier`` localizer (ROS parameters ``<name>.<option>``)."""

    top_k: int = field(default=0, metadata={
        'description': "average over this many most probable cells; 0 = the bundle's default (1 = best cell only)"})
    neighbourhood_km: float = field(default=0.0, metadata={
        'description': "only cells within this great-circle distance (km) of the best cell join the average; "
                       "0 = the bundle's default"})
    cell_position: str = field(default='', metadata={
        'description': "point standing for a cell: 'train_mean' (centroid of its training images), 'center' "
                       "(geometric cell centre) or '' (the bundle's choice)"})
    min_confidence: float = field(default=0.0, metadata={
        'description': "below this probability mass of the cells used the result status is 'no_fix'"})

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ConfigError(f'top_k must be >= 0 (0 = from the bundle), got {self.top_k}')
        if not (math.isfinite(self.neighbourhood_km) and self.neighbourhood_km >= 0.0):
            raise ConfigError(f'neighbourhood_km must be >= 0 (0 = from the bundle), got {self.neighbourhood_km}')
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
            missing = set(self.contract.output_names) - set(self.model.output_names)
            if missing:
                raise ConfigError(f'{config.bundle}: model lacks output(s) {sorted(missing)}')
            partition = self.contract.partition
            if partition is None:  # from_bundle always sets it
                raise ConfigError(f'{config.bundle}: no cell partition')
            self.top_k = options.top_k or self.contract.top_k
            self.neighbourhood_km = options.neighbourhood_km or self.contract.neighbourhood_km
            self.positions_C3 = partition.positions_N3(options.cell_position or self.contract.cell_position)
            self.extent_var_m2 = partition.extent_var_m2()
            self.tokens = partition.tokens
            self.parent_tokens, _ = self.contract.parents()
            self.min_confidence = options.min_confidence
        except ConfigError:
            self.model.close()
            raise
        self.backend_name = self.model.backend_name
        logger.info('%s: s2_classifier over %d cells (top_k %d, neighbourhood %.0f km) on %s', self.name,
                    len(self.tokens), self.top_k, self.neighbourhood_km, self.backend_name)

    def localize(self, frame: Frame) -> LocalizationResult:
        started = time.perf_counter()
        out = self.model.run(frame, self.contract.output_names)
        probs = np.asarray(out[S2ClassifierContract.OUTPUT_PROBS], dtype=np.float64).reshape(-1)
        fix = estimate_fix(probs, self.positions_C3, self.extent_var_m2, top_k=self.top_k,
                           neighbourhood_km=self.neighbourhood_km)
        diagnostics = {'cell': self.tokens[fix.best_cell], 'confidence': f'{fix.best_prob:.3f}',
                       'mass_used': f'{fix.mass_used:.3f}', 'cells_used': str(fix.cells_used)}
        if self.parent_tokens:
            parent = np.asarray(out[S2ClassifierContract.OUTPUT_PARENT_PROBS], dtype=np.float64).reshape(-1)
            if parent.size != len(self.parent_tokens):
                raise InvalidOutputError(f'parent_probs has {parent.size} values, the bundle has '
                                         f'{len(self.parent_tokens)} parent cells')
            j = int(np.argmax(parent))
            diagnostics.update(parent_cell=self.parent_tokens[j], parent_confidence=f'{parent[j]:.3f}')
        cov_enu = np.zeros((3, 3))
        cov_enu[:2, :2] = fix.cov_en_m2
        cov_enu[2, 2] = UNKNOWN_ALTITUDE_SIGMA_M ** 2
        latency_ms = (time.perf_counter() - started) * 1e3
        diagnostics['sigma_m'] = f'{math.sqrt(max(0.5 * np.trace(fix.cov_en_m2), 0.0)):.0f}'
        if fix.mass_used < self.min_confidence:
            return LocalizationResult(stamp_ns=frame.stamp_ns, frame_id=frame.frame_id, localizer=self.name,
                                      latency_ms=latency_ms, status='no_fix',
                                      diagnostics={**diagnostics, 'reason': 'below min_confidence'})
        geo = GeoEstimate(lat_deg=fix.lat_deg, lon_deg=fix.lon_deg, alt_m=math.nan, cov_enu_m2=cov_enu,
                          localizer=self.name, latency_ms=latency_ms)
        return LocalizationResult(stamp_ns=frame.stamp_ns, frame_id=frame.frame_id, localizer=self.name,
                                  latency_ms=latency_ms, geo=geo, diagnostics=diagnostics,
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
