"""RViz output: MarkerArray (room label, 2-sigma position ellipsoid, camera frustum) and nav_msgs/Path.

Each localizer's markers use the localizer name as namespace; ids are fixed per kind so a new
result replaces the previous markers. Poses are in the node's ``map_frame``. The path is published
at most every :data:`PATH_PUBLISH_PERIOD_S` (a 1000-pose Path costs ~7 ms to build and publish in
Python, too much for every frame).
"""
from __future__ import annotations

import collections
import zlib
import threading
from typing import Any

import numpy as np

from .geodesy import quaternion_xyzw_from_matrix
from .types import CameraIntrinsics, LocalizationResult, ResultStatus

__all__ = ['markers_for_result', 'delete_markers', 'PathBuffer', 'LocalizerPaths', 'frustum_points_map', 'ellipsoid_axes',
           'PATH_PUBLISH_PERIOD_S']

ID_TEXT, ID_ELLIPSOID, ID_FRUSTUM = 0, 1, 2
#: Scale of the uncertainty ellipsoid: 2 sigma.
N_SIGMA = 2.0
FRUSTUM_DEPTH_M = 1.0
#: Minimum time between two ~/<name>/path messages.
PATH_PUBLISH_PERIOD_S = 0.5


def _color(name: str, alpha: float = 1.0) -> Any:
    from std_msgs.msg import ColorRGBA

    h = (zlib.crc32(name.encode()) % 360) / 360.0  # one stable colour per localizer name
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h, 0.8, 1.0)
    return ColorRGBA(r=r, g=g, b=b, a=alpha)


def ellipsoid_axes(cov_33: np.ndarray, n_sigma: float = N_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """(full axis lengths (3,), rotation 3x3 with the axes as columns, right-handed) of a position covariance."""
    cov = 0.5 * (np.asarray(cov_33, dtype=np.float64) + np.asarray(cov_33, dtype=np.float64).T)
    eigvals, eigvecs = np.linalg.eigh(cov)
    if np.linalg.det(eigvecs) < 0:
        eigvecs[:, 2] = -eigvecs[:, 2]
    lengths = 2.0 * n_sigma * np.sqrt(np.clip(eigvals, 0.0, None))
    return np.maximum(lengths, 1e-3), eigvecs


def frustum_points_map(T_map_camera: np.ndarray, camera: CameraIntrinsics | None, depth_m: float = FRUSTUM_DEPTH_M) -> np.ndarray:
    """(16, 3) LINE_LIST points of a camera frustum: apex to 4 corners + the far rectangle."""
    if camera is not None:
        w, h = camera.width, camera.height
        corners_px = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=np.float64)
        rays = (np.linalg.inv(camera.K) @ corners_px.T).T
    else:  # 60 deg x 45 deg default when no CameraInfo came
        tx, ty = np.tan(np.radians(30.0)), np.tan(np.radians(22.5))
        rays = np.array([[-tx, -ty, 1], [tx, -ty, 1], [tx, ty, 1], [-tx, ty, 1]])
    corners_cam = rays / rays[:, 2:3] * depth_m
    T = np.asarray(T_map_camera, dtype=np.float64)
    corners = (T[:3, :3] @ corners_cam.T).T + T[:3, 3]
    apex = T[:3, 3]
    segments = []
    for i in range(4):
        segments += [apex, corners[i]]
    for i in range(4):
        segments += [corners[i], corners[(i + 1) % 4]]
    return np.array(segments)


def markers_for_result(result: LocalizationResult, stamp: Any, camera_frame: str, map_frame: str,
                       camera: CameraIntrinsics | None = None) -> Any:
    """visualization_msgs/MarkerArray for one result (empty array when there is nothing to show)."""
    from geometry_msgs.msg import Point
    from visualization_msgs.msg import Marker, MarkerArray

    out = MarkerArray()
    ns = result.localizer
    pose = result.pose if result.status == ResultStatus.OK else None

    def marker(kind: int, marker_id: int, frame: str) -> Any:
        m = Marker()
        m.header.stamp = stamp
        m.header.frame_id = frame
        m.ns, m.id, m.type, m.action = ns, marker_id, kind, Marker.ADD
        m.pose.orientation.w = 1.0
        return m

    if result.room is not None:
        m = marker(Marker.TEXT_VIEW_FACING, ID_TEXT, map_frame if pose is not None else camera_frame)
        m.text = f'{ns}: {result.room.label} ({result.room.confidence:.2f})'
        if pose is not None:
            x, y, z = pose.T_map_camera[:3, 3]
            m.pose.position.x, m.pose.position.y, m.pose.position.z = float(x), float(y), float(z) + 0.5
        else:
            m.pose.position.y = -0.5  # above the optical axis (y is down in the camera frame)
        m.scale.z = 0.3
        m.color = _color(ns)
        out.markers.append(m)
    if pose is not None:
        lengths, R = ellipsoid_axes(pose.cov_6x6[:3, :3])
        m = marker(Marker.SPHERE, ID_ELLIPSOID, map_frame)
        x, y, z = pose.T_map_camera[:3, 3]
        m.pose.position.x, m.pose.position.y, m.pose.position.z = float(x), float(y), float(z)
        o = m.pose.orientation
        o.x, o.y, o.z, o.w = quaternion_xyzw_from_matrix(R)
        m.scale.x, m.scale.y, m.scale.z = (float(v) for v in lengths)
        m.color = _color(ns, alpha=0.3)
        out.markers.append(m)

        m = marker(Marker.LINE_LIST, ID_FRUSTUM, map_frame)
        m.scale.x = 0.02
        m.color = _color(ns)
        m.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in frustum_points_map(pose.T_map_camera, camera)]
        out.markers.append(m)
    return out


def delete_markers(localizer: str, stamp: Any, frame: str) -> Any:
    """MarkerArray that removes a localizer's label, ellipsoid and frustum (published on a NO_FIX, so
    RViz does not keep showing the last good answer)."""
    from visualization_msgs.msg import Marker, MarkerArray

    out = MarkerArray()
    for marker_id in (ID_TEXT, ID_ELLIPSOID, ID_FRUSTUM):
        m = Marker()
        m.header.stamp = stamp
        m.header.frame_id = frame
        m.ns, m.id, m.action = localizer, marker_id, Marker.DELETE
        out.markers.append(m)
    return out


class LocalizerPaths:
    """One :class:`PathBuffer` per localizer (``~/<name>/path``), each published at most every
    :data:`PATH_PUBLISH_PERIOD_S` (thread-safe)."""

    def __init__(self, map_frame: str, max_length: int) -> None:
        self.map_frame = map_frame
        self.max_length = max_length
        self._buffers: dict[str, PathBuffer] = {}
        self._published_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, localizer: str, pose_with_cov_stamped: Any, now_s: float, max_length: int | None = None) -> Any | None:
        """Append a pose; returns the localizer's nav_msgs/Path when it is due for publishing, else None."""
        with self._lock:
            buffer = self._buffers.get(localizer)
            if buffer is None:
                buffer = self._buffers[localizer] = PathBuffer(self.map_frame, self.max_length)
            due = now_s - self._published_at.get(localizer, -1e18) >= PATH_PUBLISH_PERIOD_S
            if due:
                self._published_at[localizer] = now_s
        buffer.append(pose_with_cov_stamped)
        if not due:
            return None
        if max_length is not None:
            buffer.set_max_length(max_length)
        return buffer.to_msg()


class PathBuffer:
    """The last ``max_length`` poses of one localizer as nav_msgs/Path (thread-safe)."""

    def __init__(self, map_frame: str, max_length: int) -> None:
        self.map_frame = map_frame
        self._poses: collections.deque[Any] = collections.deque(maxlen=max(1, int(max_length)))
        self._lock = threading.Lock()

    def set_max_length(self, max_length: int) -> None:
        with self._lock:
            self._poses = collections.deque(self._poses, maxlen=max(1, int(max_length)))

    def append(self, pose_with_cov_stamped: Any) -> None:
        """Add a PoseWithCovarianceStamped (cheap; the Path message is built by :meth:`to_msg`)."""
        from geometry_msgs.msg import PoseStamped

        ps = PoseStamped(header=pose_with_cov_stamped.header, pose=pose_with_cov_stamped.pose.pose)
        with self._lock:
            self._poses.append(ps)

    def to_msg(self) -> Any:
        """The nav_msgs/Path of the poses kept, stamped with the newest pose's stamp."""
        from nav_msgs.msg import Path

        with self._lock:
            poses = list(self._poses)
        path = Path()
        path.header.frame_id = self.map_frame
        if poses:
            path.header.stamp = poses[-1].header.stamp
        path.poses = poses
        return path

    def __len__(self) -> int:
        return len(self._poses)

    def clear(self) -> None:
        with self._lock:
            self._poses.clear()
