"""The whole path for the built-in localizers: tiny training -> bundle -> plugin in the running node.

Each built-in type is trained for a few steps on data generated here (tiny presets), exported to a
bundle, and configured in ONE ``vizloc_node`` subprocess started with config/localize.yaml, exactly as a
user would. The test process publishes Image + CameraInfo and checks the message types, stamps,
frames and covariance shapes that come back on ``~/<name>/{room,fix,pose}``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('torch')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from sensor_msgs.msg import NavSatFix, NavSatStatus  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from test_gps_regressor import make_gps_dataset, walks_bundle, walks_dataset  # noqa: E402,F401  (fixtures)
from test_node_support import NodeProcess, RosClient, diagnostics_values, domain_id_for  # noqa: E402
from test_room_classifier import ROOMS, make_rooms_dataset  # noqa: E402
from vizloc_ros.conversions import stamp_to_ns  # noqa: E402
from vizloc_training.gps_regressor.train import train as train_gps  # noqa: E402
from vizloc_training.room_classifier.train import train as train_room  # noqa: E402
from vizloc_training.train.config import TrainArgs  # noqa: E402

DOMAIN_ID = domain_id_for(__name__)


@pytest.fixture(scope='module')
def bundles(tmp_path_factory) -> dict[str, Path]:
    data = tmp_path_factory.mktemp('data')
    out = tmp_path_factory.mktemp('bundles')
    rooms = make_rooms_dataset(data / 'rooms')
    gps = make_gps_dataset(data / 'gps')
    return {
        'room': train_room(TrainArgs(type='room_classifier', data=rooms, out=out / 'room', preset='tiny', seed=0)),
        'gps': train_gps(TrainArgs(type='gps_regressor', data=gps, out=out / 'gps', preset='tiny', epochs=3, seed=0)),
    }


@pytest.fixture(scope='module')
def client():
    c = RosClient(DOMAIN_ID)
    yield c
    c.close()


def _frame(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)


def test_trained_bundles_publish_from_the_running_node(bundles, client, tmp_path):
    params = {
        'localizers': ['room', 'gps'],
        'room.type': 'room_classifier', 'room.bundle': str(bundles['room']), 'room.backend': 'onnxruntime',
        'room.max_rate_hz': 0.0,
        'gps.type': 'gps_regressor', 'gps.bundle': str(bundles['gps']), 'gps.backend': 'onnxruntime',
        'diagnostics_period_s': 0.2,
    }
    topics = {'/vizloc/room/room': String, '/vizloc/room/pose': PoseWithCovarianceStamped,
              '/vizloc/gps/fix': NavSatFix}
    for topic, msg_type in topics.items():
        client.record(msg_type, topic)
    client.record(DiagnosticArray, '/diagnostics')
    client.camera_publishers()
    log = tmp_path / 'node.log'
    with NodeProcess(DOMAIN_ID, params, log_path=log) as node:
        assert client.wait_for_state('active') == 'active', node.log()
        assert client.wait_for_image_subscriber(), node.log()
        stamps = client.publish_stream(20, rate_hz=10.0, make=_frame)
        assert client.wait_for(lambda: len(client.messages('/vizloc/gps/fix')) >= 10
                               and len(client.messages('/vizloc/room/room')) >= 10, 20.0), node.log()
        time.sleep(0.3)
        assert node.alive(), node.log()

    published = set(stamps)
    rooms = client.messages('/vizloc/room/room')
    assert {r.data for r in rooms} <= set(ROOMS)
    # The tiny room dataset ships a room map (rooms.yaml), so the classifier also gives a coarse pose.
    poses = client.messages('/vizloc/room/pose')
    assert poses, 'room classifier with a room map publishes a coarse pose'
    for pose in poses:
        assert stamp_to_ns(pose.header.stamp) in published
        assert pose.header.frame_id == 'map'
        cov = np.array(pose.pose.covariance).reshape(6, 6)
        assert np.all(np.linalg.eigvalsh(cov) > 0)
    fixes = client.messages('/vizloc/gps/fix')
    for fix in fixes:
        assert stamp_to_ns(fix.header.stamp) in published
        assert fix.header.frame_id == 'camera'
        assert fix.status.status == NavSatStatus.STATUS_FIX
        assert fix.position_covariance_type in (NavSatFix.COVARIANCE_TYPE_KNOWN, NavSatFix.COVARIANCE_TYPE_APPROXIMATED)
        cov = np.array(fix.position_covariance).reshape(3, 3)
        assert np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
        assert math.isfinite(fix.latitude) and math.isfinite(fix.longitude)
    for name in ('room', 'gps'):
        diag = diagnostics_values(client.messages('/diagnostics'), f'localizer {name}')
        assert diag.get('backend', '').startswith('onnxruntime'), diag


def test_gps_bundle_with_a_keyframe_map_places_a_training_view_in_the_running_node(walks_dataset, walks_bundle,
                                                                                  client, tmp_path):
    """A gps_regressor bundle with its keyframe map (the small campus's walks) in the node: a training view
    is placed by the map (within place_radius_m of its own position, checked against gt.csv), a noise
    frame by the network (tracking off, so it is not held at the view's place), both published as NavSatFix."""
    from test_gps_regressor import read_image
    from vizloc_plugins.gps_regressor_contract import GPSKeyframes
    from vizloc_training.datasets.gps import read_gps_dataset
    from vizloc_training.metrics.geo import haversine_m

    record = read_gps_dataset(walks_dataset).split('train')[5]
    view = read_image(walks_dataset, record.image.name)
    noise = np.random.default_rng(1).integers(0, 256, view.shape, dtype=np.uint8)
    params = {'localizers': ['gps'], 'gps.type': 'gps_regressor', 'gps.bundle': str(walks_bundle),
              'gps.backend': 'onnxruntime', 'gps.variance_scale': 1.0e6,  # a network prior that gates nothing
              'gps.track_speed_mps': 0.0}  # frames on their own: a noise frame is not held at the view's place
    client.record(NavSatFix, '/vizloc/gps/fix')
    client.camera_publishers()
    client.clear()
    with NodeProcess(DOMAIN_ID, params, log_path=tmp_path / 'node.log') as node:
        assert client.wait_for_state('active') == 'active', node.log()
        assert client.wait_for_image_subscriber(), node.log()
        stamps = client.publish_stream(6, rate_hz=2.0, make=lambda i: view if i % 2 == 0 else noise)
        assert client.wait_for(lambda: len(client.messages('/vizloc/gps/fix')) >= 4, 30.0), node.log()
        assert node.alive(), node.log()
    fixes = {stamp_to_ns(f.header.stamp): f for f in client.messages('/vizloc/gps/fix')}
    of_view = [fixes[s] for s in stamps[0::2] if s in fixes]
    of_noise = [fixes[s] for s in stamps[1::2] if s in fixes]
    assert of_view and of_noise, (len(of_view), len(of_noise))
    for fix in of_view:
        assert haversine_m(fix.latitude, fix.longitude, record.lat_deg, record.lon_deg) <= GPSKeyframes().place_radius_m
    for fix in of_view + of_noise:
        cov = np.array(fix.position_covariance).reshape(3, 3)
        assert fix.status.status == NavSatStatus.STATUS_FIX and np.all(np.linalg.eigvalsh(cov) > 0)
    # the noise frames got the network's answer, not the view's place
    assert all(abs(n.latitude - of_view[0].latitude) + abs(n.longitude - of_view[0].longitude) > 0.0 for n in of_noise)


def test_scene_coordinate_bundle_publishes_pose_and_fix_and_no_fix(client, tmp_path):
    """A scene mapped from 12 views of a textured ground plane; the node gets the views with their
    CameraInfo and must publish the 6-DoF pose (map frame) and the geo fix, and NO_FIX for a blank frame."""
    import torch

    from test_scene_coordinates import FIT_CONFIG, _bundle, _planar_samples
    from vizloc_ros.conversions import camera_info_from_intrinsics, image_msg_from_rgb
    from vizloc_ros.types import CameraIntrinsics
    from vizloc_training.scene_coordinates.data import prepare_split
    from vizloc_training.scene_coordinates.train import fit

    torch.manual_seed(0)
    samples = _planar_samples(12, seed=0)
    height, width = samples[0].rgb_HW3.shape[:2]
    scene = fit(prepare_split(samples, width, height), FIT_CONFIG, seed=0)
    bundle = _bundle(tmp_path, scene)
    params = {'localizers': ['aerial'], 'aerial.type': 'scene_coordinates', 'aerial.bundle': str(bundle),
              'aerial.backend': 'onnxruntime', 'aerial.hypotheses': 64}
    for topic, msg_type in {'/vizloc/aerial/pose': PoseWithCovarianceStamped, '/vizloc/aerial/fix': NavSatFix}.items():
        client.record(msg_type, topic)
    client.camera_publishers()
    client.clear()
    with NodeProcess(DOMAIN_ID, params, log_path=tmp_path / 'node.log') as node:
        assert client.wait_for_state('active') == 'active', node.log()
        assert client.wait_for_image_subscriber(), node.log()
        truth = {}
        frames = [(s.rgb_HW3, s.K, s.T_world_camera) for s in samples[:4]]
        frames.append((np.full_like(samples[0].rgb_HW3, 127), samples[0].K, None))  # no geometry: NO_FIX
        for rgb, K, T_world_camera in frames:
            stamp_ns = time.time_ns()
            truth[stamp_ns] = T_world_camera
            camera = CameraIntrinsics(K=K, width=width, height=height)
            client.pub_info.publish(camera_info_from_intrinsics(camera, stamp_ns, 'camera'))
            time.sleep(0.05)
            client.pub_image.publish(image_msg_from_rgb(rgb, stamp_ns, 'camera'))
            assert client.wait_for(lambda s=stamp_ns: any(stamp_to_ns(m.header.stamp) == s
                                                          for m in client.messages('/vizloc/aerial/fix')), 10.0), \
                node.log()
        assert node.alive(), node.log()

    poses = {stamp_to_ns(m.header.stamp): m for m in client.messages('/vizloc/aerial/pose')}
    fixes = {stamp_to_ns(m.header.stamp): m for m in client.messages('/vizloc/aerial/fix')}
    located = [s for s, T in truth.items() if T is not None]
    assert set(poses) == set(located), 'a pose for every mapped view, none for the blank frame'
    # Tolerances from the set-up, not from one run: one output cell (8 px) covers ~8 m of ground at
    # 100 m altitude (f = 0.8 W px), and a 150-epoch map regresses coordinates to about one cell. The
    # floating-point kernels differ between CPUs (one AMD EPYC gave 16 m on one frame where this machine
    # gives 7 m), so each frame must be within 4 cells and the median within 2 cells; the camera
    # positions are spread over +-60 m, so a pose from the wrong place cannot pass.
    cell_footprint_m = 8 * 100.0 / samples[0].K[0, 0]
    errors_m = []
    for stamp in located:
        pose = poses[stamp]
        assert pose.header.frame_id == 'map'
        p = pose.pose.pose.position
        errors_m.append(float(np.linalg.norm(np.array([p.x, p.y, p.z]) - truth[stamp][:3, 3])))
        assert errors_m[-1] < 4 * cell_footprint_m, errors_m
        cov = np.array(pose.pose.covariance).reshape(6, 6)
        assert np.all(np.linalg.eigvalsh(cov) > 0)
        assert fixes[stamp].status.status == NavSatStatus.STATUS_FIX
        assert abs(fixes[stamp].latitude - 46.52) < 0.01 and abs(fixes[stamp].longitude - 6.57) < 0.01
    assert float(np.median(errors_m)) < 2 * cell_footprint_m, errors_m
    blank = next(s for s, T in truth.items() if T is None)
    assert fixes[blank].status.status == NavSatStatus.STATUS_NO_FIX


def test_scene_coordinate_bundle_with_a_keyframe_map_poses_new_views_in_the_node(client, tmp_path):
    """A bundle whose network was mapped from 16 views of the plane and which carries their keyframe map;
    the node gets 4 other views (other positions and headings) at the camera's 320x240 and publishes
    poses from the keyframe map: within 1 m, where the network's own cells are ~8 m wide."""
    from test_keyframes import KH, KW, _detailed_texture, build_keyframe_bundle
    from test_scene_coordinates import _planar_samples
    from vizloc_ros.conversions import camera_info_from_intrinsics, image_msg_from_rgb
    from vizloc_ros.types import CameraIntrinsics

    texture = _detailed_texture()
    bundle = build_keyframe_bundle(tmp_path, _planar_samples(16, seed=0, width=KW, height=KH, texture=texture))
    new = _planar_samples(4, seed=5, width=KW, height=KH, texture=texture)
    params = {'localizers': ['aerial'], 'aerial.type': 'scene_coordinates', 'aerial.bundle': str(bundle),
              'aerial.backend': 'onnxruntime'}
    client.record(PoseWithCovarianceStamped, '/vizloc/aerial/pose')
    client.camera_publishers()
    client.clear()
    truth = {}
    with NodeProcess(DOMAIN_ID, params, log_path=tmp_path / 'node.log') as node:
        assert client.wait_for_state('active') == 'active', node.log()
        assert client.wait_for_image_subscriber(), node.log()
        for sample in new:
            stamp_ns = time.time_ns()
            truth[stamp_ns] = sample.T_world_camera
            client.pub_info.publish(camera_info_from_intrinsics(CameraIntrinsics(K=sample.K, width=KW, height=KH),
                                                                stamp_ns, 'camera'))
            time.sleep(0.05)
            client.pub_image.publish(image_msg_from_rgb(sample.rgb_HW3, stamp_ns, 'camera'))
            assert client.wait_for(lambda s=stamp_ns: any(stamp_to_ns(m.header.stamp) == s
                                                          for m in client.messages('/vizloc/aerial/pose')), 15.0), \
                node.log()
        assert node.alive(), node.log()
    poses = {stamp_to_ns(m.header.stamp): m.pose.pose.position for m in client.messages('/vizloc/aerial/pose')}
    for stamp, T in truth.items():
        p = poses[stamp]
        # exact map points and hundreds of SIFT matches: within 2.5 ground pixels (test_keyframes)
        assert np.linalg.norm(np.array([p.x, p.y, p.z]) - T[:3, 3]) < 1.0, (p, T[:3, 3])
