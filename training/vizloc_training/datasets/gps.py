"""Reader of the GPS dataset format of the image-to-GPS regressor (seed 001).

Layout (docs/datasets.md)::

    DIR/images/*.jpg|jpeg|png        images (sub-folders allowed; names relative to images/)
    DIR/gt.csv                       optional: columns image,lat,lon[,alt][,split]

* With gt.csv: one record per row; ``alt`` empty -> NaN; ``split`` in {train, val, test}.
* Without gt.csv: every JPEG under images/ with EXIF GPS (:mod:`.exif`) is a record.
* Splits: the ``split`` column when present, else a 70/15/15 random split of the sorted valid
  records with a fixed seed (``split_seed``).
* Rows with a missing or impossible position (empty, non-numeric, NaN/inf, lat outside
  [-90, 90], lon outside [-180, 180]), a missing image file, an unknown split or a duplicate image
  are reported (``logging.warning`` with the row number and the reason, and
  :attr:`GpsDataset.skipped`) and skipped, never used.

Usage::

    ds = read_gps_dataset('campus')
    train = ds.split('train')                       # tuple of GpsRecord
    lat_lon_alt_N3 = ds.lat_lon_alt('train')
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .exif import ExifError, read_gps_exif

__all__ = ['SPLITS', 'GpsDatasetError', 'GpsRecord', 'SkippedRow', 'GpsDataset', 'read_gps_dataset']

_LOG = logging.getLogger(__name__)

SPLITS = ('train', 'val', 'test')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
_EXIF_SUFFIXES = ('.jpg', '.jpeg')


class GpsDatasetError(ValueError):
    """A GPS dataset that cannot be read at all (missing folder, gt.csv without required columns)."""


@dataclass(frozen=True)
class GpsRecord:
    """One image with its WGS84 position; ``alt_m`` is NaN when unknown."""

    image: Path
    lat_deg: float
    lon_deg: float
    alt_m: float
    split: str


@dataclass(frozen=True)
class SkippedRow:
    """A gt.csv row (1-based line number, header = line 1) or image (``row`` None) that was not used."""

    row: int | None
    image: str
    reason: str


@dataclass(frozen=True)
class GpsDataset:
    root: Path
    records: tuple[GpsRecord, ...]
    skipped: tuple[SkippedRow, ...]
    source: str  # 'gt.csv' or 'exif'
    split_source: str  # 'column' or 'random(seed=N, 70/15/15)'

    def split(self, name: str) -> tuple[GpsRecord, ...]:
        if name not in SPLITS:
            raise ValueError(f'unknown split {name!r}; splits: {SPLITS}')
        return tuple(r for r in self.records if r.split == name)

    def lat_lon_alt(self, split: str | None = None) -> np.ndarray:
        """N x 3 float64 (lat_deg, lon_deg, alt_m) of a split (all records when ``split`` is None)."""
        recs = self.records if split is None else self.split(split)
        return np.array([[r.lat_deg, r.lon_deg, r.alt_m] for r in recs], np.float64).reshape(-1, 3)


def _parse_position(lat_text: str, lon_text: str) -> tuple[float, float] | str:
    """(lat, lon) or the reason they cannot be used."""
    if lat_text.strip() == '' or lon_text.strip() == '':
        return 'missing latitude/longitude'
    try:
        lat, lon = float(lat_text), float(lon_text)
    except ValueError:
        return f'non-numeric latitude/longitude {lat_text!r}, {lon_text!r}'
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return f'non-finite latitude/longitude {lat_text!r}, {lon_text!r}'
    if not -90.0 <= lat <= 90.0:
        return f'impossible latitude {lat} (outside [-90, 90])'
    if not -180.0 <= lon <= 180.0:
        return f'impossible longitude {lon} (outside [-180, 180])'
    return lat, lon


def _skip(skipped: list[SkippedRow], where: str, row: int | None, image: str, reason: str) -> None:
    skipped.append(SkippedRow(row, image, reason))
    _LOG.warning('%s%s: %s: %s; skipped', where, f' row {row}' if row is not None else '', image or '<no image>',
                 reason)


def _from_csv(root: Path, csv_path: Path, skipped: list[SkippedRow]) -> tuple[list[tuple], bool]:
    images = root / 'images'
    with open(csv_path, newline='', encoding='utf-8-sig') as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        missing = [c for c in ('image', 'lat', 'lon') if c not in fields]
        if missing:
            raise GpsDatasetError(f'{csv_path}: missing column(s) {missing}; need image,lat,lon[,alt][,split], '
                                  f'got {fields}')
        unknown = [c for c in fields if c not in ('image', 'lat', 'lon', 'alt', 'split')]
        if unknown:
            _LOG.warning('%s: ignoring unknown column(s) %s (columns are image,lat,lon[,alt][,split])', csv_path, unknown)
        has_split = 'split' in fields
        rows: list[tuple] = []
        seen: set[str] = set()
        for line, raw in enumerate(reader, start=2):
            row = {(k or '').strip(): (v or '') for k, v in raw.items()}
            name = row.get('image', '').strip()
            if not name:
                _skip(skipped, str(csv_path), line, name, 'empty image name')
                continue
            pos = _parse_position(row.get('lat', ''), row.get('lon', ''))
            if isinstance(pos, str):
                _skip(skipped, str(csv_path), line, name, pos)
                continue
            alt_text = row.get('alt', '').strip()
            try:
                alt = float(alt_text) if alt_text else math.nan
            except ValueError:
                _skip(skipped, str(csv_path), line, name, f'non-numeric altitude {alt_text!r}')
                continue
            if math.isinf(alt):
                _skip(skipped, str(csv_path), line, name, f'infinite altitude {alt_text!r}')
                continue
            split = row.get('split', '').strip().lower() if has_split else None
            if has_split and split not in SPLITS:
                _skip(skipped, str(csv_path), line, name, f'unknown split {split!r} (use train, val or test)')
                continue
            path = images / name
            if not path.is_file():
                _skip(skipped, str(csv_path), line, name, f'image file {path} is missing')
                continue
            if name in seen:
                _skip(skipped, str(csv_path), line, name, 'duplicate image (first row kept)')
                continue
            seen.add(name)
            rows.append((path, pos[0], pos[1], alt, split))
    return rows, has_split


def _from_exif(root: Path, skipped: list[SkippedRow]) -> list[tuple]:
    images = root / 'images'
    rows: list[tuple] = []
    for path in sorted(p for p in images.rglob('*') if p.is_file()):
        name = path.relative_to(images).as_posix()
        if path.suffix.lower() not in _EXIF_SUFFIXES:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                _skip(skipped, str(images), None, name, 'no gt.csv and not a JPEG (EXIF GPS needs JPEG)')
            continue
        try:
            fix = read_gps_exif(path)
        except ExifError as exc:
            _skip(skipped, str(images), None, name, str(exc))
            continue
        if fix is None:
            _skip(skipped, str(images), None, name, 'no EXIF GPS position')
            continue
        pos = _parse_position(repr(fix.lat_deg), repr(fix.lon_deg))
        if isinstance(pos, str):
            _skip(skipped, str(images), None, name, f'EXIF: {pos}')
            continue
        rows.append((path, pos[0], pos[1], fix.alt_m, None))
    return rows


def read_gps_dataset(root: str | Path, *, split_seed: int = 0,
                     split_fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)) -> GpsDataset:
    """Read ``root`` (``images/`` + optional ``gt.csv``); see the module docstring for the rules."""
    root = Path(root)
    if not (root / 'images').is_dir():
        raise GpsDatasetError(f'{root / "images"}: GPS dataset image folder does not exist')
    if len(split_fractions) != 3 or any(f < 0 for f in split_fractions) or not math.isclose(sum(split_fractions), 1.0):
        raise GpsDatasetError(f'split_fractions must be 3 non-negative numbers summing to 1, got {split_fractions}')
    skipped: list[SkippedRow] = []
    csv_path = root / 'gt.csv'
    if csv_path.is_file():
        rows, has_split = _from_csv(root, csv_path, skipped)
        source = 'gt.csv'
    else:
        rows, has_split = _from_exif(root, skipped), False
        source = 'exif'
    if has_split:
        split_source = 'column'
        splits = [r[4] for r in rows]
    else:
        order = sorted(range(len(rows)), key=lambda i: rows[i][0].as_posix())
        perm = np.random.default_rng(split_seed).permutation(len(order))
        n = len(order)
        n_train = int(round(split_fractions[0] * n))
        n_val = int(round(split_fractions[1] * n))
        splits = [''] * n
        for rank, k in enumerate(perm):
            splits[order[k]] = 'train' if rank < n_train else ('val' if rank < n_train + n_val else 'test')
        split_source = f'random(seed={split_seed}, {"/".join(str(round(f * 100)) for f in split_fractions)})'
    records = tuple(GpsRecord(r[0], r[1], r[2], r[3], s) for r, s in zip(rows, splits))
    if skipped:
        _LOG.warning('%s: %d record(s) skipped, %d used', root, len(skipped), len(records))
    return GpsDataset(root, records, tuple(skipped), source, split_source)
