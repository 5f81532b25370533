"""Reader (and entry writer) for the reference-database layout of the retrieval localizer (seed 004).

Layout (docs/datasets.md)::

    DB/<uid>/image.jpg
    DB/<uid>/metadata.json     {"w": int, "h": int, "lat": float|null, "lng": float|null, "alt": float|null,
                                "azn": float|null, "fov": float|null, "K": 3x3|null, "E": 4x4|3x4|null}
    DB/<uid>/[<prefix>]keypoints.npy          optional local features
    DB/<uid>/<model>_descriptor.npy|.npz      optional global descriptors, one file per model

``K`` (pixels) is derived from ``fov`` (horizontal, degrees) and ``w``/``h`` when absent; an entry
with neither is an error. ``E`` (extrinsic calibration, world-to-camera [R|t]) is optional; a 3x4
matrix is completed to 4x4. ``azn`` is the azimuth of the optical axis in degrees clockwise from
north. Extra keys in metadata.json are kept in :attr:`ReferenceEntry.extra`. The database grows
without retraining: :func:`write_reference_entry` adds an entry.

Usage::

    db = ReferenceDatabase('refdb')
    for entry in db:                  # sorted by uid
        entry.uid, entry.image, entry.lat_deg, entry.K, entry.descriptors
    uids, descs_ND = db.load_descriptors('netvlad')
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import cv2
import numpy as np

__all__ = ['ReferenceDatabaseError', 'ReferenceEntry', 'ReferenceDatabase', 'read_reference_entry',
           'write_reference_entry', 'METADATA_KEYS']

_LOG = logging.getLogger(__name__)

METADATA_FILE = 'metadata.json'
IMAGE_FILE = 'image.jpg'
#: Keys of metadata.json defined by the format (others are kept as ``extra``).
METADATA_KEYS = ('w', 'h', 'lat', 'lng', 'alt', 'azn', 'fov', 'K', 'E')
_DESCRIPTOR_RE = re.compile(r'^(?P<model>.+)_descriptor\.(npy|npz)$')
_KEYPOINTS_RE = re.compile(r'^(?P<prefix>.*?)_?keypoints\.npy$')


class ReferenceDatabaseError(ValueError):
    """A reference database or entry that cannot be used; the message names the file."""


@dataclass(frozen=True)
class ReferenceEntry:
    """One reference image. Angles in degrees; ``alt_m`` as given (NaN when absent)."""

    uid: str
    image: Path
    width: int
    height: int
    lat_deg: float | None
    lng_deg: float | None
    alt_m: float
    azn_deg: float | None
    fov_deg: float | None
    K: np.ndarray  # 3x3 pixels
    E: np.ndarray | None  # 4x4 world-to-camera
    descriptors: Mapping[str, Path] = field(default_factory=dict)  # model -> file
    keypoints: Mapping[str, Path] = field(default_factory=dict)  # prefix ('' if none) -> file
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_position(self) -> bool:
        return self.lat_deg is not None and self.lng_deg is not None


def _number(meta: Mapping[str, Any], key: str, path: Path, *, required: bool = False) -> float | None:
    value = meta.get(key)
    if value is None:
        if required:
            raise ReferenceDatabaseError(f'{path}: "{key}" is required')
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ReferenceDatabaseError(f'{path}: "{key}" must be a finite number or null, got {value!r}')
    return float(value)


def _matrix(meta: Mapping[str, Any], key: str, path: Path, shapes: tuple[tuple[int, int], ...]) -> np.ndarray | None:
    value = meta.get(key)
    if value is None:
        return None
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ReferenceDatabaseError(f'{path}: "{key}" is not a numeric matrix: {exc}') from exc
    if m.shape not in shapes or not np.all(np.isfinite(m)):
        raise ReferenceDatabaseError(f'{path}: "{key}" must be a finite matrix of shape '
                                     f'{" or ".join(f"{a}x{b}" for a, b in shapes)}, got shape {m.shape}')
    return m


def read_reference_entry(folder: str | Path) -> ReferenceEntry:
    """Read ``folder/metadata.json`` (+ list image and feature files); errors name the file."""
    folder = Path(folder)
    path = folder / METADATA_FILE
    try:
        meta = json.loads(path.read_text())
    except OSError as exc:
        raise ReferenceDatabaseError(f'{path}: cannot read: {exc}') from exc
    except json.JSONDecodeError as exc:
        raise ReferenceDatabaseError(f'{path}: malformed JSON: {exc}') from exc
    if not isinstance(meta, dict):
        raise ReferenceDatabaseError(f'{path}: expected a JSON object, got {type(meta).__name__}')
    w = meta.get('w')
    h = meta.get('h')
    if not (isinstance(w, int) and isinstance(h, int) and not isinstance(w, bool) and w > 0 and h > 0):
        raise ReferenceDatabaseError(f'{path}: "w" and "h" must be positive integers, got w={w!r} h={h!r}')
    lat = _number(meta, 'lat', path)
    lng = _number(meta, 'lng', path)
    if lat is not None and not -90 <= lat <= 90:
        raise ReferenceDatabaseError(f'{path}: impossible latitude {lat}')
    if lng is not None and not -180 <= lng <= 180:
        raise ReferenceDatabaseError(f'{path}: impossible longitude {lng}')
    alt = _number(meta, 'alt', path)
    azn = _number(meta, 'azn', path)
    fov = _number(meta, 'fov', path)
    K = _matrix(meta, 'K', path, ((3, 3),))
    if K is None:
        if fov is None:
            raise ReferenceDatabaseError(f'{path}: needs "K" or "fov" to know the camera intrinsics')
        if not 0 < fov < 180:
            raise ReferenceDatabaseError(f'{path}: "fov" must be in (0, 180) degrees, got {fov}')
        f = (w / 2.0) / math.tan(math.radians(fov) / 2.0)
        K = np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])
    elif K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ReferenceDatabaseError(f'{path}: "K" focal lengths must be positive')
    E = _matrix(meta, 'E', path, ((4, 4), (3, 4)))
    if E is not None and E.shape == (3, 4):
        E = np.vstack([E, [0.0, 0.0, 0.0, 1.0]])
    image = folder / IMAGE_FILE
    if not image.is_file():
        raise ReferenceDatabaseError(f'{image}: image of reference entry {folder.name!r} is missing')
    descriptors: dict[str, Path] = {}
    keypoints: dict[str, Path] = {}
    for f_path in sorted(folder.iterdir()):
        m = _DESCRIPTOR_RE.match(f_path.name)
        if m:
            descriptors[m.group('model')] = f_path
            continue
        m = _KEYPOINTS_RE.match(f_path.name)
        if m:
            keypoints[m.group('prefix')] = f_path
    extra = {k: v for k, v in meta.items() if k not in METADATA_KEYS}
    return ReferenceEntry(uid=folder.name, image=image, width=w, height=h, lat_deg=lat, lng_deg=lng,
                          alt_m=math.nan if alt is None else alt, azn_deg=azn, fov_deg=fov, K=K, E=E,
                          descriptors=descriptors, keypoints=keypoints, extra=extra)


class ReferenceDatabase:
    """All entries under ``root`` (sub-folders holding metadata.json), sorted by uid.

    Sub-folders without metadata.json are skipped with a warning; a malformed entry raises
    :class:`ReferenceDatabaseError` naming its file.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ReferenceDatabaseError(f'{self.root}: reference database folder does not exist')
        entries = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if not (folder / METADATA_FILE).is_file():
                _LOG.warning('%s: no %s, not a reference entry; skipped', folder, METADATA_FILE)
                continue
            entries.append(read_reference_entry(folder))
        self._entries = tuple(entries)
        self._by_uid = {e.uid: e for e in entries}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ReferenceEntry]:
        return iter(self._entries)

    def __getitem__(self, uid: str) -> ReferenceEntry:
        try:
            return self._by_uid[uid]
        except KeyError:
            raise KeyError(f'no reference entry {uid!r} in {self.root}') from None

    @property
    def uids(self) -> tuple[str, ...]:
        return tuple(e.uid for e in self._entries)

    @property
    def models(self) -> tuple[str, ...]:
        """Descriptor models present in at least one entry."""
        return tuple(sorted({m for e in self._entries for m in e.descriptors}))

    def load_descriptors(self, model: str) -> tuple[tuple[str, ...], np.ndarray]:
        """(uids, N x D float32) global descriptors of ``model`` for the entries that have one."""
        uids, rows = [], []
        for e in self._entries:
            path = e.descriptors.get(model)
            if path is None:
                continue
            try:
                if path.suffix == '.npz':
                    with np.load(path) as z:
                        arr = z[z.files[0]]
                else:
                    arr = np.load(path)
            except (OSError, ValueError, IndexError) as exc:
                raise ReferenceDatabaseError(f'{path}: cannot read descriptor: {exc}') from exc
            rows.append(np.asarray(arr, np.float32).reshape(-1))
            uids.append(e.uid)
        if not rows:
            raise ReferenceDatabaseError(f'{self.root}: no entry has a {model!r} descriptor (models: {self.models})')
        dims = {r.size for r in rows}
        if len(dims) != 1:
            raise ReferenceDatabaseError(f'{self.root}: {model!r} descriptors have different sizes {sorted(dims)}')
        return tuple(uids), np.stack(rows)


def write_reference_entry(root: str | Path, uid: str, image: bytes | np.ndarray | Path, *, width: int, height: int,
                          lat: float | None, lng: float | None, alt: float | None = None, azn: float | None = None,
                          fov: float | None = None, K: np.ndarray | None = None, E: np.ndarray | None = None,
                          quality: int = 90) -> Path:
    """Add (or replace) entry ``uid``: ``image`` as JPEG bytes, an RGB uint8 array or a JPEG file (hard-linked,
    copied where the file system cannot link). Returns the entry's folder."""
    if not uid or '/' in uid or uid in ('.', '..'):
        raise ReferenceDatabaseError(f'invalid reference entry uid {uid!r}')
    folder = Path(root) / uid
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / IMAGE_FILE
    if isinstance(image, Path):
        target.unlink(missing_ok=True)
        try:
            os.link(image, target)
        except OSError:
            shutil.copyfile(image, target)
        image = None
    elif isinstance(image, np.ndarray):
        ok, buf = cv2.imencode('.jpg', cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ReferenceDatabaseError(f'{folder}: JPEG encoding failed')
        image = buf.tobytes()
    if image is not None:
        target.write_bytes(image)

    def num(v: float | None) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    meta = {'w': int(width), 'h': int(height), 'lat': num(lat), 'lng': num(lng), 'alt': num(alt), 'azn': num(azn),
            'fov': num(fov), 'K': None if K is None else np.asarray(K, float).tolist(),
            'E': None if E is None else np.asarray(E, float).tolist()}
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    return folder
