"""Core value types shared by the node, the localizers and the training stack.

Frames and units are part of the names: ``T_map_camera`` maps camera coordinates to map
coordinates (4x4, metres); ``cov_enu_m2`` is a 3x3 covariance in a local East-North-Up frame in
square metres; ``latency_ms`` is milliseconds; ``stamp_ns`` is nanoseconds since the ROS epoch.

A localizer returns only its estimates (room / geo / pose, status, covariance type, diagnostics);
the host that calls it (the node's workers, ``vizloc-eval``: :func:`vizloc_ros.localizer.run_localizer`)
times the call and stamps the result with the frame's stamp and frame id, the localizer's name and
that latency (:meth:`LocalizationResult.stamped`).

Faults: :class:`InvalidInputError` (the frame cannot be used) and :class:`InvalidOutputError` (the
model's output or the estimate cannot be used) are the two faults a localizer reports; each has one
``/diagnostics`` heading (:data:`FAULT_KINDS`, :func:`fault_kind`); anything else it raises is a
``plugin_error``.

Nothing here imports rclpy, so these types are usable in training and offline evaluation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Mapping

import numpy as np

__all__ = [
    'CameraIntrinsics',
    'Frame',
    'RoomEstimate',
    'GeoEstimate',
    'PoseEstimate',
    'LocalizationResult',
    'InvalidInputError',
    'InvalidOutputError',
    'FAULT_KINDS',
    'fault_kind',
    'ResultStatus',
    'CovarianceType',
    'check_covariance',
    'check_rotation',
    'check_result',
]


class InvalidInputError(ValueError):
    """An input (image, calibration, parameter) that cannot be used; the message says why."""


class ResultStatus(str, Enum):
    """What a localizer's result says: ``OK`` (estimates can be trusted) or ``NO_FIX`` (it ran, no answer).

    A ``str`` enum: ``ResultStatus.NO_FIX == 'no_fix'``, so plugins may pass the plain string.
    """

    OK = 'ok'
    NO_FIX = 'no_fix'


class CovarianceType(str, Enum):
    """How the geo covariance was obtained: ``KNOWN`` (the model's calibrated covariance) or
    ``APPROXIMATED`` (e.g. from cell extents); published as NavSatFix ``position_covariance_type``."""

    KNOWN = 'known'
    APPROXIMATED = 'approximated'


class InvalidOutputError(ValueError):
    """A model output or an estimate that must not be used (a model output of the wrong size or not
    finite, a non-PSD covariance, not a rotation, an impossible position, an unusable result image).

    Raised by localizers for their model's outputs, by the estimate constructors and by
    :func:`check_result`; the node counts it as ``invalid_output`` (a fault of the localizer, not of
    the input).
    """


#: The ``/diagnostics`` heading (``errors.<kind>``) of each fault a localizer reports: one per type.
FAULT_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (InvalidInputError, 'bad_input'),
    (InvalidOutputError, 'invalid_output'),
)


def fault_kind(exc: BaseException, other: str = 'plugin_error') -> str:
    """The heading of ``exc`` in :data:`FAULT_KINDS`, else ``other`` (anything else a plugin raises)."""
    for exc_type, kind in FAULT_KINDS:
        if isinstance(exc, exc_type):
            return kind
    return other


#: Relative tolerances of the estimate checks (float64 estimates built from float32 networks).
SYMMETRY_RTOL = 1e-6
PSD_RTOL = 1e-9
ROTATION_ATOL = 1e-5


def _as_matrix(value: object, shape: tuple[int, ...], what: str,
               error: type[ValueError] = InvalidInputError) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise error(f'{what} is not a numeric array: {exc}') from exc
    if array.shape != shape:
        raise error(f'{what} must have shape {shape}, got {array.shape}')
    if not np.all(np.isfinite(array)):
        raise error(f'{what} contains non-finite values')
    return array


def check_covariance(cov: object, shape: tuple[int, int], what: str) -> np.ndarray:
    """``cov`` as a finite, symmetric, positive semi-definite float64 matrix, or InvalidOutputError.

    Symmetry within ``SYMMETRY_RTOL`` of the largest entry (the result is exactly symmetrised), the
    smallest eigenvalue not below ``-PSD_RTOL`` times the largest.
    """
    C = _as_matrix(cov, shape, what, InvalidOutputError)
    scale = float(np.max(np.abs(C))) if C.size else 0.0
    if np.any(np.abs(C - C.T) > SYMMETRY_RTOL * max(scale, 1e-300)):
        raise InvalidOutputError(f'{what} is not symmetric (max |C - C^T| = {np.max(np.abs(C - C.T)):.3g})')
    C = 0.5 * (C + C.T)
    eig = np.linalg.eigvalsh(C)
    if eig[0] < -PSD_RTOL * max(float(eig[-1]), 0.0) or eig[0] < 0 and eig[-1] <= 0:
        raise InvalidOutputError(f'{what} is not positive semi-definite (eigenvalues {eig.min():.3g} .. {eig.max():.3g})')
    if np.any(np.diag(C) < 0):
        raise InvalidOutputError(f'{what} has a negative variance: {np.diag(C).tolist()}')
    return C


def check_rotation(R: np.ndarray, what: str) -> None:
    """InvalidOutputError unless ``R`` (3x3) is orthonormal with determinant +1 (within ``ROTATION_ATOL``)."""
    if not np.allclose(R.T @ R, np.eye(3), atol=ROTATION_ATOL) or abs(np.linalg.det(R) - 1.0) > ROTATION_ATOL:
        raise InvalidOutputError(f'{what} is not a rotation (R^T R != I or det(R) = {np.linalg.det(R):.3g} != +1)')


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of an image of ``width`` x ``height`` pixels (from sensor_msgs/CameraInfo).

    ``K`` is the 3x3 camera matrix in pixels, ``D`` the distortion coefficients of
    ``distortion_model`` (``plumb_bob`` / ``rational_polynomial`` / ``equidistant``; empty D means
    no distortion).
    """

    K: np.ndarray
    width: int
    height: int
    D: np.ndarray = field(default_factory=lambda: np.zeros(0))
    distortion_model: str = 'plumb_bob'

    def __post_init__(self) -> None:
        object.__setattr__(self, 'K', _as_matrix(self.K, (3, 3), 'K'))
        object.__setattr__(self, 'D', np.asarray(self.D, dtype=np.float64).reshape(-1))
        if self.width <= 0 or self.height <= 0:
            raise InvalidInputError(f'image size must be positive, got {self.width}x{self.height}')
        if self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            raise InvalidInputError(f'focal lengths must be positive, got fx={self.K[0, 0]} fy={self.K[1, 1]}')

    @classmethod
    def from_focal(cls, focal_px: float, width: int, height: int) -> 'CameraIntrinsics':
        """Square pixels, principal point at the image centre (the DSAC* calibration convention)."""
        K = np.array([[focal_px, 0.0, width / 2.0], [0.0, focal_px, height / 2.0], [0.0, 0.0, 1.0]])
        return cls(K=K, width=width, height=height)

    @classmethod
    def from_fov(cls, hfov_deg: float, width: int, height: int) -> 'CameraIntrinsics':
        """Square pixels from a horizontal field of view in degrees."""
        if not 0.0 < hfov_deg < 180.0:
            raise InvalidInputError(f'horizontal field of view must be in (0, 180) deg, got {hfov_deg}')
        focal_px = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        return cls.from_focal(focal_px, width, height)

    def scaled(self, width: int, height: int) -> 'CameraIntrinsics':
        """Intrinsics of the same camera after resizing the image to ``width`` x ``height``.

        Uses the pixel-centre convention of ``cv2.resize``: u' = (u + 0.5) * s - 0.5.
        """
        sx = width / self.width
        sy = height / self.height
        K = self.K.copy()
        K[0, 0] *= sx
        K[0, 1] *= sx
        K[1, 1] *= sy
        K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
        return replace(self, K=K, width=width, height=height)

    @property
    def hfov_deg(self) -> float:
        return math.degrees(2.0 * math.atan2(self.width / 2.0, self.K[0, 0]))


@dataclass(frozen=True)
class Frame:
    """One camera image as localizers receive it.

    ``rgb_HW3`` is an RGB uint8 array (may be a read-only view of the message buffer: copy before
    writing). ``camera`` is ``None`` until a CameraInfo has been received for this camera.
    """

    rgb_HW3: np.ndarray
    stamp_ns: int
    frame_id: str
    camera: CameraIntrinsics | None = None

    def __post_init__(self) -> None:
        image = self.rgb_HW3
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, 'shape', None)
            dtype = getattr(image, 'dtype', type(image).__name__)
            raise InvalidInputError(f'frame image must be uint8 HxWx3 RGB, got shape {shape} dtype {dtype}')
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise InvalidInputError(f'frame image is empty: {image.shape}')
        if self.camera is not None and (self.camera.width, self.camera.height) != (image.shape[1], image.shape[0]):
            # CameraInfo for a different resolution (e.g. a resized image stream): rescale it.
            object.__setattr__(self, 'camera', self.camera.scaled(image.shape[1], image.shape[0]))

    @property
    def width(self) -> int:
        return int(self.rgb_HW3.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb_HW3.shape[0])

    def resized(self, width: int, height: int) -> 'Frame':
        """The frame resized to ``width`` x ``height`` ('stretch', as the model runner does) with intrinsics scaled to match."""
        from .runner import resize_for_model  # local: keeps `import vizloc_ros.types` light (no OpenCV)

        image, _ = resize_for_model(self.rgb_HW3, width, height, 'stretch')
        camera = self.camera.scaled(width, height) if self.camera is not None else None
        return Frame(rgb_HW3=image, stamp_ns=self.stamp_ns, frame_id=self.frame_id, camera=camera)


@dataclass(frozen=True)
class RoomEstimate:
    """Room-level place recognition: the most likely room and the full distribution."""

    label: str
    confidence: float
    probabilities: Mapping[str, float]

    def __post_init__(self) -> None:
        # float32 softmax outputs: allow rounding of 1e-6 around [0, 1]
        if not math.isfinite(self.confidence) or not -1e-6 <= self.confidence <= 1.0 + 1e-6:
            raise InvalidOutputError(f'room confidence must be in [0, 1], got {self.confidence}')
        if any(not math.isfinite(p) or not -1e-6 <= p <= 1.0 + 1e-6 for p in self.probabilities.values()):
            raise InvalidOutputError('room probabilities must be in [0, 1]')

    def top_k(self, k: int = 3) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:k]


@dataclass(frozen=True)
class GeoEstimate:
    """A WGS84 position. ``alt_m`` is ellipsoidal height in metres, NaN when unknown.

    ``cov_enu_m2`` is the 3x3 position covariance in East-North-Up at the estimate (m^2); when the
    altitude is unknown its variance should be large, not zero.
    """

    lat_deg: float
    lon_deg: float
    alt_m: float
    cov_enu_m2: np.ndarray

    def __post_init__(self) -> None:
        if not (-90.0 <= self.lat_deg <= 90.0) or not (-180.0 <= self.lon_deg <= 180.0):
            raise InvalidOutputError(f'impossible WGS84 position lat={self.lat_deg} lon={self.lon_deg}')
        if math.isinf(self.alt_m):
            raise InvalidOutputError(f'altitude must be finite or NaN (unknown), got {self.alt_m}')
        object.__setattr__(self, 'cov_enu_m2', check_covariance(self.cov_enu_m2, (3, 3), 'cov_enu_m2'))


@dataclass(frozen=True)
class PoseEstimate:
    """A 6-DoF camera pose in the map frame.

    ``T_map_camera`` is 4x4 (camera optical frame: x right, y down, z forward).
    ``cov_6x6`` follows geometry_msgs/PoseWithCovariance: (x, y, z, rot_x, rot_y, rot_z) in the
    map frame, metres and radians.
    """

    T_map_camera: np.ndarray
    cov_6x6: np.ndarray
    inlier_ratio: float = math.nan

    def __post_init__(self) -> None:
        T = _as_matrix(self.T_map_camera, (4, 4), 'T_map_camera', InvalidOutputError)
        check_rotation(T[:3, :3], 'T_map_camera rotation')
        if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0]):
            raise InvalidOutputError(f'T_map_camera last row must be 0 0 0 1, got {T[3].tolist()}')
        object.__setattr__(self, 'T_map_camera', T)
        object.__setattr__(self, 'cov_6x6', check_covariance(self.cov_6x6, (6, 6), 'cov_6x6'))


@dataclass(frozen=True)
class LocalizationResult:
    """What one localizer produced for one frame. Any of the estimates may be absent.

    ``status`` (:class:`ResultStatus`) is ``OK`` when the estimates can be trusted, ``NO_FIX`` when the localizer ran
    but has no usable answer (e.g. too few RANSAC inliers): the node then publishes NavSatFix with
    STATUS_NO_FIX and no pose. ``diagnostics`` holds extra key/values for /diagnostics and markers.
    ``images`` holds optional visualisations by name (RGB uint8 HxWx3, e.g. ``'heatmap'``: a
    class-activation overlay), published by the node as ``~/<localizer>/<name>`` sensor_msgs/Image.

    ``stamp_ns``, ``frame_id``, ``localizer`` and ``latency_ms`` are the host's: it fills them
    (:meth:`stamped`) around the ``localize()`` call; a localizer leaves them at their defaults.
    """

    room: RoomEstimate | None = None
    geo: GeoEstimate | None = None
    pose: PoseEstimate | None = None
    status: ResultStatus = ResultStatus.OK
    diagnostics: Mapping[str, str] = field(default_factory=dict)
    images: Mapping[str, np.ndarray] = field(default_factory=dict)
    covariance_type: CovarianceType = CovarianceType.KNOWN
    # -- filled by the host (stamped) --
    stamp_ns: int = 0
    frame_id: str = ''
    localizer: str = ''
    latency_ms: float = math.nan

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, 'status', ResultStatus(self.status))
            object.__setattr__(self, 'covariance_type', CovarianceType(self.covariance_type))
        except ValueError as exc:
            raise InvalidOutputError(f"status must be 'ok' or 'no_fix' and covariance_type 'known' or "
                                     f"'approximated': {exc}") from exc

    def stamped(self, frame: Frame, localizer: str, latency_ms: float) -> 'LocalizationResult':
        """This result as the host publishes it: ``frame``'s stamp and frame id, the localizer's name
        and the time its ``localize()`` took."""
        return replace(self, stamp_ns=int(frame.stamp_ns), frame_id=str(frame.frame_id), localizer=localizer,
                       latency_ms=float(latency_ms))


def check_result(result: LocalizationResult) -> None:
    """Re-validate every estimate of ``result`` before it is published (InvalidOutputError if unusable).

    The estimate classes validate themselves when built; this repeats the checks at the node so that
    an estimate altered after construction (or a duck-typed look-alike) cannot reach a topic.
    """
    if not isinstance(result, LocalizationResult):
        raise InvalidOutputError(f'localize() returned {type(result).__name__}, not LocalizationResult')
    if result.status not in tuple(ResultStatus) or result.covariance_type not in tuple(CovarianceType):
        raise InvalidOutputError(f'status {result.status!r} / covariance_type {result.covariance_type!r} unknown')
    for name, kind in (('room', RoomEstimate), ('geo', GeoEstimate), ('pose', PoseEstimate)):
        value = getattr(result, name)
        if value is not None and not isinstance(value, kind):
            raise InvalidOutputError(f'result.{name} is a {type(value).__name__}, not {kind.__name__}')
        if value is not None:
            value.__post_init__()  # the constructor's checks, on the values as they are now
