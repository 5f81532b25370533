"""``vizloc-synth indoor``: a floor of textured rooms walked through by a hand-held camera.

The floor is a grid of rooms (default 3 x 2 = 6) with their own wall and floor textures,
furniture blocks and posters, connected by doors (openings in the walls). A camera carried at
~1.5 m (small bob, pitch and roll) walks smooth paths from room to room looking around; train,
val and test walks are different (their own random tours). Rendering is exact ray casting
(:mod:`vizloc_training.synth.boxworld`), so labels, poses, depth and scene coordinates are exact.

Output (``DIR``)::

    DIR/{train,val,test}/<room>/<split>_<k>.jpg   Rooms dataset (vizloc_training.datasets.rooms)
    DIR/scene/{train,val,test}/{rgb,poses,calibration,depth,init}/<split>_<k>.*
                                                   same frames, DSAC*/CrossLoc layout (7-Scenes style)
    DIR/scene/geo.yaml                             {enu_origin: [lat, lon, alt]}: map frame = local ENU
    DIR/rooms.yaml                                 room label -> floor polygon in the map frame
    DIR/world.yaml                                 generator, version, seed, sizes, textures, rooms
    DIR/eval_bag/                                  rosbag2 evaluation bag of the test split

Map frame: x east, y north, z up, metres, floor at z = 0.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import cv2
import numpy as np
import yaml

from vizloc_ros.eval_bag import EVAL_BAG_NAME
from vizloc_ros.types import CameraIntrinsics

from vizloc_ros.bundle import yaml_plain

from .boxworld import (WalkWorldConfig, Box, BoxWorld, Lighting, camera_pose, catmull_rom, decode_image, encode_jpeg, make_scene_dirs,
                       write_scene_frame)
from .photometric import PhotometricConfig, apply_photometric
from .textures import TextureSource
from ..datasets.rooms import RoomsDataset

__all__ = ['GENERATOR', 'GENERATOR_VERSION', 'ROOM_NAMES', 'IndoorWorldConfig', 'IndoorWorldError', 'FloorPlan',
           'build_floor_plan', 'room_at', 'load_rooms_yaml', 'walk', 'generate', 'own_room_share']

_LOG = logging.getLogger(__name__)

GENERATOR = 'vizloc_training.synth.indoor'
GENERATOR_VERSION = 1
SPLITS = ('train', 'val', 'test')
_SPLIT_ID = {'train': 0, 'val': 1, 'test': 2}
ROOM_NAMES = ('kitchen', 'office', 'lab', 'lounge', 'library', 'workshop', 'studio', 'storage', 'gym')
_BAG_START_NS = 1_700_000_000 * 10**9
_BAG_PERIOD_NS = 100_000_000  # 10 Hz


class IndoorWorldError(ValueError):
    """An indoor world configuration or output directory that cannot be used."""


@dataclass(frozen=True)
class IndoorWorldConfig(WalkWorldConfig):
    """Everything that shapes the indoor world (recorded in world.yaml)."""

    error_type: ClassVar[type[Exception]] = IndoorWorldError

    size: tuple[int, int] = (320, 240)  # image (W, H) px
    hfov_deg: float = 75.0
    grid_cols: int = 3
    grid_rows: int = 2
    room_size_m: tuple[float, float] = (4.5, 7.0)  # min/max room width and depth
    wall_height_m: float = 2.8
    wall_thickness_m: float = 0.12
    door_width_m: float = 1.2
    door_height_m: float = 2.1
    camera_height_m: float = 1.5
    frames_train: int = 1200
    frames_val: int = 257
    frames_test: int = 257
    frames_per_segment: float = 6.0  # frames per path leg (way-point to way-point); fewer for short splits
    photometric_strength: float = 1.0
    jpeg_quality: int = 95
    enu_origin: tuple[float, float, float] = (55.6597, 12.5910, 20.0)  # lat, lon, ellipsoidal alt of map origin

    def __post_init__(self) -> None:
        n = self.grid_cols * self.grid_rows
        if self.grid_cols < 1 or self.grid_rows < 1 or n < 2 or n > len(ROOM_NAMES):
            raise IndoorWorldError(f'grid {self.grid_cols}x{self.grid_rows} must hold 2..{len(ROOM_NAMES)} rooms')
        w, h = self.size
        if w < 8 or h < 8:
            raise IndoorWorldError(f'image size must be at least 8x8, got {w}x{h}')
        if not 0 < self.hfov_deg < 150:
            raise IndoorWorldError(f'hfov_deg must be in (0, 150), got {self.hfov_deg}')
        lo, hi = self.room_size_m
        if not 2 * 1.1 + 1.0 <= lo <= hi:
            raise IndoorWorldError(f'room_size_m must satisfy 3.2 <= min <= max, got {self.room_size_m}')
        for name in ('frames_train', 'frames_val', 'frames_test'):
            if getattr(self, name) < 1:
                raise IndoorWorldError(f'{name} must be >= 1, got {getattr(self, name)}')



@dataclass(frozen=True)
class Door:
    room_a: int
    room_b: int
    centre_xy: tuple[float, float]
    normal_xy: tuple[float, float]  # unit vector from room_a into room_b


@dataclass(frozen=True)
class FloorPlan:
    """Rooms (axis-aligned rectangles between wall centre lines), doors and the world's boxes."""

    labels: tuple[str, ...]
    rects: tuple[tuple[float, float, float, float], ...]  # x0, y0, x1, y1 per room (wall centre lines)
    doors: tuple[Door, ...]
    world: BoxWorld
    free_margin_m: float  # the camera keeps this far from walls inside a room (furniture lies closer)

    def polygon(self, room: int) -> list[list[float]]:
        x0, y0, x1, y1 = self.rects[room]
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]

    def rooms_mapping(self) -> dict[str, Any]:
        return {'version': 1, 'frame_id': 'map', 'units': 'metres; polygons counter-clockwise, floor plane z = 0',
                'rooms': {label: {'polygon': self.polygon(i)} for i, label in enumerate(self.labels)}}


def room_at(polygons: Mapping[str, Sequence[Sequence[float]]], x: float, y: float) -> str | None:
    """Label of the first polygon containing (x, y) (boundary included), ``None`` if none does."""
    for label, poly in polygons.items():
        contour = np.asarray(poly, np.float32).reshape(-1, 1, 2)
        if cv2.pointPolygonTest(contour, (float(x), float(y)), False) >= 0:
            return label
    return None


def load_rooms_yaml(path: str | Path) -> dict[str, list[list[float]]]:
    """``rooms.yaml`` -> {label: polygon [[x, y], ...]} (map frame, metres)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise IndoorWorldError(f'cannot read {path}: {exc}') from exc
    if not isinstance(data, dict) or not isinstance(data.get('rooms'), dict):
        raise IndoorWorldError(f'{path}: expected a mapping with a "rooms" mapping')
    out: dict[str, list[list[float]]] = {}
    for label, entry in data['rooms'].items():
        poly = entry.get('polygon') if isinstance(entry, dict) else None
        arr = np.asarray(poly, float) if poly is not None else np.zeros((0,))
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 3 or not np.all(np.isfinite(arr)):
            raise IndoorWorldError(f'{path}: room {label!r} needs a polygon of >= 3 [x, y] points')
        out[str(label)] = arr.tolist()
    return out


class _TextureBank:
    def __init__(self, source: TextureSource, rng: np.random.Generator) -> None:
        self.source, self.rng, self.textures = source, rng, []

    def add(self, kind: str) -> int:
        self.textures.append(self.source.make(self.rng, kind))
        return len(self.textures) - 1


def build_floor_plan(cfg: IndoorWorldConfig, rng: np.random.Generator, source: TextureSource) -> FloorPlan:
    """Rooms, walls with doors, floors, ceiling, furniture and posters for ``cfg``; deterministic for ``rng``."""
    cols, rows = cfg.grid_cols, cfg.grid_rows
    lo, hi = cfg.room_size_m
    widths = rng.uniform(lo, hi, size=cols)
    depths = rng.uniform(lo, hi, size=rows)
    xs = np.concatenate([[0.0], np.cumsum(widths)])
    ys = np.concatenate([[0.0], np.cumsum(depths)])
    xs -= xs[-1] / 2
    ys -= ys[-1] / 2
    bank = _TextureBank(source, rng)
    n_rooms = cols * rows
    room_id = lambda c, r: r * cols + c  # noqa: E731
    labels = tuple(ROOM_NAMES[:n_rooms])
    rects = tuple((float(xs[c]), float(ys[r]), float(xs[c + 1]), float(ys[r + 1]))
                  for r in range(rows) for c in range(cols))
    wall_tex = [bank.add('wall') for _ in range(n_rooms)]
    floor_tex = [bank.add('floor') for _ in range(n_rooms)]
    ceiling_tex = bank.add('ceiling')
    outside_tex = bank.add('wall')
    H, t2 = cfg.wall_height_m, cfg.wall_thickness_m / 2
    boxes: list[Box] = []
    doors: list[Door] = []
    door_positions: dict[tuple[int, str], list[float]] = {}  # (room, wall side) -> door centres along the wall

    def wall(axis: int, coord: float, a0: float, a1: float, tex_neg: int, tex_pos: int,
             door: tuple[int, int] | None) -> None:
        """Wall on the line (x if axis == 0 else y) = coord, spanning a0..a1 along the other axis."""
        spans = [(a0 - t2, a1 + t2, 0.0, H)]
        if door is not None:
            half = cfg.door_width_m / 2
            centre = float(rng.uniform(a0 + 0.9 + half, a1 - 0.9 - half))
            spans = [(a0 - t2, centre - half, 0.0, H), (centre + half, a1 + t2, 0.0, H),
                     (centre - half, centre + half, cfg.door_height_m, H)]
            centre_xy = (coord, centre) if axis == 0 else (centre, coord)
            normal = (1.0, 0.0) if axis == 0 else (0.0, 1.0)
            doors.append(Door(door[0], door[1], centre_xy, normal))
            side_a, side_b = ('+x', '-x') if axis == 0 else ('+y', '-y')
            door_positions.setdefault((door[0], side_a), []).append(centre)
            door_positions.setdefault((door[1], side_b), []).append(centre)
        for s0, s1, z0, z1 in spans:
            if axis == 0:
                lo_xyz, hi_xyz = (coord - t2, s0, z0), (coord + t2, s1, z1)
                tex = (tex_neg, tex_pos, tex_neg, tex_neg, tex_neg, tex_neg)
            else:
                lo_xyz, hi_xyz = (s0, coord - t2, z0), (s1, coord + t2, z1)
                tex = (tex_neg, tex_neg, tex_neg, tex_pos, tex_neg, tex_neg)
            boxes.append(Box(lo_xyz, hi_xyz, tex, tile_m=1.2, tag='wall'))

    for c in range(cols + 1):
        for r in range(rows):
            neg = wall_tex[room_id(c - 1, r)] if c > 0 else outside_tex
            pos = wall_tex[room_id(c, r)] if c < cols else outside_tex
            door = (room_id(c - 1, r), room_id(c, r)) if 0 < c < cols else None
            wall(0, float(xs[c]), float(ys[r]), float(ys[r + 1]), neg, pos, door)
    for r in range(rows + 1):
        for c in range(cols):
            neg = wall_tex[room_id(c, r - 1)] if r > 0 else outside_tex
            pos = wall_tex[room_id(c, r)] if r < rows else outside_tex
            door = (room_id(c, r - 1), room_id(c, r)) if 0 < r < rows else None
            wall(1, float(ys[r]), float(xs[c]), float(xs[c + 1]), neg, pos, door)
    for i, (x0, y0, x1, y1) in enumerate(rects):
        boxes.append(Box((x0, y0, -0.1), (x1, y1, 0.0), (floor_tex[i],) * 6, tile_m=1.0, tag='floor'))
    boxes.append(Box((xs[0] - 1, ys[0] - 1, H), (xs[-1] + 1, ys[-1] + 1, H + 0.1), (ceiling_tex,) * 6,
                     tile_m=1.5, tag='ceiling'))

    free_margin = 1.1
    for i, (x0, y0, x1, y1) in enumerate(rects):
        _furnish(boxes, bank, rng, i, (x0 + t2, y0 + t2, x1 - t2, y1 - t2), door_positions, cfg)
    world = BoxWorld(boxes, bank.textures)
    return FloorPlan(labels, rects, tuple(doors), world, free_margin)


def _furnish(boxes: list[Box], bank: _TextureBank, rng: np.random.Generator, room: int,
             inner: tuple[float, float, float, float], door_positions: Mapping[tuple[int, str], list[float]],
             cfg: IndoorWorldConfig) -> None:
    """2-4 furniture blocks against the walls and 1-3 posters on them, clear of the doors."""
    x0, y0, x1, y1 = inner
    clearance = cfg.door_width_m / 2 + 0.35

    def place(length: float, depth: float, z0: float, z1: float, tex: tuple[int, ...], tag: str, gap: float) -> None:
        for _ in range(20):
            side = ('-x', '+x', '-y', '+y')[int(rng.integers(4))]
            along_lo, along_hi = (y0, y1) if side in ('-x', '+x') else (x0, x1)
            if along_hi - along_lo < length + 0.2:
                continue
            a = float(rng.uniform(along_lo + 0.1, along_hi - 0.1 - length))
            doors_here = door_positions.get((room, side), [])  # door centres along this wall of this room
            if any(a - clearance < dc < a + length + clearance for dc in doors_here):
                continue
            if side == '-x':
                lo_xyz, hi_xyz = (x0 + gap, a, z0), (x0 + gap + depth, a + length, z1)
            elif side == '+x':
                lo_xyz, hi_xyz = (x1 - gap - depth, a, z0), (x1 - gap, a + length, z1)
            elif side == '-y':
                lo_xyz, hi_xyz = (a, y0 + gap, z0), (a + length, y0 + gap + depth, z1)
            else:
                lo_xyz, hi_xyz = (a, y1 - gap - depth, z0), (a + length, y1 - gap, z1)
            boxes.append(Box(lo_xyz, hi_xyz, tex, tile_m=0.0, tag=tag))
            return

    for _ in range(int(rng.integers(2, 5))):
        t = bank.add('furniture')
        top = bank.add('furniture')
        place(float(rng.uniform(0.6, 1.8)), float(rng.uniform(0.4, 0.8)), 0.0, float(rng.uniform(0.45, 2.0)),
              (t, t, t, t, t, top), 'furniture', 0.05)
    for _ in range(int(rng.integers(1, 4))):
        t = bank.add('poster')
        z0 = float(rng.uniform(1.0, 1.5))
        place(float(rng.uniform(0.6, 1.4)), 0.02, z0, z0 + float(rng.uniform(0.5, 0.9)), (t,) * 6, 'poster', 0.0)


@dataclass(frozen=True)
class WalkFrame:
    T_world_camera: np.ndarray
    room: str


def walk(plan: FloorPlan, n_frames: int, rng: np.random.Generator, cfg: IndoorWorldConfig) -> list[WalkFrame]:
    """A smooth tour of ``n_frames`` camera poses through the rooms, heading for the least-visited room."""
    n_rooms = len(plan.labels)
    neighbours: dict[int, list[Door]] = {i: [] for i in range(n_rooms)}
    for door in plan.doors:
        neighbours[door.room_a].append(door)
        neighbours[door.room_b].append(door)
    m = plan.free_margin_m

    def interior(room: int) -> np.ndarray:
        x0, y0, x1, y1 = plan.rects[room]
        return np.array([rng.uniform(x0 + m, x1 - m), rng.uniform(y0 + m, y1 - m)])

    # Room-graph hop distances, to head for the least-visited room along a shortest door path.
    hops = np.full((n_rooms, n_rooms), n_rooms, np.int64)
    for a in range(n_rooms):
        hops[a, a] = 0
        frontier = [a]
        while frontier:
            nxt = []
            for r in frontier:
                for d in neighbours[r]:
                    b = d.room_b if d.room_a == r else d.room_a
                    if hops[a, b] > hops[a, r] + 1:
                        hops[a, b] = hops[a, r] + 1
                        nxt.append(b)
            frontier = nxt
    # Short splits walk faster (fewer frames per leg) so that every room is visited at least twice.
    per_segment = float(np.clip(n_frames / (2 * n_rooms * 6.5), 1.0, cfg.frames_per_segment))
    n_segments = int(math.ceil(n_frames / per_segment)) + 2
    visits = np.zeros(n_rooms)
    room = int(rng.integers(n_rooms))
    waypoints: list[np.ndarray] = [interior(room)]
    while len(waypoints) < n_segments + 2:
        visits[room] += 1
        waypoints.append(interior(room))
        others = [r for r in range(n_rooms) if r != room]
        least = min(visits[r] for r in others)
        goals = [r for r in others if visits[r] == least]
        goal = goals[int(rng.integers(len(goals)))]
        options = neighbours[room]
        score = [(hops[d.room_b if d.room_a == room else d.room_a, goal], visits[d.room_b if d.room_a == room else d.room_a])
                 for d in options]
        best = [d for d, sc in zip(options, score) if sc == min(score)]
        door = best[int(rng.integers(len(best)))]
        sign = 1.0 if door.room_a == room else -1.0
        c = np.asarray(door.centre_xy)
        nrm = sign * np.asarray(door.normal_xy)
        waypoints.extend([c - 1.4 * nrm, c - 0.7 * nrm, c, c + 0.7 * nrm, c + 1.4 * nrm])
        room = door.room_b if door.room_a == room else door.room_a
    P = np.asarray(waypoints)
    s = np.arange(n_frames) / per_segment + 0.5
    pos, der = catmull_rom(P, s)
    heading = np.arctan2(der[:, 1], der[:, 0])
    phases = rng.uniform(0, 2 * np.pi, size=5)
    look = 0.9 * np.sin(0.45 * s + phases[0]) + 0.4 * np.sin(1.3 * s + phases[1])
    yaw = heading + look
    pitch = -0.06 + 0.07 * np.sin(0.8 * s + phases[2])
    roll = 0.03 * np.sin(1.1 * s + phases[3])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pos, axis=0), axis=1))])
    z = cfg.camera_height_m + 0.03 * np.sin(2 * np.pi * arc / 0.7 + phases[4])
    polygons = {label: plan.polygon(i) for i, label in enumerate(plan.labels)}
    frames = []
    for k in range(n_frames):
        label = room_at(polygons, pos[k, 0], pos[k, 1])
        if label is None:
            raise IndoorWorldError(f'walk left the floor at {pos[k]}')
        frames.append(WalkFrame(camera_pose((pos[k, 0], pos[k, 1], z[k]), yaw[k], pitch[k], roll[k]), label))
    return frames


def generate(out: str | Path, *, seed: int = 0, frames: int | None = None, size: tuple[int, int] | None = None,
             config: IndoorWorldConfig | None = None, photo_dir: str | Path | None = None,
             write_bag: bool = True) -> Path:
    """Generate the indoor world into ``out`` (created; must be absent or empty). Returns ``out``.

    ``frames``: number of training frames (val and test get 15/70 of it each); ``size``: (W, H).
    ``photo_dir``: texture photos (default: opencv-doc's example images, procedural when missing).
    """
    t_start = time.perf_counter()
    cfg = config or IndoorWorldConfig()
    if size is not None:
        cfg = replace(cfg, size=(int(size[0]), int(size[1])))
    if frames is not None:
        cfg = cfg.with_train_frames(int(frames))
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise IndoorWorldError(f'{out}: output directory exists and is not empty')
    source = TextureSource.load(photo_dir)
    plan = build_floor_plan(cfg, np.random.default_rng([seed, 11]), source)
    camera = cfg.camera()
    focal = float(camera.K[0, 0])
    photometric = PhotometricConfig()
    out.mkdir(parents=True, exist_ok=True)
    (out / 'rooms.yaml').write_text(yaml.safe_dump(plan.rooms_mapping(), sort_keys=False))
    (out / 'scene').mkdir()
    (out / 'scene' / 'geo.yaml').write_text(yaml.safe_dump({'enu_origin': list(cfg.enu_origin)}))
    counts = {'train': cfg.frames_train, 'val': cfg.frames_val, 'test': cfg.frames_test}
    splits_meta: dict[str, Any] = {}
    test_frames: list[tuple[np.ndarray, np.ndarray, str]] = []
    for split in SPLITS:
        tour = walk(plan, counts[split], np.random.default_rng([seed, 12, _SPLIT_ID[split]]), cfg)
        scene_dir = out / 'scene' / split
        make_scene_dirs(scene_dir)
        for label in plan.labels:
            (out / split / label).mkdir(parents=True)
        per_room = {label: 0 for label in plan.labels}
        for k, f in enumerate(tour):
            frame_rng = np.random.default_rng([seed, 13, _SPLIT_ID[split], k])
            light = Lighting(light_dir=(float(frame_rng.uniform(-0.5, 0.5)), float(frame_rng.uniform(-0.5, 0.5)), 1.0),
                             ambient=float(frame_rng.uniform(0.5, 0.65)), diffuse=0.45)
            res = plan.world.render(camera, f.T_world_camera, lighting=light)
            rgb = apply_photometric(res.rgb_HW3, frame_rng, cfg.photometric_strength, photometric)
            stem = f'{split}_{k:05d}'
            jpeg = encode_jpeg(rgb, cfg.jpeg_quality)
            image_file = out / split / f.room / f'{stem}.jpg'
            image_file.write_bytes(jpeg)
            write_scene_frame(scene_dir, stem, image_file, f.T_world_camera, focal, res)
            per_room[f.room] += 1
            if split == 'test' and write_bag:
                test_frames.append((decode_image(jpeg), f.T_world_camera, f.room))  # the bag shows the file
        splits_meta[split] = {'frames': counts[split], 'frames_per_room': per_room}
        _LOG.info('indoor %s: %d frames %s', split, counts[split], per_room)

    world = {
        'generator': GENERATOR,
        'version': GENERATOR_VERSION,
        'seed': int(seed),
        'map_frame': 'x east, y north, z up, metres; floor z = 0; ENU at enu_origin (scene/geo.yaml)',
        'enu_origin': list(cfg.enu_origin),
        'camera': {'width': camera.width, 'height': camera.height, 'focal_px': focal, 'hfov_deg': cfg.hfov_deg,
                   'K': camera.K, 'optical_frame': 'x right, y down, z forward'},
        'rooms': list(plan.labels),
        'rooms_file': 'rooms.yaml',
        'textures': source.describe(),
        'layout': {
            'rooms_dataset': '<split>/<room>/<split>_<k>.jpg (RGB after photometric variation; the same file hard-linked in scene/<split>/rgb)',
            'scene': 'scene/<split>/{rgb,poses,calibration,depth,init}: DSAC* layout of the same frames',
            'poses': '4x4 camera-to-world (map frame)', 'calibration': 'focal length in pixels',
            'depth': 'uint16 PNG, millimetres, z-depth, 0 = invalid',
            'init': 'npy float32 3 x H/8 x W/8 scene coordinates; cell (i, j) = pixel (8j + 4, 8i + 4)',
            'init_stride_px': 8,
        },
        'boxes': len(plan.world.boxes),
        'config': asdict(cfg),
        'photometric': {'strength': cfg.photometric_strength, 'config': photometric.to_mapping()},
        'splits': splits_meta,
        'eval_bag': f'{EVAL_BAG_NAME} (test split)' if write_bag else None,
    }
    (out / 'world.yaml').write_text(yaml.safe_dump(yaml_plain(world), sort_keys=False))
    if write_bag:
        _write_bag(out / EVAL_BAG_NAME, test_frames, camera, cfg)
    _LOG.info('indoor world written to %s in %.1f s', out, time.perf_counter() - t_start)
    return out


def _write_bag(path: Path, frames: Sequence[tuple[np.ndarray, np.ndarray, str]], camera: CameraIntrinsics,
               cfg: IndoorWorldConfig) -> Path:
    from vizloc_ros.eval_bag import EvalSample, write_evaluation_bag
    from vizloc_ros.geodesy import LocalENU

    enu = LocalENU(*cfg.enu_origin)

    def samples() -> Iterator[EvalSample]:
        for k, (rgb, T, room) in enumerate(frames):
            lat, lon, alt = enu.to_geodetic(T[0, 3], T[1, 3], T[2, 3])
            yield EvalSample(stamp_ns=_BAG_START_NS + k * _BAG_PERIOD_NS, rgb_HW3=rgb, camera=camera,
                             frame_id='camera', fix_lla=(float(lat), float(lon), float(alt)),
                             T_map_camera=T, room=room)

    return write_evaluation_bag(path, samples())


def own_room_share(root: Path, split: str) -> list[tuple[str, str, float]]:
    """(frame stem, label, share of the visible cells inside the labelled room) of a generated world's split.

    The frames in temporal order; visible cells are the frame's scene coordinates
    (``scene/<split>/init``), each assigned to the room whose floor polygon contains it. A share
    below 0.5 means the camera stands in one room and mostly sees another (through a door), the
    frames a room classifier can only get right from cues such as the door frame
    (``scripts/room_visibility.py``). The split is read with the Rooms reader
    (:class:`..datasets.rooms.RoomsDataset`; a missing or empty split raises its ``RoomsDatasetError``).
    """
    rooms = load_rooms_yaml(root / 'rooms.yaml')
    frames = sorted((sample.path for sample in RoomsDataset(root, split).samples), key=lambda p: p.name)
    out = []
    for path in frames:
        init = root / 'scene' / split / 'init' / f'{path.stem}.npy'
        if not init.is_file():
            raise FileNotFoundError(f'{init}: missing scene coordinates (is {root} an indoor world?)')
        xyz = np.load(init).reshape(3, -1).T
        seen = [room_at(rooms, float(x), float(y)) for x, y, _z in xyz]
        seen = [label for label in seen if label is not None]
        own = sum(label == path.parent.name for label in seen) / max(1, len(seen))
        out.append((path.stem, path.parent.name, own))
    return out
