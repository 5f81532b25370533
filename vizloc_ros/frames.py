"""Frames of the node's outputs: the robot's pose (not the camera's), NavSatFix for fusion stacks,
and the intrinsics of rectified images.

* :class:`CameraExtrinsic` - the static ``T_base_camera`` (camera frame in ``base_frame``), from the
  ``camera_xyz_m`` / ``camera_rpy_rad`` parameters or looked up with tf2 where ``tf2_ros`` is
  importable (``extrinsic_from_tf``).
* :func:`base_pose` - ``T_map_base = T_map_camera @ inv(T_base_camera)`` with the 6x6 covariance
  carried through the transform.
* :func:`fix_for_fusion` - a NavSatFix that robot_localization's navsat_transform keeps: a finite
  altitude with a large variance where the localizer does not know it (NaN fixes are dropped).
* :func:`intrinsics_for_input` - where the image is already rectified (CameraInfo ``D`` all zero,
  or the ``rectified`` parameter), the camera matrix is ``P[:, :3]`` and there is no distortion.

Frames (REP-103 / REP-105): ``map`` z up; ``base_link`` x forward, y left, z up (body); the camera
*optical* frame x right, y down, z forward (what ``PoseEstimate.T_map_camera`` and the evaluation
bags' ``/ground_truth/pose`` use). The default extrinsic is the optical-to-body rotation with the
camera at the base origin (``camera_rpy_rad = [-pi/2, 0, -pi/2]``, ``camera_xyz_m = [0, 0, 0]``):
the published position equals the camera's, so ground truth positions match unchanged, and the
orientation becomes the body orientation (yaw = heading of the optical axis). See docs/node.md.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import transforms3d

from .types import CameraIntrinsics, InvalidInputError, PoseEstimate

__all__ = [
    'DEFAULT_CAMERA_XYZ_M',
    'DEFAULT_CAMERA_RPY_RAD',
    'UNKNOWN_ALTITUDE_VARIANCE_M2',
    'CameraExtrinsic',
    'base_pose',
    'base_pose_msg',
    'fix_for_fusion',
    'intrinsics_for_input',
    'lookup_extrinsic_tf',
]

logger = logging.getLogger(__name__)

#: Camera at the base origin ...
DEFAULT_CAMERA_XYZ_M: tuple[float, float, float] = (0.0, 0.0, 0.0)
#: ... optical axis along base x (the usual ``static_transform_publisher 0 0 0 -1.5708 0 -1.5708``).
DEFAULT_CAMERA_RPY_RAD: tuple[float, float, float] = (-math.pi / 2, 0.0, -math.pi / 2)
#: Altitude variance (m^2) of a fix whose altitude the localizer does not know: 1 km standard deviation.
UNKNOWN_ALTITUDE_VARIANCE_M2 = 1.0e6


def _skew(v: np.ndarray) -> np.ndarray:
    x, y, z = (float(c) for c in v)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


@dataclass(frozen=True)
class CameraExtrinsic:
    """Static pose of the camera (its optical frame) in ``base_frame``: 4x4 ``T_base_camera``."""

    base_frame: str
    T_base_camera: np.ndarray

    def __post_init__(self) -> None:
        T = np.asarray(self.T_base_camera, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise InvalidInputError(f'T_base_camera must be a finite 4x4 matrix, got shape {T.shape}')
        R = T[:3, :3]
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
            raise InvalidInputError('T_base_camera rotation is not a rotation matrix')
        if not self.base_frame:
            raise InvalidInputError('base_frame must not be empty')
        object.__setattr__(self, 'T_base_camera', T)

    @classmethod
    def from_xyz_rpy(cls, base_frame: str, xyz_m: Sequence[float], rpy_rad: Sequence[float]) -> 'CameraExtrinsic':
        """From translation (m) and fixed-axis roll, pitch, yaw (rad) as in URDF and static_transform_publisher."""
        xyz, rpy = [float(v) for v in xyz_m], [float(v) for v in rpy_rad]
        if len(xyz) != 3 or len(rpy) != 3 or not all(math.isfinite(v) for v in xyz + rpy):
            raise InvalidInputError(f'camera extrinsic needs 3 finite xyz and 3 finite rpy values, got {xyz}, {rpy}')
        T = np.eye(4)
        T[:3, :3] = transforms3d.euler.euler2mat(*rpy, axes='sxyz')
        T[:3, 3] = xyz
        return cls(base_frame, T)

    @property
    def T_camera_base(self) -> np.ndarray:
        return np.linalg.inv(self.T_base_camera)


def base_pose(pose: PoseEstimate, extrinsic: CameraExtrinsic) -> tuple[np.ndarray, np.ndarray]:
    """``(T_map_base 4x4, cov_6x6)`` of the base from a camera pose.

    The covariance is (x, y, z, rot_x, rot_y, rot_z) with rotations as small angles about the map
    axes (``R' = exp(dtheta) R``, as ``PoseEstimate.cov_6x6``). A map-frame rotation error
    ``dtheta`` moves the base by ``dtheta x r`` with ``r = p_base - p_camera``, so
    ``J = [[I, -[r]x], [0, I]]`` and ``cov_base = J cov J^T``.
    """
    T_map_base = pose.T_map_camera @ extrinsic.T_camera_base
    r = T_map_base[:3, 3] - pose.T_map_camera[:3, 3]
    J = np.eye(6)
    J[:3, 3:] = -_skew(r)
    cov = J @ pose.cov_6x6 @ J.T
    return T_map_base, 0.5 * (cov + cov.T)


def base_pose_msg(pose: PoseEstimate, extrinsic: CameraExtrinsic, stamp: Any, map_frame: str) -> Any:
    """geometry_msgs/PoseWithCovarianceStamped of ``extrinsic.base_frame`` in ``map_frame``."""
    from geometry_msgs.msg import PoseWithCovarianceStamped

    from .conversions import quaternion_xyzw_from_matrix

    T, cov = base_pose(pose, extrinsic)
    msg = PoseWithCovarianceStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = map_frame
    p = msg.pose.pose.position
    p.x, p.y, p.z = (float(v) for v in T[:3, 3])
    o = msg.pose.pose.orientation
    o.x, o.y, o.z, o.w = quaternion_xyzw_from_matrix(T[:3, :3])
    msg.pose.covariance = [float(v) for v in cov.reshape(-1)]
    return msg


def fix_for_fusion(msg: Any, unknown_altitude_m: float = 0.0,
                   unknown_altitude_variance_m2: float = UNKNOWN_ALTITUDE_VARIANCE_M2) -> Any:
    """Give a NavSatFix with a NaN altitude (unknown) a finite one and a large altitude variance.

    navsat_transform drops fixes with any non-finite coordinate; fusing with a 1 km altitude sigma
    lets the horizontal position through while the altitude has no weight. NO_FIX messages (NaN
    latitude too) are left as they are. Modifies and returns ``msg``.
    """
    from sensor_msgs.msg import NavSatFix, NavSatStatus

    if msg.status.status == NavSatStatus.STATUS_NO_FIX or math.isfinite(msg.altitude):
        return msg
    msg.altitude = float(unknown_altitude_m)
    cov = list(msg.position_covariance)
    cov[8] = max(float(cov[8]) if math.isfinite(cov[8]) else 0.0, float(unknown_altitude_variance_m2))
    cov[2] = cov[5] = cov[6] = cov[7] = 0.0  # no correlation with an altitude nobody estimated
    msg.position_covariance = cov
    if msg.position_covariance_type == NavSatFix.COVARIANCE_TYPE_KNOWN:
        msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_APPROXIMATED
    return msg


def intrinsics_for_input(camera: CameraIntrinsics, P_34: Sequence[float] | np.ndarray, *, rectified: bool) -> CameraIntrinsics:
    """The intrinsics that describe the image as it arrives.

    A rectified image (``rectified`` parameter, or CameraInfo ``D`` all zero) is described by the
    projection matrix ``P`` (its left 3x3), not by ``K`` + ``D``: after rectification ``K`` is the
    raw camera's matrix. An all-zero ``P`` falls back to ``K`` when ``D`` is all zero (many
    drivers fill only ``K``) and is an error when ``rectified`` is set.
    """
    P = np.asarray(P_34, dtype=np.float64).reshape(-1)
    no_distortion = camera.D.size == 0 or not np.any(camera.D)
    if not (rectified or no_distortion):
        return camera
    if P.size != 12 or not np.any(P[:3]) or P[10] == 0.0:
        if rectified and not no_distortion:
            raise InvalidInputError('rectified is true but CameraInfo has no projection matrix P')
        return camera
    K = P.reshape(3, 4)[:, :3].copy()
    return CameraIntrinsics(K=K, width=camera.width, height=camera.height, D=np.zeros(0),
                            distortion_model=camera.distortion_model)


def lookup_extrinsic_tf(base_frame: str, camera_frame: str, *, context: Any = None,
                        timeout_s: float = 2.0) -> CameraExtrinsic | None:
    """``T_base_camera`` from tf2 (``/tf_static``, ``/tf``), or None where tf2_ros is not importable or
    the transform is not available within ``timeout_s``. Listens with its own short-lived node and
    executor (the caller's node may already be spinning in another executor)."""
    try:
        import rclpy
        from rclpy.duration import Duration
        from rclpy.time import Time
        from tf2_ros import Buffer, TransformException, TransformListener  # type: ignore[import-not-found]
    except ImportError:
        logger.info('tf2_ros is not importable: the camera extrinsic comes from the parameters')
        return None
    helper = rclpy.create_node('vizloc_extrinsic_lookup', context=context, start_parameter_services=False)
    buffer = Buffer()
    listener = TransformListener(buffer, helper, spin_thread=True)
    try:
        tf = buffer.lookup_transform(base_frame, camera_frame, Time(), timeout=Duration(seconds=timeout_s))
    except TransformException as exc:
        logger.warning('tf2 has no %s -> %s transform (%s): the camera extrinsic comes from the parameters',
                       base_frame, camera_frame, exc)
        return None
    finally:
        listener.unregister()
        helper.destroy_node()
    t, q = tf.transform.translation, tf.transform.rotation
    T = np.eye(4)
    T[:3, :3] = transforms3d.quaternions.quat2mat([q.w, q.x, q.y, q.z])
    T[:3, 3] = [t.x, t.y, t.z]
    return CameraExtrinsic(base_frame, T)
