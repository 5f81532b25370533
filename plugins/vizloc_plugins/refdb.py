"""Reference database of the ``retrieval`` localizer (seed 004): reader, entry writer, manifest, FAISS index.

Torch-free (runtime); ``vizloc_training.datasets.reference_db`` re-exports the reader/writer.

Layout (docs/datasets.md)::

    DB/manifest.json           version counter + sha256 of every file of every entry and index (see below)
    DB/index/<model>.faiss     FAISS index of the <model> descriptors (+ <model>.uids.txt, row -> uid)
    DB/<uid>/image.jpg
    DB/<uid>/depth.png|npy     optional depth (uint16 millimetres / float32 metres; 0 = invalid)
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

Versioning and verification (docs/bundles.md, "Reference databases"): ``manifest.json`` lists every
entry with the sha256 of each of its files, the FAISS indexes with theirs, and a ``version`` that
every change (:func:`update_manifest`, :func:`build_index`) increments. ``ReferenceDatabase(root,
verify=True)`` refuses a database whose files do not match (:class:`ReferenceDatabaseError` naming
the file), whose entries are missing, or that has entry folders the manifest does not list.
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
           'write_reference_entry', 'METADATA_KEYS', 'MANIFEST_FILE', 'Manifest', 'read_manifest', 'update_manifest',
           'verify_database', 'load_depth_m', 'build_faiss_index', 'build_index', 'ReferenceIndex',
           'FLAT_MAX_ENTRIES', 'INDEX_KINDS', 'WHITEN_MODES', 'WHITEN_MIN_ENTRIES_PER_DIM', 'index_kind']

_LOG = logging.getLogger(__name__)

METADATA_FILE = 'metadata.json'
IMAGE_FILE = 'image.jpg'
DEPTH_FILES = ('depth.png', 'depth.npy')
MANIFEST_FILE = 'manifest.json'
INDEX_DIR = 'index'
MANIFEST_FORMAT = 'vizloc-refdb'
MANIFEST_FORMAT_VERSION = 1
#: Up to this many entries ``build_index(kind='auto')`` builds an exact ``IndexFlatIP``; above it IVF-PQ.
FLAT_MAX_ENTRIES = 20_000
INDEX_KINDS = ('auto', 'flat', 'ivfpq')
#: PCA whitening of the descriptors, learnt from the database's own descriptors when the index is built
#: (Jegou & Chum 2012): ``auto`` whitens databases of at least WHITEN_MIN_ENTRIES_PER_DIM x D entries
#: (fewer cannot estimate the D x D covariance well). Off by default: on the campus it raised recall@10
#: but lowered what the localizer publishes (measured in docs/localizers/retrieval.md).
WHITEN_MODES = ('auto', 'always', 'never')
WHITEN_MIN_ENTRIES_PER_DIM = 4
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
    depth: Path | None = None  # depth.png (uint16 mm) or depth.npy (float32 m); 0 = invalid

    @property
    def T_map_camera(self) -> np.ndarray | None:
        """Camera-to-map pose (inverse of ``E``), or None without extrinsics."""
        return None if self.E is None else np.linalg.inv(self.E)

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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ReferenceDatabaseError(f'{path}: cannot read: {exc}') from exc
    except json.JSONDecodeError as exc:
        raise ReferenceDatabaseError(f'{path}: malformed JSON: {exc}') from exc


def read_reference_entry(folder: str | Path) -> ReferenceEntry:
    """Read ``folder/metadata.json`` (+ list image and feature files); errors name the file."""
    folder = Path(folder)
    path = folder / METADATA_FILE
    meta = _read_json(path)
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
    depth = next((folder / n for n in DEPTH_FILES if (folder / n).is_file()), None)
    return ReferenceEntry(uid=folder.name, image=image, width=w, height=h, lat_deg=lat, lng_deg=lng,
                          alt_m=math.nan if alt is None else alt, azn_deg=azn, fov_deg=fov, K=K, E=E,
                          descriptors=descriptors, keypoints=keypoints, extra=extra, depth=depth)


def load_depth_m(entry: ReferenceEntry) -> np.ndarray | None:
    """The entry's depth map in metres (float32 H x W, 0 = invalid), or None when it has none."""
    if entry.depth is None:
        return None
    if entry.depth.suffix == '.npy':
        try:
            depth = np.load(entry.depth).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise ReferenceDatabaseError(f'{entry.depth}: cannot read depth: {exc}') from exc
    else:
        raw = cv2.imread(str(entry.depth), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.dtype != np.uint16:
            raise ReferenceDatabaseError(f'{entry.depth}: depth PNG must be 16-bit (millimetres)')
        depth = raw.astype(np.float32) / 1000.0
    if depth.shape != (entry.height, entry.width):
        raise ReferenceDatabaseError(f'{entry.depth}: depth is {depth.shape}, image is {entry.height}x{entry.width}')
    depth[~np.isfinite(depth)] = 0.0
    return depth


class ReferenceDatabase:
    """All entries under ``root`` (sub-folders holding metadata.json), sorted by uid.

    Sub-folders without metadata.json are skipped with a warning; a malformed entry raises
    :class:`ReferenceDatabaseError` naming its file. ``verify``: ``True`` checks every file against
    ``manifest.json`` (which must exist), ``False`` reads without checking, ``'auto'`` (default)
    checks when there is a manifest. :attr:`manifest` is the manifest read (None without one).
    """

    def __init__(self, root: str | Path, verify: bool | str = 'auto') -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ReferenceDatabaseError(f'{self.root}: reference database folder does not exist')
        if verify not in (True, False, 'auto'):
            raise ValueError(f"verify must be True, False or 'auto', got {verify!r}")
        has_manifest = (self.root / MANIFEST_FILE).is_file()
        self.manifest: Manifest | None = read_manifest(self.root) if has_manifest else None
        if verify is True and self.manifest is None:
            raise ReferenceDatabaseError(f'{self.root}: no {MANIFEST_FILE}; create it with `vizloc-db build {self.root}`')
        if verify is True or (verify == 'auto' and self.manifest is not None):
            verify_database(self.root, self.manifest)
        entries = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name != INDEX_DIR):
            if not (folder / METADATA_FILE).is_file():
                _LOG.warning('%s: no %s, not a reference entry; skipped', folder, METADATA_FILE)
                continue
            entries.append(read_reference_entry(folder))
        self._entries = tuple(entries)
        self._by_uid = {e.uid: e for e in entries}

    @property
    def version(self) -> int:
        """The manifest's version counter (0 without a manifest)."""
        return 0 if self.manifest is None else self.manifest.version

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
                          quality: int = 90, depth_m: np.ndarray | None = None) -> Path:
    """Add (or replace) entry ``uid``: ``image`` as JPEG bytes, an RGB uint8 array or a JPEG file (hard-linked,
    copied where the file system cannot link); ``depth_m`` (H x W metres, 0 = invalid) is stored as
    ``depth.png`` (uint16 millimetres). Returns the entry's folder. Call :func:`update_manifest` after
    adding entries to a verified database."""
    if not uid or '/' in uid or uid in ('.', '..', INDEX_DIR):
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
    if depth_m is not None:
        depth = np.asarray(depth_m, dtype=np.float64)
        if depth.shape != (int(height), int(width)):
            raise ReferenceDatabaseError(f'{folder}: depth is {depth.shape}, image is {height}x{width}')
        mm = np.where(np.isfinite(depth) & (depth > 0), np.round(depth * 1000.0), 0.0)
        if not cv2.imwrite(str(folder / 'depth.png'), np.clip(mm, 0, 65535).astype(np.uint16)):
            raise ReferenceDatabaseError(f'{folder}: cannot write depth.png')
    return folder


# -- manifest: versioning and verification -------------------------------------------------------------
def _sha256(path: Path) -> str:
    from vizloc_ros.bundle import sha256_file

    return sha256_file(path)


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: ``version`` (incremented by every change), ``entries`` (uid -> file name ->
    sha256), ``indexes`` (model -> {file, sha256, uids_file, uids_sha256, kind, whitened, count, dim}) and the
    optional ``geo`` reference of the map frame that ``E`` is given in (a geo.yaml mapping)."""

    version: int
    entries: Mapping[str, Mapping[str, str]]
    indexes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    geo: Mapping[str, Any] | None = None
    updated_utc: str = ''

    def to_json(self) -> dict[str, Any]:
        return {'format': MANIFEST_FORMAT, 'format_version': MANIFEST_FORMAT_VERSION, 'version': self.version,
                'updated_utc': self.updated_utc, 'geo': None if self.geo is None else dict(self.geo),
                'indexes': {k: dict(v) for k, v in sorted(self.indexes.items())},
                'entries': {k: dict(sorted(v.items())) for k, v in sorted(self.entries.items())}}


_MANIFEST_KEYS = {'format', 'format_version', 'version', 'updated_utc', 'geo', 'indexes', 'entries'}


def read_manifest(root: str | Path) -> Manifest:
    """Read and check ``root/manifest.json`` (not the files it lists: :func:`verify_database`)."""
    path = Path(root) / MANIFEST_FILE
    raw = _read_json(path)
    if not isinstance(raw, dict) or raw.get('format') != MANIFEST_FORMAT:
        raise ReferenceDatabaseError(f'{path}: not a vizloc reference-database manifest')
    unknown = sorted(set(raw) - _MANIFEST_KEYS)
    if unknown:
        raise ReferenceDatabaseError(f'{path}: unknown keys {unknown}')
    if raw.get('format_version') != MANIFEST_FORMAT_VERSION:
        raise ReferenceDatabaseError(f'{path}: manifest format version {raw.get("format_version")!r} is not supported '
                                     f'(supports {MANIFEST_FORMAT_VERSION})')
    version = raw.get('version')
    entries = raw.get('entries')
    if not isinstance(version, int) or version < 0 or not isinstance(entries, dict):
        raise ReferenceDatabaseError(f'{path}: "version" must be a non-negative integer and "entries" a mapping')
    for uid, files in entries.items():
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise ReferenceDatabaseError(f'{path}: entry {uid!r} must map file names to sha256 strings')
    return Manifest(version=version, entries=entries, indexes=raw.get('indexes') or {}, geo=raw.get('geo'),
                    updated_utc=str(raw.get('updated_utc', '')))


def _write_manifest(root: Path, manifest: Manifest) -> None:
    import datetime as _dt
    import tempfile

    stamped = Manifest(version=manifest.version, entries=manifest.entries, indexes=manifest.indexes, geo=manifest.geo,
                       updated_utc=_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))
    fd, tmp = tempfile.mkstemp(prefix='.manifest.', dir=root)
    with os.fdopen(fd, 'w') as fh:
        json.dump(stamped.to_json(), fh, indent=0)
    os.replace(tmp, root / MANIFEST_FILE)


def _entry_hashes(folder: Path) -> dict[str, str]:
    return {f.name: _sha256(f) for f in sorted(folder.iterdir()) if f.is_file()}


def update_manifest(root: str | Path, uids: Any = None, *, geo: Mapping[str, Any] | None = None,
                    indexes: Mapping[str, Mapping[str, Any]] | None = None) -> Manifest:
    """Hash the files of entries ``uids`` (all entry folders when None; creates the manifest when absent),
    drop entries whose folder is gone, set ``geo``/``indexes`` when given, increment ``version``, write
    atomically and return the new manifest. Each changed entry is read first (malformed ones raise)."""
    root = Path(root)
    old = read_manifest(root) if (root / MANIFEST_FILE).is_file() else Manifest(version=0, entries={})
    entries = {uid: files for uid, files in old.entries.items() if (root / uid / METADATA_FILE).is_file()}
    if uids is None:
        uids = [p.name for p in sorted(root.iterdir()) if p.is_dir() and (p / METADATA_FILE).is_file()]
    for uid in uids:
        read_reference_entry(root / uid)
        entries[uid] = _entry_hashes(root / uid)
    manifest = Manifest(version=old.version + 1, entries=entries,
                        indexes=dict(old.indexes) if indexes is None else dict(indexes),
                        geo=old.geo if geo is None else dict(geo))
    _write_manifest(root, manifest)
    return read_manifest(root)


def verify_database(root: str | Path, manifest: Manifest | None = None) -> Manifest:
    """Check every file the manifest lists against its sha256, that no listed entry or file is
    missing, and that no entry folder is unlisted. Raises :class:`ReferenceDatabaseError` naming the first
    problem; returns the manifest."""
    root = Path(root)
    manifest = manifest or read_manifest(root)
    on_disk = {p.name for p in root.iterdir() if p.is_dir() and (p / METADATA_FILE).is_file()}
    unlisted = sorted(on_disk - set(manifest.entries))
    if unlisted:
        raise ReferenceDatabaseError(f'{root}: entries {unlisted[:5]} ({len(unlisted)}) are not in {MANIFEST_FILE}; '
                                     f'add them with `vizloc-db add` or re-hash with `vizloc-db build`')
    for uid, files in manifest.entries.items():
        folder = root / uid
        if uid not in on_disk:
            raise ReferenceDatabaseError(f'{folder}: entry listed in {MANIFEST_FILE} is missing')
        present = {f.name for f in folder.iterdir() if f.is_file()}
        extra = sorted(present - set(files))
        if extra:
            raise ReferenceDatabaseError(f'{folder}: files {extra} are not in {MANIFEST_FILE}')
        for name, expected in files.items():
            path = folder / name
            if name not in present:
                raise ReferenceDatabaseError(f'{path}: listed in {MANIFEST_FILE} but missing')
            if _sha256(path) != expected:
                raise ReferenceDatabaseError(f'{path}: sha256 differs from {MANIFEST_FILE} (version {manifest.version}): '
                                             f'the entry was modified; re-add it with `vizloc-db add`')
    for model, info in manifest.indexes.items():
        for key in ('file', 'uids_file'):
            path = root / str(info[key])
            if not path.is_file() or _sha256(path) != info[key.replace('file', 'sha256')]:
                raise ReferenceDatabaseError(f'{path}: {model!r} index file missing or modified; '
                                             f'rebuild it with `vizloc-db build`')
    return manifest


# -- FAISS index ------------------------------------------------------------------------------------------
def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency of vizloc-ros-plugins
        raise ReferenceDatabaseError('the retrieval index needs faiss-cpu (pip install faiss-cpu)') from exc
    return faiss


def _normalised(descs_ND: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(descs_ND, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or not np.all(np.isfinite(x)):
        raise ReferenceDatabaseError(f'descriptors must be a finite non-empty N x D array, got {x.shape}')
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12))


def build_faiss_index(descs_ND: np.ndarray, kind: str = 'auto', *, whiten: str = 'never', nprobe: int = 64,
                      k_factor: int = 32) -> Any:
    """An inner-product FAISS index over L2-normalised descriptors (cosine similarity).

    ``flat``: exact ``IndexFlatIP``. ``ivfpq``: ``IVF{nlist},PQ{m}x4fs,RFlat``: an inverted file of nlist =
    4 sqrt(N) lists (at most N/39) with 4-bit fast-scan product quantisation, m = D/4 sub-quantizers
    (rounded down to an even divisor of D), searching ``nprobe`` lists and re-ranking ``k_factor`` x k
    candidates with the exact vectors; trained on the descriptors themselves (FAISS k-means has a fixed
    seed). ``auto``: flat up to :data:`FLAT_MAX_ENTRIES` entries. Measured in scripts/bench_refdb.py.

    ``whiten`` (:data:`WHITEN_MODES`): with whitening, FAISS's ``PCAW{D},L2norm`` pre-transform (PCA
    learnt from these descriptors, each component scaled to unit variance, then L2-normalised) comes
    before either index, for the stored vectors and the queries alike: directions that every place
    shares stop dominating the similarity. ``auto``: when there are at least
    :data:`WHITEN_MIN_ENTRIES_PER_DIM` x D descriptors.
    """
    faiss = _faiss()
    x = _normalised(descs_ND)
    n, d = x.shape
    if kind not in INDEX_KINDS:
        raise ReferenceDatabaseError(f'index kind must be one of {INDEX_KINDS}, got {kind!r}')
    if whiten not in WHITEN_MODES:
        raise ReferenceDatabaseError(f'whiten must be one of {WHITEN_MODES}, got {whiten!r}')
    whitened = whiten == 'always' or (whiten == 'auto' and n >= WHITEN_MIN_ENTRIES_PER_DIM * d)
    if whitened and n <= d:
        raise ReferenceDatabaseError(f'whitening {d}-D descriptors needs more than {d} of them, got {n}')
    prefix = f'PCAW{d},L2norm,' if whitened else ''
    if kind == 'auto':
        kind = 'flat' if n <= FLAT_MAX_ENTRIES else 'ivfpq'
    if kind == 'flat':
        index = faiss.index_factory(d, prefix + 'Flat', faiss.METRIC_INNER_PRODUCT)
    else:
        if n < 1000:
            raise ReferenceDatabaseError(f'IVF-PQ needs at least 1000 descriptors to train, got {n}; use flat')
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        m = max(2, d // 4)
        while m > 2 and (d % m or m % 2):
            m -= 1
        if d % m:
            raise ReferenceDatabaseError(f'IVF-PQ needs an even descriptor dimension, got {d}; use flat')
        index = faiss.index_factory(d, f'IVF{nlist},PQ{m}x4fs,RFlat', faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(index).nprobe = min(nprobe, nlist)
        index.k_factor = float(k_factor)
        if whitened:  # the factory would put the exact re-ranking outside the whitening: wrap by hand
            index = faiss.IndexPreTransform(index)
            index.prepend_transform(faiss.NormalizationTransform(d, 2.0))
            index.prepend_transform(faiss.PCAMatrix(d, d, -0.5))
    if not index.is_trained:
        index.train(x)
    index.add(x)
    return index


def index_kind(index: Any) -> tuple[str, bool]:
    """(``flat`` or ``ivfpq``, whitened) of an index made by :func:`build_faiss_index`."""
    faiss = _faiss()
    whitened = isinstance(index, faiss.IndexPreTransform)
    inner = faiss.downcast_index(index.index) if whitened else index
    return ('flat' if isinstance(inner, faiss.IndexFlat) else 'ivfpq'), whitened


def build_index(root: str | Path, model: str, kind: str = 'auto', whiten: str = 'never') -> Mapping[str, Any]:
    """Build ``DB/index/<model>.faiss`` from the entries' ``<model>`` descriptors, record it in the
    manifest (version + 1) and return its manifest record. Entries without the descriptor are left out
    (logged)."""
    faiss = _faiss()
    root = Path(root)
    db = ReferenceDatabase(root, verify=False)
    uids, descs = db.load_descriptors(model)
    if len(uids) < len(db):
        _LOG.warning('%s: %d of %d entries have no %r descriptor; left out of the index', root,
                     len(db) - len(uids), len(db), model)
    index = build_faiss_index(descs, kind, whiten=whiten)
    built_kind, whitened = index_kind(index)
    (root / INDEX_DIR).mkdir(exist_ok=True)
    index_path = root / INDEX_DIR / f'{model}.faiss'
    uids_path = root / INDEX_DIR / f'{model}.uids.txt'
    faiss.write_index(index, str(index_path))
    uids_path.write_text('\n'.join(uids) + '\n')
    record = {'file': f'{INDEX_DIR}/{index_path.name}', 'sha256': _sha256(index_path),
              'uids_file': f'{INDEX_DIR}/{uids_path.name}', 'uids_sha256': _sha256(uids_path),
              'kind': built_kind, 'whitened': whitened, 'count': len(uids), 'dim': int(descs.shape[1])}
    old = read_manifest(root) if (root / MANIFEST_FILE).is_file() else None
    indexes = dict(old.indexes) if old else {}
    indexes[model] = record
    update_manifest(root, [] if old else None, indexes=indexes)
    _LOG.info('%s: %s index%s of %d %r descriptors (dim %d)', root, record['kind'],
              ', whitened' if whitened else '', len(uids), model, record['dim'])
    return record


class ReferenceIndex:
    """A FAISS index of one descriptor model with its row -> uid table; ``search`` returns uids."""

    def __init__(self, index: Any, uids: tuple[str, ...]) -> None:
        if index.ntotal != len(uids):
            raise ReferenceDatabaseError(f'index has {index.ntotal} rows but {len(uids)} uids')
        self.index = index
        self.uids = uids

    @classmethod
    def load(cls, db: ReferenceDatabase, model: str) -> 'ReferenceIndex':
        """The ``model`` index recorded in the database's (verified) manifest."""
        if db.manifest is None or model not in db.manifest.indexes:
            known = sorted(db.manifest.indexes) if db.manifest else []
            raise ReferenceDatabaseError(f'{db.root}: no {model!r} index (has {known}); build it with '
                                         f'`vizloc-db build {db.root} --bundle BUNDLE`')
        info = db.manifest.indexes[model]
        index = _faiss().read_index(str(db.root / info['file']))
        uids = tuple(u for u in (db.root / info['uids_file']).read_text().split('\n') if u)
        missing = [u for u in uids if u not in db.uids]
        if missing:
            raise ReferenceDatabaseError(f'{db.root}: {model!r} index lists entries that are gone: {missing[:5]}; rebuild')
        return cls(index, uids)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, query_ND: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """(scores N x k' cosine similarities, uids per query) of the k nearest entries (k' = min(k, size))."""
        q = _normalised(np.atleast_2d(query_ND))
        if q.shape[1] != self.dim:
            raise ReferenceDatabaseError(f'query descriptor has dimension {q.shape[1]}, index has {self.dim}')
        scores, rows = self.index.search(q, min(int(k), len(self.uids)))
        return scores, [[self.uids[r] for r in row if r >= 0] for row in rows]
