"""Reader of scene-coordinate datasets in the DSAC* / CrossLoc layout.

Layout (one folder per split; every per-frame file shares the image's stem)::

    DIR/geo.yaml                         geo-reference of the scene frame (vizloc_ros.geodesy.GeoReference:
                                         {crs: 'EPSG:<code>', offset: [x, y, z]} or {enu_origin: [lat, lon, alt]})
    DIR/<split>/rgb/<stem>.png|jpg       images
    DIR/<split>/poses/<stem>.txt         4x4 camera-to-world transform (camera optical frame: x right,
                                         y down, z forward; world = scene frame, metres)
    DIR/<split>/calibration/<stem>.txt   focal length in pixels (one number; principal point at the
                                         image centre (W/2, H/2)) or a full 3x3 K
    DIR/<split>/depth/<stem>.npy|png     optional depth, metres (npy float) or uint16 millimetres (png);
                                         0 = invalid
    DIR/<split>/init/<stem>.npy          optional scene coordinates, float32 3 x h x w, zeros where invalid,
                                         at full resolution (h, w) = (H, W) or decimated by a stride s
                                         (h = H // s or ceil(H / s)); decimated cell (i, j) holds the point
                                         seen by pixel (u, v) = (s*j + s//2, s*i + s//2) (DSAC*: s = 8)

Optional folders are all-or-nothing: when ``depth/`` or ``init/`` exists it must hold a file for
every image. Every inconsistency (missing or extra per-frame file, a pose that is not a rigid 4x4,
a calibration that is neither a positive focal length nor a 3x3 K, a missing geo.yaml, an init
array of the wrong shape) raises :class:`SceneCoordinateDatasetError` naming the offending file.
Text files are checked when the dataset is opened; images and arrays when a sample is read.

API::

    ds = SceneCoordinateDataset('/data/aerial', 'train')   # require_geo=False to allow no geo.yaml
    len(ds)
    s = ds[0]        # SceneSample
    s.rgb_HW3        # uint8 H x W x 3 RGB
    s.T_world_camera # float64 4x4 camera-to-world
    s.K              # float64 3x3
    s.depth_HW       # float32 H x W metres (0 = invalid) or None
    s.coords_3HW     # float32 3 x h x w scene coordinates (zeros = invalid) or None
    s.coords_stride_px  # 1 for full resolution, s for decimated
    s.name           # the stem, e.g. 'frame_00012'
    ds.geo           # vizloc_ros.geodesy.GeoReference or None
    coords_pixel_grid(s.coords_stride_px, h, w)  # (2, h, w) pixel (u, v) of every coordinate cell
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vizloc_ros.geodesy import GeodesyError, GeoReference

__all__ = [
    'IMAGE_SUFFIXES',
    'SceneCoordinateDataset',
    'SceneCoordinateDatasetError',
    'SceneSample',
    'coords_pixel_grid',
    'read_calibration',
    'read_pose',
]

_LOG = logging.getLogger(__name__)

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
_DEPTH_SUFFIXES = ('.npy', '.png')
_ROTATION_TOL = 1e-4


class SceneCoordinateDatasetError(ValueError):
    """A malformed scene-coordinate dataset; the message names the file."""


@dataclass(frozen=True)
class SceneSample:
    """One frame of a scene-coordinate dataset (see the module docstring for conventions)."""

    rgb_HW3: np.ndarray
    T_world_camera: np.ndarray
    K: np.ndarray
    depth_HW: np.ndarray | None
    coords_3HW: np.ndarray | None
    name: str
    coords_stride_px: int = 1


def coords_pixel_grid(stride_px: int, h: int, w: int) -> np.ndarray:
    """Pixel coordinates ``(2, h, w)`` (u, v) of scene-coordinate cells at ``stride_px`` (DSAC* convention)."""
    if stride_px < 1:
        raise ValueError(f'stride_px must be >= 1, got {stride_px}')
    offset = stride_px // 2 if stride_px > 1 else 0
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([u * stride_px + offset, v * stride_px + offset])


def read_pose(path: Path) -> np.ndarray:
    """A 4x4 rigid camera-to-world transform from a text file; errors name the file."""
    try:
        T = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise SceneCoordinateDatasetError(f'{path}: cannot parse pose: {exc}') from exc
    if T.shape != (4, 4):
        raise SceneCoordinateDatasetError(f'{path}: pose must be a 4x4 matrix, got shape {T.shape}')
    if not np.all(np.isfinite(T)):
        raise SceneCoordinateDatasetError(f'{path}: pose contains non-finite values')
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise SceneCoordinateDatasetError(f'{path}: last pose row must be [0 0 0 1], got {T[3].tolist()}')
    R = T[:3, :3]
    if not np.allclose(R.T @ R, np.eye(3), atol=_ROTATION_TOL) or np.linalg.det(R) <= 0:
        raise SceneCoordinateDatasetError(f'{path}: pose rotation is not a proper rotation (det {np.linalg.det(R):.6f})')
    return T


def read_calibration(path: Path) -> float | np.ndarray:
    """Focal length in pixels (one number) or a 3x3 K; errors name the file."""
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except (OSError, ValueError) as exc:
        raise SceneCoordinateDatasetError(f'{path}: cannot parse calibration: {exc}') from exc
    if not np.all(np.isfinite(values)):
        raise SceneCoordinateDatasetError(f'{path}: calibration contains non-finite values')
    if values.size == 1:
        focal = float(values.ravel()[0])
        if focal <= 0:
            raise SceneCoordinateDatasetError(f'{path}: focal length must be > 0 px, got {focal}')
        return focal
    if values.size == 9:
        K = values.reshape(3, 3)
        if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0.0, 0.0, 1.0]):
            raise SceneCoordinateDatasetError(f'{path}: 3x3 calibration is not a camera matrix: {K.tolist()}')
        return K
    raise SceneCoordinateDatasetError(
        f'{path}: calibration must be one focal length or a 3x3 K, got {values.size} numbers')


class SceneCoordinateDataset:
    """Frames of one split of a DSAC*/CrossLoc-layout dataset (see the module docstring)."""

    def __init__(self, root: str | Path, split: str, *, require_geo: bool = True,
                 load_depth: bool = True, load_coords: bool = True) -> None:
        self.root = Path(root)
        self.split = split
        self.load_depth = load_depth
        self.load_coords = load_coords
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise SceneCoordinateDatasetError(f'{split_dir}: split folder not found')
        rgb_dir = split_dir / 'rgb'
        if not rgb_dir.is_dir():
            raise SceneCoordinateDatasetError(f'{rgb_dir}: image folder not found')
        images = sorted(p for p in rgb_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise SceneCoordinateDatasetError(f'{rgb_dir}: no images ({"/".join(IMAGE_SUFFIXES)})')
        self._images = images
        self._names = [p.stem for p in images]
        if len(set(self._names)) != len(self._names):
            dup = sorted({n for n in self._names if self._names.count(n) > 1})
            raise SceneCoordinateDatasetError(f'{rgb_dir}: several images share a stem: {dup[:5]}')
        poses_files = self._per_frame(split_dir / 'poses', ('.txt',), required=True) or []
        calib_files = self._per_frame(split_dir / 'calibration', ('.txt',), required=True) or []
        self._depth_files = self._per_frame(split_dir / 'depth', _DEPTH_SUFFIXES, required=False)
        self._init_files = self._per_frame(split_dir / 'init', ('.npy',), required=False)
        self._poses = [read_pose(p) for p in poses_files]
        self._calibrations = [read_calibration(p) for p in calib_files]
        geo_path = self.root / 'geo.yaml'
        self.geo: GeoReference | None = None
        if geo_path.is_file():
            try:
                self.geo = GeoReference.from_yaml(geo_path)
            except GeodesyError as exc:
                raise SceneCoordinateDatasetError(f'{geo_path}: invalid geo-reference: {exc}') from exc
        elif require_geo:
            raise SceneCoordinateDatasetError(f'{geo_path}: geo-reference not found (pass require_geo=False to read without it)')
        _LOG.debug('%s/%s: %d frames', self.root, split, len(self))

    def _per_frame(self, folder: Path, suffixes: tuple[str, ...], *, required: bool) -> list[Path] | None:
        if not folder.is_dir():
            if required:
                raise SceneCoordinateDatasetError(f'{folder}: folder not found')
            return None
        by_stem: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in suffixes:
                if p.stem in by_stem:
                    raise SceneCoordinateDatasetError(f'{p}: a second file for frame {p.stem} ({by_stem[p.stem].name})')
                by_stem[p.stem] = p
        missing = [n for n in self._names if n not in by_stem]
        if missing:
            expected = folder / f'{missing[0]}{suffixes[0]}'
            raise SceneCoordinateDatasetError(
                f'{expected}: missing for image {self._images[self._names.index(missing[0])].name} '
                f'({len(missing)} of {len(self._names)} frames lack a file in {folder})')
        extra = sorted(set(by_stem) - set(self._names))
        if extra:
            raise SceneCoordinateDatasetError(
                f'{by_stem[extra[0]]}: no image for this file ({len(extra)} files in {folder} without an image; '
                f'{len(by_stem)} files vs {len(self._names)} images)')
        return [by_stem[n] for n in self._names]

    def __len__(self) -> int:
        return len(self._images)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def pose(self, index: int) -> np.ndarray:
        """Camera-to-world 4x4 of frame ``index`` without reading the image."""
        return self._poses[self._index(index)].copy()

    def _index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f'index {index} out of range for {n} frames')
        return index % n

    def __getitem__(self, index: int) -> SceneSample:
        i = self._index(index)
        path = self._images[i]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SceneCoordinateDatasetError(f'{path}: cannot read image')
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        calib = self._calibrations[i]
        if isinstance(calib, float):
            K = np.array([[calib, 0.0, w / 2.0], [0.0, calib, h / 2.0], [0.0, 0.0, 1.0]])
        else:
            K = calib.copy()
        depth = self._read_depth(self._depth_files[i], h, w) if (self.load_depth and self._depth_files) else None
        coords, stride = (None, 1)
        if self.load_coords and self._init_files:
            coords, stride = self._read_coords(self._init_files[i], h, w)
        return SceneSample(rgb_HW3=rgb, T_world_camera=self._poses[i].copy(), K=K, depth_HW=depth,
                           coords_3HW=coords, name=self._names[i], coords_stride_px=stride)

    @staticmethod
    def _read_depth(path: Path, h: int, w: int) -> np.ndarray:
        if path.suffix.lower() == '.npy':
            try:
                depth = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise SceneCoordinateDatasetError(f'{path}: cannot read depth: {exc}') from exc
            depth = np.asarray(depth, dtype=np.float32)
        else:
            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if raw is None or raw.dtype != np.uint16 or raw.ndim != 2:
                raise SceneCoordinateDatasetError(f'{path}: depth png must be single-channel uint16 millimetres')
            depth = raw.astype(np.float32) / 1000.0
        if depth.shape != (h, w):
            raise SceneCoordinateDatasetError(f'{path}: depth shape {depth.shape} does not match the image ({h}, {w})')
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(0.0)).astype(np.float32)
        return depth

    @staticmethod
    def _read_coords(path: Path, h: int, w: int) -> tuple[np.ndarray, int]:
        try:
            coords = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SceneCoordinateDatasetError(f'{path}: cannot read scene coordinates: {exc}') from exc
        if coords.ndim != 3 or coords.shape[0] != 3:
            raise SceneCoordinateDatasetError(f'{path}: scene coordinates must be 3 x h x w, got shape {coords.shape}')
        ch, cw = coords.shape[1:]
        if ch <= 0 or cw <= 0:
            raise SceneCoordinateDatasetError(f'{path}: empty scene coordinates {coords.shape}')
        candidates = sorted({1, 2, 4, 8, 16, 32, max(1, h // ch), max(1, w // cw), max(1, round(h / ch)), max(1, round(w / cw))})
        strides = [s for s in candidates
                   if ch in (h // s, math.ceil(h / s)) and cw in (w // s, math.ceil(w / s))]
        if not strides:
            raise SceneCoordinateDatasetError(
                f'{path}: scene coordinates {ch}x{cw} match neither the image {h}x{w} nor a decimation of it')
        stride = strides[0]
        coords = np.asarray(coords, dtype=np.float32)
        if not np.all(np.isfinite(coords)):
            raise SceneCoordinateDatasetError(f'{path}: scene coordinates contain non-finite values (use zeros for invalid)')
        return coords, stride
