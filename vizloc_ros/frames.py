"""Robot frames: the static camera extrinsic and the robot (base) pose from a camera pose.

Frame conventions (REP-103 / REP-105): ``map`` is the localization frame (x east, y north, z up for
geo-referenced maps); ``base_link`` is the robot body (x forward, y left, z up); the camera's
*optical* frame has x right, y down, z forward (what ``PoseEstimate.T_map_camera`` and
``sensor_msgs/CameraInfo`` use). ``T_base_camera`` maps optical-frame coordinates into base_link:
for a camera at the base origin looking forward it is the rotation ``rpy = (-pi/2, 0, -pi/2)``.

The node publishes ``~/<name>/pose`` as ``T_map_base = T_map_camera @ inv(T_base_camera)``, which is
what robot_localization and Nav2 expect of a pose measurement of ``base_link``. The 6x6 covariance
(x, y, z, rotation about the fixed map axes) is carried through the transform to first order: a
rotation error of the camera moves the base by the rotation times the lever arm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import transforms3d

from .types import CameraIntrinsics, InvalidInputError, PoseEstimate

__all__ = ['CameraExtrinsic', 'skew', 'base_pose_from_camera_pose', 'intrinsics_for_input', 'OPTICAL_FORWARD_RPY']

#: rpy of an optical frame looking along base_link's +x (camera mounted forward, upright).
OPTICAL_FORWARD_RPY = (-math.pi / 2, 0.0, -math.pi / 2)


def skew(v: np.ndarray) -> np.ndarray:
    """The cross-product matrix [v]x (3x3) of a 3-vector."""
    x, y, z = (float(c) for c in v)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


@dataclass(frozen=True)
class CameraExtrinsic:
    """Static pose of the camera optical frame in the base frame, from xyz (m) + rpy (rad, fixed axes X, Y, Z
    as in ``static_transform_publisher``)."""

    xyz_m: Sequence[float] = (0.0, 0.0, 0.0)
    rpy_rad: Sequence[float] = (0.0, 0.0, 0.0)
    T_base_camera: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        xyz = np.asarray(self.xyz_m, dtype=np.float64).reshape(-1)
        rpy = np.asarray(self.rpy_rad, dtype=np.float64).reshape(-1)
        if xyz.size != 3 or rpy.size != 3 or not (np.all(np.isfinite(xyz)) and np.all(np.isfinite(rpy))):
            raise InvalidInputError(f'camera extrinsic needs 3 finite xyz and 3 finite rpy values, got {self.xyz_m} '
                                    f'and {self.rpy_rad}')
        T = np.eye(4)
        T[:3, :3] = transforms3d.euler.euler2mat(*rpy, 'sxyz')
        T[:3, 3] = xyz
        object.__setattr__(self, 'T_base_camera', T)

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.T_base_camera, np.eye(4)))


def base_pose_from_camera_pose(pose: PoseEstimate, extrinsic: CameraExtrinsic) -> tuple[np.ndarray, np.ndarray]:
    """(T_map_base 4x4, cov_6x6) of the base frame from the camera's ``pose`` and the static extrinsic.

    With ``a`` the vector from the camera to the base in map coordinates, a small rotation ``dtheta``
    of the camera (about the fixed map axes) moves the base by ``dtheta x a``; the position error is
    shared. So ``J = [[I, -[a]x], [0, I]]`` and ``cov_base = J cov_camera J^T``.
    """
    T_map_camera = pose.T_map_camera
    T_map_base = T_map_camera @ np.linalg.inv(extrinsic.T_base_camera)
    a = T_map_base[:3, 3] - T_map_camera[:3, 3]
    J = np.eye(6)
    J[:3, 3:] = -skew(a)
    cov = J @ pose.cov_6x6 @ J.T
    return T_map_base, 0.5 * (cov + cov.T)


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
    return CameraIntrinsics(K=P.reshape(3, 4)[:, :3].copy(), width=camera.width, height=camera.height,
                            D=np.zeros(0), distortion_model=camera.distortion_model)
