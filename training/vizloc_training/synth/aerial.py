"""Synthetic AERIAL world: a textured, geo-referenced terrain seen from a drone (CrossLoc-style data).

``generate(out)`` builds a terrain, samples training views over it, flies two different drone
trajectories (val, test), renders every frame with exact ground truth and writes the
DSAC*/CrossLoc layout that :mod:`vizloc_training.datasets.scene_coordinates` reads::

    DIR/world.yaml                      what generated this, with which seed/sizes/sources
    DIR/geo.yaml                        geo-reference of the scene frame (crs: EPSG:2056 + offset)
    DIR/terrain/elevation.npy           the height field (float32 metres, scene z, row 0 = north)
    DIR/terrain/orthophoto.jpg          the orthophoto texture (north-up)
    DIR/{train,val,test}/rgb/<stem>.png          rendered RGB (after photometric variation)
    DIR/{train,val,test}/poses/<stem>.txt        4x4 camera-to-world (optical frame: x right, y down, z forward)
    DIR/{train,val,test}/calibration/<stem>.txt  focal length in pixels (principal point = image centre)
    DIR/{train,val,test}/depth/<stem>.npy        float32 z-depth along the optical axis, metres, full resolution
    DIR/{train,val,test}/init/<stem>.npy         float32 scene coordinates 3 x H/8 x W/8 (DSAC* stride 8:
                                                 cell (i, j) is the ray of pixel (u, v) = (8j + 4, 8i + 4))
    DIR/eval_bag/                       rosbag2 evaluation bag of the test split (vizloc_ros.bags)

The scene frame is the local frame of ``geo.yaml``: x east, y north, z up, metres, origin at the
centre of the terrain; ``scene = LV95 (E, N, ellipsoidal h) - offset``.

Terrain: fractal hills (octaves of smooth noise) plus villages of flat-roofed building blocks
(sharp 3-D structure for PnP), on a ``extent_m`` square grid of ``dem_spacing_m`` spacing.
Orthophoto: a mosaic of field parcels, each a randomly rotated/scaled/tinted crop of the aerial
photographs ``aero1.jpg``/``aero3.jpg`` from Debian's ``opencv-doc`` package (the procedural
fallback - multi-octave noise fields with crop rows - is used when those are missing), with
roads, a low-frequency colour modulation (so no two places look alike) and roofs drawn on top.
``world.yaml`` records which texture source was used. Users may bring their own orthophoto,
elevation grid and geo-reference instead (``orthophoto=``, ``elevation=``, ``geo=``).

Training views (``AerialWorldConfig.train_sampling``): ``'lhs'`` (default, CrossLoc's LHS-sim) =
independent views drawn with a Latin hypercube (``scipy.stats.qmc.LatinHypercube``, seeded by the
world seed) over x, y in the flight area, height above the ground (buildings included) 51-299 m,
heading 0-360 deg, tilt 0-45 deg, roll +/-3 deg and the sun direction (azimuth 0-360 deg,
elevation 22-68 deg), so that they cover the poses the val/test flights take; a view whose image
border leaves the terrain is rejected and replaced by the next fitting view of further Latin
hypercubes (:func:`lhs_plan`); user terrain gets the same, over its own flight area. ``'lawnmower'``
= the former training flight: lawnmower passes with semicircular turns. Trajectories (scene frame, seed-dependent orientation/phases): val = figure
eight (Lissajous 2:1), test = a looping epitrochoid at other altitudes and sun directions.
Flights: altitude 50-300 m above ground (buildings included), camera tilt 0-45 deg from nadir
(capped so that the whole view stays on the terrain), smooth yaw oscillations, a little roll.
``world.yaml`` records each split's plan (``splits.<split>.trajectory``: shape, and for the LHS
views the sampler, its seed, ranges and rejections) and the altitude/tilt ranges flown.

Everything is deterministic for a seed: same seed -> byte-identical files.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import cv2
import numpy as np
import transforms3d
import yaml
from scipy.stats import qmc
from vizloc_ros.eval_bag import EVAL_BAG_NAME
from vizloc_ros.bundle import yaml_plain
from vizloc_ros.geodesy import GeoReference

from vizloc_training.synth.heightfield import HeightField, TerrainRenderer, pixel_rays_camera
from vizloc_training.synth.photometric import PhotometricConfig, apply_photometric

__all__ = [
    'AerialWorldConfig',
    'AerialWorldError',
    'DEFAULT_PHOTO_DIR',
    'FlightPlan',
    'GENERATOR_VERSION',
    'LHS_DIMENSIONS',
    'TRAIN_SAMPLINGS',
    'build_terrain',
    'build_orthophoto',
    'camera_rotation',
    'flight_plan',
    'latin_hypercube',
    'lhs_plan',
    'lhs_ranges',
    'plan_poses',
    'generate',
]

_LOG = logging.getLogger(__name__)

GENERATOR = 'vizloc_training.synth.aerial'
GENERATOR_VERSION = '1.1.0'  # 1.1: Latin-hypercube training views by default
#: Where Debian/Ubuntu's ``opencv-doc`` package installs its example images.
DEFAULT_PHOTO_DIR = Path('/usr/share/doc/opencv-doc/examples/data')
AERIAL_PHOTOS = ('aero1.jpg', 'aero3.jpg')
SPLITS = ('train', 'val', 'test')
INIT_STRIDE_PX = 8
_SPLIT_ID = {'train': 0, 'val': 1, 'test': 2}
_BAG_START_NS = 1_700_000_000_000_000_000
_BAG_PERIOD_NS = 100_000_000  # 10 Hz
#: How the training split is made: Latin-hypercube views (default) or the lawnmower flight.
TRAIN_SAMPLINGS = ('lhs', 'lawnmower')
#: The Latin hypercube's dimensions, in column order (see :func:`lhs_plan`).
LHS_DIMENSIONS = ('x_m', 'y_m', 'agl_m', 'heading_rad', 'tilt_rad', 'roll_rad', 'sun_azimuth_rad', 'sun_elevation_rad')
#: Sun elevation of the LHS views: the flights' 30-60 deg plus their +/-8 deg swing.
LHS_SUN_ELEVATION_DEG = (22.0, 68.0)
#: Latin hypercubes of n views drawn at most for n fitting training views before giving up.
LHS_MAX_ROUNDS = 20


class AerialWorldError(ValueError):
    """Inconsistent aerial-world inputs (bad user orthophoto/elevation/geo, impossible flight area)."""


@dataclass(frozen=True)
class AerialWorldConfig:
    """Everything that shapes the aerial world (recorded in world.yaml)."""

    size: tuple[int, int] = (320, 240)  # image W x H, pixels
    frames_train: int = 400
    frames_val: int = 60
    frames_test: int = 100
    hfov_deg: float = 60.0
    extent_m: float = 2048.0  # terrain square side (user elevation: derived from its shape)
    dem_spacing_m: float = 2.0
    texture_px: int = 4096  # orthophoto side (generated texture)
    flight_area_fraction: float = 0.5  # camera xy stays within +/- fraction * extent / 2
    agl_range_m: tuple[float, float] = (50.0, 300.0)
    tilt_max_deg: float = 45.0
    roll_max_deg: float = 3.0
    hills_amplitude_m: float = 70.0
    n_villages: int = 6
    buildings_per_village: int = 25
    building_height_m: tuple[float, float] = (6.0, 30.0)
    photometric_strength: float = 1.0
    origin_lv95: tuple[float, float, float] = (2538500.0, 1153500.0, 500.0)  # E, N, h: near Lausanne
    train_sampling: str = 'lhs'  # 'lhs': Latin-hypercube views (CrossLoc LHS-sim); 'lawnmower': one lawnmower flight

    def __post_init__(self) -> None:
        w, h = self.size
        if w < 8 or h < 8:
            raise AerialWorldError(f'image size must be at least 8x8, got {w}x{h}')
        for name in ('frames_train', 'frames_val', 'frames_test'):
            if getattr(self, name) < 1:
                raise AerialWorldError(f'{name} must be >= 1, got {getattr(self, name)}')
        lo, hi = self.agl_range_m
        if not 0 < lo < hi:
            raise AerialWorldError(f'agl_range_m must be 0 < lo < hi, got {self.agl_range_m}')
        if (hi - 10.0) - (lo + self.building_height_m[1] + 5.0) < 20.0:
            raise AerialWorldError(f'agl_range_m {self.agl_range_m} is too narrow for buildings up to '
                                   f'{self.building_height_m[1]} m (planned heights keep 5 m above roofs and 10 m below the top)')
        if not 0 <= self.tilt_max_deg < 80:
            raise AerialWorldError(f'tilt_max_deg must be in [0, 80), got {self.tilt_max_deg}')
        if not 0 < self.flight_area_fraction < 1:
            raise AerialWorldError(f'flight_area_fraction must be in (0, 1), got {self.flight_area_fraction}')
        if self.train_sampling not in TRAIN_SAMPLINGS:
            raise AerialWorldError(f'train_sampling must be one of {TRAIN_SAMPLINGS}, got {self.train_sampling!r}')

    @property
    def focal_px(self) -> float:
        return (self.size[0] / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)

    def K(self) -> np.ndarray:
        w, h = self.size
        f = self.focal_px
        return np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])

    def with_train_frames(self, frames: int) -> 'AerialWorldConfig':
        """``--frames N``: N training frames, val/test scaled like the defaults (15 % / 25 %)."""
        if frames < 1:
            raise AerialWorldError(f'frames must be >= 1, got {frames}')
        return replace(self, frames_train=frames, frames_val=max(2, round(frames * 0.15)),
                       frames_test=max(2, round(frames * 0.25)))


# ---------------------------------------------------------------------------------------------
# Terrain
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Building:
    centre_xy_m: tuple[float, float]
    size_xy_m: tuple[float, float]
    yaw_rad: float
    roof_z_m: float

    def corners_xy_m(self) -> np.ndarray:
        c, s = math.cos(self.yaw_rad), math.sin(self.yaw_rad)
        hx, hy = self.size_xy_m[0] / 2, self.size_xy_m[1] / 2
        local = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
        return local @ np.array([[c, s], [-s, c]]) + np.asarray(self.centre_xy_m)


@dataclass(frozen=True)
class Terrain:
    """Height field (scene frame) + what it is made of. ``hills`` is the ground without buildings."""

    field: HeightField
    hills: HeightField
    buildings: tuple[Building, ...]
    source: Mapping[str, Any]


def _smooth_noise(rng: np.random.Generator, n: int, wavelength_px: float) -> np.ndarray:
    """Smooth noise on an n x n grid: a random grid with one value per wavelength, cubic-upsampled."""
    wl = max(2, int(round(wavelength_px)))
    m = int(math.ceil(n / wl)) + 3
    grid = rng.standard_normal((m, m)).astype(np.float32)
    up = cv2.resize(grid, (m * wl, m * wl), interpolation=cv2.INTER_CUBIC)
    return up[wl: wl + n, wl: wl + n].astype(np.float64)


def build_terrain(cfg: AerialWorldConfig, rng: np.random.Generator) -> Terrain:
    """Fractal hills + villages of flat-roofed blocks, centred on the scene origin."""
    n = int(round(cfg.extent_m / cfg.dem_spacing_m)) + 1
    half = (n - 1) * cfg.dem_spacing_m / 2.0
    hills = np.zeros((n, n))
    for wavelength_m, amp in ((900.0, 1.0), (350.0, 0.45), (120.0, 0.15), (40.0, 0.04)):
        hills += amp * _smooth_noise(rng, n, wavelength_m / cfg.dem_spacing_m)
    hills = (hills - hills.min()) / max(np.ptp(hills), 1e-9) * cfg.hills_amplitude_m * 1.6
    hills_field = HeightField(hills, cfg.dem_spacing_m, -half, -half)
    heights = hills.copy()
    buildings: list[Building] = []
    lim = half * 0.85
    for _ in range(cfg.n_villages):
        vc = rng.uniform(-lim * 0.8, lim * 0.8, size=2)
        v_yaw = rng.uniform(0, math.pi)
        for _ in range(cfg.buildings_per_village):
            offset = rng.normal(0.0, 70.0, size=2)
            size_xy = rng.uniform(10.0, 40.0, size=2)
            h = rng.uniform(*cfg.building_height_m)
            yaw = v_yaw + rng.choice([0.0, math.pi / 2]) + rng.normal(0.0, 0.05)
            centre = np.clip(vc + offset, -lim, lim)
            b = Building((float(centre[0]), float(centre[1])), (float(size_xy[0]), float(size_xy[1])), float(yaw), 0.0)
            corners_g = (b.corners_xy_m() + half) / cfg.dem_spacing_m
            i0, j0 = np.floor(corners_g.min(axis=0)).astype(int) - 1
            i1, j1 = np.ceil(corners_g.max(axis=0)).astype(int) + 2
            i0, j0, i1, j1 = max(i0, 0), max(j0, 0), min(i1, n), min(j1, n)
            mask = np.zeros((j1 - j0, i1 - i0), np.uint8)
            cv2.fillPoly(mask, [np.round((corners_g - [i0, j0]) * 16).astype(np.int32)], 1, shift=4)
            if not mask.any():
                continue
            window = heights[j0:j1, i0:i1]
            roof = float(hills[j0:j1, i0:i1][mask > 0].max() + h)
            window[mask > 0] = np.maximum(window[mask > 0], roof)
            buildings.append(replace(b, roof_z_m=roof))
    field = HeightField(heights, cfg.dem_spacing_m, -half, -half)
    source = {'kind': 'generated', 'hills_amplitude_m': cfg.hills_amplitude_m, 'buildings': len(buildings)}
    return Terrain(field=field, hills=hills_field, buildings=tuple(buildings), source=source)


def _user_terrain(elevation: Path, spacing_m: float) -> Terrain:
    try:
        grid = np.load(elevation, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise AerialWorldError(f'{elevation}: cannot read elevation array: {exc}') from exc
    if grid.ndim != 2 or min(grid.shape) < 8:
        raise AerialWorldError(f'{elevation}: elevation must be a 2-D array of at least 8x8, got shape {grid.shape}')
    if not np.all(np.isfinite(grid)):
        raise AerialWorldError(f'{elevation}: elevation contains non-finite values')
    heights = np.flipud(grid.astype(np.float64))  # row 0 = north in the file; the field grows northwards
    ny, nx = heights.shape
    x0, y0 = -(nx - 1) * spacing_m / 2.0, -(ny - 1) * spacing_m / 2.0
    field = HeightField(heights, spacing_m, x0, y0)
    smooth = cv2.GaussianBlur(heights, (0, 0), max(1.0, 30.0 / spacing_m))
    source = {'kind': 'user', 'path': str(elevation), 'sha256': _sha256(elevation), 'spacing_m': spacing_m}
    return Terrain(field=field, hills=HeightField(smooth, spacing_m, x0, y0), buildings=(), source=source)


# ---------------------------------------------------------------------------------------------
# Orthophoto
# ---------------------------------------------------------------------------------------------


def _load_photos(photo_dir: Path) -> list[tuple[str, np.ndarray]]:
    photos = []
    for name in AERIAL_PHOTOS:
        path = photo_dir / name
        if path.is_file():
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                _LOG.warning('%s: unreadable, skipped', path)
                continue
            photos.append((name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return photos


def _procedural_layer(rng: np.random.Generator, size: int) -> np.ndarray:
    """A field texture: base colour, multi-octave noise and crop rows at a random angle."""
    palette = np.array([[92, 120, 60], [120, 140, 70], [150, 130, 90], [110, 95, 70], [170, 160, 110], [80, 100, 60]], np.float32)
    base = palette[rng.integers(len(palette))] * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    noise = np.zeros((size, size), np.float32)
    for wl, amp in ((size / 8, 0.5), (size / 32, 0.3), (8.0, 0.15), (2.0, 0.1)):
        coarse = max(2, int(size / wl) + 1)
        noise += amp * cv2.resize(rng.standard_normal((coarse, coarse)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6.0, 20.0)
    rows = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)).astype(np.float32)
    shade = 1.0 + 0.18 * noise + 0.08 * rows
    return np.clip(base * shade[..., None], 0, 255).astype(np.uint8)


def build_orthophoto(cfg: AerialWorldConfig, terrain: Terrain, rng: np.random.Generator,
                     photo_dir: Path = DEFAULT_PHOTO_DIR) -> tuple[np.ndarray, dict[str, Any]]:
    """North-up orthophoto (texture_px square) covering the terrain; returns (rgb, source description)."""
    size = cfg.texture_px
    photos = _load_photos(photo_dir)
    # Parcels: nearest of random seed points under a warped metric (irregular field boundaries),
    # each parcel filled with its own rotated/scaled/tinted photo centred on its seed point.
    small = 1024
    n_parcels = min(65535, max(4, int(round((size / 480) ** 2))))
    pts = rng.uniform(0, small, size=(n_parcels, 2)).astype(np.float32)
    yy, xx = np.mgrid[0:small, 0:small].astype(np.float32)
    warp_x = (small / 25.0) * cv2.resize(rng.standard_normal((9, 9)).astype(np.float32), (small, small), interpolation=cv2.INTER_CUBIC)
    warp_y = (small / 25.0) * cv2.resize(rng.standard_normal((9, 9)).astype(np.float32), (small, small), interpolation=cv2.INTER_CUBIC)
    wx, wy = xx + warp_x, yy + warp_y
    best = np.full((small, small), np.inf, np.float32)
    parcel_small = np.zeros((small, small), np.uint16)
    for label, (px, py) in enumerate(pts):
        d2 = (wx - px) ** 2 + (wy - py) ** 2
        closer = d2 < best
        best[closer] = d2[closer]
        parcel_small[closer] = label
    parcels = cv2.resize(parcel_small, (size, size), interpolation=cv2.INTER_NEAREST)
    scale_px = size / small
    canvas = np.zeros((size, size, 3), np.uint8)
    used: list[str] = []
    for label in range(n_parcels):
        rows, cols = np.nonzero(parcel_small == label)
        if rows.size == 0:
            continue
        x0, x1 = int(cols.min() * scale_px), min(size, int((cols.max() + 1) * scale_px))
        y0, y1 = int(rows.min() * scale_px), min(size, int((rows.max() + 1) * scale_px))
        if photos:
            name, photo = photos[int(rng.integers(len(photos)))]
            used.append(name)
            M = cv2.getRotationMatrix2D((photo.shape[1] / 2, photo.shape[0] / 2), float(rng.uniform(0, 360)),
                                        float(rng.uniform(1.0, 1.6)))
            # Photo centre -> parcel seed point, expressed in the bounding box's pixel frame.
            M[:, 2] += pts[label] * scale_px - np.array([photo.shape[1] / 2, photo.shape[0] / 2]) - [x0, y0]
            gains = rng.uniform(0.92, 1.08, 3).astype(np.float32)
            tinted = np.clip(photo.astype(np.float32) * gains, 0, 255).astype(np.uint8)
            patch = cv2.warpAffine(tinted, M, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        else:
            patch = _procedural_layer(rng, max(x1 - x0, y1 - y0))[: y1 - y0, : x1 - x0]
        mask = parcels[y0:y1, x0:x1] == label
        canvas[y0:y1, x0:x1][mask] = patch[mask]
    # Low-frequency modulation, mostly brightness with a little colour: every place looks different.
    # One channel at a time keeps the peak memory of a 4096^2 texture in the low hundreds of MB.
    lum = cv2.resize(rng.standard_normal((12, 12)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    lum *= np.float32(0.12)
    lum += np.float32(1.0)
    img = np.empty_like(canvas)
    for c in range(3):
        gain = cv2.resize(rng.standard_normal((6, 6)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        gain *= np.float32(0.03)
        gain += lum
        gain *= canvas[..., c]
        np.clip(gain, 0, 255, out=gain)
        img[..., c] = gain
    del lum, canvas
    px_per_m = size / (terrain.field.x1_m - terrain.field.x0_m)

    def to_px(xy: np.ndarray) -> np.ndarray:
        f = terrain.field
        return np.stack([(xy[:, 0] - f.x0_m) * px_per_m, (f.y1_m - xy[:, 1]) * px_per_m], axis=1)

    # Roads: smooth random curves.
    for _ in range(7):
        ctrl = rng.uniform(terrain.field.x0_m, terrain.field.x1_m, size=(5, 2))
        curve = _resample_by_arclength(ctrl, 400)
        poly = np.round(to_px(curve) * 16).astype(np.int32)
        grey = float(rng.uniform(95, 140))
        cv2.polylines(img, [poly], False, (round(grey), round(grey), round(grey * 0.97)), thickness=max(1, int(6 * px_per_m)), lineType=cv2.LINE_AA, shift=4)
    # Roofs.
    for b in terrain.buildings:
        poly = np.round(to_px(b.corners_xy_m()) * 16).astype(np.int32)
        colour = np.array([[150, 70, 55], [120, 110, 105], [90, 90, 95], [170, 150, 130], [60, 70, 80]], np.float64)[int(rng.integers(5))]
        colour = colour * rng.uniform(0.85, 1.15)
        cv2.fillPoly(img, [poly], tuple(int(round(c)) for c in np.clip(colour, 0, 255)), lineType=cv2.LINE_AA, shift=4)
        cv2.polylines(img, [poly], True, (40, 40, 40), thickness=max(1, int(round(px_per_m))), lineType=cv2.LINE_AA, shift=4)
    rgb = img
    if photos:
        source = {'kind': 'opencv-doc photos', 'dir': str(photo_dir), 'files': sorted(set(used)),
                  'sha256': {name: _sha256(photo_dir / name) for name in sorted(set(used))}}
    else:
        source = {'kind': 'procedural', 'reason': f'no {"/".join(AERIAL_PHOTOS)} in {photo_dir}'}
    return rgb, source


def _user_orthophoto(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise AerialWorldError(f'{path}: cannot read orthophoto image')
    if max(bgr.shape[:2]) >= 32767:
        raise AerialWorldError(f'{path}: orthophoto is too large ({bgr.shape[1]}x{bgr.shape[0]}); resample it below 32767 px')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), {'kind': 'user', 'path': str(path), 'sha256': _sha256(path)}


# ---------------------------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlightPlan:
    """Per-frame plan of one split: positions (scene xy), heights above the hills, angles (rad)."""

    split: str
    kind: str
    xy_m: np.ndarray  # (N, 2)
    agl_m: np.ndarray  # (N,) above the ground without buildings
    yaw_rad: np.ndarray  # (N,) heading of the image top, CCW from east
    tilt_rad: np.ndarray  # (N,) from nadir towards the image top
    roll_rad: np.ndarray  # (N,)
    sun_dir: np.ndarray  # (N, 3) unit vector towards the sun (scene frame)
    params: Mapping[str, Any] = field(default_factory=dict)


def _resample_by_arclength(poly: np.ndarray, n: int) -> np.ndarray:
    for _ in range(4):  # Chaikin corner cutting: smooth turns
        q = 0.75 * poly[:-1] + 0.25 * poly[1:]
        r = 0.25 * poly[:-1] + 0.75 * poly[1:]
        poly = np.concatenate([poly[:1], np.stack([q, r], axis=1).reshape(-1, 2), poly[-1:]])
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    target = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(target, s, poly[:, 0]), np.interp(target, s, poly[:, 1])], axis=1)


def _heading(xy: np.ndarray) -> np.ndarray:
    if len(xy) < 2:
        return np.zeros(len(xy))
    d = np.gradient(xy, axis=0)
    return np.unwrap(np.arctan2(d[:, 1], d[:, 0]))


def _smooth_heading(xy: np.ndarray) -> np.ndarray:
    """Direction of travel, low-pass filtered so that turns spread over many frames."""
    heading = _heading(xy)
    n = len(heading)
    sigma = max(2.0, n / 80.0)
    radius = int(min(3 * sigma, max(0, (n - 1) // 2)))
    if radius < 1:
        return heading
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    padded = np.pad(heading, radius, mode='edge')
    return np.convolve(padded, kernel / kernel.sum(), mode='valid')


def flight_plan(split: str, n: int, cfg: AerialWorldConfig, half_area_m: float, seed: int,
                terrain: Terrain | None = None) -> FlightPlan:
    """Seed-dependent plan of ``n`` frames for ``split``.

    val/test (and train with ``cfg.train_sampling == 'lawnmower'``) are smooth trajectories of a
    different shape per split; train with ``'lhs'`` (the default) is :func:`lhs_plan`, which needs
    ``terrain`` to check every view.
    """
    if split == 'train' and cfg.train_sampling == 'lhs':
        if terrain is None:
            raise AerialWorldError("train_sampling='lhs' needs the terrain: every sampled view is checked against it")
        return lhs_plan(n, cfg, half_area_m, seed, terrain)
    if split not in _SPLIT_ID:
        raise AerialWorldError(f'unknown split {split!r}; known: {SPLITS}')
    rng = np.random.default_rng([seed, 1000 + _SPLIT_ID[split]])
    a = half_area_m
    s = np.linspace(0.0, 1.0, n, endpoint=n == 1)
    lo, hi = cfg.agl_range_m
    b_max = cfg.building_height_m[1]
    agl_lo, agl_hi = lo + b_max + 5.0, hi - 10.0  # planned height above the hills
    theta = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    ph = rng.uniform(0, 2 * math.pi, size=4)
    if split == 'train':
        passes = 5
        ys = np.linspace(-0.9 * a, 0.9 * a, passes)
        radius = (ys[1] - ys[0]) / 2.0
        pts = []
        for k, y in enumerate(ys):
            direction = 1.0 if k % 2 == 0 else -1.0
            x_start, x_end = -direction * (0.9 * a - radius), direction * (0.9 * a - radius)
            pts += [(x_start, y), (x_end, y)]
            if k + 1 < passes:  # semicircular turn to the next pass
                phi = np.linspace(-math.pi / 2, math.pi / 2, 24)[1:-1]
                pts += [(x_end + direction * radius * math.cos(p), y + radius + radius * math.sin(p)) for p in phi]
        xy = _resample_by_arclength(np.array(pts), n) @ rot.T
        agl = agl_lo + (agl_hi - agl_lo) * (0.5 + 0.5 * np.sin(2 * math.pi * 2.5 * s + ph[0]))
        tilt_frac = 0.5 + 0.5 * np.sin(2 * math.pi * 4.0 * s + ph[1])
        params = {'shape': 'lawnmower', 'passes': passes, 'rotation_rad': theta}
    elif split == 'val':
        xy = np.stack([0.45 * a * np.sin(2 * math.pi * 2 * s), 0.8 * a * np.sin(2 * math.pi * s)], axis=1) @ rot.T
        agl = agl_lo + (agl_hi - agl_lo) * (0.5 + 0.4 * np.sin(2 * math.pi * 1.5 * s + ph[0]))
        tilt_frac = 0.5 + 0.5 * np.sin(2 * math.pi * 3.0 * s + ph[1])
        params = {'shape': 'lissajous 2:1 (figure eight)', 'rotation_rad': theta}
    elif split == 'test':
        w = 2 * math.pi * s
        xy = np.stack([0.6 * a * np.cos(w) + 0.25 * a * np.cos(4 * w + ph[2]),
                       0.6 * a * np.sin(w) + 0.25 * a * np.sin(4 * w + ph[2])], axis=1) @ rot.T
        # Altitudes mostly different from train: slow swings with a distinct phase/frequency.
        agl = agl_lo + (agl_hi - agl_lo) * (0.5 + 0.5 * np.cos(2 * math.pi * 1.25 * s + ph[0]))
        tilt_frac = 0.5 + 0.5 * np.cos(2 * math.pi * 2.0 * s + ph[1])
        params = {'shape': 'epitrochoid loops', 'rotation_rad': theta}
    else:
        raise AerialWorldError(f'unknown split {split!r}; known: {SPLITS}')
    scale = min(1.0, 0.98 * a / max(float(np.abs(xy).max()), 1e-9))  # rotated shapes stay in the area
    xy = xy * scale
    yaw = _smooth_heading(xy) + math.radians(35.0) * np.sin(2 * math.pi * 3.0 * s + ph[3])
    tilt = math.radians(cfg.tilt_max_deg) * tilt_frac
    roll = math.radians(cfg.roll_max_deg) * np.sin(2 * math.pi * 5.0 * s + ph[2])
    sun_az = rng.uniform(0, 2 * math.pi) + 0.4 * np.sin(2 * math.pi * s)
    sun_el = np.radians(rng.uniform(30, 60) + 8.0 * np.sin(2 * math.pi * 2 * s + ph[1]))
    sun = np.stack([np.cos(sun_el) * np.cos(sun_az), np.cos(sun_el) * np.sin(sun_az), np.sin(sun_el)], axis=1)
    return FlightPlan(split=split, kind=params['shape'], xy_m=xy, agl_m=agl, yaw_rad=yaw, tilt_rad=tilt,
                      roll_rad=roll, sun_dir=sun, params=params)


def latin_hypercube(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, d)`` Latin-hypercube sample of [0, 1)^d (``scipy.stats.qmc.LatinHypercube``).

    Each of the ``n`` equal bins of every dimension holds exactly one point (at a random place in
    its bin; bins paired at random across dimensions). Deterministic for the state of ``rng``.
    """
    if n < 1 or d < 1:
        raise AerialWorldError(f'a Latin hypercube needs n >= 1 points in d >= 1 dimensions, got n={n}, d={d}')
    return qmc.LatinHypercube(d, rng=rng).random(n)


def lhs_ranges(cfg: AerialWorldConfig, half_area_m: float) -> dict[str, tuple[float, float]]:
    """Range of each of :data:`LHS_DIMENSIONS` (metres / radians) for the LHS training views.

    x, y: the whole flight area (the val/test flights stay inside it); height above the ground
    *including* buildings: ``agl_range_m`` less the 1 m margin every flight keeps (the val/test
    flights plan heights from 5 m above the highest roofs to 10 m below the top of it, above the
    hills, so this reaches a little beyond them on both sides: defaults 51-299 m against ~80-290 m);
    heading: the full circle; tilt from nadir: 0 to ``tilt_max_deg``; roll:
    +/-``roll_max_deg`` (the flights' limits); sun: any azimuth, :data:`LHS_SUN_ELEVATION_DEG`.
    """
    lo, hi = cfg.agl_range_m
    a = float(half_area_m)
    roll = math.radians(cfg.roll_max_deg)
    return {
        'x_m': (-a, a),
        'y_m': (-a, a),
        'agl_m': (lo + 1.0, hi - 1.0),
        'heading_rad': (0.0, 2 * math.pi),
        'tilt_rad': (0.0, math.radians(cfg.tilt_max_deg)),
        'roll_rad': (-roll, roll),
        'sun_azimuth_rad': (0.0, 2 * math.pi),
        'sun_elevation_rad': (math.radians(LHS_SUN_ELEVATION_DEG[0]), math.radians(LHS_SUN_ELEVATION_DEG[1])),
    }


def _ranges_in_degrees(ranges: Mapping[str, tuple[float, float]]) -> dict[str, list[float]]:
    """``{'tilt_rad': (0, pi/4), 'x_m': ...}`` -> ``{'tilt_deg': [0.0, 45.0], 'x_m': ...}`` (for world.yaml)."""
    out: dict[str, list[float]] = {}
    for name, (lo, hi) in ranges.items():
        if name.endswith('_rad'):
            out[name[:-len('_rad')] + '_deg'] = [round(math.degrees(lo), 6), round(math.degrees(hi), 6)]
        else:
            out[name] = [round(float(lo), 6), round(float(hi), 6)]
    return out


def lhs_plan(n: int, cfg: AerialWorldConfig, half_area_m: float, seed: int, terrain: Terrain) -> FlightPlan:
    """``n`` independent training views sampled with a Latin hypercube (CrossLoc's LHS-sim).

    The unit hypercube of :func:`latin_hypercube` (generator seeded ``[seed, 2000]``) is scaled to
    :func:`lhs_ranges` over :data:`LHS_DIMENSIONS`. A view whose image border does not land on the
    terrain (the check :func:`plan_poses` applies) is rejected; the first Latin hypercube of ``n``
    views is kept minus its rejects, which are replaced by the first fitting views of further
    Latin hypercubes of ``n`` (at most :data:`LHS_MAX_ROUNDS` in all, else :class:`AerialWorldError`).
    ``plan_poses`` turns the plan into exactly the checked poses (no tilt capping needed).
    """
    if n < 1:
        raise AerialWorldError(f'lhs_plan needs n >= 1 views, got {n}')
    ranges = lhs_ranges(cfg, half_area_m)
    lo_v = np.array([ranges[k][0] for k in LHS_DIMENSIONS])
    span_v = np.array([ranges[k][1] - ranges[k][0] for k in LHS_DIMENSIONS])
    rng = np.random.default_rng([seed, 2000 + _SPLIT_ID['train']])
    rays_cam = _boundary_rays(cfg.K(), *cfg.size)
    kept: list[np.ndarray] = []  # per view: x, y, agl above the hills, heading, tilt, roll, sun az, sun el
    drawn = 0
    for _ in range(LHS_MAX_ROUNDS):
        for u in latin_hypercube(n, len(LHS_DIMENSIONS), rng):
            drawn += 1
            x_m, y_m, agl_m, heading_rad, tilt_rad, roll_rad, az_rad, el_rad = lo_v + u * span_v
            ground_m = float(terrain.field.height_at(np.array(x_m), np.array(y_m)))
            agl_hills_m = ground_m + agl_m - float(terrain.hills.height_at(np.array(x_m), np.array(y_m)))
            C = _camera_centre(terrain, cfg, x_m, y_m, agl_hills_m)
            if _fits(terrain.field, C, camera_rotation(heading_rad, tilt_rad, roll_rad), rays_cam):
                kept.append(np.array([x_m, y_m, agl_hills_m, heading_rad, tilt_rad, roll_rad, az_rad, el_rad]))
                if len(kept) == n:
                    break
        if len(kept) == n:
            break
    if len(kept) < n:
        raise AerialWorldError(f'only {len(kept)} of {drawn} Latin-hypercube training views see nothing but terrain, '
                               f'{n} needed; reduce agl_range_m, tilt_max_deg or flight_area_fraction')
    v = np.stack(kept)
    _LOG.debug('LHS training views: %d kept of %d drawn', n, drawn)
    sun = np.stack([np.cos(v[:, 7]) * np.cos(v[:, 6]), np.cos(v[:, 7]) * np.sin(v[:, 6]), np.sin(v[:, 7])], axis=1)
    params = {
        'shape': 'latin hypercube',
        'method': 'CrossLoc LHS-sim: independent views, scipy.stats.qmc.LatinHypercube over the ranges below',
        'rng_seed': [int(seed), 2000 + _SPLIT_ID['train']],
        'ranges': _ranges_in_degrees(ranges),
        'agl_reference': 'camera height above the ground including buildings',
        'tilt_reference': 'from nadir towards the heading (the image top, CCW from east)',
        'candidates': drawn,
        'rejected': drawn - n,
        'rejection': f'views whose image border leaves the terrain are dropped; the rest of the first Latin hypercube of '
                     f'{n} is kept and refilled with the first fitting views of further ones',
    }
    return FlightPlan(split='train', kind='latin hypercube', xy_m=v[:, :2].copy(), agl_m=v[:, 2].copy(),
                      yaw_rad=v[:, 3].copy(), tilt_rad=v[:, 4].copy(), roll_rad=v[:, 5].copy(), sun_dir=sun, params=params)


def camera_rotation(yaw_rad: float, tilt_rad: float, roll_rad: float = 0.0) -> np.ndarray:
    """R_world_camera of the optical frame (x right, y down, z forward).

    At tilt 0 the camera looks straight down with the image top towards ``yaw`` (CCW from east);
    ``tilt`` raises the optical axis towards that heading; ``roll`` rotates about the optical axis.
    """
    fwd = np.array([math.cos(yaw_rad), math.sin(yaw_rad), 0.0])
    up = np.array([0.0, 0.0, 1.0])
    z = -math.cos(tilt_rad) * up + math.sin(tilt_rad) * fwd
    y = -(math.cos(tilt_rad) * fwd + math.sin(tilt_rad) * up)
    x = np.cross(y, z)
    R = np.stack([x, y, z], axis=1)
    if roll_rad:
        R = R @ transforms3d.axangles.axangle2mat([0.0, 0.0, 1.0], roll_rad)
    return R


def _boundary_rays(K: np.ndarray, width: int, height: int) -> np.ndarray:
    rays = pixel_rays_camera(K, width, height).reshape(height, width, 3)
    step = max(1, width // 16)
    edge = [rays[0, ::step], rays[0, -1:], rays[:, 0][::step], rays[:, -1][::step], rays[-1, ::step], rays[-1:, -1]]
    return np.concatenate(edge, axis=0)


def _fits(field: HeightField, C: np.ndarray, R: np.ndarray, rays_cam: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(field.cast(C, rays_cam @ R.T))))


def _camera_centre(terrain: Terrain, cfg: AerialWorldConfig, x_m: float, y_m: float, agl_hills_m: float) -> np.ndarray:
    """Camera centre ``agl_hills_m`` above the hills, kept 1 m inside ``agl_range_m`` above the ground (buildings included)."""
    lo, hi = cfg.agl_range_m
    ground = float(terrain.field.height_at(np.array(x_m), np.array(y_m)))
    z = float(terrain.hills.height_at(np.array(x_m), np.array(y_m))) + float(agl_hills_m)
    z = min(max(z, ground + lo + 1.0), ground + hi - 1.0)
    return np.array([float(x_m), float(y_m), z])


def plan_poses(plan: FlightPlan, terrain: Terrain, cfg: AerialWorldConfig) -> list[np.ndarray]:
    """4x4 camera-to-world poses; the tilt is capped so that the image border stays on the terrain."""
    rays_cam = _boundary_rays(cfg.K(), *cfg.size)
    poses = []
    for k in range(len(plan.xy_m)):
        C = _camera_centre(terrain, cfg, float(plan.xy_m[k, 0]), float(plan.xy_m[k, 1]), float(plan.agl_m[k]))
        tilt = float(plan.tilt_rad[k])
        R = camera_rotation(float(plan.yaw_rad[k]), tilt, float(plan.roll_rad[k]))
        if not _fits(terrain.field, C, R, rays_cam):
            ok, bad = 0.0, tilt
            for _ in range(12):
                mid = 0.5 * (ok + bad)
                if _fits(terrain.field, C, camera_rotation(float(plan.yaw_rad[k]), mid, float(plan.roll_rad[k])), rays_cam):
                    ok = mid
                else:
                    bad = mid
            if ok == 0.0 and not _fits(terrain.field, C, camera_rotation(float(plan.yaw_rad[k]), 0.0, float(plan.roll_rad[k])), rays_cam):
                raise AerialWorldError(f'{plan.split} frame {k}: even a nadir view at {C.tolist()} leaves the terrain; '
                                       'reduce the altitude range or flight area')
            R = camera_rotation(float(plan.yaw_rad[k]), ok, float(plan.roll_rad[k]))
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = C
        poses.append(T)
    return poses


# ---------------------------------------------------------------------------------------------
# Geo-reference
# ---------------------------------------------------------------------------------------------


def _geo_mapping(geo: str | Path | Mapping[str, Any] | None, cfg: AerialWorldConfig) -> dict[str, Any]:
    if geo is None:
        mapping: Any = {'crs': 'EPSG:2056', 'offset': [float(v) for v in cfg.origin_lv95]}
    elif isinstance(geo, Mapping):
        mapping = dict(geo)
    else:
        path = Path(geo)
        try:
            mapping = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise AerialWorldError(f'{path}: cannot read geo-reference: {exc}') from exc
        if not isinstance(mapping, dict):
            raise AerialWorldError(f'{path}: geo-reference must be a YAML mapping')
    try:  # GeoReference validates and normalises the mapping
        return dict(GeoReference.from_mapping(mapping).to_mapping())
    except (ValueError, KeyError, TypeError) as exc:
        raise AerialWorldError(f'invalid geo-reference {mapping!r}: {exc}') from exc


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _write_frame(split_dir: Path, stem: str, rgb: np.ndarray, T: np.ndarray, focal_px: float,
                 depth_HW: np.ndarray, coords_HW3: np.ndarray) -> None:
    if not cv2.imwrite(str(split_dir / 'rgb' / f'{stem}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                       [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f'cannot write {split_dir / "rgb" / f"{stem}.png"}')
    np.savetxt(split_dir / 'poses' / f'{stem}.txt', T, fmt='%.10f')
    (split_dir / 'calibration' / f'{stem}.txt').write_text(f'{focal_px:.10f}\n')
    np.save(split_dir / 'depth' / f'{stem}.npy', depth_HW.astype(np.float32))
    s = INIT_STRIDE_PX
    h, w = depth_HW.shape
    sub = coords_HW3[s // 2: (h // s) * s: s, s // 2: (w // s) * s: s]  # pixel (8j+4, 8i+4)
    np.save(split_dir / 'init' / f'{stem}.npy', np.ascontiguousarray(np.nan_to_num(sub, nan=0.0).transpose(2, 0, 1)).astype(np.float32))


def generate(out: str | Path, *, seed: int = 0, frames: int | None = None, size: tuple[int, int] | None = None,
             orthophoto: str | Path | None = None, elevation: str | Path | None = None,
             geo: str | Path | Mapping[str, Any] | None = None, dem_spacing_m: float | None = None,
             config: AerialWorldConfig | None = None, photo_dir: str | Path = DEFAULT_PHOTO_DIR,
             write_bag: bool = True, train_sampling: str | None = None) -> Path:
    """Generate the aerial world into ``out`` (created; must be empty or absent). Returns ``out``.

    ``frames`` overrides the number of training frames (val/test scale with it), ``size`` the
    image (W, H), ``train_sampling`` how the training views are made (``'lhs'``, the default:
    Latin-hypercube views; ``'lawnmower'``: one lawnmower flight; see :func:`flight_plan`).
    ``orthophoto`` (north-up image), ``elevation`` (.npy 2-D float array, metres in the scene
    frame's z, row 0 = north, spacing ``dem_spacing_m``, centred on the scene origin) and ``geo``
    (geo.yaml path or mapping, see ``vizloc_ros.geodesy.GeoReference``) replace the generated
    ones; the orthophoto is stretched over the elevation grid's extent.
    """
    t_start = time.perf_counter()
    cfg = config or AerialWorldConfig()
    if size is not None:
        cfg = replace(cfg, size=(int(size[0]), int(size[1])))
    if frames is not None:
        cfg = cfg.with_train_frames(int(frames))
    if dem_spacing_m is not None:
        cfg = replace(cfg, dem_spacing_m=float(dem_spacing_m))
    if train_sampling is not None:
        cfg = replace(cfg, train_sampling=str(train_sampling))
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise AerialWorldError(f'{out}: output directory exists and is not empty')
    geo_map = _geo_mapping(geo, cfg)
    rng = np.random.default_rng([seed, 7])
    terrain = _user_terrain(Path(elevation), cfg.dem_spacing_m) if elevation is not None else build_terrain(cfg, rng)
    if orthophoto is not None:
        texture, tex_source = _user_orthophoto(Path(orthophoto))
    else:
        texture, tex_source = build_orthophoto(cfg, terrain, np.random.default_rng([seed, 8]), Path(photo_dir))
    renderer = TerrainRenderer(terrain.field, texture)
    f = terrain.field
    half_area = cfg.flight_area_fraction * min(f.x1_m - f.x0_m, f.y1_m - f.y0_m) / 2.0

    out.mkdir(parents=True, exist_ok=True)
    (out / 'terrain').mkdir()
    np.save(out / 'terrain' / 'elevation.npy', np.flipud(f.heights_m).astype(np.float32))
    cv2.imwrite(str(out / 'terrain' / 'orthophoto.jpg'), cv2.cvtColor(texture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    (out / 'geo.yaml').write_text(yaml.safe_dump(geo_map, sort_keys=True))

    counts = {'train': cfg.frames_train, 'val': cfg.frames_val, 'test': cfg.frames_test}
    K = cfg.K()
    w, h = cfg.size
    photometric = PhotometricConfig()
    splits_meta: dict[str, Any] = {}
    for split in SPLITS:
        plan = flight_plan(split, counts[split], cfg, half_area, seed, terrain)
        poses = plan_poses(plan, terrain, cfg)
        split_dir = out / split
        for sub in ('rgb', 'poses', 'calibration', 'depth', 'init'):
            (split_dir / sub).mkdir(parents=True)
        agl = []
        tilts = []
        for k, T in enumerate(poses):
            res = renderer.render(T, K, w, h, plan.sun_dir[k])
            if not res.hit_HW.all():
                raise AerialWorldError(f'{split} frame {k}: {int((~res.hit_HW).sum())} pixels see no terrain')
            frame_rng = np.random.default_rng([seed, _SPLIT_ID[split], k])
            rgb = apply_photometric(res.rgb_HW3, frame_rng, cfg.photometric_strength, photometric)
            _write_frame(split_dir, f'frame_{k:05d}', rgb, T, cfg.focal_px, res.depth_HW, res.coords_HW3)
            agl.append(T[2, 3] - float(f.height_at(np.array(T[0, 3]), np.array(T[1, 3]))))
            tilts.append(math.degrees(math.acos(float(np.clip(-T[2, 2], -1.0, 1.0)))))
        splits_meta[split] = {
            'frames': counts[split], 'trajectory': dict(plan.params),
            'agl_m': [round(float(min(agl)), 3), round(float(max(agl)), 3)],
            'tilt_deg': [round(float(min(tilts)), 3), round(float(max(tilts)), 3)],
        }
        _LOG.info('%s: %d frames written (%s)', split, counts[split], plan.kind)

    world = {
        'generator': GENERATOR,
        'version': GENERATOR_VERSION,
        'seed': int(seed),
        'scene_frame': 'geo.yaml local frame: x east, y north, z up, metres',
        'camera': {'width': w, 'height': h, 'focal_px': cfg.focal_px, 'hfov_deg': cfg.hfov_deg,
                   'principal_point': 'image centre (W/2, H/2)', 'optical_frame': 'x right, y down, z forward'},
        'layout': {
            'rgb': 'png, RGB after photometric variation',
            'poses': '4x4 camera-to-world (scene frame)',
            'calibration': 'focal length in pixels',
            'depth': 'npy float32 z-depth along the optical axis, metres, full resolution',
            'init': f'npy float32 scene coordinates 3 x H/{INIT_STRIDE_PX} x W/{INIT_STRIDE_PX}; cell (i, j) = pixel '
                    f'(u, v) = ({INIT_STRIDE_PX}j + {INIT_STRIDE_PX // 2}, {INIT_STRIDE_PX}i + {INIT_STRIDE_PX // 2})',
            'init_stride_px': INIT_STRIDE_PX,
        },
        'terrain': {'extent_m': [f.x0_m, f.y0_m, f.x1_m, f.y1_m], 'dem_spacing_m': f.spacing_m,
                    'height_range_m': [round(f.h_min_m, 3), round(f.h_max_m, 3)], 'source': dict(terrain.source),
                    'elevation_file': 'terrain/elevation.npy (float32, scene z, row 0 = north)'},
        'texture': {'size_px': list(texture.shape[1::-1]), 'source': tex_source, 'file': 'terrain/orthophoto.jpg'},
        'config': yaml_plain(asdict(cfg)),
        'photometric': {'strength': cfg.photometric_strength, 'config': photometric.to_mapping()},
        'splits': splits_meta,
        'eval_bag': f'{EVAL_BAG_NAME} (test split)' if write_bag else None,
    }
    (out / 'world.yaml').write_text(yaml.safe_dump(yaml_plain(world), sort_keys=False))
    if write_bag:
        write_eval_bag(out)
    _LOG.info('aerial world written to %s in %.1f s', out, time.perf_counter() - t_start)
    return out


def write_eval_bag(root: str | Path, split: str = 'test') -> Path:
    """Write ``root/eval_bag`` from a written split (fix from geo.yaml, pose ground truth, no room)."""
    from vizloc_ros.eval_bag import EvalSample, write_evaluation_bag
    from vizloc_ros.types import CameraIntrinsics

    from vizloc_training.datasets.scene_coordinates import SceneCoordinateDataset

    root = Path(root)
    dataset = SceneCoordinateDataset(root, split, load_depth=False, load_coords=False)
    geo = dataset.geo
    if geo is None:
        raise AerialWorldError(f'{root / "geo.yaml"}: needed for the evaluation bag fixes')

    def samples() -> Iterator[EvalSample]:
        for k in range(len(dataset)):
            s = dataset[k]
            lat, lon, alt = geo.scene_to_wgs84(s.T_world_camera[:3, 3].reshape(1, 3))
            h, w = s.rgb_HW3.shape[:2]
            yield EvalSample(
                stamp_ns=_BAG_START_NS + k * _BAG_PERIOD_NS, rgb_HW3=s.rgb_HW3,
                camera=CameraIntrinsics(K=s.K, width=w, height=h), frame_id='camera',
                fix_lla=(float(np.ravel(lat)[0]), float(np.ravel(lon)[0]), float(np.ravel(alt)[0])),
                T_map_camera=s.T_world_camera, room=None,
            )

    return write_evaluation_bag(root / EVAL_BAG_NAME, samples())
