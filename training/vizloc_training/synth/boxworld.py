"""A vectorised numpy ray caster for worlds of axis-aligned boxes with per-face textures.

The indoor and campus worlds are built from axis-aligned boxes (walls, floors, furniture,
buildings, trees) plus an optional infinite ground plane z = 0. One ray per pixel centre (integer
pixel coordinates, the convention of :class:`vizloc_ros.types.CameraIntrinsics`) is intersected with
every box whose projection covers that pixel (slab test), so the ground truth is exact: the hit
point of pixel (u, v) lies on the ray through (u, v), its z-depth in the camera is the returned
depth, and re-projecting the returned scene coordinates with the pose and K lands on the pixel.

Frames: world/map frame z up (metres); camera optical frame x right, y down, z forward;
``T_world_camera`` is the 4x4 camera-to-world pose.

Textures are sampled nearest-neighbour from a mip-map pyramid (level from the pixel footprint),
so distant facades do not alias into noise. Shading is Lambertian (ambient + one directional
light, e.g. the sun) with optional distance fog towards the sky colour; no shadows.

Why not trimesh/embree: embree is not in the venv, and trimesh's pure-numpy ray tracer is far
slower than the per-box slab test restricted to each box's screen rectangle used here (measured
with ``scripts/bench_render_boxworld.py``).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Sequence

import cv2
import numpy as np

from vizloc_ros.types import CameraIntrinsics

__all__ = ['FACE_NAMES', 'INIT_STRIDE_PX', 'Box', 'GroundPlane', 'Lighting', 'Rendering', 'BoxWorld', 'camera_pose',
           'catmull_rom', 'decode_image', 'encode_jpeg', 'encode_png', 'link_or_copy', 'make_scene_dirs',
           'write_scene_frame']

_LOG = logging.getLogger(__name__)

#: Face order of :attr:`Box.textures`: the face whose outward normal is -x, +x, -y, +y, -z, +z.
FACE_NAMES = ('-x', '+x', '-y', '+y', '-z', '+z')
_FACE_NORMALS = np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], np.float32)
# Texture axes (u along, v along) per face axis: x faces use (y, z), y faces (x, z), z faces (x, y).
_UV_AXES = ((1, 2), (0, 2), (0, 1))
_NEAR_M = 1e-3
_CLIP_Z = 1e-3  # near clipping plane (m) for the screen rectangles of boxes
# The 12 edges of a box as pairs of corner indices (corner k has bit a set = max on axis a).
_EDGES = np.array([(k, k | (1 << a)) for k in range(8) for a in range(3) if not k & (1 << a)])
_MIP_LEVELS = 6



class WalkWorldConfig:
    """Shared by the walking-camera worlds' config dataclasses (indoor, campus): the ``--frames`` split
    and the camera. Subclasses are frozen dataclasses with ``size``, ``hfov_deg`` and
    ``frames_{train,val,test}``, and name their error type in ``error_type``."""

    error_type: ClassVar[type[Exception]] = ValueError

    def with_train_frames(self, frames: int):  # -> same config type
        """``--frames N``: N training frames; val and test get 15/70 of it each (a 70/15/15 split)."""
        if frames < 1:
            raise self.error_type(f'frames must be >= 1, got {frames}')
        other = max(2, round(frames * 15 / 70))
        return replace(self, frames_train=int(frames), frames_val=other, frames_test=other)

    def camera(self) -> CameraIntrinsics:
        w, h = self.size  # type: ignore[attr-defined]
        return CameraIntrinsics.from_fov(self.hfov_deg, w, h)  # type: ignore[attr-defined]

@dataclass(frozen=True)
class Box:
    """An axis-aligned box from ``min_xyz`` to ``max_xyz`` (metres, world frame).

    ``textures``: 6 texture indices in :data:`FACE_NAMES` order. ``tile_m``: the size in metres one
    texture image covers on the faces (repeated), or 0 to stretch the texture over each whole face.
    ``tag`` names what the box is (``wall``, ``building``...), for debugging and statistics.
    """

    min_xyz: tuple[float, float, float]
    max_xyz: tuple[float, float, float]
    textures: tuple[int, int, int, int, int, int]
    tile_m: float = 1.0
    tag: str = ''

    def __post_init__(self) -> None:
        lo = np.asarray(self.min_xyz, float)
        hi = np.asarray(self.max_xyz, float)
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(np.isfinite(lo)) or not np.all(np.isfinite(hi)):
            raise ValueError(f'box corners must be 3 finite numbers, got {self.min_xyz} {self.max_xyz}')
        if np.any(hi <= lo):
            raise ValueError(f'box max_xyz must exceed min_xyz on every axis, got {self.min_xyz} {self.max_xyz}')
        if len(self.textures) != 6:
            raise ValueError(f'a box needs 6 face textures, got {len(self.textures)}')
        if not (self.tile_m >= 0 and math.isfinite(self.tile_m)):
            raise ValueError(f'tile_m must be >= 0, got {self.tile_m}')

    def contains_xy(self, x: float, y: float, margin_m: float = 0.0) -> bool:
        return (self.min_xyz[0] - margin_m <= x <= self.max_xyz[0] + margin_m
                and self.min_xyz[1] - margin_m <= y <= self.max_xyz[1] + margin_m)


@dataclass(frozen=True)
class GroundPlane:
    """The infinite plane z = 0 (normal +z) textured with ``texture`` covering ``tile_m`` metres from ``origin_xy``."""

    texture: int
    tile_m: float
    origin_xy: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class Lighting:
    """Ambient + one directional light (``light_dir`` points towards the light, world frame).

    ``fog_m``: distance at which 63 % of a surface's colour is replaced by the horizon colour (0 =
    no fog). Sky colours (RGB 0..255) fill pixels whose ray hits nothing.
    """

    light_dir: tuple[float, float, float] = (0.3, 0.5, 0.8)
    ambient: float = 0.55
    diffuse: float = 0.55
    fog_m: float = 0.0
    sky_zenith_rgb: tuple[float, float, float] = (70.0, 120.0, 200.0)
    sky_horizon_rgb: tuple[float, float, float] = (190.0, 210.0, 230.0)


@dataclass(frozen=True)
class Rendering:
    """What one render returns. Invalid pixels (no hit): depth 0, xyz 0, box -1."""

    rgb_HW3: np.ndarray  # uint8 RGB
    depth_HW: np.ndarray  # float32 z-depth in the camera (metres); 0 = no hit
    xyz_world_HW3: np.ndarray  # float64 scene coordinates of the hit (metres, world frame); 0 = no hit
    box_HW: np.ndarray  # int32 index of the hit box, -2 = ground plane, -1 = no hit
    face_HW: np.ndarray  # int8 face index (FACE_NAMES order), -1 = no hit

    @property
    def valid_HW(self) -> np.ndarray:
        return self.box_HW != -1


def camera_pose(position_xyz: Sequence[float], yaw_rad: float, pitch_rad: float = 0.0,
                roll_rad: float = 0.0) -> np.ndarray:
    """4x4 ``T_world_camera`` (optical frame) of a camera at ``position_xyz`` in a z-up world.

    ``yaw_rad``: heading of the optical axis, counter-clockwise from +x (east); ``pitch_rad``:
    positive looks up; ``roll_rad``: rotation about the viewing direction (the x axis of a ROS
    x-forward/y-left/z-up body frame); positive lowers the camera's right side. Built with
    transforms3d (``rzyx`` Euler angles of the body frame).
    """
    from transforms3d.euler import euler2mat

    R_world_body = euler2mat(yaw_rad, -pitch_rad, roll_rad, axes='rzyx')
    # body (x forward, y left, z up) -> optical (x right, y down, z forward)
    R_body_optical = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    T = np.eye(4)
    T[:3, :3] = R_world_body @ R_body_optical
    T[:3, 3] = np.asarray(position_xyz, float)
    return T


class BoxWorld:
    """Boxes + optional ground plane + textures; :meth:`render` ray-casts one camera view."""

    def __init__(self, boxes: Sequence[Box], textures: Sequence[np.ndarray], *,
                 ground: GroundPlane | None = None) -> None:
        if not boxes and ground is None:
            raise ValueError('a BoxWorld needs at least one box or a ground plane')
        self.boxes = tuple(boxes)
        self.ground = ground
        n_tex = len(textures)
        for i, box in enumerate(self.boxes):
            if any(not 0 <= t < n_tex for t in box.textures):
                raise ValueError(f'box {i} ({box.tag}) uses texture {box.textures}, only {n_tex} exist')
        if ground is not None and not 0 <= ground.texture < n_tex:
            raise ValueError(f'ground plane uses texture {ground.texture}, only {n_tex} exist')
        self._bmin = np.array([b.min_xyz for b in self.boxes], np.float64).reshape(-1, 3)
        self._bmax = np.array([b.max_xyz for b in self.boxes], np.float64).reshape(-1, 3)
        self._btex = np.array([b.textures for b in self.boxes], np.int32).reshape(-1, 6)
        self._btile = np.array([b.tile_m for b in self.boxes], np.float64)
        signs = np.array([[(k >> a) & 1 for a in range(3)] for k in range(8)], bool)
        self._corners = np.where(signs[None], self._bmax[:, None, :], self._bmin[:, None, :])  # N,8,3
        self._build_atlas(textures)
        self._ray_cache: dict[tuple, np.ndarray] = {}

    # -- textures -------------------------------------------------------------------------------
    def _build_atlas(self, textures: Sequence[np.ndarray]) -> None:
        flat: list[np.ndarray] = []
        offsets = np.zeros((len(textures), _MIP_LEVELS), np.int64)
        widths = np.zeros((len(textures), _MIP_LEVELS), np.int64)
        heights = np.zeros((len(textures), _MIP_LEVELS), np.int64)
        total = 0
        for t, tex in enumerate(textures):
            if not isinstance(tex, np.ndarray) or tex.dtype != np.uint8 or tex.ndim != 3 or tex.shape[2] != 3:
                raise ValueError(f'texture {t} must be uint8 HxWx3, got {getattr(tex, "shape", None)}')
            level = tex
            for lv in range(_MIP_LEVELS):
                offsets[t, lv] = total
                heights[t, lv], widths[t, lv] = level.shape[:2]
                flat.append(level.reshape(-1, 3))
                total += level.shape[0] * level.shape[1]
                if min(level.shape[:2]) >= 2:
                    level = cv2.resize(level, (level.shape[1] // 2, level.shape[0] // 2),
                                       interpolation=cv2.INTER_AREA)
        self._atlas = np.concatenate(flat, axis=0)  # uint8 texels of every texture and mip level
        self._tex_off, self._tex_w, self._tex_h = offsets, widths, heights
        self._tex_size = widths[:, 0].astype(np.float64)

    def render(self, camera: CameraIntrinsics, T_world_camera: np.ndarray, *,
               lighting: Lighting | None = None) -> Rendering:
        """Ray-cast the view of ``camera`` at ``T_world_camera`` (4x4 camera-to-world)."""
        if camera.D.size and np.any(camera.D != 0):
            raise ValueError('the box-world renderer models pinhole cameras only (D must be zero)')
        T = np.asarray(T_world_camera, np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f'T_world_camera must be a finite 4x4 matrix, got shape {T.shape}')
        light = lighting or Lighting()
        H, W = camera.height, camera.width
        R, o = T[:3, :3], T[:3, 3]
        rays = self._camera_rays(camera)
        # World ray directions as 3 contiguous planes; ray parameter t = z-depth in the camera.
        d = [rays[0] * R[a, 0] + rays[1] * R[a, 1] + R[a, 2] for a in range(3)]
        with np.errstate(divide='ignore'):
            inv_d = [1.0 / da for da in d]
        t_buf = np.full((H, W), np.inf)
        id_buf = np.full((H, W), -1, np.int32)
        face_buf = np.full((H, W), -1, np.int8)

        if self.boxes:
            self._cast_boxes(camera, R, o, inv_d, t_buf, id_buf, face_buf)
        if self.ground is not None:
            dz = d[2]
            with np.errstate(divide='ignore', invalid='ignore'):
                t_g = np.where(dz < 0, -o[2] / dz, np.inf)
            hit_g = (t_g > _NEAR_M) & (t_g < t_buf)
            t_buf[hit_g] = t_g[hit_g]
            id_buf[hit_g] = -2
            face_buf[hit_g] = 5
        return self._shade(camera, o, d, t_buf, id_buf, face_buf, light)

    def _camera_rays(self, camera: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
        """Ray directions (x, y) planes in the camera frame for z = 1 (so ray parameter t = z-depth)."""
        key = (camera.width, camera.height, *camera.K.ravel().tolist())
        rays = self._ray_cache.get(key)
        if rays is None:
            v, u = np.mgrid[0:camera.height, 0:camera.width].astype(np.float64)
            pix = np.stack([u, v, np.ones_like(u)], axis=-1)
            r = pix @ np.linalg.inv(camera.K).T
            r /= r[..., 2:3]
            rays = (np.ascontiguousarray(r[..., 0]), np.ascontiguousarray(r[..., 1]))
            if len(self._ray_cache) > 8:
                self._ray_cache.clear()
            self._ray_cache[key] = rays
        return rays

    def _screen_rects(self, camera: CameraIntrinsics, R: np.ndarray, o: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per box: pixel rectangle [u0, u1) x [v0, v1) covering its part in front of the camera."""
        H, W = camera.height, camera.width
        K = camera.K
        cam = (self._corners - o) @ R  # N,8,3 corners in the camera frame
        a = cam[:, _EDGES[:, 0]]  # N,12,3 edge endpoints
        b = cam[:, _EDGES[:, 1]]
        za, zb = a[..., 2], b[..., 2]
        crosses = (za > _CLIP_Z) != (zb > _CLIP_Z)
        with np.errstate(divide='ignore', invalid='ignore'):
            s = np.where(crosses, (_CLIP_Z - za) / (zb - za), 0.0)
        clip_pts = a + s[..., None] * (b - a)  # N,12,3 (z = _CLIP_Z where the edge crosses)
        pts = np.concatenate([cam, clip_pts], axis=1)  # N,20,3
        use = np.concatenate([cam[..., 2] > _CLIP_Z, crosses], axis=1)
        z = np.where(use, pts[..., 2], 1.0)
        u = (K[0, 0] * pts[..., 0] + K[0, 1] * pts[..., 1]) / z + K[0, 2]
        v = K[1, 1] * pts[..., 1] / z + K[1, 2]
        big = 1e9
        u0 = np.floor(np.where(use, u, big).min(axis=1).clip(-big, big)) - 1
        u1 = np.ceil(np.where(use, u, -big).max(axis=1).clip(-big, big)) + 2
        v0 = np.floor(np.where(use, v, big).min(axis=1).clip(-big, big)) - 1
        v1 = np.ceil(np.where(use, v, -big).max(axis=1).clip(-big, big)) + 2
        u0, u1 = np.clip(u0, 0, W).astype(np.int64), np.clip(u1, 0, W).astype(np.int64)
        v0, v1 = np.clip(v0, 0, H).astype(np.int64), np.clip(v1, 0, H).astype(np.int64)
        visible = use.any(axis=1) & (u1 > u0) & (v1 > v0)
        near_z = np.where(use, pts[..., 2], np.inf).min(axis=1)
        return u0, u1, v0, v1, visible, near_z

    def _cast_boxes(self, camera: CameraIntrinsics, R: np.ndarray, o: np.ndarray, inv_d: list[np.ndarray],
                    t_buf: np.ndarray, id_buf: np.ndarray, face_buf: np.ndarray) -> None:
        u0, u1, v0, v1, visible, near_z = self._screen_rects(camera, R, o)
        # Front to back (nearest point first) so farther boxes are mostly rejected by t_buf.
        order = np.argsort(np.where(visible, near_z, np.inf))
        for i in order[:int(visible.sum())]:
            sl = (slice(v0[i], v1[i]), slice(u0[i], u1[i]))
            t_min = []
            t_near = t_far = None
            for a in range(3):
                inv = inv_d[a][sl]
                t1 = (self._bmin[i, a] - o[a]) * inv
                t2 = (self._bmax[i, a] - o[a]) * inv
                lo = np.minimum(t1, t2)
                hi = np.maximum(t1, t2)
                t_min.append(lo)
                t_near = lo if t_near is None else np.maximum(t_near, lo)
                t_far = hi if t_far is None else np.minimum(t_far, hi)
            tb = t_buf[sl]
            hit = (t_near <= t_far) & (t_near > _NEAR_M) & (t_near < tb)
            if not hit.any():
                continue
            tn = t_near[hit]
            tb[hit] = tn
            id_buf[sl][hit] = i
            # The entry face is on the axis whose slab was entered last; its side from the ray direction.
            axis = np.where(t_min[0][hit] == tn, 0, np.where(t_min[1][hit] == tn, 1, 2))
            inv_axis = np.where(axis == 0, inv_d[0][sl][hit], np.where(axis == 1, inv_d[1][sl][hit], inv_d[2][sl][hit]))
            face_buf[sl][hit] = 2 * axis + (inv_axis < 0)

    def _shade(self, camera: CameraIntrinsics, o: np.ndarray, d: list[np.ndarray], t_buf: np.ndarray,
               id_buf: np.ndarray, face_buf: np.ndarray, light: Lighting) -> Rendering:
        H, W = camera.height, camera.width
        valid = id_buf != -1
        # Sky gradient by ray elevation.
        norm = np.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
        elev = np.sqrt(np.clip(d[2] / norm, 0.0, 1.0)).astype(np.float32)[..., None]
        zen = np.asarray(light.sky_zenith_rgb, np.float32)
        hor = np.asarray(light.sky_horizon_rgb, np.float32)
        rgb = hor + (zen - hor) * elev
        depth = np.zeros((H, W), np.float32)
        xyz = np.zeros((H, W, 3), np.float64)
        if not valid.any():
            return Rendering(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), depth, xyz, id_buf, face_buf)

        t = t_buf[valid]
        dv = np.stack([da[valid] for da in d], axis=1)
        p = o + t[:, None] * dv
        ids = id_buf[valid]
        face = face_buf[valid].astype(np.int64)
        n = ids.size
        tex = np.empty(n, np.int64)
        u_m = np.empty(n, np.float64)
        v_m = np.empty(n, np.float64)
        tile = np.empty(n, np.float64)
        axis_of = face // 2
        for a in range(3):
            sel = np.flatnonzero((axis_of == a) & (ids >= 0))
            if sel.size == 0:
                continue
            bi = ids[sel]
            ua, va = _UV_AXES[a]
            lo_u, hi_u = self._bmin[bi, ua], self._bmax[bi, ua]
            lo_v, hi_v = self._bmin[bi, va], self._bmax[bi, va]
            u_coord = p[sel, ua] - lo_u
            # Vertical faces: v runs down from the top edge (image up = +z); horizontal faces: along y.
            v_coord = hi_v - p[sel, va] if a < 2 else p[sel, va] - lo_v
            bt = self._btile[bi]
            stretch = bt == 0
            tile_u = np.where(stretch, hi_u - lo_u, bt)
            tile_v = np.where(stretch, hi_v - lo_v, bt)
            u_m[sel] = u_coord / tile_u
            v_m[sel] = v_coord / tile_v
            tile[sel] = np.sqrt(tile_u * tile_v)
            tex[sel] = self._btex[bi, face[sel]]
        on_ground = ids == -2
        if on_ground.any():
            g = self.ground
            pg = p[on_ground]
            tex[on_ground] = g.texture
            u_m[on_ground] = (pg[:, 0] - g.origin_xy[0]) / g.tile_m
            v_m[on_ground] = (g.origin_xy[1] - pg[:, 1]) / g.tile_m
            tile[on_ground] = g.tile_m

        # Mip level from the pixel footprint on the surface.
        dnorm = norm[valid]
        dist = t * dnorm
        cos = np.abs(dv[np.arange(n), axis_of]) / dnorm
        footprint_m = dist / camera.K[0, 0] / np.sqrt(np.maximum(cos, 0.05))
        texels = footprint_m * self._tex_size[tex] / tile
        level = np.clip(np.floor(np.log2(np.maximum(texels, 1e-9))), 0, _MIP_LEVELS - 1).astype(np.int64)
        tw = self._tex_w[tex, level]
        th = self._tex_h[tex, level]
        ix = np.minimum((np.mod(u_m, 1.0) * tw).astype(np.int64), tw - 1)
        iy = np.minimum((np.mod(v_m, 1.0) * th).astype(np.int64), th - 1)
        colour = self._atlas[self._tex_off[tex, level] + iy * tw + ix].astype(np.float32)

        L = np.asarray(light.light_dir, np.float32)
        L = L / np.linalg.norm(L)
        shade = (light.ambient + light.diffuse * np.maximum(_FACE_NORMALS @ L, 0.0)).astype(np.float32)
        colour *= shade[face][:, None]
        if light.fog_m > 0:
            fog = np.exp(-dist / light.fog_m).astype(np.float32)[:, None]
            colour = colour * fog + hor * (1.0 - fog)
        rgb[valid] = colour
        depth[valid] = t
        xyz[valid] = p
        return Rendering(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), depth, xyz, id_buf, face_buf)


# ----------------------------------------------------------------------------------------------
# Helpers shared by the box worlds (paths, dataset writing)
# ----------------------------------------------------------------------------------------------

#: Stride of the scene coordinates written to ``init/``: cell (i, j) is pixel (8j + 4, 8i + 4) (DSAC*).
INIT_STRIDE_PX = 8


def catmull_rom(points_N2: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Uniform Catmull-Rom spline through ``points_N2`` at parameters ``s`` in [0, N-1].

    Returns (positions (M, D), derivatives d/ds (M, D)). The curve passes through every point;
    segment i spans s in [i, i+1]. End tangents use mirrored neighbours.
    """
    P = np.asarray(points_N2, np.float64)
    if P.ndim != 2 or P.shape[0] < 2:
        raise ValueError(f'catmull_rom needs at least 2 points, got shape {P.shape}')
    ext = np.concatenate([2 * P[:1] - P[1:2], P, 2 * P[-1:] - P[-2:-1]], axis=0)
    s = np.clip(np.asarray(s, np.float64), 0.0, P.shape[0] - 1)
    i = np.minimum(np.floor(s).astype(np.int64), P.shape[0] - 2)
    t = (s - i)[:, None]
    p0, p1, p2, p3 = ext[i], ext[i + 1], ext[i + 2], ext[i + 3]
    pos = 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                 + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3)
    der = 0.5 * ((-p0 + p2) + 2 * (2 * p0 - 5 * p1 + 4 * p2 - p3) * t + 3 * (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 2)
    return pos, der


def write_scene_frame(split_dir: Path, stem: str, rgb_file: Path, T_world_camera: np.ndarray,
                      focal_px: float, rendering: Rendering) -> None:
    """One frame in the DSAC*/CrossLoc layout under ``split_dir`` (rgb, poses, calibration, depth, init).

    ``rgb_file``: the already written image, hard-linked (copied where links are impossible) into
    ``rgb/``. depth: uint16 PNG in millimetres (0 = invalid); init: float32 3 x H/8 x W/8 scene
    coordinates at pixels (8j + 4, 8i + 4), zeros where invalid.
    """
    link_or_copy(rgb_file, split_dir / 'rgb' / f'{stem}{rgb_file.suffix}')
    np.savetxt(split_dir / 'poses' / f'{stem}.txt', T_world_camera, fmt='%.10f')
    (split_dir / 'calibration' / f'{stem}.txt').write_text(f'{focal_px:.10f}\n')
    depth_mm = np.clip(np.round(rendering.depth_HW.astype(np.float64) * 1000.0), 0, 65535).astype(np.uint16)
    if not cv2.imwrite(str(split_dir / 'depth' / f'{stem}.png'), depth_mm, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f'cannot write {split_dir / "depth" / (stem + ".png")}')
    s = INIT_STRIDE_PX
    h, w = rendering.depth_HW.shape
    valid = rendering.valid_HW[s // 2:(h // s) * s:s, s // 2:(w // s) * s:s]
    sub = rendering.xyz_world_HW3[s // 2:(h // s) * s:s, s // 2:(w // s) * s:s]
    sub = np.where(valid[..., None], sub, 0.0)
    np.save(split_dir / 'init' / f'{stem}.npy', np.ascontiguousarray(sub.transpose(2, 0, 1)).astype(np.float32))


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no extra disk), copying when the file system cannot link."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def make_scene_dirs(split_dir: Path) -> None:
    for sub in ('rgb', 'poses', 'calibration', 'depth', 'init'):
        (split_dir / sub).mkdir(parents=True, exist_ok=True)


def encode_png(rgb_HW3: np.ndarray) -> bytes:
    ok, buf = cv2.imencode('.png', cv2.cvtColor(rgb_HW3, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError('PNG encoding failed')
    return buf.tobytes()


def encode_jpeg(rgb_HW3: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb_HW3, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise OSError('JPEG encoding failed')
    return buf.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    """RGB uint8 image of encoded PNG/JPEG bytes (what a reader of the written file gets)."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError('image decoding failed')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
