"""Outputs that fusion stacks accept (vizloc_ros.frames + the node + config/robot_localization).

* The node publishes base_link's pose: a camera pose from a real evaluation bag, converted through
  the extrinsic, matches the ground-truth *body* pose the synthetic worlds' camera model was built
  from (default extrinsic) and a base pose built independently (custom lever arm and rotation).
* The 6x6 covariance is carried through the transform (checked against a finite-difference Jacobian).
* NavSatFix keeps a finite altitude with a large variance where the localizer does not know it.
* Rectified input uses P, not K + D.
* config/robot_localization/*.yaml and launch/fusion.launch.py name the topics, frames and
  covariance handling the node really publishes.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import transforms3d
import yaml
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import NavSatFix, NavSatStatus

from test_node_support import PARAMS_FILE, REPO, RosClient, domain_id_for
from vizloc_ros.bags import evaluation_bag_path, read_evaluation_bag, write_evaluation_bag, EvalSample
from vizloc_ros.conversions import stamp_to_ns
from vizloc_ros.frames import (DEFAULT_CAMERA_RPY_RAD, UNKNOWN_ALTITUDE_VARIANCE_M2, CameraExtrinsic, base_pose,
                               fix_for_fusion, intrinsics_for_input)
from vizloc_ros.hookspecs import hookimpl
from vizloc_ros.localizer import LocalizerType
from vizloc_ros.node import VizlocNode
from vizloc_ros.params import NODE_PARAMETERS
from vizloc_ros.types import CameraIntrinsics, Frame, GeoEstimate, LocalizationResult, PoseEstimate

pytestmark = pytest.mark.timeout(90)

DOMAIN_ID = domain_id_for(__name__)
RL_DIR = REPO / 'config' / 'robot_localization'


# ------------------------------------------------------------------------------------------------
# frames.py
# ------------------------------------------------------------------------------------------------

def _random_pose(rng: np.random.Generator) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = transforms3d.euler.euler2mat(*rng.uniform(-math.pi, math.pi, 3))
    T[:3, 3] = rng.uniform(-50, 50, 3)
    return T


def _rotvec(R: np.ndarray) -> np.ndarray:
    """Rotation vector of a small rotation (2 x quaternion vector part; exact to O(angle^3))."""
    q = transforms3d.quaternions.mat2quat(R)
    return 2.0 * np.sign(q[0]) * q[1:]


def test_covariance_is_carried_through_the_extrinsic() -> None:
    """cov_base == J cov J^T with J the finite-difference Jacobian of the camera->base map (map-frame
    rotation perturbations, as PoseEstimate.cov_6x6 documents)."""
    rng = np.random.default_rng(3)
    T_map_camera = _random_pose(rng)
    extrinsic = CameraExtrinsic.from_xyz_rpy('base_link', [0.4, -0.1, 1.3], [0.1, -0.2, 0.3])
    A = rng.normal(size=(6, 6))
    cov = A @ A.T * 0.01 + np.eye(6) * 1e-3
    T_map_base, cov_base = base_pose(PoseEstimate(T_map_camera, cov, 'x', 0.0), extrinsic)
    np.testing.assert_allclose(T_map_base, T_map_camera @ np.linalg.inv(extrinsic.T_base_camera), atol=1e-12)

    def base_of(delta: np.ndarray) -> np.ndarray:
        T = T_map_camera.copy()
        T[:3, 3] += delta[:3]
        T[:3, :3] = transforms3d.axangles.axangle2mat(delta[3:], np.linalg.norm(delta[3:])) @ T[:3, :3] \
            if np.linalg.norm(delta[3:]) > 0 else T[:3, :3]
        B = T @ np.linalg.inv(extrinsic.T_base_camera)
        return np.concatenate([B[:3, 3] - T_map_base[:3, 3], _rotvec(B[:3, :3] @ T_map_base[:3, :3].T)])

    eps = 1e-5
    J = np.stack([(base_of(e * eps) - base_of(-e * eps)) / (2 * eps) for e in np.eye(6)], axis=1)
    np.testing.assert_allclose(cov_base, J @ cov @ J.T, rtol=1e-5, atol=1e-8)
    # no lever arm: the covariance does not change
    _, same = base_pose(PoseEstimate(T_map_camera, cov, 'x', 0.0),
                        CameraExtrinsic.from_xyz_rpy('base_link', [0, 0, 0], DEFAULT_CAMERA_RPY_RAD))
    np.testing.assert_allclose(same, cov, atol=1e-12)


def test_extrinsic_is_refused_when_not_a_rigid_transform() -> None:
    from vizloc_ros.types import InvalidInputError

    with pytest.raises(InvalidInputError, match='3 finite'):
        CameraExtrinsic.from_xyz_rpy('base_link', [0, 0], [0, 0, 0])
    with pytest.raises(InvalidInputError, match='rotation'):
        CameraExtrinsic('base_link', np.diag([1.0, 1.0, -1.0, 1.0]))


def test_unknown_altitude_becomes_finite_with_a_large_variance() -> None:
    msg = NavSatFix()
    msg.status.status = NavSatStatus.STATUS_FIX
    msg.latitude, msg.longitude, msg.altitude = 46.5, 6.6, math.nan
    msg.position_covariance = [4.0, 0.5, 0, 0.5, 9.0, 0, 0, 0, math.nan]
    msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_KNOWN
    out = fix_for_fusion(msg, unknown_altitude_m=12.0)
    assert out.altitude == 12.0 and all(math.isfinite(v) for v in out.position_covariance)
    assert out.position_covariance[8] == UNKNOWN_ALTITUDE_VARIANCE_M2
    assert list(out.position_covariance[:5]) == [4.0, 0.5, 0.0, 0.5, 9.0]  # horizontal part untouched
    assert out.position_covariance_type == NavSatFix.COVARIANCE_TYPE_APPROXIMATED
    no_fix = NavSatFix()
    no_fix.status.status = NavSatStatus.STATUS_NO_FIX
    no_fix.latitude = no_fix.longitude = no_fix.altitude = math.nan
    assert math.isnan(fix_for_fusion(no_fix).altitude)  # NO_FIX stays NaN (navsat_transform drops it anyway)


def test_rectified_input_uses_p() -> None:
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    P = np.array([[450.0, 0, 330, 0], [0, 452, 235, 0], [0, 0, 1, 0]])
    distorted = CameraIntrinsics(K=K, width=640, height=480, D=np.array([-0.2, 0.05, 0, 0, 0]))
    assert intrinsics_for_input(distorted, P, rectified=False) is distorted  # raw image: K + D
    rect = intrinsics_for_input(distorted, P, rectified=True)
    np.testing.assert_array_equal(rect.K, P[:, :3]) and not rect.D.any()
    zero_d = CameraIntrinsics(K=K, width=640, height=480, D=np.zeros(5))
    np.testing.assert_array_equal(intrinsics_for_input(zero_d, P, rectified=False).K, P[:, :3])
    assert intrinsics_for_input(zero_d, np.zeros(12), rectified=False) is zero_d  # driver filled only K
    from vizloc_ros.types import InvalidInputError

    with pytest.raises(InvalidInputError, match='no projection matrix'):
        intrinsics_for_input(distorted, np.zeros(12), rectified=True)


# ------------------------------------------------------------------------------------------------
# The node: camera poses from a real bag in, base_link poses out
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OracleOptions:
    bag: str = field(default='', metadata={'description': 'evaluation bag whose /ground_truth/pose is answered'})


class OracleLocalizer:
    """Answers each frame with the bag's ground-truth camera pose of that stamp (and a fix without altitude)."""

    backend_name = 'python'
    requires_camera_info = False

    def __init__(self, config: Any, options: OracleOptions, context: Any) -> None:
        self.name = config.name
        self.truth = {s.stamp_ns: s.T_map_camera for s in read_evaluation_bag(options.bag)}

    def localize(self, frame: Frame) -> LocalizationResult:
        cov = np.diag([0.04, 0.09, 0.16, 0.001, 0.002, 0.003])
        return LocalizationResult(
            stamp_ns=frame.stamp_ns, frame_id=frame.frame_id, localizer=self.name, latency_ms=0.0,
            geo=GeoEstimate(46.5, 6.6, math.nan, np.diag([4.0, 4.0, 400.0]), self.name, 0.0),
            pose=PoseEstimate(self.truth[frame.stamp_ns], cov, self.name, 0.0))

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


class OraclePlugin:
    __name__ = 'oracle_plugin'

    @hookimpl
    def vizloc_register_localizers(self, registry: Any) -> None:
        registry.register(LocalizerType('test_oracle', OracleLocalizer, OracleOptions, needs_bundle=False))


#: Body poses (position, yaw, pitch, roll) of the walk; the camera model of the synthetic worlds
#: (vizloc_training.synth.boxworld.camera_pose) turns each into the optical-frame camera pose.
WALK = [((1.0, 2.0, 1.5), 0.0, 0.0, 0.0), ((3.0, 2.5, 1.5), 0.6, 0.1, 0.0),
        ((5.0, 4.0, 1.6), 1.7, -0.2, 0.05), ((4.0, 7.0, 1.4), -2.8, 0.0, -0.1)]
T0_NS, DT_NS = 1_700_000_000_000_000_000, 100_000_000


@pytest.fixture(scope='module')
def walk_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vizloc_training.synth.boxworld import camera_pose

    cam = CameraIntrinsics.from_fov(90.0, 32, 24)
    samples = [EvalSample(stamp_ns=T0_NS + i * DT_NS, rgb_HW3=np.full((24, 32, 3), 40 * i, np.uint8), camera=cam,
                          frame_id='camera', fix_lla=(46.5, 6.6, 400.0), T_map_camera=camera_pose(p, y, pi, r), room=None)
               for i, (p, y, pi, r) in enumerate(WALK)]
    return write_evaluation_bag(evaluation_bag_path(tmp_path_factory.mktemp('walk')), samples)


def _body_truth(i: int) -> np.ndarray:
    """The body pose of WALK[i], built independently of frames.py (REP-103 yaw, pitch up positive)."""
    (p, yaw, pitch, roll) = WALK[i]
    T = np.eye(4)
    T[:3, :3] = transforms3d.euler.euler2mat(yaw, -pitch, roll, axes='rzyx')
    T[:3, 3] = p
    return T


@pytest.fixture(scope='module')
def client() -> Iterator[RosClient]:
    c = RosClient(DOMAIN_ID, name='fusion_client')
    c.camera_publishers()
    c.record(PoseWithCovarianceStamped, '/vizloc/oracle/pose')
    c.record(NavSatFix, '/vizloc/oracle/fix')
    yield c
    c.close()


def _run_node(client: RosClient, bag: Path, extra: list[str]) -> dict[int, Any]:
    cli = ['--ros-args', '--params-file', str(PARAMS_FILE), '-p', 'localizers:=["oracle"]',
           '-p', 'oracle.type:=test_oracle', '-p', f'oracle.bag:={bag}', *extra]
    node = VizlocNode(context=client.context, cli_args=cli, extra_plugins=[OraclePlugin()])
    executor = SingleThreadedExecutor(context=client.context)
    executor.add_node(node)
    client.clear()
    try:
        assert node.autostart()
        assert client.wait_for_image_subscriber()
        samples = list(read_evaluation_bag(bag))
        deadline = time.monotonic() + 20.0
        seen: set[int] = set()
        while len(seen) < len(samples) and time.monotonic() < deadline:  # sensor_data QoS: resend what got lost
            for s in samples:
                if s.stamp_ns not in seen:
                    client.publish_frame(s.rgb_HW3, s.stamp_ns)
                    executor.spin_once(timeout_sec=0.05)
                    time.sleep(0.05)
            executor.spin_once(timeout_sec=0.1)
            seen = {stamp_to_ns(m.header.stamp) for m in client.messages('/vizloc/oracle/pose')}
        poses = {stamp_to_ns(m.header.stamp): m for m in client.messages('/vizloc/oracle/pose')}
        assert len(poses) == len(samples), node.diagnostics_array()
        fixes = client.messages('/vizloc/oracle/fix')
        assert fixes and all(math.isfinite(f.altitude) and f.position_covariance[8] >= 1e6 for f in fixes)
        return poses
    finally:
        node.destroy_node()
        executor.shutdown()


def _matrix(msg: Any) -> np.ndarray:
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    T = np.eye(4)
    T[:3, :3] = transforms3d.quaternions.quat2mat([q.w, q.x, q.y, q.z])
    T[:3, 3] = [p.x, p.y, p.z]
    return T


def test_node_publishes_ground_truth_base_link_poses(client: RosClient, walk_bag: Path) -> None:
    # Default extrinsic: the published pose is the body pose the worlds' camera model started from.
    poses = _run_node(client, walk_bag, [])
    for i in range(len(WALK)):
        msg = poses[T0_NS + i * DT_NS]
        assert msg.header.frame_id == 'map'
        np.testing.assert_allclose(_matrix(msg), _body_truth(i), atol=1e-6)
        np.testing.assert_allclose(np.reshape(msg.pose.covariance, (6, 6)),
                                   np.diag([0.04, 0.09, 0.16, 0.001, 0.002, 0.003]), atol=1e-12)

    # A camera 0.3 m ahead, 1.2 m up, pitched down 0.2 rad: ground-truth base = camera pose with
    # that mounting taken off, built here with plain matrices.
    xyz, rpy = [0.3, 0.0, 1.2], [-math.pi / 2 - 0.2, 0.0, -math.pi / 2]
    poses = _run_node(client, walk_bag, ['-p', f'camera_xyz_m:={xyz}', '-p', f'camera_rpy_rad:={rpy}',
                                         '-p', 'base_frame:=base_footprint'])
    T_base_camera = np.eye(4)
    T_base_camera[:3, :3] = (transforms3d.axangles.axangle2mat([0, 0, 1], rpy[2])
                             @ transforms3d.axangles.axangle2mat([1, 0, 0], rpy[0]))
    T_base_camera[:3, 3] = xyz
    for s in read_evaluation_bag(walk_bag):
        truth_base = s.T_map_camera @ np.linalg.inv(T_base_camera)
        np.testing.assert_allclose(_matrix(poses[s.stamp_ns]), truth_base, atol=1e-6)
        # the camera optical axis (z) seen from the base: forward and 0.2 rad down
        axis = (np.linalg.inv(truth_base) @ s.T_map_camera)[:3, 2]
        np.testing.assert_allclose(axis, [math.cos(0.2), 0.0, -math.sin(0.2)], atol=1e-9)


# ------------------------------------------------------------------------------------------------
# config/robot_localization + launch/fusion.launch.py against what the node publishes
# ------------------------------------------------------------------------------------------------

def _localize_params() -> dict[str, Any]:
    return yaml.safe_load(PARAMS_FILE.read_text())['/**']['ros__parameters']


def test_robot_localization_config_matches_the_node() -> None:
    node = _localize_params()
    ekf = yaml.safe_load((RL_DIR / 'ekf.yaml').read_text())
    navsat = yaml.safe_load((RL_DIR / 'navsat_transform.yaml').read_text())['navsat_transform']['ros__parameters']
    launch = (REPO / 'launch' / 'fusion.launch.py').read_text()
    compile(launch, 'fusion.launch.py', 'exec')
    assert set(ekf) == {'ekf_odom', 'ekf_map'}
    for name in ekf:
        assert f"name='{name}'" in launch
    assert "name='navsat_transform'" in launch and "'localize.launch.py'" in launch
    for filt in ekf.values():
        p = filt['ros__parameters']
        assert p['map_frame'] == node['map_frame'] == NODE_PARAMETERS['map_frame'].default
        assert p['base_link_frame'] == node['base_frame'] == NODE_PARAMETERS['base_frame'].default
        for key, value in p.items():
            if key.endswith('_config'):
                assert len(value) == 15 and all(isinstance(v, bool) for v in value), key
    m = ekf['ekf_map']['ros__parameters']
    assert m['world_frame'] == 'map' and ekf['ekf_odom']['ros__parameters']['world_frame'] == 'odom'

    # Topics: the node is `vizloc` (no namespace); pose0 is a localizer of config/localize.yaml that
    # publishes poses, the fix that navsat_transform reads is another's ~/<name>/fix.
    topic = re.compile(r'^/vizloc/(\w+)/(pose|fix)$')
    pose_loc = topic.match(m['pose0']).group(1)
    assert topic.match(m['pose0']).group(2) == 'pose' and pose_loc in node['localizers']
    fix_remap = re.search(r"\('gps/fix', '([^']+)'\)", launch).group(1)
    assert topic.match(fix_remap).group(2) == 'fix' and topic.match(fix_remap).group(1) in node['localizers']
    assert m['odom1'] == re.search(r"\('odometry/gps', '([^']+)'\)", launch).group(1)
    assert re.search(r"\('odometry/filtered', '([^']+)'\)\]", launch) or "'/odometry/filtered_map'" in launch

    # Covariance: the node publishes a full pose covariance in the map frame (absolute, not
    # differential) and a finite, huge altitude variance, so altitude is neither fused nor drops fixes.
    assert m['pose0_config'][:6] == [True] * 6 and m['pose0_differential'] is False
    assert m['odom1_config'][2] is False, 'the vizloc altitude (variance 1e6 m^2) must not be fused'
    assert navsat['zero_altitude'] is True
    assert 'unknown_altitude_m' in node and math.isfinite(node['unknown_altitude_m'])


def test_no_fix_deletes_markers_and_paths_are_per_localizer() -> None:
    from visualization_msgs.msg import Marker

    from vizloc_ros.conversions import ns_to_stamp
    from vizloc_ros.markers import PATH_PUBLISH_PERIOD_S, LocalizerPaths, delete_markers

    deleted = delete_markers('scene', ns_to_stamp(5), 'map')
    assert {(m.ns, m.id, m.action) for m in deleted.markers} == {('scene', i, Marker.DELETE) for i in (0, 1, 2)}
    paths = LocalizerPaths('map', 3)
    pose = PoseWithCovarianceStamped()
    pose.header.frame_id = 'map'
    assert paths.add('a', pose, now_s=0.0) is not None  # first pose of 'a': due
    assert paths.add('b', pose, now_s=0.0) is not None  # 'b' has its own path and period
    assert paths.add('a', pose, now_s=0.1) is None
    msg = paths.add('a', pose, now_s=PATH_PUBLISH_PERIOD_S + 0.01)
    assert msg is not None and len(msg.poses) == 3
    assert len(paths.add('b', pose, now_s=10.0).poses) == 2
