"""S2 geo-cells for the ``s2_classifier`` localizer (seed 002): PlaNet's adaptive partition and cell geometry.

All cell arithmetic is done by the S2 library (PyPI ``s2geometry``, Google's C++ library with
Python bindings): cell ids, tokens, containment, centres and areas. This module adds:

* :func:`adaptive_partition` - PlaNet's partition of the sphere from the training positions: start
  from the six face cells (level 0), split every cell holding more than ``t_max`` images into its
  four children (down to ``max_level``), then drop cells holding fewer than ``t_min`` images
  (their images are not used for training: the classifier has no class for them).
* :class:`CellPartition` - the kept cells (tokens, levels, training-image counts, the unit vector
  of the mean training position in each cell) with ``assign`` (position -> class index or -1),
  ``positions`` (class -> unit vector, either the training centroid or the geometric cell centre),
  ``extent_var_m2`` (variance per horizontal axis of a uniform distribution over the cell, from the
  cell's exact area on the S2 sphere: ``area / 12``, the value for a square of that area) and
  ``parents`` (coarser ancestor cells for the optional hierarchical output).
* CSV persistence (``cells.csv`` in a bundle): ``token,level,train_images,lat_deg,lon_deg`` where
  lat/lon is the training centroid of the cell.

Positions on the sphere are unit vectors (S2 points); averaging happens on the unit sphere, never
in degrees. Distances use the S2 sphere radius :data:`EARTH_RADIUS_M` (the seed's haversine radius).
"""
from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ['EARTH_RADIUS_M', 'CELL_POSITIONS', 'S2CellError', 'CellPartition', 'adaptive_partition',
           'latlon_to_unit', 'unit_to_latlon', 'leaf_ids']

logger = logging.getLogger(__name__)

#: Radius of the sphere S2 cells live on (metres; the mean Earth radius of the seed's haversine).
EARTH_RADIUS_M = 6_371_000.0
#: Which point stands for a cell: ``train_mean`` (centroid of its training images on the sphere) or ``center``.
CELL_POSITIONS = ('train_mean', 'center')
_CSV_FIELDS = ('token', 'level', 'train_images', 'lat_deg', 'lon_deg')


class S2CellError(ValueError):
    """A partition that cannot be built or read (bad thresholds, tokens, files)."""


def _s2():
    import s2geometry

    return s2geometry


def latlon_to_unit(lat_deg: Sequence[float] | np.ndarray, lon_deg: Sequence[float] | np.ndarray) -> np.ndarray:
    """(N, 3) unit vectors (S2 points) of latitudes/longitudes in degrees (spherical, as S2)."""
    lat = np.radians(np.asarray(lat_deg, dtype=np.float64).reshape(-1))
    lon = np.radians(np.asarray(lon_deg, dtype=np.float64).reshape(-1))
    if lat.shape != lon.shape:
        raise S2CellError(f'latitude and longitude counts differ: {lat.size} vs {lon.size}')
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def unit_to_latlon(xyz_N3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latitude, longitude (degrees) of (N, 3) vectors (normalised first)."""
    xyz = np.asarray(xyz_N3, dtype=np.float64).reshape(-1, 3)
    xyz = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    return np.degrees(np.arcsin(np.clip(xyz[:, 2], -1.0, 1.0))), np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0]))


def leaf_ids(lat_deg: Sequence[float] | np.ndarray, lon_deg: Sequence[float] | np.ndarray) -> np.ndarray:
    """uint64 S2 leaf-cell (level 30) ids of positions in degrees."""
    s2 = _s2()
    lat = np.asarray(lat_deg, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon_deg, dtype=np.float64).reshape(-1)
    if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))) or np.any(np.abs(lat) > 90.0):
        raise S2CellError('positions must be finite with |latitude| <= 90 degrees')
    return np.array([s2.S2CellId(s2.S2LatLng.FromDegrees(float(a), float(b))).id() for a, b in zip(lat, lon)],
                    dtype=np.uint64)


def _cell(token: str):
    s2 = _s2()
    cell_id = s2.S2CellId.FromToken(str(token))
    if not cell_id.is_valid():
        raise S2CellError(f'not a valid S2 cell token: {token!r}')
    return cell_id


def _range(cell_id) -> tuple[int, int]:
    return int(cell_id.range_min().id()), int(cell_id.range_max().id())


def adaptive_partition(lat_deg: Sequence[float] | np.ndarray, lon_deg: Sequence[float] | np.ndarray, *,
                       t_max: int, t_min: int, max_level: int = 20) -> 'CellPartition':
    """PlaNet's adaptive partition of the training positions (see the module docstring).

    ``t_max``: a cell holding more images is split (unless at ``max_level``); ``t_min``: cells with
    fewer images are dropped. Needs ``1 <= t_min <= t_max``.
    """
    if not (1 <= int(t_min) <= int(t_max)):
        raise S2CellError(f'need 1 <= t_min <= t_max, got t_min={t_min}, t_max={t_max}')
    if not 0 <= int(max_level) <= 30:
        raise S2CellError(f'max_level must be in [0, 30], got {max_level}')
    s2 = _s2()
    lat = np.asarray(lat_deg, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon_deg, dtype=np.float64).reshape(-1)
    ids = np.sort(leaf_ids(lat, lon))
    kept: list[tuple[str, int]] = []
    dropped = 0
    stack = [s2.S2CellId.FromFacePosLevel(face, 0, 0) for face in reversed(range(6))]
    while stack:
        cell_id = stack.pop()
        lo, hi = _range(cell_id)
        count = int(np.searchsorted(ids, np.uint64(hi), side='right') - np.searchsorted(ids, np.uint64(lo), side='left'))
        if count == 0:
            continue
        if count > t_max and cell_id.level() < max_level:
            stack.extend(cell_id.child(k) for k in reversed(range(4)))
        elif count >= t_min:
            kept.append((cell_id.ToToken(), count))
        else:
            dropped += count
    if not kept:
        raise S2CellError(f'no cell holds at least t_min={t_min} of the {ids.size} training images')
    partition = CellPartition.from_tokens([t for t, _ in kept], lat, lon)
    logger.info('adaptive S2 partition: %d cells (levels %d-%d) from %d images, t_max=%d, t_min=%d; '
                '%d images in dropped cells', len(partition), min(partition.levels), max(partition.levels),
                ids.size, t_max, t_min, dropped)
    return partition


@dataclass(frozen=True)
class CellPartition:
    """The classes of an ``s2_classifier``: S2 cells in class order (disjoint; sorted by cell id)."""

    tokens: tuple[str, ...]
    levels: tuple[int, ...]
    train_images: tuple[int, ...]
    train_mean_N3: np.ndarray  # unit vector of each cell's training centroid

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if n == 0:
            raise S2CellError('a partition needs at least one cell')
        if len(self.levels) != n or len(self.train_images) != n or np.shape(self.train_mean_N3) != (n, 3):
            raise S2CellError('tokens, levels, train_images and train_mean_N3 must have one entry per cell')
        ranges = [_range(_cell(t)) for t in self.tokens]
        for (lo, _), level, token in zip(ranges, self.levels, self.tokens):
            if _cell(token).level() != int(level):
                raise S2CellError(f'cell {token}: level {level} does not match the token')
        order = sorted(range(n), key=lambda i: ranges[i][0])
        if order != list(range(n)):
            raise S2CellError('cells must be sorted by S2 cell id')
        for a, b in zip(ranges, ranges[1:]):
            if b[0] <= a[1]:
                raise S2CellError('cells overlap: a partition needs disjoint cells')
        object.__setattr__(self, '_lo', np.array([r[0] for r in ranges], dtype=np.uint64))
        object.__setattr__(self, '_hi', np.array([r[1] for r in ranges], dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_tokens(cls, tokens: Sequence[str], lat_deg: Sequence[float] | np.ndarray,
                    lon_deg: Sequence[float] | np.ndarray) -> 'CellPartition':
        """Cells ``tokens`` with counts and centroids from the training positions (cells without images: centre)."""
        cells = sorted((_cell(t) for t in tokens), key=lambda c: c.id())
        lo = np.array([c.range_min().id() for c in cells], dtype=np.uint64)
        hi = np.array([c.range_max().id() for c in cells], dtype=np.uint64)
        ids = leaf_ids(lat_deg, lon_deg)
        k = np.searchsorted(lo, ids, side='right') - 1
        inside = (k >= 0) & (ids <= hi[np.clip(k, 0, None)])
        units = latlon_to_unit(lat_deg, lon_deg)
        counts = np.bincount(k[inside], minlength=len(cells))
        sums = np.zeros((len(cells), 3))
        np.add.at(sums, k[inside], units[inside])
        centres = _centres(cells)
        means = np.where(counts[:, None] > 0, sums, centres)
        means = means / np.linalg.norm(means, axis=1, keepdims=True)
        return cls(tokens=tuple(c.ToToken() for c in cells), levels=tuple(int(c.level()) for c in cells),
                   train_images=tuple(int(v) for v in counts), train_mean_N3=means)

    def assign(self, lat_deg: Sequence[float] | np.ndarray, lon_deg: Sequence[float] | np.ndarray) -> np.ndarray:
        """Class index of the cell containing each position, -1 where no kept cell contains it."""
        ids = leaf_ids(lat_deg, lon_deg)
        k = np.searchsorted(self._lo, ids, side='right') - 1  # type: ignore[attr-defined]
        inside = (k >= 0) & (ids <= self._hi[np.clip(k, 0, None)])  # type: ignore[attr-defined]
        return np.where(inside, k, -1).astype(np.int64)

    def centres_N3(self) -> np.ndarray:
        """Unit vectors of the geometric cell centres."""
        return _centres([_cell(t) for t in self.tokens])

    def positions_N3(self, mode: str = 'train_mean') -> np.ndarray:
        """The point that stands for each class: ``train_mean`` or ``center`` (see :data:`CELL_POSITIONS`)."""
        if mode not in CELL_POSITIONS:
            raise S2CellError(f'cell position must be one of {CELL_POSITIONS}, got {mode!r}')
        return np.array(self.train_mean_N3, dtype=np.float64) if mode == 'train_mean' else self.centres_N3()

    def area_m2(self) -> np.ndarray:
        """Exact area of every cell on the S2 sphere (square metres)."""
        s2 = _s2()
        return np.array([s2.S2Cell(_cell(t)).ExactArea() for t in self.tokens]) * EARTH_RADIUS_M ** 2

    def extent_var_m2(self) -> np.ndarray:
        """Per-axis variance (m²) of a uniform position over each cell: area / 12 (a square of that area)."""
        return self.area_m2() / 12.0

    def parents(self, levels_up: int) -> tuple[tuple[str, ...], np.ndarray]:
        """Ancestor cells ``levels_up`` levels coarser (clamped at level 0): (parent tokens sorted by id,
        parent class index of every cell)."""
        if levels_up < 1:
            raise S2CellError(f'levels_up must be >= 1, got {levels_up}')
        parent_ids = [_cell(t).parent(max(0, lvl - levels_up)) for t, lvl in zip(self.tokens, self.levels)]
        unique = sorted({p.id(): p for p in parent_ids}.items())
        index = {pid: i for i, (pid, _) in enumerate(unique)}
        return tuple(p.ToToken() for _, p in unique), np.array([index[p.id()] for p in parent_ids], dtype=np.int64)

    # ------------------------------------------------------------------ persistence (cells.csv)
    def to_csv(self) -> str:
        lat, lon = unit_to_latlon(self.train_mean_N3)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator='\n')
        writer.writerow(_CSV_FIELDS)
        for i, token in enumerate(self.tokens):
            writer.writerow([token, self.levels[i], self.train_images[i], f'{lat[i]:.9f}', f'{lon[i]:.9f}'])
        return out.getvalue()

    @classmethod
    def from_csv(cls, text: str, source: str = 'cells.csv') -> 'CellPartition':
        reader = csv.DictReader(io.StringIO(text))
        if tuple(reader.fieldnames or ()) != _CSV_FIELDS:
            raise S2CellError(f'{source}: expected columns {",".join(_CSV_FIELDS)}, got {reader.fieldnames}')
        tokens, levels, counts, lats, lons = [], [], [], [], []
        for line, row in enumerate(reader, start=2):
            try:
                tokens.append(row['token'])
                levels.append(int(row['level']))
                counts.append(int(row['train_images']))
                lats.append(float(row['lat_deg']))
                lons.append(float(row['lon_deg']))
            except (TypeError, ValueError) as exc:
                raise S2CellError(f'{source}:{line}: {exc}') from exc
        if not all(math.isfinite(v) for v in lats + lons):
            raise S2CellError(f'{source}: non-finite cell position')
        return cls(tokens=tuple(tokens), levels=tuple(levels), train_images=tuple(counts),
                   train_mean_N3=latlon_to_unit(lats, lons))


def _centres(cells) -> np.ndarray:
    s2 = _s2()
    out = np.empty((len(cells), 3))
    for i, c in enumerate(cells):
        p = s2.S2Cell(c).GetCenter()
        out[i] = (p.x(), p.y(), p.z())
    return out / np.linalg.norm(out, axis=1, keepdims=True)
