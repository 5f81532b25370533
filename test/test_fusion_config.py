"""config/robot_localization/*.yaml and launch/fusion.launch.py against what the running node publishes.

The launch file needs launch_ros (absent from the pip venv); its topic constants are read from its
source with ``ast``. The EKF's pose input, frames and fix input are checked against messages a
running vizloc node publishes for a localizer of that name.
"""
from __future__ import annotations

import ast
import math
from typing import Any

import numpy as np
import yaml
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import NavSatFix, NavSatStatus

import test_frames
from test_frames import TruthPlugin
from test_node_inprocess import Spinner, make_node
from test_node_support import PARAMS_FILE, REPO, RosClient, domain_id_for
from vizloc_ros.conversions import image_msg_from_rgb
from vizloc_ros.params import NodeParams

DOMAIN_ID = domain_id_for(__name__)
RL = REPO / 'config' / 'robot_localization'
#: robot_localization's 15-element order
AXES = ('x', 'y', 'z', 'roll', 'pitch', 'yaw', 'vx', 'vy', 'vz', 'vroll', 'vpitch', 'vyaw', 'ax', 'ay', 'az')


def _launch_constants() -> dict[str, Any]:
    tree = ast.parse((REPO / 'launch' / 'fusion.launch.py').read_text())
    return {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name) and t.id.isupper()}


def _ekf() -> dict[str, Any]:
    return yaml.safe_load((RL / 'ekf.yaml').read_text())


def test_ekf_and_navsat_settings_match_the_node_defaults() -> None:
    ekf = _ekf()
    defaults = NodeParams()
    for name in ('ekf_filter_node_map', 'ekf_filter_node_odom'):
        p = ekf[name]['ros__parameters']
        assert p['base_link_frame'] == defaults.base_frame and p['map_frame'] == defaults.map_frame
        for key, value in p.items():
            if key.endswith('_config'):
                assert len(value) == 15 and all(isinstance(v, bool) for v in value), key
    m = ekf['ekf_filter_node_map']['ros__parameters']
    assert m['world_frame'] == defaults.map_frame
    on = {a for a, v in zip(AXES, m['pose0_config']) if v}
    assert on == {'x', 'y', 'yaw'} and m['pose0_differential'] is False  # absolute map poses
    assert {a for a, v in zip(AXES, m['odom0_config']) if v} == {'vx', 'vy', 'vyaw'}  # wheel velocities only
    assert m['odom1'] == _launch_constants()['ODOMETRY_GPS_TOPIC']
    nav = yaml.safe_load((RL / 'navsat_transform.yaml').read_text())['navsat_transform']['ros__parameters']
    assert nav['zero_altitude'] is True and nav['use_odometry_yaw'] is True
    c = _launch_constants()
    assert (RL / c['EKF_CONFIG']).is_file() and (RL / c['NAVSAT_CONFIG']).is_file()
    # the localizer the EKF listens to is one the shipped params file defines
    localizers = yaml.safe_load(PARAMS_FILE.read_text())['/**']['ros__parameters']['localizers']
    assert m['pose0'] in {c['VIZLOC_POSE_TOPIC'].format(localizer=n) for n in localizers}


def test_the_node_publishes_what_the_ekf_and_navsat_transform_consume() -> None:
    c = _launch_constants()
    m = _ekf()['ekf_filter_node_map']['ros__parameters']
    name = m['pose0'].split('/')[2]
    client = RosClient(DOMAIN_ID, name='fusion_client')
    client.camera_publishers()
    stamp_ns = 2_000_000_000
    test_frames.TRUTH[stamp_ns] = np.eye(4)
    node = make_node(client, {'localizers': [name], f'{name}.type': 'test_truth', f'{name}.bundle': '""'},
                     plugins=(TruthPlugin(),))
    spinner = Spinner(SingleThreadedExecutor(context=client.context))
    spinner.executor.add_node(node)
    try:
        client.record(PoseWithCovarianceStamped, m['pose0'])
        client.record(NavSatFix, c['VIZLOC_FIX_TOPIC'].format(localizer=name))
        assert node.autostart()
        assert client.wait_for_image_subscriber()
        client.pub_image.publish(image_msg_from_rgb(np.zeros((12, 16, 3), np.uint8), stamp_ns, 'camera'))
        assert client.wait_for(lambda: client.messages(m['pose0'])
                               and client.messages(c['VIZLOC_FIX_TOPIC'].format(localizer=name)), 5.0)
    finally:
        spinner.close()
        node.destroy_node()
        client.close()
    pose = client.messages(m['pose0'])[0]
    assert pose.header.frame_id == m['world_frame']
    cov = np.array(pose.pose.covariance).reshape(6, 6)
    for i, axis in enumerate(AXES[:6]):  # the EKF takes the message covariance of every axis it fuses
        if m['pose0_config'][i]:
            assert cov[i, i] > 0, axis
    fix = client.messages(c['VIZLOC_FIX_TOPIC'].format(localizer=name))[0]
    # navsat_transform drops NaN altitudes and NO_FIX: the fix must be finite and a fix
    assert fix.status.status == NavSatStatus.STATUS_FIX
    assert all(math.isfinite(v) for v in (fix.latitude, fix.longitude, fix.altitude))
    assert fix.position_covariance_type != NavSatFix.COVARIANCE_TYPE_UNKNOWN
