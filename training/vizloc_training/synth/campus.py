"""``vizloc-synth campus``: an outdoor campus walked by a ground-level camera, in the GPS format.

A ~200 x 200 m area (default) at a geographic origin (default 31.262 N 34.804 E, the seed-001
campus) holds box buildings of varied footprints and heights with photo facades, trees and
poles on a ground texture of grass and paved paths. A camera at ~1.6 m walks smooth routes
looking around (varied headings): the training split is many short walks that cover the walkable
area densely (each starts where earlier walks have not been; the camera turns all the way round
every ``spin_m_train`` metres), val and test are one long walk each (their own start, route and
headings) through the same area; ``world.yaml`` records how close val/test positions come to
training positions (``coverage``). Each frame gets its own sun direction and photometric variation
(exposure, colour, blur, noise).

Output (``DIR``)::

    DIR/images/<split>_<k>.jpg     JPEG with EXIF GPS (lat, lon, alt)
    DIR/gt.csv                     image,lat,lon,alt,split  (vizloc_training.datasets.gps)
    DIR/poses.csv                  image,x,y,z,qx,qy,qz,qw  (T_map_camera; map = ENU at the origin)
    DIR/refdb/<uid>/image.jpg + metadata.json + depth.png (uint16 mm), DIR/refdb/manifest.json (sha256s, geo)
                                   (image.jpg hard-linked to images/<uid>.jpg) reference database of the train frames (vizloc_plugins.refdb)
    DIR/world.yaml                 generator, version, seed, origin, buildings, textures, camera
    DIR/eval_bag/                  rosbag2 evaluation bag of the test split

Map frame: local ENU at ``origin`` (x east, y north, z up, metres); altitudes are WGS84
ellipsoidal heights.
"""
from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import cv2
import numpy as np
import yaml

from vizloc_ros.eval_bag import EVAL_BAG_NAME
from vizloc_plugins.refdb import update_manifest
from vizloc_ros.types import CameraIntrinsics

from ..datasets.exif import encode_jpeg_with_gps
from ..datasets.reference_db import write_reference_entry
from vizloc_ros.bundle import yaml_plain

from .boxworld import WalkWorldConfig, Box, BoxWorld, GroundPlane, Lighting, camera_pose, catmull_rom, decode_image
from .photometric import PhotometricConfig, apply_photometric
from .textures import TextureSource

__all__ = ['GENERATOR', 'GENERATOR_VERSION', 'CampusWorldConfig', 'CampusWorldError', 'Campus', 'build_campus',
           'route', 'training_walks', 'nearest_distances_m', 'generate']

_LOG = logging.getLogger(__name__)

GENERATOR = 'vizloc_training.synth.campus'
GENERATOR_VERSION = 2
SPLITS = ('train', 'val', 'test')
_SPLIT_ID = {'train': 0, 'val': 1, 'test': 2}
_BAG_START_NS = 1_700_000_000 * 10**9
_BAG_PERIOD_NS = 100_000_000
_OCC_RES_M = 1.0  # occupancy grid resolution for route planning
_GROUND_EXTENT = 1.3  # the ground image covers this multiple of the area side (repeats beyond)
_GROUND_PX = 2048  # ground image size: 0.13 m per pixel for the default 200 m area


class CampusWorldError(ValueError):
    """A campus world configuration or output directory that cannot be used."""


@dataclass(frozen=True)
class CampusWorldConfig(WalkWorldConfig):
    """Everything that shapes the campus world (recorded in world.yaml)."""

    error_type: ClassVar[type[Exception]] = CampusWorldError

    size: tuple[int, int] = (320, 240)  # image (W, H) px
    hfov_deg: float = 70.0
    area_m: float = 200.0  # side of the square area centred on the origin
    buildings: int = 34
    trees: int = 45
    poles: int = 20
    camera_height_m: float = 1.6
    step_m: float = 1.1  # mean distance between consecutive frames along a route
    clearance_m: float = 2.5  # routes keep this far from buildings
    frames_train: int = 3000
    walk_frames_train: int = 40  # frames per training walk (many short walks spread over the area)
    spin_m_train: float = 16.0  # a training walk's camera turns once around every this many metres (0: no spin)
    frames_val: int = 340
    frames_test: int = 340
    photometric_strength: float = 1.0
    origin: tuple[float, float, float] = (31.262, 34.804, 300.0)  # lat, lon, ellipsoidal alt of the map origin
    jpeg_quality: int = 90
    write_refdb: bool = True

    def __post_init__(self) -> None:
        w, h = self.size
        if w < 8 or h < 8:
            raise CampusWorldError(f'image size must be at least 8x8, got {w}x{h}')
        if not 0 < self.hfov_deg < 150:
            raise CampusWorldError(f'hfov_deg must be in (0, 150), got {self.hfov_deg}')
        if self.area_m < 40:
            raise CampusWorldError(f'area_m must be >= 40, got {self.area_m}')
        for name in ('frames_train', 'frames_val', 'frames_test', 'walk_frames_train'):
            if getattr(self, name) < 1:
                raise CampusWorldError(f'{name} must be >= 1, got {getattr(self, name)}')




def _is_reversal(waypoints: Sequence[np.ndarray], q: np.ndarray, cos_limit: float) -> bool:
    """True if going from the last waypoint to ``q`` turns back on the previous leg (cosine < cos_limit)."""
    if len(waypoints) < 2:
        return False
    p = waypoints[-1]
    prev = p - waypoints[-2]
    cosang = np.dot(prev, q - p) / (np.linalg.norm(prev) * np.linalg.norm(q - p) + 1e-9)
    return bool(cosang < cos_limit)

@dataclass(frozen=True)
class Campus:
    world: BoxWorld
    footprints: tuple[tuple[float, float, float, float, float], ...]  # x0, y0, x1, y1, height per building
    free_GW: np.ndarray  # bool grid, True = at least clearance_m from obstacles (route waypoints, straight legs)
    safe_GW: np.ndarray  # bool grid, True = at least 1 m from obstacles (every camera position)
    half_m: float

    def _lookup(self, grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        n = grid.shape[0]
        i = np.floor((np.asarray(y) + self.half_m) / _OCC_RES_M).astype(np.int64)
        j = np.floor((np.asarray(x) + self.half_m) / _OCC_RES_M).astype(np.int64)
        inside = (i >= 0) & (i < n) & (j >= 0) & (j < n)
        return inside & grid[np.clip(i, 0, n - 1), np.clip(j, 0, n - 1)]

    def is_free(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._lookup(self.free_GW, x, y)

    def is_safe(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._lookup(self.safe_GW, x, y)


def build_campus(cfg: CampusWorldConfig, rng: np.random.Generator, source: TextureSource) -> Campus:
    """Buildings, trees, poles and the ground texture; deterministic for ``rng``."""
    half = cfg.area_m / 2
    textures: list[np.ndarray] = []

    def add(kind: str) -> int:
        textures.append(source.make(rng, kind, size_px=256 if kind == 'facade' else None))
        return len(textures) - 1

    boxes: list[Box] = []
    footprints: list[tuple[float, float, float, float, float]] = []
    roof = add('path')
    tries = 0
    while len(footprints) < cfg.buildings and tries < cfg.buildings * 50:
        tries += 1
        w, d = rng.uniform(10, 36, size=2)
        cx, cy = rng.uniform(-half + 8, half - 8, size=2)
        x0, y0, x1, y1 = cx - w / 2, cy - d / 2, cx + w / 2, cy + d / 2
        if x0 < -half + 5 or y0 < -half + 5 or x1 > half - 5 or y1 > half - 5:
            continue
        gap = 9.0  # streets at least this wide
        if any(x0 < f[2] + gap and f[0] < x1 + gap and y0 < f[3] + gap and f[1] < y1 + gap for f in footprints):
            continue
        height = float(rng.uniform(6, 28))
        footprints.append((float(x0), float(y0), float(x1), float(y1), height))
        front, side = add('facade'), add('facade')
        # Stretched facade photos: each building face shows its own picture.
        boxes.append(Box((x0, y0, 0.0), (x1, y1, height), (side, side, front, front, roof, roof), tile_m=0.0,
                         tag='building'))
    n = int(round(cfg.area_m / _OCC_RES_M))
    occ = np.zeros((n, n), np.uint8)

    def mark(x0: float, y0: float, x1: float, y1: float) -> None:
        j0, j1 = int((x0 + half) / _OCC_RES_M), int(math.ceil((x1 + half) / _OCC_RES_M))
        i0, i1 = int((y0 + half) / _OCC_RES_M), int(math.ceil((y1 + half) / _OCC_RES_M))
        occ[max(i0, 0):max(i1, 0), max(j0, 0):max(j1, 0)] = 1

    for x0, y0, x1, y1, _ in footprints:
        mark(x0, y0, x1, y1)
    foliage = [add('foliage') for _ in range(4)]
    bark = add('bark')
    pole_tex = add('path')
    placed = 0
    for _ in range(cfg.trees * 20):
        if placed >= cfg.trees:
            break
        x, y = rng.uniform(-half + 3, half - 3, size=2)
        r = float(rng.uniform(1.2, 2.5))
        j, i = int((x + half) / _OCC_RES_M), int((y + half) / _OCC_RES_M)
        k = int(math.ceil(r + 3))
        if occ[max(i - k, 0):i + k, max(j - k, 0):j + k].any():
            continue
        trunk_h = float(rng.uniform(2.2, 3.5))
        boxes.append(Box((x - 0.2, y - 0.2, 0.0), (x + 0.2, y + 0.2, trunk_h), (bark,) * 6, tile_m=1.0, tag='trunk'))
        f = foliage[int(rng.integers(len(foliage)))]
        boxes.append(Box((x - r, y - r, trunk_h), (x + r, y + r, trunk_h + float(rng.uniform(2.0, 4.0))), (f,) * 6,
                         tile_m=2.0, tag='crown'))
        mark(x - 0.3, y - 0.3, x + 0.3, y + 0.3)
        placed += 1
    for _ in range(cfg.poles):
        x, y = rng.uniform(-half + 3, half - 3, size=2)
        j, i = int((x + half) / _OCC_RES_M), int((y + half) / _OCC_RES_M)
        if occ[max(i - 3, 0):i + 3, max(j - 3, 0):j + 3].any():
            continue
        boxes.append(Box((x - 0.1, y - 0.1, 0.0), (x + 0.1, y + 0.1, float(rng.uniform(4, 7))), (pole_tex,) * 6,
                         tile_m=2.0, tag='pole'))
        mark(x - 0.1, y - 0.1, x + 0.1, y + 0.1)
    ground_tex = _ground_texture(cfg, rng, source, footprints, add)
    textures.append(ground_tex)
    ground_extent = cfg.area_m * _GROUND_EXTENT
    ground = GroundPlane(texture=len(textures) - 1, tile_m=ground_extent,
                         origin_xy=(-ground_extent / 2, ground_extent / 2))
    # Walkable: not within clearance of any obstacle, inside the area with a margin.
    k = int(math.ceil(cfg.clearance_m / _OCC_RES_M))
    blocked = cv2.dilate(occ, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    free = blocked == 0
    m = int(4 / _OCC_RES_M)
    free[:m], free[-m:], free[:, :m], free[:, -m:] = False, False, False, False
    safe = cv2.dilate(occ, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))) == 0
    return Campus(BoxWorld(boxes, textures, ground=ground), tuple(footprints), free, safe, half)


def lay_tiles(tile: np.ndarray, size_px: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size_px`` square (float32) laid with copies of the square ``tile``, each rolled by its own offset
    and turned to one of the square's eight orientations. Not periodic: a ground that repeats exactly
    every tile makes local features ambiguous by one tile (measured: most bad retrieval PnP poses on the
    campus sat exactly one 6 m tile off); real lawns and paving do not repeat like that."""
    n = tile.shape[0]
    if tile.shape[1] != n:
        raise ValueError(f'tile must be square, got {tile.shape[:2]}')
    reps = size_px // n + 1
    out = np.empty((reps * n, reps * n) + tile.shape[2:], np.float32)
    for i in range(reps):
        for j in range(reps):
            dy, dx = rng.integers(0, n, size=2)
            k, flip = rng.integers(0, 4), rng.integers(0, 2)
            t = np.rot90(np.roll(tile, (int(dy), int(dx)), axis=(0, 1)), k=int(k))
            out[i * n:(i + 1) * n, j * n:(j + 1) * n] = t[:, ::-1] if flip else t
    return out[:size_px, :size_px]


def _ground_texture(cfg: CampusWorldConfig, rng: np.random.Generator, source: TextureSource,
                    footprints: Sequence[tuple[float, ...]], add: Any) -> np.ndarray:
    """One ground image for the whole area (row 0 = north): grass patches, paved paths, plazas."""
    S = _GROUND_PX
    extent = cfg.area_m * _GROUND_EXTENT
    px_per_m = S / extent
    grass = [source.make(rng, 'grass') for _ in range(2)]
    paving = source.make(rng, 'path')
    tile_px = max(8, int(round(6.0 * px_per_m)))  # one grass texture covers ~6 m
    tile_rng = np.random.default_rng(int(rng.integers(2**32)))

    def tiled(tex: np.ndarray) -> np.ndarray:
        return lay_tiles(cv2.resize(tex, (tile_px, tile_px), interpolation=cv2.INTER_AREA), S, tile_rng)

    g0, g1 = tiled(grass[0]), tiled(grass[1])
    blend = cv2.resize(rng.uniform(0, 1, size=(12, 12)).astype(np.float32), (S, S), interpolation=cv2.INTER_CUBIC)
    ground = g0 * blend[..., None] + g1 * (1 - blend[..., None])
    mask = np.zeros((S, S), np.uint8)

    def to_px(x: float, y: float) -> tuple[int, int]:
        return int(round((x + extent / 2) * px_per_m)), int(round((extent / 2 - y) * px_per_m))

    for x0, y0, x1, y1, _ in footprints:  # paved plaza ring around every building
        cv2.rectangle(mask, to_px(x0 - 3, y1 + 3), to_px(x1 + 3, y0 - 3), 255, -1)
    half = cfg.area_m / 2
    for _ in range(14):  # paths across the campus
        a = rng.uniform(-half, half, size=2)
        b = rng.uniform(-half, half, size=2)
        cv2.line(mask, to_px(*a), to_px(*b), 255, max(1, int(round(3.0 * px_per_m))))
    pave = tiled(paving)
    sel = mask > 0
    ground[sel] = pave[sel]
    return np.clip(ground, 0, 255).astype(np.uint8)


def _line_free(campus: Campus, a: np.ndarray, b: np.ndarray) -> bool:
    n = max(2, int(np.linalg.norm(b - a) / 0.5))
    s = np.linspace(0, 1, n)[:, None]
    pts = a + s * (b - a)
    return bool(campus.is_free(pts[:, 0], pts[:, 1]).all())


def _free_xy(campus: Campus) -> np.ndarray:
    free_ij = np.argwhere(campus.free_GW)
    if free_ij.size == 0:
        raise CampusWorldError('no walkable space in the campus')
    return (free_ij[:, ::-1] + 0.5) * _OCC_RES_M - campus.half_m


def route(campus: Campus, n_frames: int, rng: np.random.Generator, cfg: CampusWorldConfig) -> list[np.ndarray]:
    """``n_frames`` camera poses (T_map_camera) along one coverage-seeking smooth walk (val, test)."""
    half = campus.half_m
    cell = 10.0
    nc = int(math.ceil(2 * half / cell))
    coverage = np.zeros((nc, nc))

    def cov_cell(p: np.ndarray) -> tuple[int, int]:
        return (min(nc - 1, max(0, int((p[1] + half) / cell))), min(nc - 1, max(0, int((p[0] + half) / cell))))

    free_xy = _free_xy(campus)
    p = free_xy[int(rng.integers(len(free_xy)))]
    waypoints = [p]
    length = 0.0
    target = n_frames * cfg.step_m + 10.0
    stuck = 0
    goal = p
    goal_legs = 0
    while length < target:
        if np.linalg.norm(goal - p) < 15.0 or goal_legs > 12:
            # Next goal: a free spot in one of the least-covered cells (exploration across the area).
            cand = free_xy[rng.integers(len(free_xy), size=64)]
            cov = np.array([coverage[cov_cell(q)] for q in cand]) + rng.uniform(0, 0.5, size=len(cand))
            goal = cand[int(np.argmin(cov - 0.002 * np.linalg.norm(cand - p, axis=1)))]
            goal_legs = 0
        best, best_score = None, np.inf
        for _ in range(16):
            ang = rng.uniform(0, 2 * np.pi)
            dist = rng.uniform(8, 30)
            q = p + dist * np.array([math.cos(ang), math.sin(ang)])
            if not _line_free(campus, p, q):
                continue
            score = (np.linalg.norm(goal - q) / 10.0 + coverage[cov_cell(q)] + 0.3 * coverage[cov_cell((p + q) / 2)]
                     + rng.uniform(0, 0.5))
            score += 0.8 * _is_reversal(waypoints, q, cos_limit=-0.5)  # avoid sharp reversals
            if score < best_score:
                best, best_score = q, score
        if best is None:
            stuck += 1
            if stuck > 50:
                raise CampusWorldError('route planning is stuck (area too crowded)')
            continue
        stuck = 0
        goal_legs += 1
        n = max(2, int(np.linalg.norm(best - p) / 2))
        for s in np.linspace(0, 1, n):
            coverage[cov_cell(p + s * (best - p))] += 1
        length += float(np.linalg.norm(best - p))
        waypoints.append(best)
        p = best
    return _poses_along(campus, np.asarray(waypoints), n_frames, rng, cfg)


def training_walks(campus: Campus, n_frames: int, rng: np.random.Generator,
                   cfg: CampusWorldConfig) -> list[list[np.ndarray]]:
    """``n_frames`` training poses as many short smooth walks that cover the walkable area densely.

    Farthest-point (blue-noise) coverage on a 1 m raster of the walked ground: every walk starts at
    the walkable spot farthest from all earlier training walks, and each of its legs (5-20 m,
    straight and obstacle-free) is the one of 16 random candidates that runs furthest from the
    ground already walked. Walks have ``cfg.walk_frames_train`` frames (the last one fewer), their
    own heading pattern, and turn all the way round every ``cfg.spin_m_train`` metres, so every
    place is seen from several walks and in all directions.
    """
    n_grid = campus.free_GW.shape[0]
    half = campus.half_m
    free_xy = _free_xy(campus)
    walked = np.zeros(campus.free_GW.shape, np.uint8)  # 1 = on a training walk (1 m raster)
    cap_m = 15.0  # farther than this from the walked ground counts as equally unexplored

    def distance_map() -> np.ndarray:
        if not walked.any():
            return np.full(walked.shape, cap_m, np.float32)
        return np.minimum(cv2.distanceTransform((walked == 0).astype(np.uint8), cv2.DIST_L2, 5) * _OCC_RES_M, cap_m)

    def px(p: np.ndarray) -> tuple[int, int]:
        return (int(np.clip((p[0] + half) / _OCC_RES_M, 0, n_grid - 1)),
                int(np.clip((p[1] + half) / _OCC_RES_M, 0, n_grid - 1)))

    def dist_at(dist: np.ndarray, pts: np.ndarray) -> np.ndarray:
        j = np.clip(((pts[:, 0] + half) / _OCC_RES_M).astype(np.int64), 0, n_grid - 1)
        i = np.clip(((pts[:, 1] + half) / _OCC_RES_M).astype(np.int64), 0, n_grid - 1)
        return dist[i, j]

    per_walk = max(1, int(cfg.walk_frames_train))
    sizes = [per_walk] * (n_frames // per_walk) + ([n_frames % per_walk] if n_frames % per_walk else [])
    walks: list[list[np.ndarray]] = []
    for n_walk in sizes:
        for _attempt in range(20):
            walked_before = walked.copy()
            dist = distance_map()
            p = free_xy[int(np.argmax(dist_at(dist, free_xy) + rng.uniform(0, 1.0, size=len(free_xy))))]
            waypoints = [p]
            length, target = 0.0, n_walk * cfg.step_m + 2.0
            stuck = 0
            while length < target and stuck <= 30:
                best, best_score = None, np.inf
                for _ in range(16):
                    ang = rng.uniform(0, 2 * np.pi)
                    q = p + rng.uniform(5, 20) * np.array([math.cos(ang), math.sin(ang)])
                    if not _line_free(campus, p, q):
                        continue
                    along = p + np.linspace(0.25, 1, 8)[:, None] * (q - p)
                    score = -float(dist_at(dist, along).mean()) + rng.uniform(0, 1.0)
                    score += 6.0 * _is_reversal(waypoints, q, cos_limit=-0.3)  # no sharp reversals
                    if score < best_score:
                        best, best_score = q, score
                if best is None:
                    stuck += 1
                    continue
                cv2.line(walked, px(p), px(best), 1, 1)
                dist = distance_map()
                length += float(np.linalg.norm(best - p))
                waypoints.append(best)
                p = best
            if length >= target:
                break
            walked[:] = walked_before
            cv2.circle(walked, px(waypoints[0]), 2, 1, -1)  # a pocket too small to walk: do not start there again
        else:
            raise CampusWorldError('training route planning is stuck (area too crowded)')
        walks.append(_poses_along(campus, np.asarray(waypoints), n_walk, rng, cfg, spin_m=cfg.spin_m_train))
    return walks


def _poses_along(campus: Campus, P: np.ndarray, n_frames: int, rng: np.random.Generator,
                 cfg: CampusWorldConfig, spin_m: float = 0.0) -> list[np.ndarray]:
    """``n_frames`` poses along a smooth curve through the waypoints ``P``: every ~``cfg.step_m``
    from its start, looking around the walking direction (``spin_m`` > 0: the camera also turns
    once around every ``spin_m`` metres, clockwise or counter-clockwise, so that nearby frames
    see the place in all directions)."""
    # Dense spline, then frames at uniform arc length with a little jitter. A spline segment that
    # cuts a corner too close to an obstacle is replaced by its straight (clear) leg.
    s_dense = np.linspace(0, len(P) - 1, (len(P) - 1) * 40 + 1)
    pos_d, _ = catmull_rom(P, s_dense)
    seg_d = np.minimum(np.floor(s_dense).astype(np.int64), len(P) - 2)
    bad_seg = np.unique(seg_d[~campus.is_safe(pos_d[:, 0], pos_d[:, 1])])
    straight = np.isin(seg_d, bad_seg)
    lin = P[seg_d] + (s_dense - seg_d)[:, None] * (P[seg_d + 1] - P[seg_d])
    pos_d[straight] = lin[straight]
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pos_d, axis=0), axis=1))])
    step = min(cfg.step_m, arc[-1] / (n_frames + 1))
    a = (np.arange(n_frames) + 0.5 + rng.uniform(-0.3, 0.3, size=n_frames)) * step
    s = np.interp(a, arc, s_dense)
    pos, der = catmull_rom(P, s)
    seg = np.minimum(np.floor(s).astype(np.int64), len(P) - 2)
    use_lin = np.isin(seg, bad_seg)
    pos[use_lin] = (P[seg] + (s - seg)[:, None] * (P[seg + 1] - P[seg]))[use_lin]
    der[use_lin] = (P[seg + 1] - P[seg])[use_lin]
    # Walking direction, smoothed over a few frames: a straight-leg corner turns the view over
    # several frames rather than between two.
    heading = np.unwrap(np.arctan2(der[:, 1], der[:, 0]))
    if n_frames > 1:
        kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
        heading = np.convolve(np.pad(heading, 6, mode='edge'), kernel / kernel.sum(), mode='valid')
    ph = rng.uniform(0, 2 * np.pi, size=5)
    u = a / 6.0
    look = 1.4 * np.sin(0.21 * u + ph[0]) + 0.6 * np.sin(0.67 * u + ph[1])
    yaw = heading + look
    if spin_m > 0:
        yaw = yaw + rng.choice([-1.0, 1.0]) * 2 * np.pi * a / spin_m
    pitch = 0.04 + 0.05 * np.sin(0.5 * u + ph[2])
    roll = 0.025 * np.sin(0.9 * u + ph[3])
    z = cfg.camera_height_m + 0.04 * np.sin(2 * np.pi * a / 0.75 + ph[4])
    return [camera_pose((pos[k, 0], pos[k, 1], z[k]), yaw[k], pitch[k], roll[k]) for k in range(n_frames)]


def nearest_distances_m(query_xy: np.ndarray, ref_xy: np.ndarray, *, query_yaw_rad: np.ndarray | None = None,
                        ref_yaw_rad: np.ndarray | None = None, max_yaw_diff_deg: float = 180.0) -> np.ndarray:
    """Horizontal distance from every ``query_xy`` (N, 2) position to its nearest ``ref_xy`` (M, 2) one.

    With headings (``query_yaw_rad`` (N,), ``ref_yaw_rad`` (M,)), only reference positions whose
    heading is within ``max_yaw_diff_deg`` of the query's count (inf where there is none).
    """
    query_xy, ref_xy = np.asarray(query_xy, np.float64), np.asarray(ref_xy, np.float64)
    use_yaw = query_yaw_rad is not None and ref_yaw_rad is not None
    out = np.empty(len(query_xy))
    for k in range(0, len(query_xy), 256):
        d = np.linalg.norm(query_xy[k:k + 256, None, :] - ref_xy[None, :, :], axis=2)
        if use_yaw:
            dyaw_rad = np.asarray(query_yaw_rad)[k:k + 256, None] - np.asarray(ref_yaw_rad)[None]
            dyaw = np.abs(np.angle(np.exp(1j * dyaw_rad)))
            d = np.where(dyaw <= math.radians(max_yaw_diff_deg), d, np.inf)
        out[k:k + 256] = d.min(axis=1)
    return out


def generate(out: str | Path, *, seed: int = 0, frames: int | None = None, size: tuple[int, int] | None = None,
             config: CampusWorldConfig | None = None, photo_dir: str | Path | None = None,
             write_bag: bool = True) -> Path:
    """Generate the campus world into ``out`` (created; must be absent or empty). Returns ``out``.

    ``frames``: number of training frames (val and test get 15/70 of it each); ``size``: (W, H).
    """
    from transforms3d.quaternions import mat2quat

    from vizloc_ros.geodesy import LocalENU

    t_start = time.perf_counter()
    cfg = config or CampusWorldConfig()
    if size is not None:
        cfg = replace(cfg, size=(int(size[0]), int(size[1])))
    if frames is not None:
        cfg = cfg.with_train_frames(int(frames))
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CampusWorldError(f'{out}: output directory exists and is not empty')
    source = TextureSource.load(photo_dir)
    campus = build_campus(cfg, np.random.default_rng([seed, 21]), source)
    enu = LocalENU(*cfg.origin)
    camera = cfg.camera()
    photometric = PhotometricConfig()
    out.mkdir(parents=True, exist_ok=True)
    (out / 'images').mkdir()
    counts = {'train': cfg.frames_train, 'val': cfg.frames_val, 'test': cfg.frames_test}
    rows: list[dict[str, Any]] = []
    pose_rows: list[list[Any]] = []
    test_frames: list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]] = []
    xy_by_split: dict[str, np.ndarray] = {}
    yaw_by_split: dict[str, np.ndarray] = {}
    train_walks = 0
    for split in SPLITS:
        split_rng = np.random.default_rng([seed, 22, _SPLIT_ID[split]])
        if split == 'train':
            walks = training_walks(campus, counts[split], split_rng, cfg)
            train_walks = len(walks)
            poses = [T for walk in walks for T in walk]
        else:
            poses = route(campus, counts[split], split_rng, cfg)
        xyz = np.array([T[:3, 3] for T in poses])
        xy_by_split[split] = xyz[:, :2]
        yaw_by_split[split] = np.array([math.atan2(T[1, 2], T[0, 2]) for T in poses])  # optical axis, CCW from east
        lat, lon, alt = enu.to_geodetic(xyz[:, 0], xyz[:, 1], xyz[:, 2])
        for k, T in enumerate(poses):
            frame_rng = np.random.default_rng([seed, 23, _SPLIT_ID[split], k])
            sun_az, sun_el = frame_rng.uniform(0, 2 * np.pi), frame_rng.uniform(0.3, 1.2)
            light = Lighting(light_dir=(math.cos(sun_el) * math.cos(sun_az), math.cos(sun_el) * math.sin(sun_az),
                                        math.sin(sun_el)),
                             ambient=float(frame_rng.uniform(0.4, 0.6)), diffuse=float(frame_rng.uniform(0.45, 0.7)),
                             fog_m=600.0,
                             sky_zenith_rgb=tuple(float(c) for c in np.array([70, 120, 200]) * frame_rng.uniform(0.8, 1.1)),
                             sky_horizon_rgb=tuple(float(c) for c in np.array([190, 210, 230]) * frame_rng.uniform(0.85, 1.05)))
            res = campus.world.render(camera, T, lighting=light)
            rgb = apply_photometric(res.rgb_HW3, frame_rng, cfg.photometric_strength, photometric)
            name = f'{split}_{k:05d}.jpg'
            fix = (float(lat[k]), float(lon[k]), float(alt[k]))
            jpeg = encode_jpeg_with_gps(rgb, *fix, quality=cfg.jpeg_quality)
            (out / 'images' / name).write_bytes(jpeg)
            rows.append({'image': name, 'lat': f'{fix[0]:.9f}', 'lon': f'{fix[1]:.9f}', 'alt': f'{fix[2]:.4f}',
                         'split': split})
            q_wxyz = mat2quat(T[:3, :3])
            pose_rows.append([name, *(f'{v:.6f}' for v in T[:3, 3]), *(f'{v:.9f}' for v in q_wxyz[[1, 2, 3, 0]])])
            if split == 'train' and cfg.write_refdb:
                yaw_enu = math.atan2(T[1, 2], T[0, 2])  # optical axis heading, CCW from east
                write_reference_entry(out / 'refdb', name[:-4], out / 'images' / name, width=camera.width, height=camera.height,
                                      lat=fix[0], lng=fix[1], alt=fix[2],
                                      azn=(90.0 - math.degrees(yaw_enu)) % 360.0, fov=cfg.hfov_deg, K=camera.K,
                                      E=np.linalg.inv(T), depth_m=res.depth_HW)
            if split == 'test' and write_bag:
                test_frames.append((decode_image(jpeg), T, fix))  # the bag shows the file
        _LOG.info('campus %s: %d frames', split, counts[split])
    if cfg.write_refdb:  # manifest (sha256 per file, version 1) + the map frame's geo reference
        update_manifest(out / 'refdb', geo={'enu_origin': list(cfg.origin)})
    with open(out / 'gt.csv', 'w', newline='') as fh:
        writer = csv.DictWriter(fh, fieldnames=['image', 'lat', 'lon', 'alt', 'split'])
        writer.writeheader()
        writer.writerows(rows)
    with open(out / 'poses.csv', 'w', newline='') as fh:
        writer = csv.writer(fh)
        writer.writerow(['image', 'x', 'y', 'z', 'qx', 'qy', 'qz', 'qw'])
        writer.writerows(pose_rows)
    world = {
        'generator': GENERATOR,
        'version': GENERATOR_VERSION,
        'seed': int(seed),
        'origin': {'lat': cfg.origin[0], 'lon': cfg.origin[1], 'alt': cfg.origin[2]},
        'map_frame': 'local ENU at origin: x east, y north, z up, metres; alt = WGS84 ellipsoidal height',
        'camera': {'width': camera.width, 'height': camera.height, 'focal_px': float(camera.K[0, 0]),
                   'hfov_deg': cfg.hfov_deg, 'K': camera.K, 'optical_frame': 'x right, y down, z forward'},
        'textures': source.describe(),
        'buildings': [{'min_xy': [f[0], f[1]], 'max_xy': [f[2], f[3]], 'height_m': f[4]} for f in campus.footprints],
        'layout': {
            'images': 'images/<split>_<k>.jpg, EXIF GPS = gt.csv row',
            'gt': 'gt.csv: image,lat,lon,alt,split',
            'poses': 'poses.csv: image,x,y,z,qx,qy,qz,qw = T_map_camera (optical frame)',
            'refdb': ('refdb/<uid>/image.jpg + metadata.json + depth.png (uint16 mm) of the train frames; E = T_camera_map '
                      '(4x4 world-to-camera, map frame); azn = optical-axis azimuth, degrees clockwise from north; '
                      'refdb/manifest.json: sha256 per file, version, geo') if cfg.write_refdb else None,
        },
        'config': asdict(cfg),
        'photometric': {'strength': cfg.photometric_strength, 'config': photometric.to_mapping(),
                        'sun': 'per frame: azimuth U(0, 360) deg, elevation U(17, 69) deg'},
        'splits': {k: {'frames': v, 'walks': train_walks if k == 'train' else 1} for k, v in counts.items()},
        'coverage': _coverage(xy_by_split, yaw_by_split),
        'eval_bag': f'{EVAL_BAG_NAME} (test split)' if write_bag else None,
    }
    (out / 'world.yaml').write_text(yaml.safe_dump(yaml_plain(world), sort_keys=False))
    if write_bag:
        _write_bag(out / EVAL_BAG_NAME, test_frames, camera)
    _LOG.info('campus world written to %s in %.1f s', out, time.perf_counter() - t_start)
    return out


def _coverage(xy_by_split: dict[str, np.ndarray], yaw_by_split: dict[str, np.ndarray]) -> dict[str, float]:
    """How close the val and test positions come to the training positions (horizontal metres), also
    counting only training frames that look the same way (optical-axis heading within 35 deg)."""
    out: dict[str, float] = {}
    for split in ('val', 'test'):
        d_view = nearest_distances_m(xy_by_split[split], xy_by_split['train'], query_yaw_rad=yaw_by_split[split],
                                     ref_yaw_rad=yaw_by_split['train'], max_yaw_diff_deg=35.0)
        out[f'{split}_to_train_same_view_nn_median_m'] = round(float(np.median(d_view)), 3)
        out[f'{split}_to_train_same_view_within_10m_pct'] = round(float(np.mean(d_view <= 10.0) * 100), 2)
        d = nearest_distances_m(xy_by_split[split], xy_by_split['train'])
        out[f'{split}_to_train_nn_median_m'] = round(float(np.median(d)), 3)
        out[f'{split}_to_train_nn_p95_m'] = round(float(np.percentile(d, 95)), 3)
        out[f'{split}_to_train_nn_max_m'] = round(float(d.max()), 3)
        out[f'{split}_within_5m_pct'] = round(float(np.mean(d <= 5.0) * 100), 2)
        out[f'{split}_within_10m_pct'] = round(float(np.mean(d <= 10.0) * 100), 2)
    return out


def _write_bag(path: Path, frames: Sequence[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]],
               camera: CameraIntrinsics) -> Path:
    from vizloc_ros.eval_bag import EvalSample, write_evaluation_bag

    def samples() -> Iterator[EvalSample]:
        for k, (rgb, T, fix) in enumerate(frames):
            yield EvalSample(stamp_ns=_BAG_START_NS + k * _BAG_PERIOD_NS, rgb_HW3=rgb, camera=camera,
                             frame_id='camera', fix_lla=fix, T_map_camera=T, room=None)

    return write_evaluation_bag(path, samples())
