"""The robot pose the node publishes: camera pose through the static extrinsic, covariance carried through.

Ground truth is built here as base_link poses and an explicit optical-frame mounting matrix; the
localizer reports the camera pose they imply, the node (configured with xyz + rpy as a user would)
must publish the base_link pose back.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import pytest
import transforms3d
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.executors import SingleThreadedExecutor

from test_node_inprocess import Spinner, make_node
from test_node_support import RosClient, domain_id_for
from vizloc_ros.conversions import image_msg_from_rgb, stamp_to_ns
from vizloc_ros.frames import OPTICAL_FORWARD_RPY, CameraExtrinsic, base_pose_from_camera_pose, skew
from vizloc_ros.hookspecs import hookimpl
from vizloc_ros.localizer import LocalizerType
from vizloc_ros.types import Frame, GeoEstimate, LocalizationResult, PoseEstimate

DOMAIN_ID = domain_id_for(__name__)
#: optical frame (x right, y down, z forward) in base_link (x forward, y left, z up), written out by hand
R_BASE_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
CAMERA_XYZ = np.array([0.30, -0.05, 0.80])  # 30 cm forward, 5 cm right, 80 cm up
CAMERA_COV = np.diag([0.04, 0.04, 0.09, 1e-3, 2e-3, 3e-3])
TRUTH: dict[int, np.ndarray] = {}  # stamp -> T_map_camera the localizer reports


def _T(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def test_forward_optical_rpy_is_the_rep103_mounting() -> None:
    extrinsic = CameraExtrinsic((0.0, 0.0, 0.0), OPTICAL_FORWARD_RPY)
    np.testing.assert_allclose(extrinsic.T_base_camera[:3, :3], R_BASE_OPTICAL, atol=1e-12)
    assert CameraExtrinsic().is_identity


def test_covariance_through_the_lever_arm() -> None:
    # rotation uncertainty only: the base moves by dtheta x a, a = camera -> base in map coordinates
    extrinsic = CameraExtrinsic(tuple(CAMERA_XYZ), OPTICAL_FORWARD_RPY)
    T_map_camera = _T(transforms3d.euler.euler2mat(0.3, -0.2, 1.0), np.array([5.0, 2.0, 1.0]))
    cov = np.diag([0.0, 0.0, 0.0, 1e-2, 1e-2, 1e-2])
    T_map_base, cov_base = base_pose_from_camera_pose(PoseEstimate(T_map_camera, cov), extrinsic)
    a = T_map_base[:3, 3] - T_map_camera[:3, 3]
    assert np.linalg.norm(a) == pytest.approx(np.linalg.norm(CAMERA_XYZ))
    np.testing.assert_allclose(cov_base[:3, :3], 1e-2 * skew(a) @ skew(a).T, atol=1e-12)
    np.testing.assert_allclose(cov_base[3:, 3:], cov[3:, 3:])
    # Monte Carlo: perturb the camera rotation, the base position scatters as predicted
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(4000):
        dtheta = rng.normal(0.0, 0.1, 3)
        R = transforms3d.axangles.axangle2mat(dtheta, np.linalg.norm(dtheta)) @ T_map_camera[:3, :3]
        samples.append((_T(R, T_map_camera[:3, 3]) @ np.linalg.inv(extrinsic.T_base_camera))[:3, 3])
    np.testing.assert_allclose(np.cov(np.array(samples).T), cov_base[:3, :3], atol=0.15 * np.abs(cov_base).max())


class TruthLocalizer:
    backend_name = 'python'
    requires_camera_info = False

    def __init__(self, config: Any, options: Any, context: Any) -> None:
        self.name = config.name

    def localize(self, frame: Frame) -> LocalizationResult:
        pose = PoseEstimate(TRUTH[frame.stamp_ns], CAMERA_COV)
        geo = GeoEstimate(46.52, 6.57, math.nan, np.diag([4.0, 4.0, 1e4]))  # altitude unknown
        return LocalizationResult(pose=pose, geo=geo)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


class TruthPlugin:
    __name__ = 'truth_plugin'

    @hookimpl
    def vizloc_register_localizers(self, registry: Any) -> None:
        registry.register(LocalizerType('test_truth', TruthLocalizer, needs_bundle=False))


@pytest.fixture(scope='module')
def client() -> Iterator[RosClient]:
    c = RosClient(DOMAIN_ID, name='frames_client')
    c.camera_publishers()
    yield c
    c.close()


def test_the_node_publishes_base_link_poses(client: RosClient) -> None:
    rng = np.random.default_rng(1)
    T_base_optical = _T(R_BASE_OPTICAL, CAMERA_XYZ)
    truth_base = {}
    for i in range(5):
        stamp_ns = 1_000_000_000 * (i + 1)
        R = transforms3d.euler.euler2mat(*rng.uniform(-0.3, 0.3, 2), rng.uniform(-math.pi, math.pi), 'sxyz')
        truth_base[stamp_ns] = _T(R, rng.uniform(-20, 20, 3))
        TRUTH[stamp_ns] = truth_base[stamp_ns] @ T_base_optical
    node = make_node(client, {'localizers': ['truth'], 'truth.type': 'test_truth',
                              'T_base_camera_xyz': [float(v) for v in CAMERA_XYZ],
                              'T_base_camera_rpy': [-1.5707963267948966, 0.0, -1.5707963267948966]},
                     plugins=(TruthPlugin(),))
    spinner = Spinner(SingleThreadedExecutor(context=client.context))
    spinner.executor.add_node(node)
    try:
        client.record(PoseWithCovarianceStamped, '/vizloc/truth/pose')
        assert node.autostart()
        assert client.wait_for_image_subscriber()
        for stamp_ns in truth_base:  # one at a time: the node keeps only the latest frame per localizer
            client.pub_image.publish(image_msg_from_rgb(np.zeros((12, 16, 3), np.uint8), stamp_ns, 'camera'))
            assert client.wait_for(lambda s=stamp_ns: any(stamp_to_ns(m.header.stamp) == s for m in
                                                          client.messages('/vizloc/truth/pose')), 5.0)
    finally:
        spinner.close()
        node.destroy_node()
    for msg in client.messages('/vizloc/truth/pose'):
        expected = truth_base[stamp_to_ns(msg.header.stamp)]
        p, o = msg.pose.pose.position, msg.pose.pose.orientation
        np.testing.assert_allclose([p.x, p.y, p.z], expected[:3, 3], atol=1e-9)
        R = transforms3d.quaternions.quat2mat([o.w, o.x, o.y, o.z])
        np.testing.assert_allclose(R, expected[:3, :3], atol=1e-9)
        cov = np.array(msg.pose.covariance).reshape(6, 6)
        assert msg.header.frame_id == 'map' and np.all(np.linalg.eigvalsh(cov) > 0)
        # the lever arm adds position uncertainty from the camera's rotation uncertainty
        assert np.trace(cov[:3, :3]) > np.trace(CAMERA_COV[:3, :3])
