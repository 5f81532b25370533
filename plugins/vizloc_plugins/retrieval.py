"""Localizer plugin ``retrieval``: global-descriptor retrieval + local-feature verification + PnP (seed 004).

Per frame:

1. **Retrieval.** The bundle's ONNX model (backbone + GeM + projection, preprocessing baked in; contract in
   :mod:`.retrieval_contract`) gives an L2-normalised descriptor; the reference database's FAISS index
   (:class:`vizloc_plugins.refdb.ReferenceIndex`, exact or IVF-PQ) returns the ``top_k`` nearest entries.
2. **Re-ranking and geometric verification.** The first ``verify_k`` candidates are matched to the
   frame with OpenCV SIFT (brute-force k=2 + Lowe's ratio test); the fundamental matrix and a
   homography are fitted with OpenCV's USAC (MAGSAC++); the larger inlier set counts. Candidates with at
   least ``min_verified_inliers`` inliers are *verified* and re-ranked by inlier count.
3. **6-DoF pose, place by place.** Verified references are grouped by place (within ``place_radius_m`` of
   the group's best reference); PnP runs on one place at a time, best place first, and the first pose
   that passes wins, so points of a repeated facade elsewhere never enter the PnP of the right place.
   3D points of a place's verified references' matched keypoints come from their depth map
   (``depth.png|npy`` in the entry) and pose ``E``; references without depth give points by
   triangulation of keypoints that two verified references share through the frame
   (``cv2.triangulatePoints``, parallax and reprojection checked). The pose is solved with poselib's
   LO-RANSAC PnP (intrinsics from CameraInfo, undistorted pixels), its covariance with
   :func:`vizloc_plugins.pnp.pose_covariance_map`, the WGS84 fix with
   :func:`vizloc_plugins.pnp.geo_estimate_from_pose` and the database's geo reference.
4. **Fallback.** Without a pose (no CameraInfo, too few points or inliers, a pose farther than
   ``max_pose_offset_m`` from the best reference), the best reference's position with a wide covariance
   (``fallback_sigma_m``), flagged by ``diagnostics['fallback'] = 'best_reference'``.
5. **Track.** Along a run of frames the previous frame's PnP pose (:class:`vizloc_plugins.keyframes.Track`:
   ``track_sigma_m`` growing by ``track_speed_mps`` over the time since) gates the places: only those within
   its 99.9 % reach are tried (a repeated facade 150 m away cannot be where the camera was a tenth of a
   second ago; a frame with none falls back, and the reach keeps growing until a pose is found again), and
   a fallback prefers a verified (else retrieved) reference within it.
6. **The last poses' map points** (option ``chain_frames``). A frame none of whose places gives a pose
   (a view across an open lawn that no reference verifies, a place with too few points) is posed on the
   map points of the last ``chain_frames`` poses (their PnP inliers: database points, matched through
   those frames' own descriptors) together with its own verified places within the track's reach; the pose
   must lie within that reach (``diagnostics['source'] = 'previous_frame'``). The points are the
   database's, not re-estimated, so the pose is this frame's PnP against the map and its error does not
   accumulate along the run as odometry's would.

The database (``options.database``) lives outside the bundle and is verified on load (manifest with a
sha256 per file, docs/bundles.md). No torch here.
"""
from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vizloc_ros.hookspecs import hookimpl
from vizloc_ros.trainers import TrainerRegistrar, TrainerType
from vizloc_ros.localizer import ConfigError, LocalizerConfig, LocalizerContext, LocalizerType
from vizloc_ros.types import (CameraIntrinsics, CovarianceType, Frame, GeoEstimate, InvalidOutputError, LocalizationResult,
                              PoseEstimate, ResultStatus)

from .keyframes import TRACK_GATE, Track, gate_d2, lift_pixels, ratio_test, root_sift, verify_two_view
from .pnp import geo_estimate_from_pose, solve_pnp_lo_ransac, undistort_pixels
from .refdb import ReferenceDatabase, ReferenceDatabaseError, ReferenceEntry, ReferenceIndex, load_depth_m
from .retrieval_contract import LOCALIZER_TYPE, ContractError, RetrievalContract, descriptor_model_name

__all__ = ['LOCALIZER_TYPE', 'RetrievalOptions', 'RetrievalPipeline', 'RetrievalOutcome', 'PoseTrack', 'RetrievalLocalizer',
           'Verification', 'FAILURES', 'compute_descriptors', 'vizloc_register_localizers', 'vizloc_register_trainers']

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrievalOptions:
    database: str = field(default='', metadata={'description': 'reference database folder (vizloc-db); required'})
    top_k: int = field(default=20, metadata={'description': 'candidates retrieved from the FAISS index'})
    verify_k: int = field(default=20, metadata={'description': 'of those, how many get SIFT geometric verification'})
    ratio: float = field(default=0.8, metadata={'description': "Lowe's ratio test threshold"})
    sift_features: int = field(default=2000, metadata={'description': 'SIFT keypoints per image (0 = all)'})
    sift_contrast_threshold: float = field(default=0.01, metadata={
        'description': "SIFT's contrastThreshold (OpenCV's default 0.04 finds few keypoints in small or blurred "
                       'frames)'})
    root_sift: bool = field(default=True, metadata={
        'description': 'RootSIFT descriptors (L1-normalised, square-rooted: Hellinger distance) for matching'})
    min_verified_inliers: int = field(default=12, metadata={
        'description': 'fundamental/homography inliers for a candidate to count as verified'})
    pnp_references: int = field(default=10, metadata={
        'description': 'verified references of one place that give 3D points'})
    place_radius_m: float = field(default=20.0, metadata={
        'description': 'verified references within this distance of a place\'s best reference form one place; '
                       'PnP runs per place'})
    pnp_places: int = field(default=3, metadata={
        'description': "places tried by PnP in turn (ordered by their best reference's inliers); the first pose "
                       'that passes wins'})
    pnp_threshold_px: float = field(default=4.0, metadata={'description': 'PnP RANSAC reprojection threshold'})
    pnp_min_inliers: int = field(default=15, metadata={
        'description': 'fewer PnP inliers: the next place, else fallback'})
    max_pose_offset_m: float = field(default=50.0, metadata={
        'description': "a PnP pose farther than this from its place's best reference is rejected"})
    fallback_sigma_m: float = field(default=25.0, metadata={
        'description': 'standard deviation (m) of the fallback fix at the best reference'})
    verify_database: bool = field(default=True, metadata={'description': 'check every file of the database on load'})
    feature_cache: int = field(default=512, metadata={'description': 'reference SIFT features kept in memory'})
    seed: int = field(default=0, metadata={'description': 'RANSAC random seed'})
    track_speed_mps: float = field(default=15.0, metadata={
        'description': "along a run only places within reach of the previous PnP pose (this platform speed x the "
                       'time since) are tried, and a fallback prefers a reference within it; 0 = every frame on '
                       'its own'})
    track_sigma_m: float = field(default=3.0, metadata={
        'description': "standard deviation (m) of the previous frame's pose as the next frame's prior, before it "
                       'grows by track_speed_mps over the time between the frames'})
    chain_frames: int = field(default=5, metadata={
        'description': "a frame none of whose places gives a pose is posed on the map points of the last this many "
                       "poses (their PnP inliers' database points, matched through those frames' descriptors) and "
                       "its own verified places within the track's reach; 0 = off; needs the track "
                       '(track_speed_mps > 0)'})
    intra_op_num_threads: int = field(default=0, metadata={
        'description': 'ONNX Runtime CPU threads for backend onnxruntime (0 = library default)'})

    def __post_init__(self) -> None:
        if self.top_k < 1 or not 1 <= self.verify_k <= self.top_k:
            raise ValueError(f'need top_k >= 1 and 1 <= verify_k <= top_k, got {self.top_k}, {self.verify_k}')
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f'ratio must be in (0, 1), got {self.ratio}')
        if self.min_verified_inliers < 8 or self.pnp_min_inliers < 4 or self.pnp_references < 1 or self.pnp_places < 1:
            raise ValueError('min_verified_inliers must be >= 8, pnp_min_inliers >= 4, pnp_references >= 1, '
                             'pnp_places >= 1')
        if not (self.pnp_threshold_px > 0 and self.fallback_sigma_m > 0 and self.max_pose_offset_m > 0
                and self.place_radius_m > 0):
            raise ValueError('pnp_threshold_px, fallback_sigma_m, max_pose_offset_m and place_radius_m must be > 0')
        if self.sift_features < 0 or self.feature_cache < 0:
            raise ValueError('sift_features and feature_cache must be >= 0')
        if not self.sift_contrast_threshold > 0:
            raise ValueError(f'sift_contrast_threshold must be > 0, got {self.sift_contrast_threshold}')
        if self.chain_frames < 0:
            raise ValueError(f'chain_frames must be >= 0 (0 = off), got {self.chain_frames}')
        if not (math.isfinite(self.track_speed_mps) and self.track_speed_mps >= 0.0):
            raise ValueError(f'track_speed_mps must be >= 0 (0 = no tracking), got {self.track_speed_mps}')
        if not (math.isfinite(self.track_sigma_m) and self.track_sigma_m > 0.0):
            raise ValueError(f'track_sigma_m must be > 0, got {self.track_sigma_m}')


@dataclass(frozen=True)
class Verification:
    """Geometric verification of one candidate: matched keypoint pixels (inliers only)."""

    uid: str
    inliers: int
    query_idx: np.ndarray  # query keypoint indices of the inlier matches
    query_px: np.ndarray  # (n, 2)
    ref_px: np.ndarray  # (n, 2)
    ref_idx: np.ndarray  # reference keypoint indices of the inlier matches


#: Stable kinds of :attr:`RetrievalOutcome.failure` (why a frame got no PnP pose).
FAILURES: tuple[str, ...] = ('empty_index', 'not_verified', 'no_camera_info', 'no_reference_pose', 'outside_track',
                             'too_few_points', 'pnp_failed', 'too_few_pnp_inliers', 'pose_too_far')


@dataclass(frozen=True)
class RetrievalOutcome:
    """What the pipeline found for one image (also what the trainer's evaluation reads)."""

    candidates: tuple[str, ...]  # retrieval order
    scores: tuple[float, ...]
    verified: tuple[Verification, ...]  # re-ranked, most inliers first
    best_uid: str | None
    T_map_camera: np.ndarray | None = None
    cov_6x6: np.ndarray | None = None
    pnp_inliers: int = 0
    pnp_points: int = 0
    reason: str = ''   # why there is no PnP pose, for people (diagnostics)
    failure: str = ''  # the same as a stable kind (see FAILURES), for counting
    # the PnP inliers: this frame's descriptors and their map points (what the next frame may match)
    inlier_descs_N128: np.ndarray | None = None
    inlier_points_N3: np.ndarray | None = None
    chained: bool = False  # the pose came from the last poses' map points (and the frame's weak places)


class _Features:
    """SIFT (or RootSIFT) keypoints/descriptors, with a small LRU cache for reference images."""

    def __init__(self, n_features: int, cache_size: int, contrast_threshold: float, root: bool) -> None:
        self.sift = cv2.SIFT_create(nfeatures=n_features, contrastThreshold=contrast_threshold)
        self.root = root
        self.matcher = cv2.BFMatcher(cv2.NORM_L2)
        self.cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.cache_size = cache_size

    def detect(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keypoints, descs = self.sift.detectAndCompute(gray, None)
        if descs is None or not keypoints:
            return np.zeros((0, 2)), np.zeros((0, 128), np.float32)
        if self.root:
            descs = root_sift(descs)
        return np.array([k.pt for k in keypoints], dtype=np.float64), descs

    def reference(self, entry: ReferenceEntry) -> tuple[np.ndarray, np.ndarray]:
        hit = self.cache.get(entry.uid)
        if hit is not None:
            self.cache.move_to_end(entry.uid)
            return hit
        gray = cv2.imread(str(entry.image), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            raise ReferenceDatabaseError(f'{entry.image}: cannot decode reference image')
        features = self.detect(gray)
        if self.cache_size:
            self.cache[entry.uid] = features
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return features

    def match(self, query: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray], ratio: float
              ) -> tuple[np.ndarray, np.ndarray]:
        """(query indices, reference indices) of ratio-test matches (:func:`vizloc_plugins.keyframes.ratio_test`)."""
        return ratio_test(self.matcher, query[1], ref[1], ratio)


def _triangulate(a: ReferenceEntry, pa_N2: np.ndarray, b: ReferenceEntry, pb_N2: np.ndarray,
                 max_error_px: float = 4.0, min_parallax_deg: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Triangulate matched pixels of two posed references (``cv2.triangulatePoints``): (mask over the
    matches, map-frame points of the kept ones). Kept: in front of both cameras, reprojection error below
    ``max_error_px`` in both, rays at least ``min_parallax_deg`` apart."""
    Pa = a.K @ a.E[:3]
    Pb = b.K @ b.E[:3]
    Xh = cv2.triangulatePoints(Pa, Pb, pa_N2.T.astype(np.float64), pb_N2.T.astype(np.float64))
    with np.errstate(divide='ignore', invalid='ignore'):
        X = (Xh[:3] / Xh[3]).T
        ok = np.all(np.isfinite(X), axis=1)
        for P, px in ((Pa, pa_N2), (Pb, pb_N2)):
            proj = (P @ np.vstack([X.T, np.ones(len(X))])).T
            err = np.linalg.norm(proj[:, :2] / proj[:, 2:3] - px, axis=1)
            ok &= (proj[:, 2] > 0) & (err < max_error_px)
        ra, rb = X - a.T_map_camera[:3, 3], X - b.T_map_camera[:3, 3]
        cos = np.sum(ra * rb, axis=1) / (np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1))
    ok &= cos < math.cos(math.radians(min_parallax_deg))
    return ok, X[ok]


class RetrievalPipeline:
    """Database + index + local features: everything after the global descriptor (no ONNX model here)."""

    def __init__(self, database: str | Path, descriptor_model: str, options: RetrievalOptions) -> None:
        self.options = options
        self.db = ReferenceDatabase(database, verify=True if options.verify_database else 'auto')
        if self.db.manifest is None:
            raise ReferenceDatabaseError(f'{database}: no manifest.json; run `vizloc-db build {database} --bundle ...`')
        self.index = ReferenceIndex.load(self.db, descriptor_model)
        self.geo = None
        if self.db.manifest.geo:
            from vizloc_ros.geodesy import GeoReference

            self.geo = GeoReference.from_mapping(self.db.manifest.geo)
        self.features = _Features(options.sift_features, options.feature_cache, options.sift_contrast_threshold,
                                  options.root_sift)
        self._depth_cache: OrderedDict[str, np.ndarray | None] = OrderedDict()

    def _depth(self, entry: ReferenceEntry) -> np.ndarray | None:
        if entry.uid not in self._depth_cache:
            self._depth_cache[entry.uid] = load_depth_m(entry)
            while len(self._depth_cache) > max(self.options.feature_cache, 1):
                self._depth_cache.popitem(last=False)
        return self._depth_cache[entry.uid]

    def _near(self, uid: str, prior: tuple[np.ndarray, float] | None) -> bool:
        """Whether reference ``uid`` may belong to a place inside the prior's 99.9 % gate ((position, sigma m)
        of the previous pose; horizontal distance, plus ``place_radius_m`` for the place's extent)."""
        T = self.db[uid].T_map_camera
        if prior is None or T is None:
            return False
        reach_m = math.sqrt(gate_d2(TRACK_GATE)) * prior[1] + self.options.place_radius_m
        return bool(np.linalg.norm(T[:2, 3] - np.asarray(prior[0])[:2]) <= reach_m)

    def run(self, rgb_HW3: np.ndarray, descriptor_D: np.ndarray, camera: CameraIntrinsics | None,
            prior: tuple[np.ndarray, float] | None = None,
            map_points: tuple[np.ndarray, np.ndarray] | None = None) -> RetrievalOutcome:
        """Retrieve, verify and pose one frame. ``prior``: (position in the map frame, standard deviation in
        m) of the previous frame's pose (:class:`vizloc_plugins.keyframes.Track`): only places within its reach
        are tried, and without a pose of its places the frame is posed on ``map_points`` ((descriptors N x 128,
        map points N x 3) of the last poses' PnP inliers, :class:`PoseTrack`) with its places within the reach;
        without any pose the best reference is the first verified (else retrieved) one within the reach."""
        opt = self.options
        scores, uids = self.index.search(descriptor_D[None], opt.top_k)
        candidates, cand_scores = tuple(uids[0]), tuple(float(s) for s in scores[0][:len(uids[0])])
        if not candidates:
            return _no_pose(RetrievalOutcome(candidates, cand_scores, (), None), 'empty_index', 'empty index')
        query = self.features.detect(cv2.cvtColor(rgb_HW3, cv2.COLOR_RGB2GRAY))
        points_of: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # this frame's places' 2D-3D pairs, lifted once
        verified = []
        for uid in candidates[:opt.verify_k]:
            ref = self.features.reference(self.db[uid])
            qi, ri = self.features.match(query, ref, opt.ratio)
            mask = verify_two_view(query[0][qi], ref[0][ri])
            if mask.sum() >= opt.min_verified_inliers:
                verified.append(Verification(uid, int(mask.sum()), qi[mask], query[0][qi[mask]], ref[0][ri[mask]],
                                             ri[mask]))
        verified.sort(key=lambda v: -v.inliers)
        best = verified[0].uid if verified else candidates[0]
        outcome = RetrievalOutcome(candidates, cand_scores, tuple(verified), best)
        if not verified:
            result = _no_pose(outcome, 'not_verified', 'no candidate passed geometric verification')
        elif camera is None:
            result = _no_pose(outcome, 'no_camera_info', 'no CameraInfo: no intrinsics for PnP')
        else:
            result = self._pose(outcome, query, camera, prior, points_of)
        if result.T_map_camera is None and prior is not None:
            if map_points is not None and camera is not None:
                chained = self._chain(result, query, camera, prior, map_points, points_of)
                result = chained if chained.T_map_camera is not None else result
            # the best reference (the fallback's position): one where the camera can be, when one was
            # verified (else retrieved)
            pool = [v.uid for v in verified] or list(candidates[:opt.verify_k])
            near = [uid for uid in pool if self._near(uid, prior)]
            if near:
                result = replace(result, best_uid=near[0])
        return result

    def _triangulated(self, v: Verification, partners: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(indices into ``v``'s matches, map points) for a verified reference without depth: its keypoints matched to
        posed partner references (SIFT, ratio test, USAC) and triangulated; query matches to those keypoints."""
        entry = self.db[v.uid]
        feats = self.features.reference(entry)
        point_of: dict[int, np.ndarray] = {}
        for uid in partners:
            other = self.db[uid]
            o_feats = self.features.reference(other)
            ai, bi = self.features.match(feats, o_feats, self.options.ratio)
            mask = verify_two_view(feats[0][ai], o_feats[0][bi])
            ai, bi = ai[mask], bi[mask]
            if len(ai) == 0:
                continue
            ok, X = _triangulate(entry, feats[0][ai], other, o_feats[0][bi])
            for k, x in zip(ai[ok], X):
                point_of.setdefault(int(k), x)
        keep = [i for i, k in enumerate(v.ref_idx) if int(k) in point_of]
        if not keep:
            return np.zeros(0, np.int64), np.zeros((0, 3))
        return np.asarray(keep, np.int64), np.stack([point_of[int(v.ref_idx[i])] for i in keep])

    def _places(self, verified: tuple[Verification, ...]) -> list[list[Verification]]:
        """Verified references with a pose grouped by place: each (most inliers first) joins the first group
        whose first reference is within ``place_radius_m``, else starts one. Groups keep the order of their
        first references (summed inliers would favour a repeated facade seen by many references elsewhere)."""
        places: list[tuple[np.ndarray, list[Verification]]] = []  # (first reference's position, members)
        for v in verified:  # most inliers first
            T = self.db[v.uid].T_map_camera
            if T is None:
                continue
            for centre_m, members in places:
                if np.linalg.norm(centre_m - T[:3, 3]) <= self.options.place_radius_m:
                    members.append(v)
                    break
            else:
                places.append((T[:3, 3], [v]))
        return [members for _, members in places]

    def _chain(self, outcome: RetrievalOutcome, query: tuple[np.ndarray, np.ndarray], camera: CameraIntrinsics,
               prior: tuple[np.ndarray, float], map_points: tuple[np.ndarray, np.ndarray],
               points_of: dict[str, tuple[np.ndarray, np.ndarray]]) -> RetrievalOutcome:
        """PnP on the last poses' map points (their PnP inliers' database points, matched through those
        frames' descriptors) together with the points of this frame's verified places within the prior's
        reach (too few for a pose of their own), the pose within the prior's reach."""
        # each map point looks for its keypoint in this frame: the ratio test runs over the frame's keypoints
        # (the other way round it would run over the map points, where one scene point seen by several of the
        # last frames is its own second-nearest neighbour and fails the test)
        pi, qi = self.features.match((np.zeros((0, 2)), map_points[0]), query, self.options.ratio)
        query_idx, points = [qi], [map_points[1][pi]]
        for place in self._places(outcome.verified):
            if self._near(place[0].uid, prior):
                idx, X = self._place_points(place, outcome, points_of)
                query_idx.append(idx)
                points.append(X)
        reach_m = math.sqrt(gate_d2(TRACK_GATE)) * prior[1]
        tried = self._solve(outcome, query, np.concatenate(query_idx), np.concatenate(points), camera,
                            np.asarray(prior[0]), reach_m, "the previous pose's reach")
        return replace(tried, chained=True) if tried.T_map_camera is not None else outcome

    def _pose(self, outcome: RetrievalOutcome, query: tuple[np.ndarray, np.ndarray], camera: CameraIntrinsics,
              prior: tuple[np.ndarray, float] | None = None,
              points_of: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> RetrievalOutcome:
        """PnP per place (:meth:`_places`; with a ``prior`` only those within its reach: the camera cannot have
        moved farther; the first ``pnp_places`` in turn): points of different places never meet in one PnP.
        The first place whose pose passes becomes the outcome (its first reference is ``best_uid``); when none
        does, the first place's failure."""
        places = self._places(outcome.verified)
        if not places:
            return _no_pose(outcome, 'no_reference_pose', 'verified references have no pose (E)')
        if prior is not None:  # a repeated facade elsewhere cannot be where the camera just was
            places = [p for p in places if self._near(p[0].uid, prior)]
            if not places:
                return _no_pose(outcome, 'outside_track', "no verified place within the previous pose's reach")
        places = places[:self.options.pnp_places]
        points_of = {} if points_of is None else points_of
        failed = []
        for place in places:
            tried = self._place_pose(replace(outcome, best_uid=place[0].uid), place, query, camera, points_of)
            if tried.T_map_camera is not None:
                return tried
            failed.append(tried)
        return failed[0]

    def _place_pose(self, outcome: RetrievalOutcome, place: list[Verification], query: tuple[np.ndarray, np.ndarray],
                    camera: CameraIntrinsics, points_of: dict[str, tuple[np.ndarray, np.ndarray]]) -> RetrievalOutcome:
        """PnP from one place's verified references."""
        query_idx_N, points_N3 = self._place_points(place, outcome, points_of)
        ref_position = self.db[outcome.best_uid].T_map_camera[:3, 3]
        return self._solve(outcome, query, query_idx_N, points_N3, camera, ref_position, self.options.max_pose_offset_m,
                           'the best reference')

    def _place_points(self, place: list[Verification], outcome: RetrievalOutcome,
                      points_of: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """(the frame's keypoint indices, map points) of one place's first ``pnp_references`` verified
        references: their depth where they have it, else triangulation with the other posed candidates.
        Kept in ``points_of`` (by the place's first reference) for the frame: the chain reuses a place's pairs
        instead of lifting or triangulating them again."""
        head = place[0].uid
        if head in points_of:
            return points_of[head]
        posed = [u for u in outcome.candidates[:self.options.verify_k] if self.db[u].E is not None]
        query_idx, points = [], []
        no_depth = []
        for v in place[:self.options.pnp_references]:
            entry = self.db[v.uid]
            depth = self._depth(entry)
            if depth is None:
                no_depth.append(v)
                continue
            X, ok = lift_pixels(v.ref_px, entry.K, entry.T_map_camera, depth_HW=depth)
            query_idx.append(v.query_idx[ok])
            points.append(X)
        for v in no_depth:
            keep, X = self._triangulated(v, [u for u in posed if u != v.uid])
            query_idx.append(v.query_idx[keep])
            points.append(X)
        points_of[head] = (np.concatenate(query_idx) if query_idx else np.zeros(0, np.int64),
                           np.concatenate(points) if points else np.zeros((0, 3)))
        return points_of[head]

    def _solve(self, outcome: RetrievalOutcome, query: tuple[np.ndarray, np.ndarray], query_idx_N: np.ndarray,
               points_N3: np.ndarray, camera: CameraIntrinsics, anchor_m: np.ndarray, max_offset_m: float,
               anchor: str) -> RetrievalOutcome:
        """PnP of the frame's keypoints ``query_idx_N`` on ``points_N3``; the pose must lie within
        ``max_offset_m`` of ``anchor_m`` (named ``anchor`` in the reason). The outcome keeps the inliers'
        descriptors and map points (what the next frame may match)."""
        opt = self.options
        n = len(points_N3)
        if n < opt.pnp_min_inliers:
            return _no_pose(outcome, 'too_few_points', f"{n} 3D points (< {opt.pnp_min_inliers}) from the references' "
                            'depth or triangulation', pnp_points=n)
        pixels_N2 = undistort_pixels(query[0][query_idx_N], camera.K, camera.D, camera.distortion_model)
        solution = solve_pnp_lo_ransac(points_N3, pixels_N2, camera.K, camera.width, camera.height,
                                       threshold_px=opt.pnp_threshold_px, seed=opt.seed)
        if solution is None:
            return _no_pose(outcome, 'pnp_failed', 'PnP LO-RANSAC found no pose', pnp_points=n)
        T, cov, inliers = solution.T_map_camera, solution.cov_6x6, solution.num_inliers
        if inliers < opt.pnp_min_inliers:
            return _no_pose(outcome, 'too_few_pnp_inliers', f'{inliers} PnP inliers < {opt.pnp_min_inliers}',
                            pnp_points=n, pnp_inliers=inliers)
        if np.linalg.norm(T[:3, 3] - anchor_m[:3]) > max_offset_m:
            return _no_pose(outcome, 'pose_too_far', f'PnP pose more than {max_offset_m:.1f} m from {anchor}',
                            pnp_points=n, pnp_inliers=inliers)
        mask = solution.inlier_mask
        return replace(outcome, T_map_camera=T, cov_6x6=cov, pnp_points=n, pnp_inliers=inliers, reason='', failure='',
                       inlier_descs_N128=query[1][query_idx_N[mask]], inlier_points_N3=points_N3[mask])


class PoseTrack:
    """The last PnP poses along a run of frames: the last one's position is the next frame's prior
    (:class:`vizloc_plugins.keyframes.Track`, options ``track_sigma_m`` / ``track_speed_mps``), and the map
    points of the last ``chain_frames`` poses may pose the next frame (:meth:`RetrievalPipeline.run`'s
    ``map_points``). Both are dropped together when a stamp goes back and on :meth:`reset`; off when
    ``track_speed_mps`` is 0."""

    def __init__(self, options: RetrievalOptions, name: str = '') -> None:
        self.track = Track(options.track_sigma_m, options.track_speed_mps, name)
        self._points: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=max(options.chain_frames, 1))
        self._stacked: tuple[np.ndarray, np.ndarray] | None = None  # _points concatenated, until they change
        self.chain = options.chain_frames > 0

    def map_points(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(descriptors N x 128, map points N x 3) of the last poses' PnP inliers, or None."""
        if not self.chain or not self._points:
            return None
        if self._stacked is None:
            self._stacked = (np.concatenate([d for d, _ in self._points]),
                             np.concatenate([x for _, x in self._points]))
        return self._stacked

    def step(self, pipeline: RetrievalPipeline, rgb_HW3: np.ndarray, descriptor_D: np.ndarray,
             camera: CameraIntrinsics | None, stamp_ns: int) -> tuple[RetrievalOutcome, tuple[np.ndarray, float] | None]:
        """:meth:`RetrievalPipeline.run` of one frame of the run: (outcome, the prior it was given)."""
        prior = self.track.prior(stamp_ns)
        if prior is None:
            self._clear()  # no track (none yet, off, or dropped: the stamp went back)
        outcome = pipeline.run(rgb_HW3, descriptor_D, camera, prior, self.map_points() if prior is not None else None)
        if outcome.T_map_camera is not None:
            self.track.update(outcome.T_map_camera[:3, 3], stamp_ns)
            self._points.append((outcome.inlier_descs_N128, outcome.inlier_points_N3))
            self._stacked = None
        return outcome, prior

    def reset(self) -> None:
        self.track.reset()
        self._clear()

    def _clear(self) -> None:
        self._points.clear()
        self._stacked = None


def _no_pose(outcome: RetrievalOutcome, failure: str, reason: str, **changes: Any) -> RetrievalOutcome:
    """``outcome`` without a PnP pose: ``failure`` one of :data:`FAILURES` (for counting), ``reason`` for people."""
    if failure not in FAILURES:
        raise ValueError(f'unknown retrieval failure kind {failure!r}; known: {FAILURES}')
    return replace(outcome, failure=failure, reason=reason, **changes)


class RetrievalLocalizer:
    """Runs the retrieval bundle and :class:`RetrievalPipeline` on frames."""

    requires_camera_info = False  # without CameraInfo: the best reference's position (fallback)

    def __init__(self, config: LocalizerConfig, options: RetrievalOptions, context: LocalizerContext) -> None:
        from vizloc_ros.runner import BundleModel

        if not options.database:
            raise ConfigError(f'{config.name}: option "database" (reference database folder) is required')
        self.name = config.name
        self.options = options
        self.model = BundleModel(config.bundle, backend=config.backend, expected_type=LOCALIZER_TYPE,
                                 cache_dir=context.cache_dir, intra_op_num_threads=options.intra_op_num_threads or None)
        try:
            self.contract = RetrievalContract.from_bundle(self.model.bundle)
            self.descriptor_model = descriptor_model_name(self.model.bundle.model_sha256)
            self.pipeline = RetrievalPipeline(options.database, self.descriptor_model, options)
            if self.pipeline.index.dim != self.contract.descriptor_dim:
                raise ConfigError(f'{options.database}: index dimension {self.pipeline.index.dim} != bundle '
                                  f'descriptor_dim {self.contract.descriptor_dim}')
        except (ContractError, ReferenceDatabaseError) as exc:
            self.model.close()
            raise ConfigError(f'{self.name}: {exc}') from exc
        except ConfigError:
            self.model.close()
            raise
        self.track = PoseTrack(options, self.name)  # the last PnP pose
        logger.info('%s: database %s (version %d, %d entries, geo %s)', self.name, options.database,
                    self.pipeline.db.version, len(self.pipeline.db), 'yes' if self.pipeline.geo else 'no')

    @property
    def backend_name(self) -> str:
        return self.model.backend_name

    def localize(self, frame: Frame) -> LocalizationResult:
        started = time.perf_counter()
        descriptor = self.model.run(frame, ['descriptor'])['descriptor'][0]
        network_ms = (time.perf_counter() - started) * 1e3
        if descriptor.shape != (self.pipeline.index.dim,) or not np.all(np.isfinite(descriptor)):
            raise InvalidOutputError(f'descriptor of shape {descriptor.shape} for an index of dimension '
                                     f'{self.pipeline.index.dim}, or not finite')
        camera = None if frame.camera is None else frame.camera.scaled(frame.width, frame.height)
        outcome, prior = self.track.step(self.pipeline, frame.rgb_HW3, descriptor, camera, frame.stamp_ns)
        matching_ms = (time.perf_counter() - started) * 1e3 - network_ms
        diagnostics = {'network_ms': f'{network_ms:.1f}', 'matching_ms': f'{matching_ms:.1f}',
                       'best_reference': str(outcome.best_uid), 'verified': str(len(outcome.verified)),
                       'pnp_points': str(outcome.pnp_points), 'pnp_inliers': str(outcome.pnp_inliers),
                       'database_version': str(self.pipeline.db.version),
                       'track': 'none' if prior is None else f'{prior[1]:.1f}',
                       'source': 'previous_frame' if outcome.chained else 'references'}
        if outcome.T_map_camera is not None:
            pose = PoseEstimate(T_map_camera=outcome.T_map_camera, cov_6x6=outcome.cov_6x6,
                                inlier_ratio=outcome.pnp_inliers / max(outcome.pnp_points, 1))
            geo = None
            if self.pipeline.geo is not None:
                geo = geo_estimate_from_pose(self.pipeline.geo, outcome.T_map_camera, outcome.cov_6x6)
            return LocalizationResult(pose=pose, geo=geo, diagnostics=diagnostics)
        diagnostics['reason'] = outcome.reason
        geo = self._fallback(outcome.best_uid)
        if geo is None:
            return LocalizationResult(status=ResultStatus.NO_FIX, diagnostics=diagnostics)
        diagnostics['fallback'] = 'best_reference'
        return LocalizationResult(geo=geo, diagnostics=diagnostics, covariance_type=CovarianceType.APPROXIMATED)

    def _fallback(self, uid: str | None) -> GeoEstimate | None:
        """The best reference's position, covariance ``fallback_sigma_m``^2 I (None without a position)."""
        if uid is None:
            return None
        entry = self.pipeline.db[uid]
        if entry.has_position:
            lat, lon, alt = entry.lat_deg, entry.lng_deg, entry.alt_m
        elif entry.E is not None and self.pipeline.geo is not None:
            la, lo, al = self.pipeline.geo.scene_to_wgs84(entry.T_map_camera[:3, 3][None])
            lat, lon, alt = float(np.ravel(la)[0]), float(np.ravel(lo)[0]), float(np.ravel(al)[0])
        else:
            return None
        sigma2 = self.options.fallback_sigma_m ** 2
        return GeoEstimate(lat_deg=lat, lon_deg=lon, alt_m=alt, cov_enu_m2=np.eye(3) * sigma2)

    def reset(self) -> None:
        """Forget the last pose and its map points (node deactivation)."""
        self.track.reset()

    def close(self) -> None:
        self.model.close()


def compute_descriptors(database: str | Path, bundle: str | Path, uids: Any = None, *, recompute: bool = False,
                        backend: str = 'auto', progress: bool = True) -> tuple[str, list[str]]:
    """Run the retrieval bundle on entries ``uids`` (all when None) and write ``<model>_descriptor.npy``
    (skipping entries that have one unless ``recompute``); re-hashes the changed entries in the manifest.
    Returns (descriptor model name, uids written). The index is built separately (``refdb.build_index``)."""
    import os

    from vizloc_ros.types import Frame

    from vizloc_ros.runner import BundleModel

    root = Path(database)
    db = ReferenceDatabase(root, verify=False)
    written: list[str] = []
    with BundleModel(bundle, backend=backend, expected_type=LOCALIZER_TYPE) as model:
        RetrievalContract.from_bundle(model.bundle)
        name = descriptor_model_name(model.bundle.model_sha256)
        todo = [db[u] for u in (db.uids if uids is None else uids)]
        todo = [e for e in todo if recompute or name not in e.descriptors]
        show = progress and not os.environ.get('VIZLOC_NO_PROGRESS')
        try:
            from tqdm import tqdm
            iterator = tqdm(todo, desc=f'descriptors {name}', unit='img', disable=not show)
        except ImportError:  # tqdm is optional at run time
            iterator = todo
        for entry in iterator:
            bgr = cv2.imread(str(entry.image), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ReferenceDatabaseError(f'{entry.image}: cannot decode reference image')
            frame = Frame(rgb_HW3=np.ascontiguousarray(bgr[..., ::-1]), stamp_ns=0, frame_id=entry.uid)
            descriptor = model.run(frame, ['descriptor'])['descriptor'][0].astype(np.float32)
            np.save(entry.image.parent / f'{name}_descriptor.npy', descriptor)
            written.append(entry.uid)
    from .refdb import MANIFEST_FILE, update_manifest

    has_manifest = (root / MANIFEST_FILE).is_file()
    if written or not has_manifest:
        update_manifest(root, written if has_manifest else None)
    logger.info('%s: %d %s descriptors written', root, len(written), name)
    return name, written


def _factory(config: LocalizerConfig, options: RetrievalOptions, context: LocalizerContext) -> RetrievalLocalizer:
    return RetrievalLocalizer(config, options, context)


@hookimpl
def vizloc_register_localizers(registry: Any) -> None:
    registry.register(LocalizerType(
        name=LOCALIZER_TYPE, factory=_factory, options_type=RetrievalOptions,
        description='place retrieval against a reference database (FAISS) + SIFT verification + PnP (seed 004); '
                    'publishes pose and NavSatFix (with CameraInfo), else the best reference flagged as fallback'))


@hookimpl
def vizloc_register_trainers(registrar: TrainerRegistrar) -> None:
    # a dotted path: the trainer (torch) is imported by `vizloc-train retrieval` only
    registrar.register(TrainerType.in_module(
        LOCALIZER_TYPE, 'vizloc_training.retrieval.train',
        'global descriptor (GeM) trained on posed views; indexes the reference database'))
