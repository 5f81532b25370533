"""Localizer plugin ``room_classifier``: which room is the camera in (seed 000).

A bundle (written by ``vizloc-train room_classifier``) holds an ONNX model with outputs ``probs``
(N x C softmax over rooms) and, for GAP + linear heads, ``cam`` (N x C x h x w class-activation
maps); ``metadata.classes`` names the rooms in output order (the bundle metadata is
:class:`vizloc_plugins.room_classifier_contract.RoomClassifierContract`). Frames of any size are resized
to the bundle input (see :mod:`vizloc_ros.runner`); no CameraInfo is needed.

Per frame:

1. run the model -> single-frame probabilities;
2. temporal smoothing (option ``smoothing``: ``hmm`` forward filter with stay probability
   ``p_stay``, emission ``temperature`` and a ``uniform``, ``adjacency`` or ``learned`` switch prior,
   ``ema``, or ``none``; see :mod:`vizloc_plugins.smoothing`). By default (``p_stay`` and
   ``temperature`` 0, ``transition`` ``auto``) the HMM takes the parameters the trainer chose on the
   validation trajectory (bundle ``metadata.smoothing``), else 0.95 / 1 / ``uniform``. The filter resets when the stamp jumps back or more than
   ``reset_after_s`` forward (a new run/bag loop);
3. :class:`RoomEstimate` (label, confidence, all probabilities) -> the node publishes it on
   ``~/<name>/room``; ``diagnostics`` carry ``confidence``, ``top3``, the single-frame label and the
   smoothing mode;
4. with a room map (option ``room_map``: YAML ``room label -> polygon [[x, y], ...]`` in the map
   frame; empty = the bundle's ``rooms.yaml`` if it has one, ``none`` = off) also a coarse
   :class:`PoseEstimate`: the room polygon's centroid at height ``camera_height_m``, identity
   orientation with rotation variance 1e6 rad² (unknown), position covariance = second moments of a
   uniform distribution over the polygon (x, y) and ``Z_VARIANCE_M2`` (z);
5. with ``publish_heatmap`` an RGB overlay of the published room's class-activation map on the
   frame in ``LocalizationResult.images['heatmap']`` (the node publishes ``~/<name>/heatmap``).

Below ``min_confidence`` the result has status ``no_fix`` (room still reported, no pose).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from vizloc_ros.hookspecs import hookimpl
from vizloc_ros.trainers import TrainerRegistrar, TrainerType
from vizloc_ros.localizer import ConfigError, LocalizerConfig, LocalizerContext, LocalizerType
from vizloc_ros.types import Frame, InvalidOutputError, LocalizationResult, PoseEstimate, ResultStatus, RoomEstimate

from vizloc_ros.runner import BundleModel
from .room_classifier_contract import (LOCALIZER_TYPE, OUTPUT_CAM, OUTPUT_PROBS, RoomClassifierContract,
                                      SmoothingCalibration)
from .smoothing import SMOOTHING_MODES, TRANSITIONS, adjacency_from_polygons, make_filter

__all__ = ['LOCALIZER_TYPE', 'RoomClassifierOptions', 'RoomClassifierLocalizer', 'load_room_map',
           'polygon_moments', 'cam_overlay', 'vizloc_register_localizers', 'vizloc_register_trainers']

logger = logging.getLogger(__name__)

#: Rotation variance of the room-centroid pose (orientation unknown), rad².
UNKNOWN_ROTATION_VARIANCE_RAD2 = 1e6
#: Variance of the room-centroid pose's height, m².
Z_VARIANCE_M2 = 1.0


@dataclass(frozen=True)
class RoomClassifierOptions:
    """Options of the ``room_classifier`` localizer (ROS parameters ``<name>.<option>``)."""

    smoothing: str = field(default='hmm', metadata={
        'description': "temporal filter over frames: 'hmm' (forward filter), 'ema' or 'none' (single frame)"})
    p_stay: float = field(default=0.0, metadata={
        'description': 'hmm: probability of staying in the same room from one frame to the next, in (0, 1); '
                       "1 - 1/(expected frames per room visit); 0 = the bundle's calibrated value, else 0.95"})
    temperature: float = field(default=0.0, metadata={
        'description': 'hmm: emission temperature (> 1 trusts single frames less, < 1 more); '
                       "0 = the bundle's calibrated value, else 1"})
    transition: str = field(default='auto', metadata={
        'description': "hmm: switch prior, 'uniform' over all other rooms, 'adjacency' (neighbours in the room map), "
                       "'learned' (room changes of the training trajectory, stored in the bundle) or 'auto' (the "
                       "bundle's calibrated choice, else 'uniform')"})
    adjacency_tolerance_m: float = field(default=0.5, metadata={
        'description': 'rooms whose polygons come within this distance (m) are adjacent'})
    ema_alpha: float = field(default=0.3, metadata={'description': 'ema: weight of the newest frame, in (0, 1]'})
    reset_after_s: float = field(default=5.0, metadata={
        'description': 'reset the filter after a gap in frame stamps longer than this (s) or a jump back'})
    min_confidence: float = field(default=0.0, metadata={
        'description': "below this confidence the result status is 'no_fix' (room still reported, no pose)"})
    room_map: str = field(default='', metadata={
        'description': "YAML room label -> polygon [[x, y], ...] in the map frame; '' = the bundle's rooms.yaml "
                       "if present, 'none' = no room map (no pose output)"})
    camera_height_m: float = field(default=1.5, metadata={
        'description': 'z of the room-centroid pose in the map frame (m)'})
    publish_heatmap: bool = field(default=False, metadata={
        'description': "put a class-activation overlay in result.images['heatmap'] (published as "
                       '~/<name>/heatmap); needs a bundle with a cam output'})
    heatmap_alpha: float = field(default=0.5, metadata={'description': 'heatmap opacity over the frame, [0, 1]'})

    def __post_init__(self) -> None:
        if self.smoothing not in SMOOTHING_MODES:
            raise ConfigError(f'smoothing must be one of {list(SMOOTHING_MODES)}, got {self.smoothing!r}')
        if self.transition not in (*TRANSITIONS, 'auto'):
            raise ConfigError(f'transition must be one of {[*TRANSITIONS, "auto"]}, got {self.transition!r}')
        if not (self.p_stay == 0.0 or 0.0 < self.p_stay < 1.0):
            raise ConfigError(f'p_stay must be in (0, 1) (or 0 = from the bundle), got {self.p_stay}')
        if not (math.isfinite(self.temperature) and self.temperature >= 0.0):
            raise ConfigError(f'temperature must be > 0 (or 0 = from the bundle), got {self.temperature}')
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ConfigError(f'ema_alpha must be in (0, 1], got {self.ema_alpha}')
        if not (math.isfinite(self.reset_after_s) and self.reset_after_s > 0.0):
            raise ConfigError(f'reset_after_s must be > 0, got {self.reset_after_s}')
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f'min_confidence must be in [0, 1], got {self.min_confidence}')
        if not 0.0 <= self.heatmap_alpha <= 1.0:
            raise ConfigError(f'heatmap_alpha must be in [0, 1], got {self.heatmap_alpha}')
        if not (math.isfinite(self.adjacency_tolerance_m) and self.adjacency_tolerance_m >= 0.0):
            raise ConfigError(f'adjacency_tolerance_m must be >= 0, got {self.adjacency_tolerance_m}')
        if not math.isfinite(self.camera_height_m):
            raise ConfigError(f'camera_height_m must be finite, got {self.camera_height_m}')


def load_room_map(path: str | Path, map_frame: str | None = None) -> dict[str, np.ndarray]:
    """Read a room map: ``room label -> [[x, y], ...]`` (map frame, metres).

    Also accepted (what ``vizloc-synth indoor`` writes)::

        {version: 1, frame_id: map, units: ..., rooms: {label: {polygon: [[x, y], ...]}, ...}}

    With ``map_frame`` given, a ``frame_id`` other than it is an error (the poses would be wrong).
    """
    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f'room map {path}: cannot read it: {exc}') from exc
    if isinstance(data, dict) and isinstance(data.get('rooms'), dict):
        unknown = sorted(set(data) - {'rooms', 'frame_id', 'version', 'units'})
        if unknown:
            raise ConfigError(f'room map {path}: unknown top-level keys {unknown}')
        frame_id = data.get('frame_id')
        if map_frame is not None and frame_id is not None and frame_id != map_frame:
            raise ConfigError(f'room map {path}: polygons are in frame {frame_id!r}, the map frame is {map_frame!r}')
        data = data['rooms']
    if not isinstance(data, dict) or not data:
        raise ConfigError(f'room map {path}: expected a mapping room label -> polygon [[x, y], ...]')
    polygons = {}
    for label, points in data.items():
        if isinstance(points, dict):
            unknown = sorted(set(points) - {'polygon'})
            if unknown or 'polygon' not in points:
                raise ConfigError(f'room map {path}: room {label!r}: expected {{polygon: [[x, y], ...]}}, '
                                  f'got keys {sorted(points)}')
            points = points['polygon']
        try:
            polygon = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f'room map {path}: room {label!r}: polygon is not a list of [x, y]: {exc}') from exc
        if polygon.ndim != 2 or polygon.shape[1] not in (2, 3) or polygon.shape[0] < 3:
            raise ConfigError(f'room map {path}: room {label!r}: need >= 3 points [x, y], got shape {polygon.shape}')
        if not np.all(np.isfinite(polygon)):
            raise ConfigError(f'room map {path}: room {label!r}: non-finite coordinates')
        polygons[str(label)] = polygon[:, :2]
    return polygons


def polygon_moments(polygon_P2: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(area m², centroid (2,), covariance 2x2 m²) of a uniform distribution over a simple polygon.

    Green's theorem over the edges (fan of signed triangles from the first vertex), so concave
    polygons and either winding order work.
    """
    pts = np.asarray(polygon_P2, dtype=np.float64)[:, :2]
    origin = pts[0]
    p = pts - origin
    a, b = p, np.roll(p, -1, axis=0)
    cross = a[:, 0] * b[:, 1] - b[:, 0] * a[:, 1]  # 2 x signed triangle area (origin, a, b)
    area = cross.sum() / 2.0
    if abs(area) < 1e-12:
        raise ConfigError('room polygon has zero area')
    c = (cross[:, None] * (a + b)).sum(axis=0) / (6.0 * area)
    sxx = (cross * (a[:, 0] ** 2 + a[:, 0] * b[:, 0] + b[:, 0] ** 2)).sum() / 12.0
    syy = (cross * (a[:, 1] ** 2 + a[:, 1] * b[:, 1] + b[:, 1] ** 2)).sum() / 12.0
    sxy = (cross * (2 * a[:, 0] * a[:, 1] + a[:, 0] * b[:, 1] + b[:, 0] * a[:, 1] + 2 * b[:, 0] * b[:, 1])).sum() / 24.0
    second = np.array([[sxx, sxy], [sxy, syy]]) / area
    cov = second - np.outer(c, c)
    return abs(area), c + origin, (cov + cov.T) / 2.0


def cam_overlay(rgb_HW3: np.ndarray, cam_hw: np.ndarray, resize, alpha: float = 0.5) -> np.ndarray:
    """Blend a class-activation map (model-input grid ``h x w``) over the frame as a JET heatmap (RGB uint8)."""
    cam = np.asarray(cam_hw, dtype=np.float32)
    cam = np.maximum(cam - cam.min(), 0.0)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else cam
    full = cv2.resize(cam, (resize.dst_width, resize.dst_height), interpolation=cv2.INTER_LINEAR)
    on_frame = resize.crop_to_source(full)
    heat_bgr = cv2.applyColorMap(np.clip(on_frame * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat_rgb = cv2.cvtColor(heat_bgr, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(heat_rgb, float(alpha), np.ascontiguousarray(rgb_HW3), 1.0 - float(alpha), 0.0)


class RoomClassifierLocalizer:
    """A configured room classifier (see the module docstring)."""

    requires_camera_info = False

    def __init__(self, config: LocalizerConfig, options: RoomClassifierOptions, context: LocalizerContext) -> None:
        self.name = config.name
        self.options = options
        self.map_frame = context.map_frame
        self.model = BundleModel(config.bundle, backend=config.backend, expected_type=LOCALIZER_TYPE,
                                 cache_dir=context.cache_dir)
        try:
            self._setup(config)
        except ConfigError:
            self.model.close()
            raise

    def _setup(self, config: LocalizerConfig) -> None:
        options, bundle = self.options, self.model.bundle
        self.contract = contract = RoomClassifierContract.from_bundle(bundle)
        self.classes: list[str] = list(contract.classes)  # the probs output: checked by contract and runner
        self.has_cam = OUTPUT_CAM in self.model.output_names
        if options.publish_heatmap and not self.has_cam:
            raise ConfigError(f'{config.name}.publish_heatmap: bundle {bundle.path} has no cam output '
                              f'(backbone {contract.backbone!r} has no GAP + linear head)')
        self.polygons: dict[str, np.ndarray] = {}
        if options.room_map.lower() == 'none':
            pass
        elif options.room_map:
            self.polygons = load_room_map(options.room_map, self.map_frame)
        elif contract.room_map:
            self.polygons = load_room_map(bundle.file(contract.room_map), self.map_frame)
        self.room_poses: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for label, polygon in self.polygons.items():
            _, centroid, cov = polygon_moments(polygon)
            self.room_poses[label] = (centroid, cov)
        if self.polygons:
            missing = sorted(set(self.classes) - set(self.polygons))
            if missing:
                logger.warning('%s: room map has no polygon for %s: no pose for those rooms', config.name, missing)
        calibrated = contract.smoothing or SmoothingCalibration()  # no calibration: the fixed defaults
        self.p_stay = options.p_stay or calibrated.p_stay
        self.temperature = options.temperature or calibrated.temperature
        self.transition = options.transition if options.transition != 'auto' else calibrated.transition
        adjacency = switch = None
        if options.smoothing == 'hmm' and self.transition == 'adjacency':
            if not self.polygons:
                raise ConfigError(f"{config.name}.transition 'adjacency' needs a room map (room_map or the bundle's "
                                  'rooms.yaml)')
            adjacency = adjacency_from_polygons(self.polygons, self.classes, options.adjacency_tolerance_m)
        elif options.smoothing == 'hmm' and self.transition == 'learned':
            switch = calibrated.switch_CC
            if switch is None:
                raise ConfigError(f"{config.name}.transition 'learned' needs a bundle with metadata.smoothing."
                                  f'switch_matrix (trained with calibrate_smoothing); {bundle.path} has none')
        try:
            self.filter = make_filter(options.smoothing, len(self.classes), p_stay=self.p_stay,
                                      ema_alpha=options.ema_alpha, adjacency_CC=adjacency, switch_CC=switch,
                                      temperature=self.temperature)
        except ValueError as exc:
            raise ConfigError(f'{config.name}: {exc}') from exc
        logger.info('%s: smoothing %s (p_stay %.3f, temperature %.2f, transition %s)', config.name,
                    options.smoothing, self.p_stay, self.temperature, self.transition)
        self._outputs = [OUTPUT_PROBS, OUTPUT_CAM] if options.publish_heatmap else [OUTPUT_PROBS]
        self._last_stamp_ns: int | None = None

    @property
    def backend_name(self) -> str:
        return self.model.backend_name

    def reset(self) -> None:
        self.filter.reset()
        self._last_stamp_ns = None

    def close(self) -> None:
        self.model.close()

    def _pose(self, label: str) -> PoseEstimate | None:
        if label not in self.room_poses:
            return None
        centroid, cov_xy = self.room_poses[label]
        T = np.eye(4)
        T[:2, 3] = centroid
        T[2, 3] = self.options.camera_height_m
        cov = np.zeros((6, 6))
        cov[:2, :2] = cov_xy
        cov[2, 2] = Z_VARIANCE_M2
        cov[3:, 3:] = np.eye(3) * UNKNOWN_ROTATION_VARIANCE_RAD2
        return PoseEstimate(T_map_camera=T, cov_6x6=cov)

    def localize(self, frame: Frame) -> LocalizationResult:
        outputs = self.model.run(frame, self._outputs)
        raw = np.asarray(outputs[OUTPUT_PROBS], dtype=np.float64).reshape(-1)
        if raw.shape[0] != len(self.classes):
            raise InvalidOutputError(f'{self.name}: model gave {raw.shape[0]} probabilities for {len(self.classes)} rooms')
        last = self._last_stamp_ns
        if last is not None and (frame.stamp_ns < last or frame.stamp_ns - last > self.options.reset_after_s * 1e9):
            logger.info('%s: stamp jumped from %d to %d ns: resetting the %s filter', self.name, last, frame.stamp_ns,
                        self.options.smoothing)
            self.filter.reset()
        self._last_stamp_ns = frame.stamp_ns
        belief = self.filter.update(raw)
        best = int(np.argmax(belief))
        label, confidence = self.classes[best], float(belief[best])
        raw_best = int(np.argmax(raw))
        images = {}
        if self.options.publish_heatmap:
            images['heatmap'] = cam_overlay(frame.rgb_HW3, outputs[OUTPUT_CAM][0, best], self.model.last_resize,
                                            self.options.heatmap_alpha)
        room = RoomEstimate(label=label, confidence=confidence,
                            probabilities={c: float(p) for c, p in zip(self.classes, belief)})
        ok = confidence >= self.options.min_confidence
        diagnostics = {
            'room': label,
            'confidence': f'{confidence:.3f}',
            'top3': ', '.join(f'{c}:{p:.3f}' for c, p in room.top_k(3)),
            'single_frame_room': self.classes[raw_best],
            'single_frame_confidence': f'{raw[raw_best]:.3f}',
            'smoothing': self.options.smoothing,
        }
        return LocalizationResult(room=room, pose=self._pose(label) if ok else None,
                                  status=ResultStatus.OK if ok else ResultStatus.NO_FIX, diagnostics=diagnostics,
                                  images=images)


@hookimpl
def vizloc_register_localizers(registry) -> None:
    registry.register(LocalizerType(
        name=LOCALIZER_TYPE, factory=RoomClassifierLocalizer, options_type=RoomClassifierOptions,
        description='room-level place recognition (image classifier over rooms) with HMM/EMA temporal smoothing, '
                    'optional room-centroid pose from a room map and class-activation heatmap'))


@hookimpl
def vizloc_register_trainers(registrar: TrainerRegistrar) -> None:
    # a dotted path: the trainer (torch) is imported by `vizloc-train room_classifier` only
    registrar.register(TrainerType.in_module(
        LOCALIZER_TYPE, 'vizloc_training.room_classifier.train',
        'room classifier over a Rooms dataset (pretrained CNN: frozen features or fine-tuned; HMM smoothing '
        'calibrated on val)'))
