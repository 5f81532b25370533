"""Keyframe map of a scene-coordinate bundle: the mapping frames' SIFT keypoints with their 3D scene points.

A second source of 2D-3D correspondences beside the network's cells (structure-based localization,
as in Active Search / hloc, against the frames the scene was mapped from). Built at mapping time by
:func:`build_keyframe_map` from the training split: each frame's SIFT keypoints are lifted to scene
coordinates by the frame's depth (or its ``init`` scene coordinates) and pose. At run time
:class:`KeyframeMap` matches a frame against it:

1. SIFT keypoints of the query (the same count as the map's frames);
2. **keyframe vote**: each query descriptor's ``neighbours`` nearest map descriptors (FAISS, L2 on
   the uint8 SIFT values) vote for their keyframes; the ``candidates`` keyframes with most distinct
   votes are kept (no global descriptor network needed; rotation- and scale-invariant);
3. **matches**: Lowe's ratio test (RootSIFT) between the query and each kept keyframe; each match
   gives the keyframe keypoint's 3D point;
4. **pose**: :func:`vizloc_plugins.pnp.solve_pnp_lo_ransac` (poselib LO-RANSAC) on those
   correspondences; fewer than ``min_inliers`` inliers gives no pose.

Files in the bundle (``metadata.keyframes``, :class:`vizloc_plugins.scene_coordinates_contract.SceneKeyframes`):
``keyframes.npz`` (``points_map_N3`` float32 metres, ``frame_N`` int32, ``names`` of the frames) and
``keyframes.faiss`` (the vote index, which also holds the uint8 SIFT descriptors exactly: an
``IndexScalarQuantizer`` up to :data:`FLAT_MAX_POINTS` points, else an inverted file over them,
``IVF{nlist},SQ8direct``; row i of the index is point i). Torch-free.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from .pnp import Evidence, PnPSolution, solve_pnp_lo_ransac, undistort_pixels
from .scene_coordinates_contract import SceneKeyframes

__all__ = ['KEYFRAMES_NPZ', 'KEYFRAMES_INDEX', 'FLAT_MAX_POINTS', 'KeyframeError', 'KeyframeMatch', 'KeyframeMap',
           'build_keyframe_map', 'lift_pixels', 'root_sift', 'sift_detector', 'sift_features']

logger = logging.getLogger(__name__)

KEYFRAMES_NPZ = 'keyframes.npz'
KEYFRAMES_INDEX = 'keyframes.faiss'
#: Up to this many map points the vote index is exact; above, an inverted file (``nprobe`` lists searched).
FLAT_MAX_POINTS = 50_000
_NPROBE = 16


class KeyframeError(ValueError):
    """A keyframe map that cannot be built or read (no frames with depth, missing/corrupt files)."""


def sift_detector(n_features: int, contrast_threshold: float = 0.01) -> Any:
    """OpenCV's SIFT keeping the ``n_features`` strongest keypoints; ``contrast_threshold`` below OpenCV's
    0.04 finds keypoints in small or blurred frames. Made once (configure), used for every frame."""
    return cv2.SIFT_create(nfeatures=int(n_features), contrastThreshold=contrast_threshold)


def sift_features(gray_HW: np.ndarray, detector: Any) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints (N, 2) float64 pixel centres and descriptors (N, 128) uint8 of a grayscale image."""
    keypoints, descs = detector.detectAndCompute(np.ascontiguousarray(gray_HW), None)
    if descs is None or not keypoints:
        return np.zeros((0, 2)), np.zeros((0, 128), np.uint8)
    # OpenCV's SIFT values are integers in [0, 255] stored as float32
    return (np.array([k.pt for k in keypoints], dtype=np.float64),
            np.clip(np.rint(descs), 0, 255).astype(np.uint8))


def root_sift(descs_N128: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelovic & Zisserman 2012): L1-normalised, square-rooted, float32; L2 between these
    is the Hellinger distance between the SIFTs."""
    d = np.asarray(descs_N128, dtype=np.float32)
    return np.sqrt(d / np.maximum(d.sum(axis=1, keepdims=True), 1e-7))


def lift_pixels(px_N2: np.ndarray, K_3x3: np.ndarray, T_map_camera: np.ndarray, *, depth_HW: np.ndarray | None = None,
                coords_3HW: np.ndarray | None = None, coords_stride_px: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Scene points of image pixels: (points (M, 3), mask over the N pixels).

    With ``depth_HW`` (z-depth in metres, 0 = invalid): bilinear depth where the pixel's 2x2
    neighbourhood is valid and smooth (within 5 %), else the nearest depth pixel (no blending across
    depth edges), back-projected with ``K`` and the pose. Else with ``coords_3HW`` (scene coordinates,
    zeros = invalid, cell k at pixel ``stride * k + stride // 2``): bilinear where the four cells are
    valid and within 5 % of the nearest one's distance to the camera.
    """
    px = np.asarray(px_N2, dtype=np.float64).reshape(-1, 2)
    if len(px) == 0:
        return np.zeros((0, 3)), np.zeros(0, bool)
    T = np.asarray(T_map_camera, dtype=np.float64)
    if depth_HW is not None:
        depth = np.asarray(depth_HW, dtype=np.float32)
        map_x = px[:, :1].astype(np.float32)
        map_y = px[:, 1:].astype(np.float32)
        d_near = cv2.remap(depth, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE).reshape(-1)
        d_lin = cv2.remap(depth, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).reshape(-1)
        lo = -cv2.dilate(-depth, np.ones((2, 2), np.uint8), anchor=(0, 0))  # min over the 2x2 block
        hi = cv2.dilate(depth, np.ones((2, 2), np.uint8), anchor=(0, 0))
        x0 = np.clip(np.floor(px[:, 0]), 0, depth.shape[1] - 1).astype(int)
        y0 = np.clip(np.floor(px[:, 1]), 0, depth.shape[0] - 1).astype(int)
        smooth = (lo[y0, x0] > 0.0) & (hi[y0, x0] <= 1.05 * lo[y0, x0])
        d = np.where(smooth, d_lin, d_near).astype(np.float64)
        ok = np.isfinite(d) & (d > 0.0)
        rays = np.linalg.solve(np.asarray(K_3x3, dtype=np.float64), np.stack([px[:, 0], px[:, 1], np.ones(len(px))]))
        X = (T[:3, :3] @ (rays * np.where(ok, d, 0.0)) + T[:3, 3:4]).T
        return X[ok], ok
    if coords_3HW is None:
        raise KeyframeError('lifting pixels to 3D needs depth or scene coordinates')
    coords = np.asarray(coords_3HW, dtype=np.float32)
    s = int(coords_stride_px)
    offset = s // 2 if s > 1 else 0
    map_x = ((px[:, :1] - offset) / s).astype(np.float32)
    map_y = ((px[:, 1:] - offset) / s).astype(np.float32)
    X_lin = np.stack([cv2.remap(c, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).reshape(-1)
                      for c in coords], axis=1).astype(np.float64)
    X_near = np.stack([cv2.remap(c, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE).reshape(-1)
                       for c in coords], axis=1).astype(np.float64)
    valid_cells = np.any(coords != 0.0, axis=0).astype(np.float32)
    all_valid = cv2.remap(valid_cells, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).reshape(-1)
    centre = T[:3, 3]
    r_lin = np.linalg.norm(X_lin - centre, axis=1)
    r_near = np.linalg.norm(X_near - centre, axis=1)
    ok = (all_valid > 0.999) & np.all(np.isfinite(X_lin), axis=1) & (np.abs(r_lin - r_near) <= 0.05 * r_near)
    return X_lin[ok], ok


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency of vizloc-ros-plugins
        raise KeyframeError('the keyframe map needs faiss-cpu (pip install faiss-cpu)') from exc
    return faiss


def _vote_index(descriptors_N128: np.ndarray) -> Any:
    """Exact uint8 L2 index up to :data:`FLAT_MAX_POINTS` points, else ``IVF{4 sqrt N},SQ8direct`` coding
    the descriptors, not their residuals (FAISS k-means with its fixed seed, trained on at most 100
    points per list)."""
    faiss = _faiss()
    x = np.ascontiguousarray(descriptors_N128, dtype=np.float32)
    n = len(x)
    qt = faiss.ScalarQuantizer.QT_8bit_direct
    if n <= FLAT_MAX_POINTS:
        index = faiss.IndexScalarQuantizer(128, qt, faiss.METRIC_L2)
    else:
        nlist = int(4 * math.sqrt(n))
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatL2(128), 128, nlist, qt, faiss.METRIC_L2)
        index.by_residual = False  # the codes are the descriptors themselves (residuals do not fit in uint8)
        sample = x[np.random.default_rng(0).choice(n, min(n, 100 * nlist), replace=False)]
        index.train(sample)
        index.nprobe = _NPROBE
    index.add(x)
    return index


def build_keyframe_map(frames: Iterable[Any], out_dir: str | Path, *, n_features: int = 500) -> dict[str, Any]:
    """Write ``keyframes.npz`` and ``keyframes.faiss`` into ``out_dir``; returns the description stored in
    the bundle metadata (points, frames, features).

    ``frames`` yields scene samples (``rgb_HW3``, ``K``, ``T_world_camera``, ``depth_HW`` and/or
    ``coords_3HW`` + ``coords_stride_px``, ``name``), e.g. a
    :class:`vizloc_training.datasets.scene_coordinates.SceneCoordinateDataset` split. Frames with neither
    depth nor scene coordinates are skipped; none at all raises :class:`KeyframeError`.
    """
    started = time.perf_counter()
    detector = sift_detector(n_features)
    points, descs, frame_ids, names = [], [], [], []
    skipped = 0
    for i, sample in enumerate(frames):
        depth = getattr(sample, 'depth_HW', None)
        coords = getattr(sample, 'coords_3HW', None)
        if depth is None and coords is None:
            skipped += 1
            continue
        rgb = np.asarray(sample.rgb_HW3)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
        px, d = sift_features(gray, detector)
        if coords is not None and depth is None:
            stride = int(getattr(sample, 'coords_stride_px', 1))
            X, ok = lift_pixels(px, sample.K, sample.T_world_camera, coords_3HW=coords, coords_stride_px=stride)
        else:
            X, ok = lift_pixels(px, sample.K, sample.T_world_camera, depth_HW=depth)
        points.append(X.astype(np.float32))
        descs.append(d[ok])
        frame_ids.append(np.full(int(ok.sum()), len(names), np.int32))
        names.append(str(getattr(sample, 'name', i)))
    if not names or sum(len(p) for p in points) < 4:
        raise KeyframeError(f'no frame with depth or scene coordinates to build a keyframe map from ({skipped} skipped)')
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    points_N3 = np.concatenate(points)
    descriptors = np.concatenate(descs)
    np.savez_compressed(out / KEYFRAMES_NPZ, points_map_N3=points_N3, frame_N=np.concatenate(frame_ids),
                        names=np.array(names))
    index = _vote_index(descriptors)
    _faiss().write_index(index, str(out / KEYFRAMES_INDEX))
    seconds = time.perf_counter() - started
    logger.info('keyframe map: %d points from %d frames (%d skipped) in %.1f s', len(points_N3), len(names), skipped,
                seconds)
    return {'frames': len(names), 'points': int(len(points_N3)), 'features': 'sift', 'n_features': int(n_features),
            'index': 'flat' if len(points_N3) <= FLAT_MAX_POINTS else 'ivf', 'build_s': round(seconds, 1)}


@dataclass(frozen=True)
class KeyframeMatch:
    """The keyframe pose of one query (``solution`` None when no pose) and what led to it: the matches as
    2D-3D correspondences (undistorted pixels of the query, intrinsics ``K_3x3``), judged with
    ``threshold_px``."""

    solution: PnPSolution | None
    keyframes: tuple[str, ...]
    points_N3: np.ndarray
    pixels_N2: np.ndarray
    K_3x3: np.ndarray
    threshold_px: float

    @property
    def matches(self) -> int:
        return len(self.points_N3)

    @property
    def evidence(self) -> Evidence:
        """The matches as :class:`vizloc_plugins.pnp.Evidence` (for ``select_pose``)."""
        return Evidence(self.points_N3, self.pixels_N2, self.K_3x3, self.threshold_px)


class KeyframeMap:
    """A bundle's keyframe map, loaded for matching (see the module docstring) with its ``settings``
    (:class:`SceneKeyframes`: matching parameters and the covariance scale applied to its poses)."""

    def __init__(self, npz_path: str | Path, index_path: str | Path, settings: SceneKeyframes, *,
                 seed: int = 0) -> None:
        folder = Path(npz_path).parent
        try:
            with np.load(npz_path, allow_pickle=False) as data:
                self.points_N3 = np.asarray(data['points_map_N3'], dtype=np.float32)
                self.frame_N = np.asarray(data['frame_N'], dtype=np.int64)
                self.names = tuple(str(n) for n in data['names'])
            faiss = _faiss()
            self.index = faiss.read_index(str(index_path))
            if hasattr(self.index, 'nprobe'):  # an inverted file: rows are reconstructed by id
                faiss.extract_index_ivf(self.index).make_direct_map()
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise KeyframeError(f'{folder}: cannot read the keyframe map: {exc}') from exc
        n = len(self.points_N3)
        if not (len(self.frame_N) == n == self.index.ntotal) or self.points_N3.shape[1:] != (3,) or self.index.d != 128:
            raise KeyframeError(f'{folder}: keyframe map arrays disagree ({n} points, {len(self.frame_N)} frame ids, '
                                f'{self.index.ntotal} indexed {self.index.d}-D descriptors)')
        if n and (self.frame_N.min() < 0 or self.frame_N.max() >= len(self.names)):
            raise KeyframeError(f'{folder}: keyframe ids outside the {len(self.names)} frames')
        self.settings = settings
        self.seed = seed
        self._order = np.argsort(self.frame_N, kind='stable')
        self._starts = np.searchsorted(self.frame_N[self._order], np.arange(len(self.names) + 1))
        self._sift = sift_detector(settings.n_features)
        self._matcher = cv2.BFMatcher(cv2.NORM_L2)

    def __len__(self) -> int:
        return len(self.points_N3)

    def _frame_points(self, frame: int) -> np.ndarray:
        return self._order[self._starts[frame]:self._starts[frame + 1]]

    def match(self, gray_HW: np.ndarray, K_3x3: np.ndarray, *, dist_coeffs: np.ndarray | None = None,
              distortion_model: str = 'plumb_bob') -> KeyframeMatch:
        """Keyframe pose of a grayscale image with intrinsics ``K_3x3`` (its own pixel grid); its covariance
        is multiplied by ``settings.covariance_scale``."""
        opt = self.settings
        h, w = gray_HW.shape[:2]
        px, descs = sift_features(gray_HW, self._sift)
        K = np.asarray(K_3x3, dtype=np.float64)
        none = (np.zeros((0, 3)), np.zeros((0, 2)), K, opt.threshold_px)
        if len(px) < 4:
            return KeyframeMatch(None, (), *none)
        _, nn = self.index.search(np.ascontiguousarray(descs, dtype=np.float32), opt.neighbours)
        votes = np.zeros(len(self.names), np.int64)
        for row in nn:  # one vote per query keypoint and keyframe
            frames = np.unique(self.frame_N[row[row >= 0]])
            votes[frames] += 1
        top = [int(f) for f in np.argsort(-votes, kind='stable')[:opt.candidates] if votes[f] > 0]
        query = root_sift(descs)
        pixels, points = [], []
        for f in top:
            rows = self._frame_points(f)
            if len(rows) < 2:
                continue
            pairs = self._matcher.knnMatch(query, root_sift(self.index.reconstruct_batch(rows)), k=2)
            good = [(p[0].queryIdx, rows[p[0].trainIdx]) for p in pairs
                    if len(p) == 2 and p[0].distance < opt.ratio * p[1].distance]
            if good:
                qi, ri = np.array(good).T
                pixels.append(px[qi])
                points.append(self.points_N3[ri].astype(np.float64))
        names = tuple(self.names[f] for f in top)
        if not pixels:
            return KeyframeMatch(None, names, *none)
        pixels_N2 = undistort_pixels(np.concatenate(pixels), K, dist_coeffs, distortion_model)
        points_N3 = np.concatenate(points)
        solution = None
        if len(points_N3) >= opt.min_inliers:
            solution = solve_pnp_lo_ransac(points_N3, pixels_N2, K, w, h, threshold_px=opt.threshold_px, seed=self.seed)
            if solution is not None and solution.num_inliers < opt.min_inliers:
                solution = None
            elif solution is not None:
                solution = replace(solution, cov_6x6=solution.cov_6x6 * opt.covariance_scale)
        return KeyframeMatch(solution, names, points_N3, pixels_N2, K, opt.threshold_px)
