"""Training data for scene-coordinate regression: images at the network input size with 1/8-grid targets.

:func:`prepare_split` reads a DSAC*-layout split through
:class:`vizloc_training.datasets.scene_coordinates.SceneCoordinateDataset` and turns every sample
into a :class:`PreparedImage`: the RGB image resized ("stretch", like the runtime) to the input
size, the intrinsics scaled to match (``CameraIntrinsics.scaled``), the pose, and, when the
dataset has them, ground-truth scene coordinates for every output cell:

* from ``init/*.npy`` scene coordinates (full or 1/8 resolution; zeros = invalid), the coordinate
  cell nearest to each output cell (exact when the input size is the dataset's size), or
* from ``depth`` (metres): the cell centre's pixel is back-projected with the original K and
  pose (:func:`vizloc_plugins.keyframes.lift_pixels`: bilinear depth where smooth, else the
  nearest depth pixel).

Samples without either are supervised by the reprojection loss (see :mod:`.losses`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from vizloc_plugins.keyframes import lift_pixels
from vizloc_ros.types import CameraIntrinsics

from .model import OUTPUT_STRIDE, output_size

__all__ = ['PreparedImage', 'prepare_sample', 'prepare_split', 'scene_normalisation', 'open_split', 'augment_view']

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedImage:
    """One training/test image at the network input size.

    ``coords_3hw`` (float32, metres, scene frame) and ``valid_hw`` are None when the sample has no
    3D supervision. ``K`` is for the resized image.
    """

    name: str
    rgb_HW3: np.ndarray
    K: np.ndarray
    T_world_camera: np.ndarray
    coords_3hw: np.ndarray | None
    valid_hw: np.ndarray | None

    @property
    def T_camera_world(self) -> np.ndarray:
        return np.linalg.inv(self.T_world_camera)


def open_split(root: Path, split: str) -> Any:
    """The dataset reader of S1 (``SceneCoordinateDataset(root, split)``); ``root/scene`` is used when
    ``root`` holds a DSAC copy there (the indoor world)."""
    from vizloc_training.datasets.scene_coordinates import SceneCoordinateDataset

    root = Path(root)
    if not (root / split / 'rgb').is_dir() and (root / 'scene' / split / 'rgb').is_dir():
        root = root / 'scene'
    return SceneCoordinateDataset(root, split, require_geo=False)


def _cell_pixels_in_source(h: int, w: int, in_w: int, in_h: int, src_w: int, src_h: int) -> tuple[np.ndarray, np.ndarray]:
    """Source-image pixel coordinates of the output cells (cell (i, j) = input pixel (8 j + 4, 8 i + 4)).

    Pixel k's centre is at coordinate k; resizing maps u_in -> (u_in + 0.5) * src_w / in_w - 0.5.
    """
    u_in = np.arange(w) * OUTPUT_STRIDE + OUTPUT_STRIDE // 2
    v_in = np.arange(h) * OUTPUT_STRIDE + OUTPUT_STRIDE // 2
    u_src = (u_in + 0.5) * src_w / in_w - 0.5
    v_src = (v_in + 0.5) * src_h / in_h - 0.5
    uu, vv = np.meshgrid(u_src, v_src)
    return uu, vv


def prepare_sample(sample: Any, in_w: int, in_h: int) -> PreparedImage:
    """Resize one ``SceneSample`` and compute its cell targets (scene coordinates preferred over depth)."""
    rgb = np.asarray(sample.rgb_HW3)
    src_h, src_w = rgb.shape[:2]
    K_src = np.asarray(sample.K, dtype=np.float64)
    T = np.asarray(sample.T_world_camera, dtype=np.float64)
    camera = CameraIntrinsics(K=K_src, width=src_w, height=src_h).scaled(in_w, in_h)
    interpolation = cv2.INTER_AREA if in_w < src_w else cv2.INTER_LINEAR
    image = rgb if (src_w, src_h) == (in_w, in_h) else cv2.resize(rgb, (in_w, in_h), interpolation=interpolation)
    h, w = output_size(in_h, in_w)
    uu, vv = _cell_pixels_in_source(h, w, in_w, in_h, src_w, src_h)
    coords = None
    valid = None
    init = getattr(sample, 'coords_3HW', None)
    depth = getattr(sample, 'depth_HW', None)
    init_rows_cols = None
    if init is not None:
        init = np.asarray(init, dtype=np.float32)
        ch, cw = init.shape[1:]
        stride = int(getattr(sample, 'coords_stride_px', 1 if (ch, cw) == (src_h, src_w) else OUTPUT_STRIDE))
        offset = stride // 2 if stride > 1 else 0
        # nearest coordinate cell: cell k holds source pixel stride * k + offset
        rows_f, cols_f = (vv - offset) / stride, (uu - offset) / stride
        rows = np.clip(np.rint(rows_f), 0, ch - 1).astype(int)
        cols = np.clip(np.rint(cols_f), 0, cw - 1).astype(int)
        # the nearest init cell is off by up to stride/2 source pixels when the input size is not the
        # dataset's (1.75 px at 160x120 from 320x240 with stride 8, ~4 m at 300 m range): depth, when
        # present, gives the exact point of every cell centre instead
        misaligned = np.max(np.abs(rows_f - rows)) > 1e-3 or np.max(np.abs(cols_f - cols)) > 1e-3
        if not (misaligned and depth is not None):
            init_rows_cols = (rows, cols)
    if init_rows_cols is not None:
        rows, cols = init_rows_cols
        coords = init[:, rows, cols]
        valid = np.all(np.isfinite(coords), axis=0) & np.any(coords != 0.0, axis=0)
    elif depth is not None:
        # depth at the exact cell-centre pixel (bilinear where the 2x2 block is valid and smooth, else the
        # nearest depth pixel), back-projected with the pose; a depth map of another resolution than the
        # image gets the pixels and K of its own grid (the same rays)
        dh, dw = np.asarray(depth).shape
        px = np.stack([uu.reshape(-1), vv.reshape(-1)], axis=1)
        K_depth = K_src
        if (dw, dh) != (src_w, src_h):
            px = (px + 0.5) * [dw / src_w, dh / src_h] - 0.5
            K_depth = CameraIntrinsics(K=K_src, width=src_w, height=src_h).scaled(dw, dh).K
        X, valid_flat = lift_pixels(px, K_depth, T, depth_HW=depth)
        flat = np.zeros((h * w, 3), np.float32)
        flat[valid_flat] = X
        coords = flat.T.reshape(3, h, w)
        valid = valid_flat.reshape(h, w)
    if coords is not None:
        coords = np.where(valid[None], coords, 0.0).astype(np.float32)
    return PreparedImage(name=str(getattr(sample, 'name', '')), rgb_HW3=np.ascontiguousarray(image),
                         K=camera.K, T_world_camera=T, coords_3hw=coords, valid_hw=valid)


def prepare_split(samples: Iterable[Any], in_w: int, in_h: int, limit: int | None = None) -> list[PreparedImage]:
    out = []
    for i, sample in enumerate(samples):
        if limit is not None and i >= limit:
            break
        out.append(prepare_sample(sample, in_w, in_h))
    return out


def scene_normalisation(images: list[PreparedImage], target_depth_m: float) -> tuple[np.ndarray, float, str]:
    """(mean_m, scale_m, supervision) of the training scene.

    With 3D targets: mean and RMS spread of all valid target coordinates ("coords"); without: the
    mean camera position and the larger of the camera spread and ``target_depth_m``
    ("reprojection"). Supervision is "coords" only when every image has 3D targets.
    """
    if not images:
        raise ValueError('no training images')
    if all(im.coords_3hw is not None for im in images):
        pts = np.concatenate([im.coords_3hw.reshape(3, -1)[:, im.valid_hw.reshape(-1)].T for im in images])
        if len(pts) >= 3:
            mean = pts.mean(axis=0)
            scale = float(np.sqrt(np.mean(np.sum((pts - mean) ** 2, axis=1)) / 3.0))
            return mean, max(scale, 1e-3), 'coords'
    centres = np.stack([im.T_world_camera[:3, 3] for im in images])
    mean = centres.mean(axis=0)
    spread = float(np.sqrt(np.mean(np.sum((centres - mean) ** 2, axis=1)) / 3.0))
    return mean, max(spread, target_depth_m), 'reprojection'


def augment_view(image: PreparedImage, angle_rad: float, scale: float) -> PreparedImage:
    """ACE's geometric augmentation, done so that the geometry stays exact: the image is rotated by
    ``angle_rad`` about the principal point (a camera roll) and scaled by ``scale`` about it (a focal
    length change); ``K`` and ``T_world_camera`` are updated accordingly and the cell targets are
    re-sampled at the new cell centres (bilinear on the 1/8 target grid where the four neighbouring
    cells are valid and at depths within 5 % of each other -- no blending across depth edges --,
    invalid elsewhere, including cells that left the original image). Flips or crops that do not
    update the targets would teach wrong coordinates; this is the only geometric augmentation.
    Needs 3D targets (``coords_3hw``).
    """
    if image.coords_3hw is None or image.valid_hw is None:
        raise ValueError('augment_view needs 3D targets (coords_3hw)')
    if not scale > 0.0:
        raise ValueError(f'scale must be positive, got {scale}')
    H, W = image.rgb_HW3.shape[:2]
    cx, cy = float(image.K[0, 2]), float(image.K[1, 2])
    c, s_ = math.cos(angle_rad), math.sin(angle_rad)
    A = scale * np.array([[c, -s_], [s_, c]])  # new pixel = centre + A (old pixel - centre)
    M = np.column_stack([A, np.array([cx, cy]) - A @ np.array([cx, cy])])
    rgb = cv2.warpAffine(image.rgb_HW3, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    h, w = image.coords_3hw.shape[1:]
    v_new, u_new = np.meshgrid(np.arange(h) * OUTPUT_STRIDE + OUTPUT_STRIDE // 2.0,
                               np.arange(w) * OUTPUT_STRIDE + OUTPUT_STRIDE // 2.0, indexing='ij')
    old = np.linalg.solve(A, np.stack([u_new.ravel() - cx, v_new.ravel() - cy])) + np.array([[cx], [cy]])
    gx = (old[0] - OUTPUT_STRIDE // 2) / OUTPUT_STRIDE  # fractional source cell
    gy = (old[1] - OUTPUT_STRIDE // 2) / OUTPUT_STRIDE
    inside = (gx >= 0) & (gx <= w - 1) & (gy >= 0) & (gy <= h - 1)
    x0 = np.clip(np.floor(gx), 0, max(w - 2, 0)).astype(int)
    y0 = np.clip(np.floor(gy), 0, max(h - 2, 0)).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = np.clip(gx - x0, 0.0, 1.0), np.clip(gy - y0, 0.0, 1.0)
    coords = image.coords_3hw.astype(np.float64)
    T_cw = image.T_camera_world
    depth = (T_cw[2, :3] @ coords.reshape(3, -1) + T_cw[2, 3]).reshape(h, w)
    corners = [(y0, x0), (y0, x1), (y1, x0), (y1, x1)]
    weights = [(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx]
    valid = inside.copy()
    for (yy, xx) in corners:
        valid &= image.valid_hw[yy, xx]
    d = np.stack([depth[yy, xx] for (yy, xx) in corners])
    valid &= (d.min(axis=0) > 0.0) & (d.max(axis=0) <= 1.05 * d.min(axis=0))
    new = sum(wt[None] * coords[:, yy, xx] for wt, (yy, xx) in zip(weights, corners))
    new = np.where(valid[None], new, 0.0).reshape(3, h, w).astype(np.float32)
    K = image.K.copy()
    K[0, 0] *= scale
    K[1, 1] *= scale
    Rz = np.eye(4)
    Rz[:2, :2] = [[c, -s_], [s_, c]]  # x_cam_new = Rz x_cam_old
    return PreparedImage(name=image.name, rgb_HW3=np.ascontiguousarray(rgb), K=K,
                         T_world_camera=image.T_world_camera @ Rz.T, coords_3hw=new,
                         valid_hw=valid.reshape(h, w))
