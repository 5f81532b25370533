"""Data of the retrieval trainer: ``poses.csv`` (the campus world's 6-DoF ground truth), query splits, and the
reference database's images and poses as arrays."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vizloc_plugins.refdb import ReferenceDatabase, ReferenceDatabaseError

__all__ = ['read_poses_csv', 'QuerySet', 'load_queries', 'RefArrays', 'load_reference_arrays', 'read_rgb', 'same_place']


def read_poses_csv(path: Path) -> dict[str, np.ndarray]:
    """``image,x,y,z,qx,qy,qz,qw`` rows (T_map_camera, optical frame) -> {image: 4x4}."""
    from transforms3d.quaternions import quat2mat

    poses = {}
    with open(path, newline='') as fh:
        for row_no, row in enumerate(csv.DictReader(fh), start=2):
            try:
                t = [float(row[k]) for k in ('x', 'y', 'z')]
                q = np.array([float(row[k]) for k in ('qw', 'qx', 'qy', 'qz')])
                name = row['image']
            except (KeyError, TypeError, ValueError) as exc:
                raise ReferenceDatabaseError(f'{path}:{row_no}: bad row: {exc}') from exc
            if not np.all(np.isfinite(q)) or not np.linalg.norm(q) > 0:
                raise ReferenceDatabaseError(f'{path}:{row_no}: bad quaternion {q}')
            T = np.eye(4)
            T[:3, :3] = quat2mat(q / np.linalg.norm(q))
            T[:3, 3] = t
            poses[name] = T
    return poses


def read_rgb(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 image, optionally resized to ``size`` (W, H) with INTER_AREA."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ReferenceDatabaseError(f'{path}: cannot decode image')
    if size is not None and (bgr.shape[1], bgr.shape[0]) != tuple(size):
        bgr = cv2.resize(bgr, tuple(size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(bgr[..., ::-1])


@dataclass(frozen=True)
class QuerySet:
    """Query images of one split with their ground-truth poses and the camera (from world.yaml)."""

    images: tuple[Path, ...]
    T_map_camera: np.ndarray  # (N, 4, 4)
    K: np.ndarray
    width: int
    height: int


def load_queries(data: Path, split: str, max_queries: int = 0) -> QuerySet:
    """``data/images/<split>_*.jpg`` with ``data/poses.csv`` and the camera of ``data/world.yaml`` (campus layout)."""
    import yaml

    poses = read_poses_csv(data / 'poses.csv')
    names = sorted(n for n in poses if n.startswith(f'{split}_'))
    if not names:
        raise ReferenceDatabaseError(f'{data}/poses.csv: no {split!r} images')
    if max_queries and len(names) > max_queries:  # evenly spread, deterministic
        names = [names[i] for i in np.linspace(0, len(names) - 1, max_queries).round().astype(int)]
    camera = yaml.safe_load((data / 'world.yaml').read_text())['camera']
    return QuerySet(tuple(data / 'images' / n for n in names), np.stack([poses[n] for n in names]),
                    np.asarray(camera['K'], float), int(camera['width']), int(camera['height']))


@dataclass(frozen=True)
class RefArrays:
    """Reference entries with a pose as arrays: images (N, H, W, 3) at the training size, positions (N, 3) in
    the map frame, unit optical axes (N, 3)."""

    uids: tuple[str, ...]
    images_NHW3: np.ndarray
    position_N3: np.ndarray
    axis_N3: np.ndarray


def load_reference_arrays(db: ReferenceDatabase, width: int, height: int, max_entries: int = 0) -> RefArrays:
    entries = [e for e in db if e.E is not None]
    if not entries:
        raise ReferenceDatabaseError(f'{db.root}: no entry has a pose (E); the trainer needs positions in the map frame')
    if max_entries and len(entries) > max_entries:
        entries = [entries[i] for i in np.linspace(0, len(entries) - 1, max_entries).round().astype(int)]
    T = np.stack([e.T_map_camera for e in entries])
    images = np.stack([read_rgb(e.image, (width, height)) for e in entries])
    return RefArrays(tuple(e.uid for e in entries), images, T[:, :3, 3].copy(), T[:, :3, 2].copy())


def same_place(pos_a: np.ndarray, axis_a: np.ndarray, pos_b: np.ndarray, axis_b: np.ndarray, radius_m: float,
               max_angle_deg: float) -> np.ndarray:
    """(Na, Nb) bool: within ``radius_m`` and optical axes within ``max_angle_deg`` (overlapping views)."""
    d = np.linalg.norm(pos_a[:, None, :] - pos_b[None, :, :], axis=2)
    cos = axis_a @ axis_b.T
    return (d <= radius_m) & (cos >= math.cos(math.radians(max_angle_deg)))
