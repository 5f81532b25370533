"""Localizer plugin ``gps_regressor``: image -> WGS84 position with an ENU covariance (seed 001).

A bundle (written by ``vizloc-train gps_regressor``) holds an ONNX model with two outputs:
``mean_en_m`` (N, 2) and ``cov_en_m2`` (N, 2, 2), the predicted horizontal position and its
covariance in metres in the *scene frame* of the bundle: a local East-North-Up frame at the
training split's centroid, stored as ``metadata.geo = {enu_origin: [lat, lon, alt]}`` (a
:class:`vizloc_ros.geodesy.GeoReference` mapping). ``metadata.variance_scale`` is the calibration
factor fitted on the validation split (1.0 = none); the plugin multiplies the covariance by it.
The bundle metadata is :class:`vizloc_plugins.gps_regressor_contract.GPSRegressorContract`.

Per frame: run every member bundle (``bundle`` plus ``ensemble_bundles``), express each member's
Gaussian in the first member's scene frame, combine them as an equally weighted mixture
(:func:`combine_gaussians`: mean of the means; mean of the covariances plus the spread of the
means), convert the mean to WGS84 and rotate the covariance into ENU at the estimate
(``GeoReference.scene_to_wgs84_fix``). The altitude
is not regressed: it is the scene frame's height at the estimate (the training centroid's
altitude), with the training split's altitude spread as variance, or NaN with a large variance
when the training data had no altitudes. No torch here; inference goes through
:class:`vizloc_ros.runner.BundleModel`.

When the (first) bundle carries a keyframe map of its training images (``metadata.keyframes``,
:class:`vizloc_plugins.keyframes.PlaceMap`) and option ``keyframes`` is on, the frame is also matched
against those images (SIFT vote, ratio test, two-view verification); if at least one is verified, the
published position is that of the verified images at the place that their inliers and the network's
estimate support best, read at the frame's own scale (the images' positions fitted against how much larger
or smaller they see what they share with it: :func:`vizloc_plugins.keyframes.scale_aligned_position`),
with its calibrated covariance (diagnostics
``source: keyframes``); else the network's (``source: network``). Along a run of frames the previous
places, not the network alone, settle between places (``track_speed_mps``, ``track_sigma_m``,
``track_hypotheses``; diagnostics ``keyframe_prior: track``): the best ``track_hypotheses`` places along the
run are kept, each frame's places continue the hypotheses within their reach (growing with the time since)
or start new ones, and the best hypothesis, when this frame's place updated it, gives the position (its
covariance: this frame's hypotheses as a mixture about it, their spread included); when it did not, the
keyframes give none this frame (:class:`vizloc_plugins.keyframes.PlaceTracker`). With one
hypothesis it is a single track that falls back to the network's prior when no verified place lies
within its reach. Both are dropped when the stamp goes back and on ``reset()``, and only choose among this
frame's verified places. A frame the map cannot place
(no training image verified, or every place outside the prior), and one whose verified places all lie
beyond the track's reach (a jump, or a texture repeated far away), is verified against the last
``chain_frames`` frames the map placed and, when one overlaps it (in the second case with more inliers
than any training image), published where that frame was, its
covariance grown by ``track_speed_mps`` over the time since (``source: previous_frame``;
:class:`vizloc_plugins.keyframes.RecentPlaces`): the one published position that is not this frame's own
measurement of the map, and its error is that frame's. A frame neither places is held at the last place
published, its covariance grown the same way, while that is sharper than the network's (``source: held``,
``held_age_s``); otherwise, and before any place, the network's position is published. A camera whose
lens differs from the training images' sees every place larger or smaller by one factor: once the run's
places agree on it (:attr:`vizloc_plugins.keyframes.PlaceTracker.lens_log_scale`, diagnostics
``keyframe_lens_log_scale``), places are read at that scale instead of the map's.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from vizloc_ros.bundle import BundleError
from vizloc_ros.hookspecs import hookimpl
from vizloc_ros.trainers import TrainerRegistrar, TrainerType
from vizloc_ros.localizer import ConfigError, LocalizerConfig, LocalizerContext, LocalizerType
from vizloc_ros.types import Frame, GeoEstimate, InvalidOutputError, LocalizationResult

from .gps_regressor_contract import LOCALIZER_TYPE, OUTPUT_COV, OUTPUT_MEAN, GPSRegressorContract
from .keyframes import KEYFRAMES_INDEX, KEYFRAMES_NPZ, KeyframeError, PlaceMap, PlaceTracker

__all__ = [
    'LOCALIZER_TYPE',
    'GPSRegressorOptions',
    'GPSRegressorLocalizer',
    'combine_gaussians',
    'vizloc_register_localizers',
    'vizloc_register_trainers',
]

logger = logging.getLogger(__name__)

#: Altitude standard deviation published when the training data had no altitudes (metres).
UNKNOWN_ALTITUDE_SIGMA_M = 100.0
#: Smallest altitude standard deviation published when altitudes were known (metres).
MIN_ALTITUDE_SIGMA_M = 1.0


@dataclass(frozen=True)
class GPSRegressorOptions:
    """Options of the ``gps_regressor`` localizer (ROS parameters ``<name>.<option>``)."""

    ensemble_bundles: list[str] = field(default_factory=list, metadata={
        'description': 'more gps_regressor bundles run on every frame and averaged with `bundle` (mixture '
                       'moments: mean of the means; mean covariance plus the spread of the means)'})
    variance_scale: float = field(default=0.0, metadata={
        'description': "multiply predicted covariances by this factor; 0 = each bundle's calibrated "
                       'metadata.variance_scale'})
    altitude_sigma_m: float = field(default=0.0, metadata={
        'description': 'published altitude standard deviation in m; 0 = from the bundle (training altitude '
                       f'spread, at least {MIN_ALTITUDE_SIGMA_M:g} m; {UNKNOWN_ALTITUDE_SIGMA_M:g} m when unknown)'})
    keyframes: bool = field(default=True, metadata={
        'description': "match frames against the bundle's keyframe map of its training images (SIFT + two-view "
                       'verification) when it has one; a verified match gives the published position'})
    track_speed_mps: float = field(default=15.0, metadata={
        'description': "keyframes: the previous frame's keyframe place, not the network, settles which verified "
                       'place a frame is at, within this platform speed (m/s) of it, and a frame nothing places '
                       'is held at the last place, its covariance growing at this speed; 0 = every frame on its '
                       'own (the network settles)'})
    track_sigma_m: float = field(default=10.0, metadata={
        'description': "keyframes: standard deviation (m) of the previous frame's place as the next frame's prior, "
                       'before it grows by track_speed_mps over the time between the frames'})
    track_hypotheses: int = field(default=5, metadata={
        'description': 'keyframes: place hypotheses kept along the run (track_speed_mps > 0): each verified place '
                       'continues the hypothesis it is within reach of or starts one, and the best hypothesis places '
                       'the frame, so one wrong place (a texture repeated elsewhere) does not drag the track away; '
                       '1 = a single track'})
    chain_frames: int = field(default=5, metadata={
        'description': "keyframes: a frame the map cannot place (no training image verified, or every place outside "
                       "the prior) or whose places all lie beyond the track's reach (then only with more inliers "
                       'than its best training image) is placed where the one of the last this many placed frames '
                       'it verifiably overlaps most was, its covariance grown by track_speed_mps over the time '
                       'since; 0 = off'})

    def __post_init__(self) -> None:
        if self.chain_frames < 0:
            raise ConfigError(f'chain_frames must be >= 0 (0 = off), got {self.chain_frames}')
        if self.track_hypotheses < 1:
            raise ConfigError(f'track_hypotheses must be >= 1, got {self.track_hypotheses}')
        if not (math.isfinite(self.variance_scale) and self.variance_scale >= 0.0):
            raise ConfigError(f'variance_scale must be >= 0 (0 = from the bundle), got {self.variance_scale}')
        if not (math.isfinite(self.altitude_sigma_m) and self.altitude_sigma_m >= 0.0):
            raise ConfigError(f'altitude_sigma_m must be >= 0 (0 = from the bundle), got {self.altitude_sigma_m}')
        if not (math.isfinite(self.track_speed_mps) and self.track_speed_mps >= 0.0):
            raise ConfigError(f'track_speed_mps must be >= 0 (0 = no tracking), got {self.track_speed_mps}')
        if not (math.isfinite(self.track_sigma_m) and self.track_sigma_m > 0.0):
            raise ConfigError(f'track_sigma_m must be > 0, got {self.track_sigma_m}')


def combine_gaussians(means_KD: np.ndarray, covs_KDD: np.ndarray,
                      weights_K: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Moment-matched Gaussian of a mixture of K Gaussians (the ensemble's combined estimate).

    ``mean = sum w_k mu_k``; ``cov = sum w_k (C_k + (mu_k - mean)(mu_k - mean)^T)`` (law of total
    variance). Weights default to 1/K and are normalised to sum to one.
    """
    means = np.asarray(means_KD, dtype=np.float64)
    covs = np.asarray(covs_KDD, dtype=np.float64)
    if means.ndim != 2 or covs.shape != (means.shape[0], means.shape[1], means.shape[1]) or means.shape[0] == 0:
        raise ValueError(f'need means (K, D) and covariances (K, D, D) with K >= 1, got {means.shape} and {covs.shape}')
    if weights_K is None:
        weights = np.full(means.shape[0], 1.0 / means.shape[0])
    else:
        weights = np.asarray(weights_K, dtype=np.float64)
        if weights.shape != (means.shape[0],) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f'weights must be K={means.shape[0]} non-negative numbers with a positive sum')
        weights = weights / weights.sum()
    mean = weights @ means
    spread = means - mean
    cov = np.einsum('k,kij->ij', weights, covs) + np.einsum('k,ki,kj->ij', weights, spread, spread)
    return mean, 0.5 * (cov + cov.T)


class _Member:
    """One bundle of the ensemble: its model, scene frame, calibration and altitude prior."""

    def __init__(self, path: str, backend: str, cache_dir: Path | None, options: GPSRegressorOptions) -> None:
        from vizloc_ros.runner import BundleModel

        self.model = BundleModel(path, backend=backend, expected_type=LOCALIZER_TYPE, cache_dir=cache_dir)
        try:
            contract = GPSRegressorContract.from_bundle(self.model.bundle)  # outputs checked by contract and runner
            self.contract = contract
            self.geo = contract.geo
            self.variance_scale = options.variance_scale or contract.variance_scale
            self.altitude_known = contract.altitude_known
            if options.altitude_sigma_m > 0.0:
                sigma = options.altitude_sigma_m
            elif self.altitude_known:
                sigma = max(MIN_ALTITUDE_SIGMA_M, contract.alt_std_m or 0.0)
            else:
                sigma = UNKNOWN_ALTITUDE_SIGMA_M
            self.altitude_var_m2 = sigma * sigma
        except ConfigError:
            self.model.close()
            raise

    def predict(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """Mean (2,) and calibrated covariance (2, 2) in metres in this member's scene frame."""
        out = self.model.run(frame, [OUTPUT_MEAN, OUTPUT_COV])
        mean = np.asarray(out[OUTPUT_MEAN], dtype=np.float64).reshape(-1)
        cov = np.asarray(out[OUTPUT_COV], dtype=np.float64).reshape(-1)
        if mean.size != 2 or cov.size != 4:
            raise InvalidOutputError(
                f'model outputs have unexpected sizes: {OUTPUT_MEAN} {mean.size}, {OUTPUT_COV} {cov.size}')
        return mean, cov.reshape(2, 2) * self.variance_scale


class GPSRegressorLocalizer:
    """The ``gps_regressor`` localizer: one bundle or an ensemble of bundles (see the module docstring)."""

    requires_camera_info = False

    def __init__(self, config: LocalizerConfig, options: GPSRegressorOptions, context: LocalizerContext) -> None:
        self.name = config.name
        paths = [config.bundle, *options.ensemble_bundles]
        for path in options.ensemble_bundles:
            if not Path(path).expanduser().exists():
                raise ConfigError(f'{config.name}.ensemble_bundles: no such bundle directory {path!r}')
        self.members: list[_Member] = []
        self.places: PlaceMap | None = None
        try:
            for path in paths:
                self.members.append(_Member(path, config.backend, context.cache_dir, options))
            self.places = self._place_map(options)
        except ConfigError:
            self.close()
            raise
        # the last keyframe place and the last placed frames, along a run
        self.tracker = (PlaceTracker(self.places, track_sigma_m=options.track_sigma_m,
                                     track_speed_mps=options.track_speed_mps, chain_frames=options.chain_frames,
                                     hypotheses=options.track_hypotheses, name=config.name) if self.places is not None else None)
        backends = dict.fromkeys(m.model.backend_name for m in self.members)
        self.backend_name = '+'.join(backends)
        logger.info('%s: gps_regressor with %d bundle(s) on %s%s', self.name, len(self.members), self.backend_name,
                    f', keyframe map of {len(self.places.frames.names)} images' if self.places is not None else '')

    def _place_map(self, options: GPSRegressorOptions) -> PlaceMap | None:
        settings = self.reference.contract.keyframes
        if settings is None or not options.keyframes:
            return None
        bundle = self.reference.model.bundle
        try:
            return PlaceMap(bundle.file(KEYFRAMES_NPZ), bundle.file(KEYFRAMES_INDEX), settings)
        except (KeyframeError, BundleError) as exc:
            raise ConfigError(f'{self.name}: {exc}') from exc

    @property
    def reference(self) -> _Member:
        return self.members[0]

    def estimate(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """Combined mean (2,) and covariance (2, 2) in the first bundle's scene frame (metres)."""
        ref = self.reference
        means, covs = [], []
        for member in self.members:
            mean, cov = member.predict(frame)
            if member is not ref:
                # member scene frame -> WGS84 (covariance in ENU at the point) -> reference scene frame,
                # through core geodesy's one conversion and its inverse
                cov_scene = np.zeros((3, 3))
                cov_scene[:2, :2] = cov
                fix = member.geo.scene_to_wgs84_fix(np.array([mean[0], mean[1], 0.0]), cov_scene)
                xyz_ref, cov_ref = ref.geo.wgs84_fix_to_scene(fix)
                mean, cov = xyz_ref[:2], cov_ref[:2, :2]
            means.append(mean)
            covs.append(cov)
        return combine_gaussians(np.stack(means), np.stack(covs))

    def localize(self, frame: Frame) -> LocalizationResult:
        mean, cov = self.estimate(frame)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
            raise InvalidOutputError('model output is not finite')
        ref = self.reference
        diagnostics = {'source': 'network'}
        if self.places is not None:
            started = time.perf_counter()
            gray = cv2.cvtColor(np.ascontiguousarray(frame.rgb_HW3), cv2.COLOR_RGB2GRAY)
            tracked = self.tracker.locate(gray, frame.stamp_ns, mean, cov)
            place, chained = tracked.place, tracked.chained
            diagnostics.update({'keyframe_ms': f'{(time.perf_counter() - started) * 1e3:.1f}',
                                'keyframe_prior': tracked.prior,
                                'keyframe_inliers': str(place.inliers), 'keyframe_images': str(place.used),
                                'keyframe_outside_prior': str(place.rejected).lower(),
                                'keyframes': ','.join(name for name, _ in place.verified[:3]),
                                'keyframe_lens_log_scale': f'{self.tracker.lens_log_scale:.3f}'})
            if chained is not None:
                mean, cov = chained.position_m, chained.cov_m2
                diagnostics.update({'source': 'previous_frame', 'previous_frame_inliers': str(chained.inliers),
                                    'previous_frame_age_s': f'{chained.age_s:.2f}'})
            elif place.position_m is not None:
                mean, cov = place.position_m, place.cov_m2
                diagnostics['source'] = 'keyframes'
            elif tracked.held is not None:
                mean, cov = tracked.held.position_m, tracked.held.cov_m2
                diagnostics.update({'source': 'held', 'held_age_s': f'{tracked.held.age_s:.2f}'})
        cov_scene = np.zeros((3, 3))
        cov_scene[:2, :2] = cov
        cov_scene[2, 2] = ref.altitude_var_m2
        fix = ref.geo.scene_to_wgs84_fix(np.array([mean[0], mean[1], 0.0]), cov_scene)
        cov_enu = fix.cov_enu_m2
        geo = GeoEstimate(lat_deg=fix.lat_deg, lon_deg=fix.lon_deg, alt_m=fix.alt_m if ref.altitude_known else math.nan,
                          cov_enu_m2=cov_enu)
        diagnostics.update({
            'sigma_east_m': f'{math.sqrt(max(cov_enu[0, 0], 0.0)):.2f}',
            'sigma_north_m': f'{math.sqrt(max(cov_enu[1, 1], 0.0)):.2f}',
            'ensemble_size': str(len(self.members)),
        })
        return LocalizationResult(geo=geo, diagnostics=diagnostics)

    def reset(self) -> None:
        """Forget the keyframe track and the recent frames (node deactivation)."""
        if self.tracker is not None:
            self.tracker.reset()

    def close(self) -> None:
        for member in self.members:
            member.model.close()
        self.members = []
        if self.places is not None:
            self.places.close()
        self.places = None  # the map's arrays and FAISS index go with it


@hookimpl
def vizloc_register_localizers(registry) -> None:
    registry.register(LocalizerType(
        name=LOCALIZER_TYPE, factory=GPSRegressorLocalizer, options_type=GPSRegressorOptions,
        description='image -> WGS84 position with ENU covariance (CNN regression in a local ENU frame, '
                    'heteroscedastic Gaussian head; optional ensemble of bundles)'))


@hookimpl
def vizloc_register_trainers(registrar: TrainerRegistrar) -> None:
    # a dotted path: the trainer (torch) is imported by `vizloc-train gps_regressor` only
    registrar.register(TrainerType.in_module(
        LOCALIZER_TYPE, 'vizloc_training.gps_regressor.train',
        'image -> ENU position + covariance regression over a GPS dataset'))
