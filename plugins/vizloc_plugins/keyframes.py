"""Keyframe maps: the training frames' SIFT keypoints in one FAISS vote index, with what each frame knows.

:class:`KeyframeMap` (scene_coordinates bundles) keeps every keypoint's 3D scene point and answers a
6-DoF pose; :class:`PlaceMap` (gps_regressor bundles, whose images have only positions) keeps every
frame's position and answers a position: the positions of the training images that the query verifiably
overlaps, read at the scale at which the query sees their matches (:func:`scale_aligned_position`) and, where
the map found the images' headings (:func:`orient_images`), moved toward where the directions in which they
see the query's camera cross (:func:`ray_refined_position`) and, where their keypoints have metric depths, to
where those put it (:func:`depth_refined_position`). Both
share the keyframe vote and the ratio test (``_FrameIndex``).

Keyframe map of a scene-coordinate bundle: the mapping frames' SIFT keypoints with their 3D scene points.

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
``IVF{nlist},SQ8direct``; row i of the index is point i). A place map has the same two files with
``pixels_N2`` (the keypoints in their image), ``positions_FD`` (each frame's position in the bundle's
scene frame, metres) and ``sides_F`` (each image's longer side in pixels, as described; since 2026-12-05)
instead of the points, and, since a later change that day, ``centres_F2`` (each image's centre), ``yaws_F``
(headings, nan where unknown) and ``focal_side`` (:func:`build_place_map`), and since 2026-12-06 ``depths_N``
(each keypoint's metric depth in its image, float32, nan where unknown: :func:`map_depths`). Torch-free.
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import cv2
import numpy as np

from .pnp import Evidence, PnPSolution, solve_pnp_lo_ransac, undistort_pixels
from .gps_regressor_contract import GPSKeyframes
from .scene_coordinates_contract import SceneKeyframes

__all__ = ['KEYFRAMES_NPZ', 'KEYFRAMES_INDEX', 'FLAT_MAX_POINTS', 'ChainMatch', 'KeyframeError', 'KeyframeMatch', 'KeyframeMap',
           'HYPOTHESIS_BIRTH', 'HYPOTHESIS_MERGE_M', 'HYPOTHESIS_MISS', 'HYPOTHESIS_MISS_CARRY_S', 'Overlap', 'Place', 'PlaceMatch', 'PlaceMap', 'PlaceTracker', 'RecentPlaces', 'TrackedPlace', 'TRACK_GATE', 'Track', 'build_keyframe_map', 'choose_place', 'gate_d2', 'places_of', 'scale_aligned_position', 'build_place_map', 'write_place_map', 'lift_pixels', 'limit_size', 'limited_shape', 'log_scale', 'ratio_test', 'root_sift',
           'MapOrientation', 'agreeing_angle', 'bearing_in_camera', 'CameraDirections', 'camera_directions', 'orient_images',
           'DEPTH_AGREE_DEG', 'DEPTH_AGREE_M', 'DEPTH_MOVE_MAX_M', 'depth_refined_position', 'depth_scaled_offset',
           'map_depths', 'triangulated_depths',
           'ray_refined_position', 'RAY_PRIOR_WEIGHT', 'RAY_SCALE_M', 'RAY_YAW_STEPS', 'RAY_HEADING_WEIGHT',
           'RAY_HEADING_SCALE_DEG',
           'SCALE_RIDGE', 'SCALE_SHIFT_MAX_M', 'PLACE_HEAD_SIGMA', 'sift_detector', 'sift_features', 'verify_two_view']

logger = logging.getLogger(__name__)

KEYFRAMES_NPZ = 'keyframes.npz'
KEYFRAMES_INDEX = 'keyframes.faiss'
#: Up to this many map points the vote index is exact; above, an inverted file (``nprobe`` lists searched).
FLAT_MAX_POINTS = 50_000
_NPROBE = 16
#: Points per list the inverted file's k-means is trained on (FAISS warns below 39). 100 until 2026-12-06: on a
#: 1.7 M-point place map, 40 trained in a third of the time (73 vs 218 s) and the GPS walks placed the same
#: (docs/localizers/gps_regressor.md, "A faster vote index").
IVF_TRAIN_PER_LIST = 40


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


def ratio_test(matcher: Any, query_N128: np.ndarray, ref_N128: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(query indices, reference indices) of the query descriptors whose nearest reference descriptor passes
    Lowe's ratio test against the second nearest (``matcher``: an OpenCV ``BFMatcher(NORM_L2)``); empty when
    either side has fewer than 2 descriptors."""
    if len(query_N128) < 2 or len(ref_N128) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = matcher.knnMatch(query_N128, ref_N128, k=2)
    good = [(p[0].queryIdx, p[0].trainIdx) for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    if not good:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    qi, ri = np.array(good, dtype=np.int64).T
    return qi, ri


def verify_two_view(query_px_N2: np.ndarray, ref_px_N2: np.ndarray, threshold_px: float = 3.0) -> np.ndarray:
    """Inlier mask over tentative matches (query pixel i <-> reference pixel i): the larger inlier set of
    OpenCV's USAC (MAGSAC++) fundamental-matrix and homography fits (a homography explains planar or
    rotation-only views that a fundamental matrix fits badly); all False below 8 matches."""
    best = np.zeros(len(query_px_N2), bool)
    if len(query_px_N2) < 8:
        return best
    q = np.asarray(query_px_N2, dtype=np.float64)
    r = np.asarray(ref_px_N2, dtype=np.float64)
    for fit in (lambda: cv2.findFundamentalMat(q, r, cv2.USAC_MAGSAC, threshold_px, 0.999, 2000),
                lambda: cv2.findHomography(q, r, cv2.USAC_MAGSAC, threshold_px, maxIters=2000, confidence=0.999)):
        try:
            model, mask = fit()
        except cv2.error as exc:
            logger.debug('geometric verification failed: %s', exc)
            continue
        if model is not None and mask is not None and int(mask.sum()) > int(best.sum()):
            best = mask.reshape(-1).astype(bool)
    return best


def log_scale(query_px_N2: np.ndarray, ref_px_N2: np.ndarray, min_distance_px: float = 5.0,
              max_points: int = 100) -> float:
    """How much larger the query sees what it shares with a reference image, as a log: the median over pairs of
    matched points (query pixel i <-> reference pixel i, e.g. two-view inliers; at most ``max_points`` of
    them, evenly spaced in their order, so at most 4950 pairs) of log(their distance in the query / their
    distance in the reference), over pairs at least ``min_distance_px`` apart in both. > 0: the query was
    nearer the scene than the reference (a camera twice as far sees it half as large); 0 with fewer than 3
    such pairs."""
    q = np.asarray(query_px_N2, dtype=np.float64)
    r = np.asarray(ref_px_N2, dtype=np.float64)
    if len(q) > max_points:
        keep = np.linspace(0, len(q) - 1, max_points).round().astype(np.int64)
        q, r = q[keep], r[keep]
    upper = np.triu_indices(len(q), 1)
    d_query = np.linalg.norm(q[:, None] - q[None], axis=2)[upper]
    d_ref = np.linalg.norm(r[:, None] - r[None], axis=2)[upper]
    apart = (d_query >= min_distance_px) & (d_ref >= min_distance_px)
    if int(apart.sum()) < 3:
        return 0.0
    return float(np.median(np.log(d_query[apart] / d_ref[apart])))


#: A ray (:func:`bearing_in_camera`) needs this much of its direction horizontal.
RAY_MIN_HORIZONTAL = 0.3


class CameraDirections(NamedTuple):
    """Two cameras seen from each other (:func:`camera_directions`): the unit direction of b's centre in a's optical
    frame (``b_in_a``), of a's centre in b's (``a_in_b``), the essential matrix's ``inliers``, the rotation
    ``R_b_a`` (3, 3) that takes a direction in a's optical frame into b's, which of the matches those inliers
    are (``inlier_N``, bool), and the matches in normalised image coordinates, ``(pixel - centre) / focal``, in a
    (``rays_a_N2``) and b (``rays_b_N2``)."""

    b_in_a: np.ndarray
    a_in_b: np.ndarray
    inliers: int
    R_b_a: np.ndarray
    inlier_N: np.ndarray
    rays_a_N2: np.ndarray
    rays_b_N2: np.ndarray


def camera_directions(px_a_N2: np.ndarray, px_b_N2: np.ndarray, centre_a_px: np.ndarray, centre_b_px: np.ndarray,
                      focal_a_px: float, focal_b_px: float, threshold_px: float = 1.0) -> CameraDirections | None:
    """Where two cameras stood, seen from each other, and how they were turned (:class:`CameraDirections`), from
    matched pixels (a's pixel i <-> b's pixel i), each camera's principal point (``centre_*_px``) and focal length in
    pixels (optical frames: x right, y down, z forward): OpenCV's five-point essential matrix with USAC and local
    optimisation (``USAC_ACCURATE``, since 2026-12-06; plain RANSAC left relative rotations 1-3 deg off on short
    baselines; ``threshold_px`` in a's pixels) and its decomposition (the solution with the points in front of
    both). None for fewer than 8 matches or no essential matrix."""
    if len(px_a_N2) < 8:
        return None
    a = (np.asarray(px_a_N2, dtype=np.float64) - centre_a_px) / focal_a_px
    b = (np.asarray(px_b_N2, dtype=np.float64) - centre_b_px) / focal_b_px
    try:
        E, mask = cv2.findEssentialMat(a, b, np.eye(3), cv2.USAC_ACCURATE, 0.999, threshold_px / focal_a_px)
        if E is None or E.shape != (3, 3):
            return None
        inliers, R, t, mask = cv2.recoverPose(E, a, b, np.eye(3), mask=mask)
    except cv2.error as exc:  # degenerate matches (all on a line, repeated points)
        logger.debug('essential matrix failed: %s', exc)
        return None
    t = t.reshape(3) / max(float(np.linalg.norm(t)), 1e-12)  # x_b = R x_a + t: a's centre is at t in b
    return CameraDirections(-R.T @ t, t, int(inliers), R, np.asarray(mask).reshape(-1) > 0, a, b)


def _triangulate(rays_a_N2: np.ndarray, rays_b_N2: np.ndarray, R_b_a: np.ndarray, t_b_a: np.ndarray) -> np.ndarray:
    """Points (N, 3) in a's optical frame seen at normalised coordinates ``rays_a_N2`` in a and ``rays_b_N2`` in b,
    with x_b = ``R_b_a`` x_a + ``t_b_a`` (nan or inf for a point at infinity)."""
    X = cv2.triangulatePoints(np.hstack([np.eye(3), np.zeros((3, 1))]), np.hstack([R_b_a, t_b_a.reshape(3, 1)]),
                              np.asarray(rays_a_N2, np.float64).T, np.asarray(rays_b_N2, np.float64).T)
    with np.errstate(divide='ignore', invalid='ignore'):
        return (X[:3] / X[3]).T


def triangulated_depths(seen: CameraDirections, baseline_m: float, focal_a_px: float, focal_b_px: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depths of the essential matrix's inliers (``seen.inlier_N`` of its matches) in a's and b's optical frames,
    the cameras ``baseline_m`` apart:
    (depth in a (M,), depth in b (M,), which inliers are kept (M,)). A point is kept when it lies more than
    :data:`DEPTH_RANGE_M` [0] in front of both cameras and within [1] of a, the two rays meet it at
    :data:`DEPTH_MIN_PARALLAX_DEG` or more, and it reprojects within :data:`DEPTH_MAX_REPROJECTION_PX` in both."""
    a, b = seen.rays_a_N2[seen.inlier_N], seen.rays_b_N2[seen.inlier_N]
    R, t = seen.R_b_a, seen.a_in_b * float(baseline_m)
    X_a = _triangulate(a, b, R, t)
    with np.errstate(divide='ignore', invalid='ignore'):
        X_b = X_a @ R.T + t
        centre_b = -R.T @ t
        cos_parallax = np.sum(X_a * (X_a - centre_b), axis=1) / (np.linalg.norm(X_a, axis=1)
                                                                    * np.linalg.norm(X_a - centre_b, axis=1))
        error_a = np.linalg.norm(X_a[:, :2] / X_a[:, 2:3] - a, axis=1) * focal_a_px
        error_b = np.linalg.norm(X_b[:, :2] / X_b[:, 2:3] - b, axis=1) * focal_b_px
    lo, hi = DEPTH_RANGE_M
    keep = ((X_a[:, 2] > lo) & (X_b[:, 2] > lo) & (X_a[:, 2] < hi)
            & (cos_parallax <= math.cos(math.radians(DEPTH_MIN_PARALLAX_DEG)))
            & (error_a <= DEPTH_MAX_REPROJECTION_PX) & (error_b <= DEPTH_MAX_REPROJECTION_PX))
    return X_a[:, 2], X_b[:, 2], keep


def depth_scaled_offset(seen: CameraDirections, depths_a_N: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Where camera b stands in camera a's optical frame, in metres (and from how many points), when a's keypoints
    of the matches have metric depths (``depths_a_N``, nan where unknown; :func:`map_depths`): the essential matrix
    gives the direction (``seen.b_in_a``) and the inliers triangulated at a unit baseline give their depths up to
    that baseline; the median ratio of a's metric depths to those is the baseline. None with fewer than
    :data:`DEPTH_SCALE_MIN_POINTS` inliers that have a depth and lie in front of a."""
    use = seen.inlier_N & np.isfinite(depths_a_N)
    if use.sum() < DEPTH_SCALE_MIN_POINTS:
        return None
    unit_depths = _triangulate(seen.rays_a_N2[use], seen.rays_b_N2[use], seen.R_b_a, seen.a_in_b)[:, 2]
    ahead = unit_depths > 1e-3
    if ahead.sum() < DEPTH_SCALE_MIN_POINTS:
        return None
    baseline_m = float(np.median(np.asarray(depths_a_N)[use][ahead] / unit_depths[ahead]))
    return baseline_m * seen.b_in_a, int(ahead.sum())


def bearing_in_camera(direction_3: np.ndarray) -> float | None:
    """The horizontal angle (radians, positive to the camera's left) of a direction in a level camera's optical
    frame, atan2(-x, z); None when the direction is within :data:`RAY_MIN_HORIZONTAL` of vertical. A camera of
    yaw psi (its forward axis's angle from the map's x axis, counter-clockwise seen from above) sees at this
    angle what lies at the map bearing psi + it."""
    if math.hypot(direction_3[0], direction_3[2]) < RAY_MIN_HORIZONTAL:
        return None
    return math.atan2(-float(direction_3[0]), float(direction_3[2]))


def agreeing_angle(angles: Sequence[float], weights: Sequence[float],
                   tolerance_rad: float) -> tuple[float, float, int]:
    """The weighted circular mean of the largest (by weight) group of ``angles`` within ``tolerance_rad`` of one
    of them, that group's share of the weight (0-1) and its size; (nan, 0, 0) without angles."""
    if len(angles) == 0:
        return math.nan, 0.0, 0
    a, w = np.asarray(angles, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    agree = np.cos(a[:, None] - a[None]) >= math.cos(tolerance_rad)
    best = int(np.argmax(agree @ w))
    keep = agree[best]
    return float(np.angle(np.sum(w[keep] * np.exp(1j * a[keep])))), float(w[keep].sum() / w.sum()), int(keep.sum())


#: Map images each map image is related to for its heading (:func:`orient_images`): its nearest ones at
#: :data:`ORIENT_BASELINE_M` (a baseline long enough to show parallax, short enough to overlap).
ORIENT_NEIGHBOURS = 4
ORIENT_BASELINE_M = (1.0, 15.0)
#: Essential-matrix inliers a pair of map images needs to give a direction.
ORIENT_MIN_INLIERS = 15
#: Headings from an image's neighbours that agree within this are one estimate; two must agree.
ORIENT_AGREE_DEG = 10.0
#: Map images whose pairs choose the focal length (a fixed sample), and the hypotheses: horizontal fields of
#: view across the longer side from :data:`FOCAL_HFOV_DEG` [0] to [1], in steps of :data:`FOCAL_COARSE_STEP` x the
#: focal length, then four times finer within half a coarse step of the best.
FOCAL_CALIBRATION_IMAGES = 100
FOCAL_HFOV_DEG = (30.0, 120.0)
FOCAL_COARSE_STEP = 1.2
#: Threads the pairs of :func:`orient_images` run on.
ORIENT_THREADS = 2
#: :func:`triangulated_depths`: a point's depth range (m), the least angle between its two rays, and the largest
#: reprojection error in either image (pixels); :func:`map_depths`: how far a pair's essential matrix may put the
#: other camera off the map bearing between the two positions.
DEPTH_RANGE_M = (0.5, 300.0)
DEPTH_MIN_PARALLAX_DEG = 1.0
DEPTH_MAX_REPROJECTION_PX = 2.0
DEPTH_AGREE_DEG = 15.0
#: :func:`depth_scaled_offset`: the fewest points with a depth that scale a query's offset from a map image.
DEPTH_SCALE_MIN_POINTS = 5


@dataclass(frozen=True)
class MapOrientation:
    """The map images' headings (:func:`orient_images`): ``yaws_F`` (radians, counter-clockwise from the map's x
    axis; nan where unknown) and the focal length they were found with, as a fraction of the longer image side
    (``focal_side``; nan: none found), with the share of neighbour headings that agreed at it
    (``agreement``), and the metric depth of every keypoint in its image's optical frame (``depths_N``, metres,
    the images' keypoints one after the other; nan where no pair of images triangulated it)."""

    yaws_F: np.ndarray
    focal_side: float
    agreement: float
    depths_N: np.ndarray

    @property
    def hfov_deg(self) -> float:
        """The horizontal field of view across the longer side that ``focal_side`` means."""
        return math.degrees(2.0 * math.atan(0.5 / self.focal_side)) if self.focal_side > 0 else math.nan


def orient_images(pixels: Sequence[np.ndarray], descs: Sequence[np.ndarray], positions_FD: np.ndarray,
                  centres_F2: np.ndarray, sides_F: np.ndarray, *, ratio: float = 0.8) -> MapOrientation:
    """Every map image's heading, from the images themselves and their positions alone (a GPS dataset has no
    orientations or intrinsics). Each image is matched (Lowe's ``ratio`` on RootSIFT) with its
    :data:`ORIENT_NEIGHBOURS` nearest images at :data:`ORIENT_BASELINE_M`; each pair's essential matrix gives the
    direction to the other camera in its own frame (:func:`camera_directions`), and the known map bearing between
    the two positions turns that into a heading. An image's heading is the :func:`agreeing_angle` of its pairs'
    (at least two within :data:`ORIENT_AGREE_DEG`). The focal length, shared by all images (one camera, as a
    fraction of the longer side), is the one at which the pairs of :data:`FOCAL_CALIBRATION_IMAGES` images agree
    most: a wrong focal length bends every direction, and one image's neighbours then disagree. Positions are
    east/north (the first two coordinates). Images with fewer than two agreeing neighbours get nan.

    The same pairs also give metric depth (:func:`map_depths`): each pair's inliers triangulated with the distance
    between the two positions as the baseline."""
    started = time.perf_counter()
    n = len(pixels)
    yaws = np.full(n, math.nan)
    en = np.asarray(positions_FD, dtype=np.float64)[:, :2]
    roots = [root_sift(d) if len(d) else d for d in descs]
    lo, hi = ORIENT_BASELINE_M

    def neighbours(i: int) -> list[int]:
        d = np.linalg.norm(en - en[i], axis=1)
        return [int(j) for j in np.argsort(d, kind='stable') if lo <= d[j] <= hi][:ORIENT_NEIGHBOURS]

    def matched(pair: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Keypoint indices in the pair's two images that pass the ratio test."""
        i, j = pair
        if min(len(roots[i]), len(roots[j])) < 2:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return ratio_test(cv2.BFMatcher(cv2.NORM_L2), roots[i], roots[j], ratio)

    def matched_pixels(pair: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        (i, j), (qi, rj) = pair, matched(pair)
        return np.asarray(pixels[i], np.float64)[qi], np.asarray(pixels[j], np.float64)[rj]

    def directions(pair: tuple[int, int], px: tuple[np.ndarray, np.ndarray], focal_side: float
                   ) -> CameraDirections | None:
        (i, j), (px_i, px_j) = pair, px
        if len(px_i) < ORIENT_MIN_INLIERS:
            return None
        seen = camera_directions(px_i, px_j, centres_F2[i], centres_F2[j], focal_side * sides_F[i],
                                 focal_side * sides_F[j])
        return None if seen is None or seen.inliers < ORIENT_MIN_INLIERS else seen

    def headings(pairs: Sequence[tuple[int, int]], seen: Iterable[CameraDirections | None]
                 ) -> dict[int, tuple[list[float], list[float]]]:
        """Each image's headings (and the pairs' inliers as weights) from its pairs' directions."""
        found: dict[int, tuple[list[float], list[float]]] = {}
        for (i, j), both in zip(pairs, seen):
            if both is None:
                continue
            for a, b, direction in ((i, j, both.b_in_a), (j, i, both.a_in_b)):
                angle = bearing_in_camera(direction)
                if angle is not None:
                    g = en[b] - en[a]
                    angles, weights = found.setdefault(a, ([], []))
                    angles.append(math.atan2(g[1], g[0]) - angle)
                    weights.append(float(both.inliers))
        return found

    def pairs_of(images: Iterable[int]) -> list[tuple[int, int]]:
        return sorted({(min(i, j), max(i, j)) for i in images for j in neighbours(int(i))})

    tolerance = math.radians(ORIENT_AGREE_DEG)
    sample = set(int(i) for i in np.random.default_rng(0).permutation(n)[:FOCAL_CALIBRATION_IMAGES])
    sample_pairs = pairs_of(sample)
    # OpenCV releases the GIL: matching and essential matrices run on ORIENT_THREADS threads
    with ThreadPoolExecutor(ORIENT_THREADS) as pool:
        sample_px = list(pool.map(matched_pixels, sample_pairs))  # matched once, tried at every focal length

        def agreement(focal_side: float) -> float:
            found = headings(sample_pairs, pool.map(lambda pair, px: directions(pair, px, focal_side),
                                                    sample_pairs, sample_px))
            shares = [agreeing_angle(*found[i], tolerance)[1] for i in sample if i in found and len(found[i][0]) >= 3]
            return float(np.mean(shares)) if shares else 0.0

        f_lo, f_hi = (0.5 / math.tan(math.radians(h) / 2.0) for h in (FOCAL_HFOV_DEG[1], FOCAL_HFOV_DEG[0]))
        coarse = np.exp(np.arange(math.log(f_lo), math.log(f_hi) + 1e-9, math.log(FOCAL_COARSE_STEP)))
        scores = {float(f): agreement(float(f)) for f in coarse}
        best = max(scores, key=scores.get)
        fine = math.log(FOCAL_COARSE_STEP) / 4.0
        for f in best * np.exp(np.arange(-2, 3) * fine):
            scores.setdefault(float(f), agreement(float(f)))
        best = max(scores, key=scores.get)
        n_points = sum(len(p) for p in pixels)
        if scores[best] <= 0.0:
            logger.info('place map: no headings (no image has 3 neighbours to agree; %d images)', n)
            return MapOrientation(yaws, math.nan, 0.0, np.full(n_points, math.nan))
        logger.info('place map: focal length %.3f x side chosen in %.1f s; headings of %d images', best,
                    time.perf_counter() - started, n)

        def related(pair: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, CameraDirections | None]:
            (i, j), (qi, rj) = pair, matched(pair)
            px = np.asarray(pixels[i], np.float64)[qi], np.asarray(pixels[j], np.float64)[rj]
            return qi, rj, directions(pair, px, best)

        pairs = pairs_of(range(n))
        related_pairs = list(pool.map(related, pairs))
        found = headings(pairs, (seen for _, _, seen in related_pairs))
    for i, (angles, weights) in found.items():
        yaw, _, agreeing = agreeing_angle(angles, weights, tolerance)
        if agreeing >= 2:
            yaws[i] = yaw
    depths = map_depths([len(p) for p in pixels], positions_FD, best * np.asarray(sides_F, np.float64), yaws,
                        [(i, j, qi, rj, seen) for (i, j), (qi, rj, seen) in zip(pairs, related_pairs)])
    out = MapOrientation(yaws, best, scores[best], depths)
    logger.info('place map: headings of %d of %d images, focal length %.3f x side (%.1f deg across it, agreement '
                '%.2f), depths of %d of %d keypoints in %.1f s', int(np.isfinite(yaws).sum()), n, best, out.hfov_deg,
                scores[best], int(np.isfinite(depths).sum()), n_points, time.perf_counter() - started)
    return out


def map_depths(keypoints_F: Sequence[int], positions_FD: np.ndarray, focals_F: np.ndarray, yaws_F: np.ndarray,
               pairs: Iterable[tuple[int, int, np.ndarray, np.ndarray, CameraDirections | None]]) -> np.ndarray:
    """Metric depth (m) of every map keypoint in its own image's optical frame (the images' ``keypoints_F`` one
    after the other; nan where none), from pairs of map images ``(i, j, keypoint indices in i, in j, their
    essential matrix)`` (:func:`orient_images`; ``focals_F`` in pixels): the pair's inliers triangulated with the
    distance between the two positions as the baseline (:func:`triangulated_depths`; a GPS dataset knows where each
    image was, not how far it saw), and a keypoint's depth the median over its pairs. A pair whose essential matrix
    puts the other camera more than :data:`DEPTH_AGREE_DEG` off the map bearing between the positions (seen through
    an image's heading, where one has one) triangulates nothing."""
    offsets = np.concatenate([[0], np.cumsum(keypoints_F)]).astype(np.int64)
    positions = np.asarray(positions_FD, dtype=np.float64)
    tolerance = math.cos(math.radians(DEPTH_AGREE_DEG))
    rows, values = [], []
    for i, j, qi, rj, seen in pairs:
        if seen is None:
            continue
        g = positions[j, :2] - positions[i, :2]
        # the other camera's map bearing through whichever image has a heading
        for yaw, direction, toward in ((yaws_F[i], seen.b_in_a, g), (yaws_F[j], seen.a_in_b, -g)):
            if math.isfinite(yaw):
                angle = bearing_in_camera(direction)
                if angle is None or math.cos(yaw + angle - math.atan2(toward[1], toward[0])) < tolerance:
                    seen = None
                break
        if seen is None:
            continue
        depth_a, depth_b, keep = triangulated_depths(seen, float(np.linalg.norm(positions[j] - positions[i])),
                                                     focals_F[i], focals_F[j])
        inliers = seen.inlier_N
        rows += [offsets[i] + qi[inliers][keep], offsets[j] + rj[inliers][keep]]
        values += [depth_a[keep], depth_b[keep]]
    depths = np.full(int(offsets[-1]), math.nan)
    if rows:
        row, value = np.concatenate(rows), np.concatenate(values)
        order = np.argsort(row, kind='stable')
        row, value = row[order], value[order]
        starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
        depths[row[starts]] = [float(np.median(v)) for v in np.split(value, starts[1:])]
    return depths


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
    the descriptors, not their residuals (FAISS k-means with its fixed seed, trained on at most
    :data:`IVF_TRAIN_PER_LIST` points per list)."""
    faiss = _faiss()
    x = np.ascontiguousarray(descriptors_N128, dtype=np.float32)
    n = len(x)
    qt = faiss.ScalarQuantizer.QT_8bit_direct
    if n <= FLAT_MAX_POINTS:
        index = faiss.IndexScalarQuantizer(128, qt, faiss.METRIC_L2)
    else:
        nlist = int(4 * math.sqrt(n))
        started = time.perf_counter()
        logger.info('vote index: %d lists for %d descriptors (k-means on %d of them, then every one assigned)',
                    nlist, n, min(n, IVF_TRAIN_PER_LIST * nlist))
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatL2(128), 128, nlist, qt, faiss.METRIC_L2)
        index.by_residual = False  # the codes are the descriptors themselves (residuals do not fit in uint8)
        sample = x[np.random.default_rng(0).choice(n, min(n, IVF_TRAIN_PER_LIST * nlist), replace=False)]
        index.train(sample)
        index.nprobe = _NPROBE
        logger.info('vote index: lists trained in %.0f s', time.perf_counter() - started)
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


def limited_shape(shape_hw: tuple[int, ...], max_side_px: int) -> tuple[int, int]:
    """(height, width) of an image of ``shape_hw`` reduced so that its longer side is at most ``max_side_px``
    (:func:`limit_size`); smaller images keep theirs."""
    h, w = shape_hw[:2]
    scale = max_side_px / max(h, w)
    if scale >= 1.0:
        return h, w
    return max(1, round(h * scale)), max(1, round(w * scale))


def limit_size(gray_HW: np.ndarray, max_side_px: int) -> np.ndarray:
    """``gray_HW`` reduced (area interpolation) to :func:`limited_shape`; smaller images unchanged. Pixel
    coordinates then live in the reduced image, which two-view verification (fundamental matrix, homography)
    does not mind."""
    h, w = limited_shape(gray_HW.shape, max_side_px)
    if (h, w) == gray_HW.shape[:2]:
        return gray_HW
    return cv2.resize(gray_HW, (w, h), interpolation=cv2.INTER_AREA)


def build_place_map(images: Iterable[tuple[str, np.ndarray, np.ndarray]], out_dir: str | Path, *,
                    n_features: int = 500, max_side_px: int = 640, orient: bool = True,
                    ratio: float = 0.8) -> dict[str, Any]:
    """Write a place map (``keyframes.npz`` with ``pixels_N2``, ``positions_FD``, ``sides_F``, each image's
    longer side in pixels as described, and ``centres_F2``, its centre (x, y); ``keyframes.faiss``) into
    ``out_dir`` from ``(name, grayscale image, position (D,) in metres, east and north first)`` triples (images
    reduced to ``max_side_px``, :func:`limit_size`). With ``orient``, also the images' headings ``yaws_F`` and
    the focal length ``focal_side`` they were found with (:func:`orient_images`, Lowe's ``ratio``), which let a
    query's place be refined by the directions in which its verified images see it
    (:func:`ray_refined_position`). Returns the description stored in the bundle metadata (frames, points,
    seconds, and with ``orient`` the field of view found and how many images have a heading). Images without
    keypoints are kept (they cannot be matched); none with keypoints raises :class:`KeyframeError`."""
    started = time.perf_counter()
    detector = sift_detector(n_features)
    pixels, descs, names, positions, sides, centres = [], [], [], [], [], []
    for name, gray, position in images:
        reduced = limit_size(gray, max_side_px)
        px, d = sift_features(reduced, detector)
        sides.append(max(reduced.shape[:2]))
        centres.append((reduced.shape[1] / 2.0, reduced.shape[0] / 2.0))
        pixels.append(px.astype(np.float32))
        descs.append(d)
        names.append(str(name))
        positions.append(np.asarray(position, dtype=np.float64).reshape(-1))
    if not names:
        raise KeyframeError('no images to build a place map from')
    described = write_place_map(names, pixels, descs, np.stack(positions), np.array(sides, np.int32),
                                np.array(centres, np.float64), out_dir, orient=orient, ratio=ratio)
    seconds = time.perf_counter() - started
    logger.info('place map: %d keypoints of %d images in %.1f s', described['points'], len(names), seconds)
    return {**described, 'build_s': round(seconds, 1)}


def write_place_map(names: Sequence[str], pixels: Sequence[np.ndarray], descs: Sequence[np.ndarray],
                    positions_FD: np.ndarray, sides_F: np.ndarray, centres_F2: np.ndarray, out_dir: str | Path, *,
                    orient: bool = True, ratio: float = 0.8) -> dict[str, Any]:
    """Write the place map of described images (:func:`build_place_map`'s second half: each image's SIFT
    keypoints in pixels and descriptors, position, longer side and centre; with ``orient`` its heading,
    :func:`orient_images`); returns the description (frames, points, and with ``orient`` the headings found
    and the field of view)."""
    n_points = sum(len(p) for p in pixels)
    if n_points == 0:
        raise KeyframeError(f'no SIFT keypoints in {len(names)} images to build a place map from')
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame_ids = [np.full(len(px), i, np.int32) for i, px in enumerate(pixels)]
    arrays = {'pixels_N2': np.concatenate([np.asarray(p, np.float32).reshape(-1, 2) for p in pixels]),
              'frame_N': np.concatenate(frame_ids), 'names': np.array([str(n) for n in names]),
              'positions_FD': np.asarray(positions_FD, np.float64), 'sides_F': np.asarray(sides_F, np.int32),
              'centres_F2': np.asarray(centres_F2, np.float64)}
    described: dict[str, Any] = {'frames': len(names), 'points': int(n_points)}
    if orient and arrays['positions_FD'].shape[1] >= 2:
        orientation = orient_images(pixels, descs, arrays['positions_FD'], arrays['centres_F2'],
                                    arrays['sides_F'].astype(np.float64), ratio=ratio)
        arrays.update(yaws_F=orientation.yaws_F, focal_side=np.float64(orientation.focal_side),
                      depths_N=orientation.depths_N.astype(np.float32))
        described.update(headings=int(np.isfinite(orientation.yaws_F).sum()),
                         depths=int(np.isfinite(orientation.depths_N).sum()),
                         hfov_deg=round(orientation.hfov_deg, 2) if math.isfinite(orientation.hfov_deg) else None)
    np.savez_compressed(out / KEYFRAMES_NPZ, **arrays)
    _faiss().write_index(_vote_index(np.concatenate([np.asarray(d).reshape(-1, 128) for d in descs])),
                         str(out / KEYFRAMES_INDEX))
    return described


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


def _read_map(npz_path: str | Path, index_path: str | Path, arrays: tuple[str, ...],
              optional: tuple[str, ...] = ()) -> tuple[dict[str, np.ndarray], Any]:
    """The named arrays of a map's ``.npz`` (plus ``frame_N`` and ``names``; ``optional`` ones where present)
    and its FAISS vote index."""
    folder = Path(npz_path).parent
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            loaded = {key: np.asarray(data[key]) for key in (*arrays, 'frame_N', 'names')}
            loaded.update({key: np.asarray(data[key]) for key in optional if key in data.files})
        faiss = _faiss()
        index = faiss.read_index(str(index_path))
        if hasattr(index, 'nprobe'):  # an inverted file: rows are reconstructed by id
            faiss.extract_index_ivf(index).make_direct_map()
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise KeyframeError(f'{folder}: cannot read the keyframe map: {exc}') from exc
    return loaded, index


class _FrameIndex:
    """What both maps share: the uint8 SIFT descriptors of all frames in one FAISS index (row i = keypoint i),
    the frame of every keypoint, the keyframe vote and Lowe's ratio test against one frame."""

    def __init__(self, folder: Path, index: Any, frame_N: np.ndarray, names: Iterable[str], n_points: int,
                 n_features: int) -> None:
        self.index = index
        self.frame_N = np.asarray(frame_N, dtype=np.int64)
        self.names = tuple(str(n) for n in names)
        if not (len(self.frame_N) == n_points == index.ntotal) or index.d != 128:
            raise KeyframeError(f'{folder}: keyframe map arrays disagree ({n_points} points, {len(self.frame_N)} '
                                f'frame ids, {index.ntotal} indexed {index.d}-D descriptors)')
        if n_points and (self.frame_N.min() < 0 or self.frame_N.max() >= len(self.names)):
            raise KeyframeError(f'{folder}: keyframe ids outside the {len(self.names)} frames')
        self._order = np.argsort(self.frame_N, kind='stable')
        self._starts = np.searchsorted(self.frame_N[self._order], np.arange(len(self.names) + 1))
        self.sift = sift_detector(n_features)
        self._matcher = cv2.BFMatcher(cv2.NORM_L2)

    def frame_rows(self, frame: int) -> np.ndarray:
        return self._order[self._starts[frame]:self._starts[frame + 1]]

    def votes(self, descs_N128: np.ndarray, neighbours: int) -> np.ndarray:
        """Votes (F,) of every frame: each query descriptor's ``neighbours`` nearest map descriptors vote
        once per frame."""
        _, nn = self.index.search(np.ascontiguousarray(descs_N128, dtype=np.float32), neighbours)
        votes = np.zeros(len(self.names), np.int64)
        for row in nn:  # one vote per query keypoint and keyframe
            votes[np.unique(self.frame_N[row[row >= 0]])] += 1
        return votes

    def vote(self, descs_N128: np.ndarray, neighbours: int, candidates: int) -> list[int]:
        """The ``candidates`` frames with most :meth:`votes`, most votes first; frames without votes are left
        out."""
        votes = self.votes(descs_N128, neighbours)
        return [int(f) for f in np.argsort(-votes, kind='stable')[:candidates] if votes[f] > 0]

    def ratio_matches(self, query_root_N128: np.ndarray, frame: int, ratio: float) -> tuple[np.ndarray, np.ndarray]:
        """(query keypoint indices, map rows) of the query's RootSIFT descriptors that pass Lowe's ratio test
        against ``frame``'s keypoints."""
        rows = self.frame_rows(frame)
        if len(rows) < 2:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        qi, ri = ratio_test(self._matcher, query_root_N128, root_sift(self.index.reconstruct_batch(rows)), ratio)
        return qi, rows[ri]


class KeyframeMap:
    """A bundle's keyframe map, loaded for matching (see the module docstring) with its ``settings``
    (:class:`SceneKeyframes`: matching parameters and the covariance scale applied to its poses)."""

    def __init__(self, npz_path: str | Path, index_path: str | Path, settings: SceneKeyframes, *,
                 seed: int = 0) -> None:
        folder = Path(npz_path).parent
        arrays, index = _read_map(npz_path, index_path, ('points_map_N3',))
        self.points_N3 = np.asarray(arrays['points_map_N3'], dtype=np.float32)
        if self.points_N3.ndim != 2 or self.points_N3.shape[1] != 3:
            raise KeyframeError(f'{folder}: keyframe points must be (N, 3), got {self.points_N3.shape}')
        self.frames = _FrameIndex(folder, index, arrays['frame_N'], arrays['names'], len(self.points_N3),
                                  settings.n_features)
        self.names = self.frames.names
        self.settings = settings
        self.seed = seed

    def __len__(self) -> int:
        return len(self.points_N3)

    def match(self, gray_HW: np.ndarray, K_3x3: np.ndarray, *, dist_coeffs: np.ndarray | None = None,
              distortion_model: str = 'plumb_bob') -> KeyframeMatch:
        """Keyframe pose of a grayscale image with intrinsics ``K_3x3`` (its own pixel grid); its covariance
        is multiplied by ``settings.covariance_scale``."""
        opt = self.settings
        h, w = gray_HW.shape[:2]
        px, descs = sift_features(gray_HW, self.frames.sift)
        K = np.asarray(K_3x3, dtype=np.float64)
        none = (np.zeros((0, 3)), np.zeros((0, 2)), K, opt.threshold_px)
        if len(px) < 4:
            return KeyframeMatch(None, (), *none)
        top = self.frames.vote(descs, opt.neighbours, opt.candidates)
        query = root_sift(descs)
        pixels, points = [], []
        for f in top:
            qi, ri = self.frames.ratio_matches(query, f, opt.ratio)
            if len(qi):
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


class Overlap(NamedTuple):
    """A map image a query verifiably overlaps: its ``frame``, the two-view ``inliers``, ``log_scale``, how
    much larger the query sees what they share (:func:`log_scale` over the inliers; > 0: the query was nearer
    the scene), ``bearing_rad``, the map bearing (radians, counter-clockwise from the map's x axis) at which
    the map image sees the query's camera (:meth:`PlaceMap.overlap`; nan when the map image has no heading or
    the direction is too steep), ``seen_rad``, the angle in the query's own camera (:func:`bearing_in_camera`:
    radians, positive to its left) at which it sees the map image's camera (nan when the map has no focal
    length or the direction is too steep), and ``heading_rad``, the query's heading (the map bearing of its optical
    axis) that the map image's heading and the rotation between them give (nan when the map image has no heading
    or the axis is too steep). ``depth_east_north_m``: where the query's camera stands (the map's east/north, metres)
    by the map image's keypoint depths (:func:`depth_scaled_offset`, turned by the image's heading; nan without),
    from ``depth_points`` points. A plain ``(frame, inliers)`` pair has ``log_scale`` 0 and no angles."""

    frame: int
    inliers: int
    log_scale: float = 0.0
    bearing_rad: float = math.nan
    seen_rad: float = math.nan
    heading_rad: float = math.nan
    depth_east_north_m: tuple[float, float] = (math.nan, math.nan)
    depth_points: int = 0


@dataclass(frozen=True)
class PlaceMatch:
    """Where a query was taken by its verified training images: ``position_m`` (D,) and ``cov_m2`` (D, D) in
    the map's frame (None when no image was verified or every place was outside the prior's gate:
    ``rejected``), the verified images as ``(name, inliers)``, most inliers first, and how many of them
    were averaged (``used``). ``spread_m2``: the part of ``cov_m2`` that is the spread of other place
    hypotheses about this position (:class:`PlaceTracker`; None when there is none), which the covariance
    factor does not scale. ``log_scale``: :attr:`Place.log_scale` of the place."""

    position_m: np.ndarray | None
    cov_m2: np.ndarray | None
    verified: tuple[tuple[str, int], ...]
    used: int = 0
    rejected: bool = False
    spread_m2: np.ndarray | None = None
    log_scale: float = 0.0

    @property
    def inliers(self) -> int:
        """Two-view inliers of the best verified image (0 when none)."""
        return self.verified[0][1] if self.verified else 0


#: Threads a :class:`PlaceMap` verifies a frame's candidate images on (OpenCV releases the GIL in the ratio test and
#: the two-view geometry): the ten overlaps 1.2-1.6x faster than on one thread on the 2-core machine
#: (docs/localizers/gps_regressor.md).
VERIFY_THREADS = 2


class PlaceMap:
    """A gps_regressor bundle's map of its training images (see the module docstring) with its ``settings``
    (:class:`GPSKeyframes`). A frame's candidate images are verified on ``threads`` threads (the same overlaps in
    the same order as on one); :meth:`close` (or the context manager) stops them."""

    def __init__(self, npz_path: str | Path, index_path: str | Path, settings: GPSKeyframes, *,
                 threads: int = VERIFY_THREADS) -> None:
        if threads < 1:
            raise ValueError(f'threads must be >= 1, got {threads}')
        folder = Path(npz_path).parent
        arrays, index = _read_map(npz_path, index_path, ('pixels_N2', 'positions_FD'),
                                  optional=('sides_F', 'centres_F2', 'yaws_F', 'focal_side', 'depths_N'))
        self.pixels_N2 = np.asarray(arrays['pixels_N2'], dtype=np.float64)
        self.positions_FD = np.asarray(arrays['positions_FD'], dtype=np.float64)
        # each image's longer side as described (maps built before 2026-12-05 lack it: scales then in pixels)
        sides = arrays.get('sides_F')
        self.sides_F = None if sides is None else np.asarray(sides, dtype=np.float64)
        if self.pixels_N2.ndim != 2 or self.pixels_N2.shape[1] != 2:
            raise KeyframeError(f'{folder}: keypoint pixels must be (N, 2), got {self.pixels_N2.shape}')
        self.frames = _FrameIndex(folder, index, arrays['frame_N'], arrays['names'], len(self.pixels_N2),
                                  settings.n_features)
        if self.positions_FD.ndim != 2 or len(self.positions_FD) != len(self.frames.names):
            raise KeyframeError(f'{folder}: {self.positions_FD.shape} positions for {len(self.frames.names)} images')
        if self.sides_F is not None and (self.sides_F.shape != (len(self.frames.names),) or np.any(self.sides_F <= 0)):
            raise KeyframeError(f'{folder}: {self.sides_F.shape} image sides for {len(self.frames.names)} images')
        # the images' headings and the focal length they were found with (maps since 2026-12-05, when the
        # training images could be oriented: orient_images); without them places are not refined by rays
        self.yaws_F: np.ndarray | None = None
        self.focal_side = math.nan
        if all(k in arrays for k in ('centres_F2', 'yaws_F', 'focal_side')) and self.sides_F is not None:
            self.centres_F2 = np.asarray(arrays['centres_F2'], dtype=np.float64)
            self.yaws_F = np.asarray(arrays['yaws_F'], dtype=np.float64)
            self.focal_side = float(arrays['focal_side'])
            n = len(self.frames.names)
            if self.centres_F2.shape != (n, 2) or self.yaws_F.shape != (n,):
                raise KeyframeError(f'{folder}: {self.centres_F2.shape} image centres and {self.yaws_F.shape} '
                                    f'headings for {n} images')
        # the keypoints' metric depths (maps since 2026-12-06: map_depths); without them places are not moved to
        # where the depths put the query
        depths = arrays.get('depths_N')
        self.depths_N = None if depths is None else np.asarray(depths, dtype=np.float64)
        if self.depths_N is not None and self.depths_N.shape != (len(self.pixels_N2),):
            raise KeyframeError(f'{folder}: {self.depths_N.shape} keypoint depths for {len(self.pixels_N2)} keypoints')
        self.settings = settings
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix='place-verify') if threads > 1 else None

    def __enter__(self) -> PlaceMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the verification threads (verifying goes on, on the calling thread)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    @property
    def oriented(self) -> bool:
        """Whether the map images have headings (:func:`orient_images`), so that verified images give rays."""
        return self.yaws_F is not None and math.isfinite(self.focal_side) and self.focal_side > 0

    def __len__(self) -> int:
        return len(self.pixels_N2)

    def overlap(self, px_N2: np.ndarray, query_root_N128: np.ndarray, frame: int, shape_hw: tuple[int, int],
                log_focal: float = 0.0) -> Overlap:
        """How a query (keypoints ``px_N2`` in the image of ``shape_hw`` that :meth:`describe` described, RootSIFT
        descriptors) overlaps the map image ``frame``: Lowe's ratio test, then :func:`verify_two_view`'s inliers
        and their :func:`log_scale`, in units of each image's side (the same camera at another resolution sees
        the scene at the same scale), and, on an :attr:`oriented` map, the directions the essential matrix of the
        inliers gives (:func:`camera_directions`; the query's focal length the map's times e^``log_focal``, another
        lens: :attr:`PlaceTracker.lens_log_scale`): the angle at which the query sees the map image's camera and,
        for a map image with a heading, the map bearing of the query's camera from it and the query's heading."""
        opt = self.settings
        qi, ri = self.frames.ratio_matches(query_root_N128, frame, opt.ratio)
        query_px, map_px = np.asarray(px_N2, dtype=np.float64)[qi], self.pixels_N2[ri]
        inlier = verify_two_view(query_px, map_px, opt.threshold_px)
        n = int(inlier.sum())
        if n < opt.min_inliers:
            return Overlap(frame, n)
        side_px = max(shape_hw)
        sides = 0.0 if self.sides_F is None else math.log(self.sides_F[frame] / side_px)
        scale = log_scale(query_px[inlier], map_px[inlier]) + sides
        bearing = seen_rad = heading = math.nan
        east_north, depth_points = (math.nan, math.nan), 0
        if self.oriented:
            seen = camera_directions(map_px[inlier], query_px[inlier], self.centres_F2[frame],
                                     np.array([shape_hw[1] / 2.0, shape_hw[0] / 2.0]),
                                     self.focal_side * self.sides_F[frame],
                                     self.focal_side * side_px * math.exp(log_focal))
            if seen is not None:
                if (seen_angle := bearing_in_camera(seen.a_in_b)) is not None:
                    seen_rad = seen_angle
                if math.isfinite(yaw := float(self.yaws_F[frame])):
                    if (angle := bearing_in_camera(seen.b_in_a)) is not None:
                        bearing = float(np.angle(np.exp(1j * (yaw + angle))))
                    # the map image's optical axis, seen in the query, lies at the image's heading
                    if (axis := bearing_in_camera(seen.R_b_a[:, 2])) is not None:
                        heading = float(np.angle(np.exp(1j * (yaw - axis))))
                    if self.depths_N is not None and (offset := depth_scaled_offset(
                            seen, self.depths_N[ri[inlier]])) is not None:
                        # the map image's optical frame (x right, z forward) turned to the map by its heading
                        (right, _, forward), depth_points = offset
                        at = self.positions_FD[frame, :2] + forward * np.array([math.cos(yaw), math.sin(yaw)]) \
                            + right * np.array([math.sin(yaw), -math.cos(yaw)])
                        east_north = (float(at[0]), float(at[1]))
        return Overlap(frame, n, scale, bearing, seen_rad, heading, east_north, depth_points)

    def described_shape(self, gray_HW: np.ndarray) -> tuple[int, int]:
        """(height, width) of ``gray_HW`` as :meth:`describe` describes it (reduced to ``max_side_px``)."""
        return limited_shape(gray_HW.shape, self.settings.max_side_px)

    def describe(self, gray_HW: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SIFT keypoints (pixels of the image reduced to ``max_side_px``) and descriptors of a grayscale image
        (any size), as the map's images were described."""
        return sift_features(limit_size(gray_HW, self.settings.max_side_px), self.frames.sift)

    def verify(self, gray_HW: np.ndarray) -> list[Overlap]:
        """The map images a grayscale image (any size; reduced to ``max_side_px``) verifiably overlaps with at
        least ``min_inliers`` two-view inliers, in vote order: the ``candidates`` most voted images, each
        ratio-tested and verified (:meth:`overlap`)."""
        return self.verify_features(*self.describe(gray_HW), self.described_shape(gray_HW))

    def verify_features(self, px_N2: np.ndarray, descs_N128: np.ndarray, shape_hw: tuple[int, int],
                        log_focal: float = 0.0) -> list[Overlap]:
        """:meth:`verify` of an image already described (:meth:`describe`; ``shape_hw``: :meth:`described_shape`),
        seen through a lens e^``log_focal`` times longer than the map images' (:meth:`overlap`)."""
        opt = self.settings
        if len(px_N2) < 8:
            return []
        query = root_sift(descs_N128)

        def overlap(frame: int) -> Overlap:
            return self.overlap(px_N2, query, frame, shape_hw, log_focal)

        candidates = self.frames.vote(descs_N128, opt.neighbours, opt.candidates)
        pool = self._pool  # read once: close() may run on another thread
        overlaps = map(overlap, candidates) if pool is None else pool.map(overlap, candidates)
        return [o for o in overlaps if o.inliers >= opt.min_inliers]

    def place(self, verified: Sequence[Overlap], prior_mean_m: np.ndarray | None = None,
              prior_cov_m2: np.ndarray | None = None, at_log_scale: float = 0.0) -> PlaceMatch:
        """:func:`choose_place` among the :meth:`verify` result, with the verified images' names."""
        return replace(choose_place(verified, self.positions_FD, self.settings, prior_mean_m, prior_cov_m2,
                                    at_log_scale=at_log_scale), verified=self.named(verified))

    def named(self, verified: Iterable[Overlap]) -> tuple[tuple[str, int], ...]:
        """Verified images as ``(name, inliers)``, most inliers first."""
        return tuple((self.frames.names[v[0]], v[1]) for v in sorted(verified, key=lambda v: -v[1]))

    def locate(self, gray_HW: np.ndarray, prior_mean_m: np.ndarray | None = None,
               prior_cov_m2: np.ndarray | None = None) -> PlaceMatch:
        """Position of a grayscale image (any size; reduced to ``max_side_px``) from the training images it
        verifiably overlaps: :meth:`verify`, then :meth:`place` with the prior (another estimate's mean
        and covariance in the map's frame, e.g. the network's)."""
        return self.place(self.verify(gray_HW), prior_mean_m, prior_cov_m2)


@dataclass(frozen=True)
class ChainMatch:
    """A frame placed by :class:`RecentPlaces`: the position and covariance (map frame, metres) of the recent
    frame it overlaps most, the covariance grown over the time since; ``inliers`` with that frame and its
    ``age_s``."""

    position_m: np.ndarray
    cov_m2: np.ndarray
    inliers: int
    age_s: float

    @classmethod
    def grown(cls, position_m: np.ndarray, cov_m2: np.ndarray, placed_ns: int, stamp_ns: int, speed_mps: float,
              inliers: int) -> ChainMatch:
        """A place published at ``placed_ns`` as a frame at ``stamp_ns`` sees it: its covariance grown by
        ``(speed_mps x the time since)^2`` per axis."""
        age_s = max(stamp_ns - placed_ns, 0) * 1e-9
        grown = np.asarray(cov_m2, dtype=np.float64) + (speed_mps * age_s) ** 2 * np.eye(len(position_m))
        return cls(np.array(position_m, dtype=np.float64), grown, inliers, age_s)


class RecentPlaces:
    """The last ``size`` frames a :class:`PlaceMap` placed (their SIFT keypoints, positions and covariances),
    to place a frame the map cannot (no training image verified, or every place outside the prior: a view
    across an open lawn, a blurred frame) or one whose places all lie beyond the track's reach (the localizer
    then asks for more inliers than its best training image has): verified against each (Lowe's ratio test on RootSIFT, then
    :func:`verify_two_view`, the map's ``ratio``, ``threshold_px`` and ``min_inliers``), the frame is placed
    where the one with most inliers was, "near here, looking at the same things", as a verified training
    image places a frame. Its covariance grows by ``speed_mps`` x the time since, so an old frame weighs
    less. Off when ``size`` is 0; dropped when a stamp goes back and on :meth:`reset`."""

    def __init__(self, settings: GPSKeyframes, size: int, speed_mps: float) -> None:
        self.settings, self.size, self.speed_mps = settings, int(size), float(speed_mps)
        self._frames: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]] = []
        self._matcher = cv2.BFMatcher(cv2.NORM_L2)

    def __len__(self) -> int:
        return len(self._frames)

    def _drop_if_back(self, stamp_ns: int) -> None:
        if self._frames and stamp_ns < self._frames[-1][4]:
            self._frames.clear()

    def add(self, px_N2: np.ndarray, descs_N128: np.ndarray, position_m: np.ndarray, cov_m2: np.ndarray,
            stamp_ns: int) -> None:
        """Remember a frame the map placed (keypoints and descriptors from :meth:`PlaceMap.describe`)."""
        if self.size <= 0 or len(px_N2) < 8:
            return
        self._drop_if_back(stamp_ns)
        self._frames.append((np.asarray(px_N2, np.float64), root_sift(descs_N128),
                             np.asarray(position_m, np.float64).copy(), np.asarray(cov_m2, np.float64).copy(),
                             int(stamp_ns)))
        del self._frames[:-self.size]

    def locate(self, px_N2: np.ndarray, descs_N128: np.ndarray, stamp_ns: int) -> ChainMatch | None:
        """The recent frame a frame (described by :meth:`PlaceMap.describe`) verifiably overlaps most, or None."""
        self._drop_if_back(stamp_ns)
        if not self._frames or len(px_N2) < 8:
            return None
        opt, query, query_px = self.settings, root_sift(descs_N128), np.asarray(px_N2, np.float64)
        best: tuple[int, int] | None = None
        for i, (px, root, _, _, _) in enumerate(self._frames):
            qi, ri = ratio_test(self._matcher, query, root, opt.ratio)
            inliers = int(verify_two_view(query_px[qi], px[ri], opt.threshold_px).sum())
            if inliers >= opt.min_inliers and (best is None or inliers > best[1]):
                best = (i, inliers)
        if best is None:
            return None
        _, _, position, cov, stamp = self._frames[best[0]]
        return ChainMatch.grown(position, cov, stamp, stamp_ns, self.speed_mps, best[1])

    def reset(self) -> None:
        self._frames.clear()


@dataclass(frozen=True)
class TrackedPlace:
    """One frame through :class:`PlaceTracker`: its ``place`` (:class:`PlaceMatch`; the last one tried, or the
    best hypothesis's place), which ``prior`` settled it (``'track'``: the previous places; ``'network'``),
    ``chained`` when a recent frame placed it, and ``held`` when neither the map nor a recent frame did but
    a frame was placed before (:meth:`PlaceTracker.choose`). The published position is ``position_m`` /
    ``cov_m2``: the chained frame's, else the place's, else the held one (None: nothing placed the run yet)."""

    place: PlaceMatch
    prior: str
    chained: ChainMatch | None = None
    held: ChainMatch | None = None

    @property
    def _answer(self) -> PlaceMatch | ChainMatch:
        if self.chained is not None:
            return self.chained
        if self.place.position_m is not None or self.held is None:
            return self.place
        return self.held

    @property
    def position_m(self) -> np.ndarray | None:
        return self._answer.position_m

    @property
    def cov_m2(self) -> np.ndarray | None:
        return self._answer.cov_m2


@dataclass(frozen=True)
class _Hypothesis:
    """One place hypothesis of :class:`PlaceTracker`: its log score relative to the best (0), its last place
    and that place's stamp."""

    log_score: float
    place: Place
    stamp_ns: int


#: A camera whose lens differs from the map images' sees every place at one log-scale offset
#: (:attr:`PlaceTracker.lens_log_scale`): the median over this many of the last places, once there are
#: ``LENS_SCALE_MIN_FRAMES``, and only when its magnitude exceeds ``LENS_SCALE_DEADBAND`` (a focal length
#: about 10 % off; on the dataset's own lens the median stays within it on the campus walks but for a few
#: stretches, docs/localizers/gps_regressor.md).
LENS_SCALE_FRAMES = 100
LENS_SCALE_MIN_FRAMES = 50
LENS_SCALE_DEADBAND = 0.1

#: Place hypotheses (:class:`PlaceTracker` with ``hypotheses`` > 1): a place that continues no hypothesis is
#: born this much (log) below the best one; a hypothesis no place of a frame continues loses this much; two
#: updated in the same frame closer than this (m) are one.
HYPOTHESIS_BIRTH = -5.0
HYPOTHESIS_MISS = -1.0
HYPOTHESIS_MERGE_M = 5.0
#: A place continuing a hypothesis also scores the other prior's (the network's) density there, this weight of
#: it, its Mahalanobis d^2 clipped at the :data:`TRACK_GATE` radius: the network tells apart places within a
#: few of its sigmas, and one far off from every place shifts them all alike, so it cannot break the run.
HYPOTHESIS_NETWORK_WEIGHT = 0.5
#: A hypothesis no place of a frame continues, while other places of it verify, keeps the evidence of one
#: barely verified image (log ``min_inliers``) fading with the time since its last place by e^(-t /
#: this): a frame 0.1 s after a place sees what it saw, so its verifying nothing there (turned towards
#: a repeated texture, blurred) says little against it, while a place unseen for seconds loses as before.
HYPOTHESIS_MISS_CARRY_S = 2.0


class PlaceTracker:
    """A :class:`PlaceMap` along a run of frames, as the gps_regressor localizer uses it.

    With one hypothesis (``hypotheses`` 1), the single track:

    * The previous frame's place (:class:`Track`: ``track_sigma_m`` growing by ``track_speed_mps``), not
      the other estimate's prior (the network's), settles which verified place a frame is at.
    * If none lies within the track's reach, a recent frame (:class:`RecentPlaces`, the last
      ``chain_frames`` placed frames) that the frame overlaps with more inliers than its best
      training image places it. Otherwise the other prior decides as without a track.

    With several (``hypotheses`` > 1), the best ``hypotheses`` places along the run are kept, so that one
    wrong place (a facade texture repeated elsewhere) does not drag the track away:

    * every place of a frame (:func:`places_of`) scores log(its summed inliers) plus the best of: a
      hypothesis it continues (within the :data:`TRACK_GATE` ellipse of the hypothesis's place, a Gaussian
      of ``track_sigma_m`` growing by ``track_speed_mps`` over the time since: its score - d^2 / 2 - the log
      of the area grown - :data:`HYPOTHESIS_NETWORK_WEIGHT` x the other prior's d^2 / 2, clipped at the
      gate), or, inside the other prior's ``prior_gate`` ellipse, a new hypothesis
      (:data:`HYPOTHESIS_BIRTH` below the best, - d^2 / 2 under the other prior);
    * hypotheses no place continues lose :data:`HYPOTHESIS_MISS`; while other places of the frame verify,
      they keep the evidence of a barely verified image (log ``min_inliers``), fading with the time since
      their last place (:data:`HYPOTHESIS_MISS_CARRY_S`); those updated in one frame within
      :data:`HYPOTHESIS_MERGE_M` are merged; the best ``hypotheses`` are kept;
    * the best hypothesis, if this frame updated it, places the frame (``prior`` ``'track'`` when it
      continued one, ``'network'`` when born), with the covariance of this frame's hypotheses as a mixture
      (weights e^score) about it: the places' covariances and their spread (``spread_m2``). When the best
      place was born while hypotheses existed, or no place passed the gate, a recent frame the frame
      overlaps with more inliers than its best training image places it instead and the hypotheses are
      left as they were;
    * a frame whose best hypothesis it did not update is placed by the recent frame it overlaps most.

    In both, a frame the map cannot place (nothing verified, or every place outside the prior) is placed by
    the recent frame it overlaps most. A frame neither places is held at the last place (``held``), its
    covariance grown by ``track_speed_mps`` over the time since, while its trace is below the other prior's.
    A place updates the track and the recent frames; a chained or held frame updates neither. All are
    dropped when a stamp goes back and on :meth:`reset`. Without tracking (``track_speed_mps`` 0) every
    frame is on its own, whatever ``hypotheses``, and nothing is held; without another prior, the single
    track."""

    def __init__(self, places: PlaceMap, *, track_sigma_m: float, track_speed_mps: float, chain_frames: int,
                 hypotheses: int = 1, name: str = '') -> None:
        if hypotheses < 1:
            raise ValueError(f'hypotheses must be >= 1, got {hypotheses}')
        self.places = places
        self.track = Track(track_sigma_m, track_speed_mps, name)
        self.recent = RecentPlaces(places.settings, chain_frames, track_speed_mps)
        self.hypotheses = int(hypotheses)
        self._hyps: list[_Hypothesis] = []
        self._last: tuple[PlaceMatch, int] | None = None  # the last place published and its stamp
        self._place_scales: deque[float] = deque(maxlen=LENS_SCALE_FRAMES)  # the last places' log-scales
        self._lens_log_scale = 0.0

    def locate(self, gray_HW: np.ndarray, stamp_ns: int, prior_mean_m: np.ndarray | None = None,
               prior_cov_m2: np.ndarray | None = None) -> TrackedPlace:
        """Where a grayscale frame (any size) stamped ``stamp_ns`` was taken, given another estimate's prior."""
        px, descs = self.places.describe(gray_HW)
        verified = self.places.verify_features(px, descs, self.places.described_shape(gray_HW), self.lens_log_scale)
        return self.choose(px, descs, verified, stamp_ns, prior_mean_m, prior_cov_m2)

    def choose(self, px_N2: np.ndarray, descs_N128: np.ndarray, verified: Sequence[Overlap], stamp_ns: int,
               prior_mean_m: np.ndarray | None = None, prior_cov_m2: np.ndarray | None = None) -> TrackedPlace:
        """:meth:`locate` of a frame already described and verified (:meth:`PlaceMap.describe`,
        :meth:`PlaceMap.verify_features`)."""
        tracked = self._choose(px_N2, descs_N128, verified, stamp_ns, prior_mean_m, prior_cov_m2)
        if tracked.position_m is not None or self.track.speed_mps <= 0.0:
            return tracked
        if self._last is None or stamp_ns < self._last[1]:
            self._last = None
            return tracked
        last, placed_ns = self._last
        held = ChainMatch.grown(last.position_m, last.cov_m2, placed_ns, stamp_ns, self.track.speed_mps, 0)
        if (prior_cov_m2 is not None
                and np.trace(held.cov_m2) > float(np.trace(np.asarray(prior_cov_m2, dtype=np.float64)))):
            # held so long that the other estimate is the sharper one
            return tracked
        return replace(tracked, held=held)

    def _choose(self, px_N2: np.ndarray, descs_N128: np.ndarray, verified: Sequence[Overlap], stamp_ns: int,
                prior_mean_m: np.ndarray | None, prior_cov_m2: np.ndarray | None) -> TrackedPlace:
        recent: list[ChainMatch | None] = []  # the recent frames' verification, done at most once per frame

        def overlap() -> ChainMatch | None:
            if not recent:
                recent.append(self.recent.locate(px_N2, descs_N128, stamp_ns))
            return recent[0]

        if self.hypotheses > 1 and self.track.speed_mps > 0.0 and prior_mean_m is not None and prior_cov_m2 is not None:
            return self._choose_hypotheses(px_N2, descs_N128, verified, stamp_ns, prior_mean_m, prior_cov_m2, overlap)
        place, prior, chained = None, 'network', None
        track = self.track.prior(stamp_ns)
        if track is not None and verified:
            place = self.places.place(verified, track[0], track[1] ** 2 * np.eye(2), self.lens_log_scale)
            prior = 'track'
            if place.position_m is None:
                # every verified place lies beyond the track's reach: a jump, or a texture repeated far
                # away; a recent frame this one overlaps better than any training image says which
                chained = overlap()
                if chained is not None and chained.inliers <= place.inliers:
                    chained = None
        if chained is None and (place is None or place.position_m is None):
            place, prior = self.places.place(verified, prior_mean_m, prior_cov_m2, self.lens_log_scale), 'network'
            if place.position_m is None:
                chained = overlap()
        if chained is None and place.position_m is not None:
            self.track.update(place.position_m, stamp_ns)
            self._placed(px_N2, descs_N128, place, stamp_ns)
        return TrackedPlace(place, prior, chained)

    def _choose_hypotheses(self, px_N2: np.ndarray, descs_N128: np.ndarray, verified: Sequence[Overlap],
                           stamp_ns: int, prior_mean_m: np.ndarray, prior_cov_m2: np.ndarray,
                           overlap: Callable[[], ChainMatch | None]) -> TrackedPlace:
        opt, places = self.places.settings, self.places
        if self._hyps and stamp_ns < max(h.stamp_ns for h in self._hyps):
            logger.info('%s: stamp went back to %d ns: dropping the place hypotheses', self.track.name, stamp_ns)
            self._hyps = []
        names = places.named(verified)
        waited = 'track' if self._hyps else 'network'  # what a frame without a place of its own was judged by
        candidates = places_of(verified, places.positions_FD, opt, at_log_scale=self.lens_log_scale)
        mean = np.asarray(prior_mean_m, dtype=np.float64)
        info = np.linalg.pinv(np.asarray(prior_cov_m2, dtype=np.float64))
        network_gate = gate_d2(opt.prior_gate) if opt.prior_gate > 0.0 else math.inf
        reach_gate = gate_d2(TRACK_GATE)
        best_before = max((h.log_score for h in self._hyps), default=0.0)
        children: list[tuple[float, bool, Place]] = []  # (score, continued, place)
        for place in candidates:
            d = place.position_m - mean
            d2 = float(d @ info @ d)
            log_inliers = math.log(place.inliers_sum)
            # a new hypothesis needs the network: inside its gate, weighed by its density
            score = best_before + HYPOTHESIS_BIRTH + log_inliers - 0.5 * d2 if d2 <= network_gate else -math.inf
            continued = False
            # a hypothesis continues within its own Gaussian's gate, as the single track does; the network weighs
            # in at HYPOTHESIS_NETWORK_WEIGHT, clipped (a network far off for a stretch of frames does not break
            # the run)
            for h in self._hyps:
                sigma_m = self.track.sigma_after(stamp_ns - h.stamp_ns)
                reach_d2 = float(np.sum((place.position_m - h.place.position_m) ** 2)) / sigma_m ** 2
                if reach_d2 <= reach_gate:
                    value = (h.log_score + log_inliers - 0.5 * HYPOTHESIS_NETWORK_WEIGHT * min(d2, reach_gate)
                             - 0.5 * reach_d2 - 2.0 * math.log(sigma_m / self.track.sigma_m))
                    if value > score:
                        score, continued = value, True
            if score == -math.inf:
                continue
            children.append((score, continued, place))
        best = max(children, key=lambda c: c[0]) if children else None
        # as the single track reports it: places verified, but none within the run's reach (or the network's)
        rejected = bool(candidates) and not any(c for _, c, _ in children) and (bool(self._hyps) or not children)
        if best is None or (not best[1] and self._hyps):
            # no place, or the best one starts afresh: a recent frame overlapping better than any training
            # image says where the camera is, and the hypotheses wait for the next frame
            chained = overlap()
            if chained is not None and (best is None or chained.inliers > names[0][1]):
                return TrackedPlace(PlaceMatch(None, None, names, rejected=rejected), waited, chained)
        updated = [_Hypothesis(score, place, stamp_ns) for score, _, place in children]
        # this frame's places gained log(inliers) each; a hypothesis they miss keeps a faded barely verified image
        carry = math.log(opt.min_inliers) if children else 0.0
        carried = [replace(h, log_score=h.log_score + HYPOTHESIS_MISS
                           + carry * math.exp(-(stamp_ns - h.stamp_ns) * 1e-9 / HYPOTHESIS_MISS_CARRY_S))
                   for h in self._hyps]
        kept: list[_Hypothesis] = []
        for h in sorted(updated + carried, key=lambda h: -h.log_score):
            if all(h.stamp_ns != k.stamp_ns or np.linalg.norm(h.place.position_m - k.place.position_m)
                   > HYPOTHESIS_MERGE_M for k in kept):
                kept.append(h)
            if len(kept) >= self.hypotheses:
                break
        top = kept[0].log_score if kept else 0.0
        self._hyps = [replace(h, log_score=h.log_score - top) for h in kept]
        if self._hyps and self._hyps[0].stamp_ns == stamp_ns:
            place = self._hyps[0].place
            # the places of this frame's hypotheses as a mixture (weights e^score): its covariance about the
            # published place, so that a frame two places compete for is published as that uncertain
            current = [h for h in self._hyps if h.stamp_ns == stamp_ns]
            weights = np.exp([h.log_score for h in current])
            weights /= weights.sum()
            cov = sum(w * h.place.cov_m2(opt) for w, h in zip(weights, current))
            spread = sum(w * np.outer(h.place.position_m - place.position_m, h.place.position_m - place.position_m)
                         for w, h in zip(weights, current))
            match = PlaceMatch(place.position_m, cov + spread, names, used=len(place.members), spread_m2=spread,
                               log_scale=place.log_scale)
            continued = next(c for _, c, p in children if p is place)
            self._placed(px_N2, descs_N128, match, stamp_ns)
            return TrackedPlace(match, 'track' if continued else 'network')
        return TrackedPlace(PlaceMatch(None, None, names, rejected=rejected), waited, overlap())

    def _placed(self, px_N2: np.ndarray, descs_N128: np.ndarray, place: PlaceMatch, stamp_ns: int) -> None:
        self.recent.add(px_N2, descs_N128, place.position_m, place.cov_m2, stamp_ns)
        self._last = (place, int(stamp_ns))
        self._place_scales.append(place.log_scale)
        if len(self._place_scales) >= LENS_SCALE_MIN_FRAMES:
            median = float(np.median(self._place_scales))
            self._lens_log_scale = median if abs(median) > LENS_SCALE_DEADBAND else 0.0

    @property
    def lens_log_scale(self) -> float:
        """How much larger this camera sees what the map images show than they do, as a log-scale, from the
        run so far: the median :attr:`PlaceMatch.log_scale` of the last :data:`LENS_SCALE_FRAMES` places, once
        there are :data:`LENS_SCALE_MIN_FRAMES`; 0 while its magnitude is below :data:`LENS_SCALE_DEADBAND`.
        Places are read at this scale instead of 0 (:func:`scale_aligned_position`); updated as places are
        published."""
        return self._lens_log_scale

    def reset(self) -> None:
        """Forget the run: the track, the recent frames, the hypotheses, the held place and the lens's scale."""
        self.track.reset()
        self.recent.reset()
        self._hyps = []
        self._last = None
        self._place_scales.clear()
        self._lens_log_scale = 0.0


#: A place's position (:func:`places_of`): the prior variance of the log-scale (in log-scale units squared)
#: that shrinks the fit of its images' positions against their scales (a ridge: a place whose images
#: barely differ in scale keeps their mean), and the most the position moves from that mean (metres; 5 m until
#: 2026-12-06: since the rays fix the line of sight, the move along it, which only the scales give, needs room;
#: measured in docs/localizers/gps_regressor.md).
SCALE_RIDGE = 0.01
SCALE_SHIFT_MAX_M = 20.0
#: A place's images are weighed by their inliers times a Gaussian of their distance from its head image, with a
#: standard deviation of this x ``place_radius_m`` (15 m at the default 25 m; since 2026-12-05, measured in
#: docs/localizers/gps_regressor.md): the place still gathers every image within the radius for its score.
PLACE_HEAD_SIGMA = 0.6


@dataclass(frozen=True)
class Place:
    """A place the verified map images give (:func:`places_of`): ``position_m`` (D,), its images' positions
    brought to the query's scale, the sum of their inliers (``inliers_sum``) and its head's inliers
    (``head_inliers``; the covariance falls as 1 / these), its images (``members``), head first."""

    position_m: np.ndarray
    inliers_sum: float
    head_inliers: int
    members: tuple[Overlap, ...]

    @property
    def log_scale(self) -> float:
        """The inlier-weighted mean :attr:`Overlap.log_scale` of the place's images: how much larger the query
        sees what they show."""
        weights = np.array([o.inliers for o in self.members], dtype=np.float64)
        return float(weights @ [o.log_scale for o in self.members] / weights.sum())

    def cov_m2(self, settings: GPSKeyframes) -> np.ndarray:
        """The place's covariance: the standard deviation falls as 1 / the head's inliers (measured against the
        place's scatter and a constant: sharper at the same calibrated coverage), times ``covariance_scale``."""
        return ((settings.min_inliers / self.head_inliers) ** 2 * settings.covariance_scale
                * np.eye(len(self.position_m)))


def places_of(verified: Iterable[Overlap], positions_FD: np.ndarray, settings: GPSKeyframes,
              at_log_scale: float = 0.0) -> list[Place]:
    """The places the verified map images (``positions_FD``: every map image's position) give, most inliers
    first: every verified image heads a place of itself and the verified images within ``place_radius_m`` with
    between ``min_relative_inliers`` x and 1 x its inliers (head first), at :func:`scale_aligned_position` (read
    at ``at_log_scale``; the images weighed about the head by a Gaussian of :data:`PLACE_HEAD_SIGMA` x
    ``place_radius_m``)."""
    opt = settings
    verified = sorted((Overlap(*v) for v in verified), key=lambda v: -v.inliers)
    near_m = PLACE_HEAD_SIGMA * opt.place_radius_m
    out = []
    for v in verified:
        head = positions_FD[v.frame]
        members = (v, *(o for o in verified if o is not v and opt.min_relative_inliers * v.inliers <= o.inliers
                        <= v.inliers and np.linalg.norm(positions_FD[o.frame] - head) <= opt.place_radius_m))
        position = ray_refined_position(scale_aligned_position(members, positions_FD, at_log_scale,
                                                               head_sigma_m=near_m), members, positions_FD)
        out.append(Place(depth_refined_position(position, members),
                         float(sum(o.inliers for o in members)),
                         int(v.inliers), members))
    return out


def scale_aligned_position(members: Sequence[Overlap], positions_FD: np.ndarray,
                           at_log_scale: float = 0.0, *, head_sigma_m: float = math.inf) -> np.ndarray:
    """Where the query was taken among map images that overlap it: their positions fitted, with their inliers as
    weights, as a linear function of their :attr:`Overlap.log_scale`, read at the query's own scale: 0, or
    ``at_log_scale`` for a camera whose lens makes it see everything that much larger than the map images'
    lens would (:attr:`PlaceTracker.lens_log_scale`).

    Images of one scene taken nearer it than the query see it larger, those farther back smaller; along the
    line of sight the camera's position moves by about (its distance to the scene) x the log-scale, so the
    fit's slope is that distance times the viewing direction, and the inlier-weighted mean (the fit's
    value at the images' mean scale) moves to the query's scale. The slope is shrunk by :data:`SCALE_RIDGE`
    (images of nearly one scale keep their mean; one image is its own position) and the move is at most
    :data:`SCALE_SHIFT_MAX_M`.

    With ``head_sigma_m`` finite, each image's weight is also a Gaussian of its distance from the first member's
    (the place's head, the image with most inliers): images of the same scene taken 20 m from the head say
    less about where the query is than those beside it."""
    weights = np.array([o.inliers for o in members], dtype=np.float64)
    positions = positions_FD[[o.frame for o in members]]
    if math.isfinite(head_sigma_m):
        weights *= np.exp(-0.5 * np.sum((positions - positions[0]) ** 2, axis=1) / head_sigma_m ** 2)
    weights /= weights.sum()
    scales = np.array([o.log_scale for o in members], dtype=np.float64)
    mean_m = weights @ positions
    mean_scale = float(weights @ scales)
    spread = scales - mean_scale
    slope_m = (weights * spread) @ (positions - mean_m) / (float(weights @ spread ** 2) + SCALE_RIDGE)
    shift_m = -slope_m * (mean_scale - at_log_scale)
    length_m = float(np.linalg.norm(shift_m))
    if length_m > SCALE_SHIFT_MAX_M:
        shift_m *= SCALE_SHIFT_MAX_M / length_m
    return mean_m + shift_m


#: :func:`ray_refined_position`: the scale-aligned position's weight against the rays' (which sum to 1), the
#: rays' robust scale (Cauchy, metres off the ray), its reweighting rounds, and the query headings tried (evenly
#: over the circle: 2 deg apart) when the query's own angles to its images give rays; the weight of the headings
#: the headed images give the query (:attr:`Overlap.heading_rad`) in choosing among those, and their robust scale.
RAY_PRIOR_WEIGHT = 0.1
RAY_SCALE_M = 4.0
RAY_ITERATIONS = 5
RAY_YAW_STEPS = 180
RAY_HEADING_WEIGHT = 0.5
RAY_HEADING_SCALE_DEG = 10.0


def ray_refined_position(position_m: np.ndarray, members: Sequence[Overlap], positions_FD: np.ndarray) -> np.ndarray:
    """A place's position (``position_m``, from :func:`scale_aligned_position`) moved toward where the rays of
    its images cross. Two kinds of ray say on which half-line from an image's position the query's camera
    stands:

    * a member with a bearing (:attr:`Overlap.bearing_rad`: its image has a heading) sees the query's camera in
      that map direction;
    * a member with a seen angle (:attr:`Overlap.seen_rad`, any image of a map with a focal length) is seen by
      the query at that angle in the query's camera, so from the map bearing heading + angle, with the query's
      heading unknown but shared by all such rays. With two or more of them, :data:`RAY_YAW_STEPS` headings are
      tried and the one whose position fits best (the robust cost below) is kept (a 2-D resection); members with
      a heading for the query (:attr:`Overlap.heading_rad`: their image's heading and the rotation between the
      two) add :data:`RAY_HEADING_WEIGHT` x their inlier-weighted Cauchy cost (scale
      :data:`RAY_HEADING_SCALE_DEG`) of the heading tried.

    For a heading, the east/north position minimises the inlier-weighted squared distances to the rays (weights
    summing to 1; to the image's position when the query would stand behind it) plus :data:`RAY_PRIOR_WEIGHT`
    x the squared distance to ``position_m``, which fixes the position along nearly parallel rays; rays far off
    the solution weigh less (Cauchy, scale :data:`RAY_SCALE_M`, :data:`RAY_ITERATIONS` rounds), so one wrong
    heading or essential matrix does not drag it. Fewer than two rays: ``position_m`` unchanged. Other
    coordinates (an altitude) are kept.

    Images hold positions only; a camera beside them sees what they saw from another angle, which their
    positions' mean cannot say and their rays can (docs/localizers/gps_regressor.md, "Rays from the verified
    images", "The frame's own angles: a resection")."""
    fixed = [o for o in members if math.isfinite(o.bearing_rad)]
    seen = [o for o in members if math.isfinite(o.seen_rad)]
    if len(seen) < 2:
        seen = []
    if len(fixed) + len(seen) < 2:
        return position_m
    prior = np.asarray(position_m, dtype=np.float64)[:2]
    points = positions_FD[[o.frame for o in fixed + seen]][:, :2]  # (N, 2)
    weights = np.array([o.inliers for o in fixed + seen], dtype=np.float64)
    weights /= weights.sum()
    yaws = np.linspace(-math.pi, math.pi, RAY_YAW_STEPS, endpoint=False) if seen else np.zeros(1)
    # each ray's map direction from its image toward the query, per heading tried: (Y, N)
    angles = np.concatenate([np.broadcast_to([o.bearing_rad for o in fixed], (len(yaws), len(fixed))),
                             yaws[:, None] + np.array([o.seen_rad for o in seen]) + math.pi], axis=1)
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # (Y, N, 2)
    normals = np.stack([-directions[..., 1], directions[..., 0]], axis=-1)
    offsets = np.einsum('ynj,nj->yn', normals, points)
    robust = np.ones(angles.shape)
    for _ in range(RAY_ITERATIONS + 1):
        w = weights * robust
        A = RAY_PRIOR_WEIGHT * np.eye(2) + np.einsum('yn,yni,ynj->yij', w, normals, normals)
        b = RAY_PRIOR_WEIGHT * prior + np.einsum('yn,yni,yn->yi', w, normals, offsets)
        x = np.linalg.solve(A, b[..., None])[..., 0]  # (Y, 2)
        rel = x[:, None] - points
        off_m = np.where(np.einsum('ynj,ynj->yn', directions, rel) >= 0.0,
                         np.abs(np.einsum('ynj,ynj->yn', normals, rel)), np.linalg.norm(rel, axis=-1))
        robust = 1.0 / (1.0 + (off_m / RAY_SCALE_M) ** 2)
    cost = (np.log1p((off_m / RAY_SCALE_M) ** 2) @ weights
            + RAY_PRIOR_WEIGHT * np.sum((x - prior) ** 2, axis=1) / RAY_SCALE_M ** 2)
    headed = [o for o in members if math.isfinite(o.heading_rad)]
    if seen and headed:
        turn = np.angle(np.exp(1j * (yaws[:, None] - np.array([o.heading_rad for o in headed]))))  # (Y, H)
        votes = np.array([o.inliers for o in headed], dtype=np.float64)
        cost += RAY_HEADING_WEIGHT * np.log1p((turn / math.radians(RAY_HEADING_SCALE_DEG)) ** 2) @ (votes / votes.sum())
    out = np.array(position_m, dtype=np.float64)
    out[:2] = x[int(np.argmin(cost))]
    return out


#: :func:`depth_refined_position`: how far (m) two members' positions by depth must lie from their median at most,
#: and how far that median may move the place.
DEPTH_AGREE_M = 2.0
DEPTH_MOVE_MAX_M = 15.0


def _weighted_median(values_N: np.ndarray, weights_N: np.ndarray) -> float:
    order = np.argsort(values_N, kind='stable')
    cumulative = np.cumsum(weights_N[order])
    return float(values_N[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def depth_refined_position(position_m: np.ndarray, members: Sequence[Overlap]) -> np.ndarray:
    """A place's position (``position_m``: :func:`ray_refined_position`'s) moved to where its images' keypoint depths
    put the query's camera (:attr:`Overlap.depth_east_north_m`): east and north each the median over the members,
    weighted by their :attr:`Overlap.depth_points`, when two or more members' positions lie within
    :data:`DEPTH_AGREE_M` of it and it lies within :data:`DEPTH_MOVE_MAX_M` of ``position_m``; else ``position_m``
    unchanged. Other coordinates (an altitude) are kept.

    Scales and rays say along which line and how far relative to the images the query stood; metric depth says
    how far in metres, which a frame standing behind every image that sees what it sees needs
    (docs/localizers/gps_regressor.md, "Metric depth from the map images' positions")."""
    depth = [o for o in members if o.depth_points > 0]
    if len(depth) < 2:
        return position_m
    at = np.array([o.depth_east_north_m for o in depth], dtype=np.float64)
    weights = np.array([o.depth_points for o in depth], dtype=np.float64)
    median = np.array([_weighted_median(at[:, 0], weights), _weighted_median(at[:, 1], weights)])
    if (np.sum(np.linalg.norm(at - median, axis=1) <= DEPTH_AGREE_M) < 2
            or np.linalg.norm(median - np.asarray(position_m, dtype=np.float64)[:2]) > DEPTH_MOVE_MAX_M):
        return position_m
    out = np.array(position_m, dtype=np.float64)
    out[:2] = median
    return out


def choose_place(verified: Iterable[Overlap], positions_FD: np.ndarray, settings: GPSKeyframes,
                 prior_mean_m: np.ndarray | None = None, prior_cov_m2: np.ndarray | None = None, *,
                 at_log_scale: float = 0.0) -> PlaceMatch:
    """Where a query was taken, from the map images it verifiably overlaps (``verified``: ``(frame, inliers)``,
    ``positions_FD``: every map image's position), among its :func:`places_of`.

    A place scores the sum of its inliers times, with a prior (another estimate's mean and covariance in the
    map's frame: the network's, or the previous frame's place), the prior's density at the place
    (``exp(-d^2 / 2)``, d the Mahalanobis distance), so that a texture repeated at two places is settled by
    where the prior puts the camera; places outside the prior's ``prior_gate`` ellipse are rejected (the map
    says "here", the prior says "impossible": no position, ``rejected`` set). Returns the best place's
    position, covariance (:meth:`Place.cov_m2`) and how many images were averaged (``verified`` left empty:
    :meth:`PlaceMap.place` fills it); no position when nothing is verified. Places are read at
    ``at_log_scale`` (:func:`scale_aligned_position`; a lens other than the map images')."""
    opt = settings
    candidates = places_of(verified, positions_FD, settings, at_log_scale)
    if not candidates:
        return PlaceMatch(None, None, ())
    prior_info = None
    if prior_mean_m is not None and prior_cov_m2 is not None:
        prior_info = np.linalg.pinv(np.asarray(prior_cov_m2, dtype=np.float64))
    gate = gate_d2(opt.prior_gate) if opt.prior_gate > 0.0 else math.inf
    best_score, best = -math.inf, None
    for place in candidates:
        log_score = math.log(place.inliers_sum)
        if prior_info is not None:
            d = place.position_m - np.asarray(prior_mean_m, dtype=np.float64)
            d2 = float(d @ prior_info @ d)
            if d2 > gate:
                continue
            log_score -= 0.5 * d2
        if log_score > best_score:
            best_score, best = log_score, place
    if best is None:
        return PlaceMatch(None, None, (), rejected=True)
    return PlaceMatch(best.position_m, best.cov_m2(opt), (), used=len(best.members), log_scale=best.log_scale)


#: Probability mass inside the track's gate.
TRACK_GATE = 0.999


def gate_d2(probability: float) -> float:
    """Squared Mahalanobis radius of a 2-D Gaussian's ``probability`` ellipse (chi-square, 2 degrees of freedom;
    the same formula as the training metrics' ``chi2_2dof_quantile``, which the runtime does not import)."""
    return -2.0 * math.log1p(-probability)


class Track:
    """The last position a localizer published from geometry and its stamp, as the next frame's prior: a
    Gaussian of ``sigma_m`` growing by ``speed_mps`` x the time since (a platform cannot have moved farther).
    Off when ``speed_mps`` is 0; dropped when a stamp goes back (a bag loop, a new run) and on :meth:`reset`."""

    def __init__(self, sigma_m: float, speed_mps: float, name: str = '') -> None:
        self.sigma_m, self.speed_mps, self.name = float(sigma_m), float(speed_mps), name
        self._last: tuple[np.ndarray, int] | None = None

    def prior(self, stamp_ns: int) -> tuple[np.ndarray, float] | None:
        """(position, standard deviation in m) for a frame at ``stamp_ns``, or None (no track, tracking off,
        or the stamp went back: the track is dropped)."""
        if self._last is None or self.speed_mps <= 0.0:
            return None
        position, last_ns = self._last
        if stamp_ns < last_ns:
            logger.info('%s: stamp went back from %d to %d ns: dropping the track', self.name, last_ns, stamp_ns)
            self._last = None
            return None
        return position, self.sigma_after(stamp_ns - last_ns)

    def sigma_after(self, elapsed_ns: int) -> float:
        """Standard deviation (m) of a position ``elapsed_ns`` after it was published: ``sigma_m`` grown by
        ``speed_mps`` over the time."""
        return self.sigma_m + self.speed_mps * elapsed_ns * 1e-9

    def update(self, position: np.ndarray, stamp_ns: int) -> None:
        self._last = (np.asarray(position, dtype=np.float64).copy(), int(stamp_ns))

    def reset(self) -> None:
        self._last = None
