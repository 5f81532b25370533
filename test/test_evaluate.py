"""vizloc-eval offline on a small generated rosbag2 bag: its numbers against errors computed here.

The localizer under test is a "noisy oracle" plugin (registered in-process, as the node does with
``extra_plugins``): it answers each frame with the bag's ground truth moved by a known, seeded
offset and rotated by a known angle, gives a known covariance, misnames every 4th room, answers
'no_fix' on one frame and raises on another. The test computes the expected errors from those
offsets and the bag's ground truth alone and compares report.json with them.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import transforms3d
import yaml

from vizloc_ros.bags import BagWriter
from vizloc_ros.eval_bag import EVAL_BAG_NAME, EvalSample, read_evaluation_bag, write_evaluation_bag
from vizloc_ros.evaluation.cli import build_parser, evaluate, main
from vizloc_ros.evaluation.run import EvalError, run_offline
from vizloc_ros.geodesy import LocalENU
from vizloc_ros.hookspecs import hookimpl
from vizloc_ros.localizer import LocalizerType
from vizloc_ros.types import CameraIntrinsics, Frame, GeoEstimate, LocalizationResult, PoseEstimate, ResultStatus, RoomEstimate

pytestmark = pytest.mark.timeout(120)

N = 16
T0_NS, DT_NS = 1_700_000_000_000_000_000, 100_000_000
NO_FIX_FRAME, FAIL_FRAME = 5, 9
ENU = LocalENU(46.52, 6.57, 400.0)
ROOMS = ('lab', 'hall')
rng = np.random.default_rng(7)
OFFSETS_M = rng.normal(0.0, 4.0, size=(N, 3))          # position error of frame k (map frame)
ANGLES_RAD = rng.uniform(0.01, 0.3, size=N)             # rotation error of frame k (about map z)
SIGMAS_M = rng.uniform(1.0, 6.0, size=N)                # predicted position sigma of frame k


def _stamp(k: int) -> int:
    return T0_NS + k * DT_NS


@dataclass(frozen=True)
class NoisyOptions:
    bag: str = field(default='', metadata={'description': 'evaluation bag with the ground truth'})


class NoisyOracle:
    backend_name = 'python'
    requires_camera_info = True

    def __init__(self, config: Any, options: NoisyOptions, context: Any) -> None:
        self.name = config.name
        self.truth = {s.stamp_ns: s for s in read_evaluation_bag(options.bag)}

    def localize(self, frame: Frame) -> LocalizationResult:
        k = (frame.stamp_ns - T0_NS) // DT_NS
        if k == FAIL_FRAME:
            raise RuntimeError('simulated failure')
        if k == NO_FIX_FRAME:
            return LocalizationResult(status=ResultStatus.NO_FIX)
        gt = self.truth[frame.stamp_ns]
        T = gt.T_map_camera.copy()
        T[:3, :3] = transforms3d.axangles.axangle2mat([0, 0, 1], ANGLES_RAD[k]) @ T[:3, :3]
        T[:3, 3] += OFFSETS_M[k]
        cov = np.diag([SIGMAS_M[k] ** 2] * 3 + [0.01] * 3)
        room = gt.room if k % 4 else 'cellar'
        lat, lon, _ = ENU.to_geodetic(*T[:3, 3])
        return LocalizationResult(
            pose=PoseEstimate(T, cov),
            geo=GeoEstimate(float(lat), float(lon), math.nan, np.diag([SIGMAS_M[k] ** 2] * 2 + [100.0])),
            room=RoomEstimate(room, 0.9, {room: 0.9}))

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


class NoisyPlugin:
    __name__ = 'noisy_plugin'

    @hookimpl
    def vizloc_register_localizers(self, registry: Any) -> None:
        registry.register(LocalizerType('test_noisy', NoisyOracle, NoisyOptions, needs_bundle=False))


@pytest.fixture(scope='module')
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from vizloc_training.synth.boxworld import camera_pose

    root = tmp_path_factory.mktemp('evalworld')
    cam = CameraIntrinsics.from_fov(80.0, 32, 24)
    samples = []
    for k in range(N):
        position = (2.0 * k, 5.0 * math.sin(k / 3.0), 1.5)
        T = camera_pose(position, yaw_rad=0.2 * k)
        lat, lon, alt = ENU.to_geodetic(*position)
        samples.append(EvalSample(stamp_ns=_stamp(k), rgb_HW3=np.full((24, 32, 3), 10 * k, np.uint8), camera=cam,
                                  frame_id='camera', fix_lla=(float(lat), float(lon), float(alt)), T_map_camera=T,
                                  room=ROOMS[(k // 5) % 2]))
    bag = write_evaluation_bag(root / EVAL_BAG_NAME, samples)
    params = root / 'params.yaml'
    params.write_text(yaml.safe_dump({'/**': {'ros__parameters': {
        'localizers': ['noisy'], 'noisy': {'type': 'test_noisy', 'bag': str(bag)}}}}))
    return bag, params


def _expected() -> dict[str, float]:
    answered = [k for k in range(N) if k not in (NO_FIX_FRAME, FAIL_FRAME)]
    err = np.linalg.norm(OFFSETS_M[answered], axis=1)
    inside = [np.sum(OFFSETS_M[k, :2] ** 2) / SIGMAS_M[k] ** 2 <= -2 * math.log(0.05) for k in answered]
    rooms_right = [k for k in answered if k % 4]
    return {
        'estimates': len(answered), 'matched': len(answered),
        'median_error_m': float(np.median(err)), 'mean_error_m': float(np.mean(err)),
        'p95_error_m': float(np.percentile(err, 95)),
        'within_5m_pct': 100.0 * float(np.sum(err <= 5.0)) / N, 'within_10m_pct': 100.0 * float(np.sum(err <= 10.0)) / N,
        'median_rotation_deg': float(np.degrees(np.median(ANGLES_RAD[answered]))),
        'coverage_95_pct': 100.0 * float(np.mean(inside)),
        'accuracy_pct': 100.0 * len(rooms_right) / N,
        'rmse_m': float(np.sqrt(np.mean(err ** 2))),
    }


def test_offline_report_matches_independent_errors(world: tuple[Path, Path], tmp_path: Path) -> None:
    bag, params = world
    out = tmp_path / 'out'
    ns = build_parser().parse_args(['--bag', str(bag), '--params', str(params), '--out', str(out), '--no-progress'])
    evaluate(ns, extra_plugins=[NoisyPlugin()])
    report = json.loads((out / 'report.json').read_text())
    assert report['frames'] == N and report['mode'] == 'offline' and report['base_frame'] == 'base_link'
    r = report['localizers']['noisy']
    want = _expected()
    assert r['frames'] == N and r['no_fix'] == 1 and r['errors'] == 1 and r['dropped'] == 0
    assert r['position_source'] == 'pose' and r['type'] == 'test_noisy'
    for key in ('estimates', 'matched'):
        assert r[key] == want[key], key
    for key in ('median_error_m', 'mean_error_m', 'p95_error_m', 'within_5m_pct', 'within_10m_pct',
                'median_rotation_deg', 'coverage_95_pct', 'accuracy_pct'):
        assert r[key] == pytest.approx(want[key], rel=1e-6, abs=1e-6), key
    assert r['ape']['rmse_m'] == pytest.approx(want['rmse_m'], rel=1e-6) and r['ape']['alignment'] == 'none'
    assert r['latency_ms_p50'] >= 0.0
    assert 'plugin_error' in r['last_error']
    # rooms: confusion rows are truth, columns predictions; 'cellar' is never true
    labels = r['room_labels']
    assert sorted(labels) == ['cellar', 'hall', 'lab']
    assert sum(map(sum, r['confusion'])) == want['estimates']
    assert sum(row[labels.index('cellar')] for row in r['confusion']) == sum(1 for k in range(N)
                                                                             if k % 4 == 0 and k not in (NO_FIX_FRAME, FAIL_FRAME))

    for name in ('trajectory', 'error_cdf', 'error_time', 'error_sigma', 'room_confusion'):
        png = out / f'noisy_{name}.png'
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 5000, name
    assert '| noisy | median_error_m |' in (out / 'report.md').read_text()
    tum = (out / 'noisy_estimate.tum').read_text().splitlines()
    assert len(tum) == want['estimates'] and len(tum[0].split()) == 8

    # estimates: a rosbag2 (mcap) that rosbags' AnyReader (evo's reader) opens, with outputs and ground truth
    from rosbags.highlevel import AnyReader

    assert (out / 'estimates' / 'estimates.mcap').is_file()
    with AnyReader([out / 'estimates']) as reader:
        counts: dict[str, int] = {}
        for connection, _, raw in reader.messages():
            counts[connection.topic] = counts.get(connection.topic, 0) + 1
            if connection.topic == '/vizloc/noisy/fix':
                msg = reader.deserialize(raw, connection.msgtype)
                assert math.isfinite(msg.altitude) or msg.status.status == msg.status.STATUS_NO_FIX
    assert counts['/vizloc/noisy/pose'] == want['estimates']
    assert counts['/vizloc/noisy/fix'] == want['estimates'] + 1  # + the NO_FIX message
    assert counts['/ground_truth/pose'] == N


def test_sim3_alignment_and_fix_only_scoring(world: tuple[Path, Path], tmp_path: Path) -> None:
    """evo's Sim(3) alignment can only lower the APE; a fix-only view scores geodesic distances."""
    from vizloc_ros.evaluation.metrics import score_localizer

    bag, params = world
    run = run_offline(bag, params, progress=False, extra_plugins=[NoisyPlugin()])
    plain = score_localizer('noisy', run.estimates['noisy'], run.ground_truth, run.extrinsic, alignment='none')
    aligned = score_localizer('noisy', run.estimates['noisy'], run.ground_truth, run.extrinsic, alignment='sim3')
    assert aligned.ape['rmse_m'] <= plain.ape['rmse_m'] + 1e-9 and aligned.ape['alignment'] == 'sim3'
    for est in run.estimates['noisy']:
        est.T_map_base = None
    fix_only = score_localizer('noisy', run.estimates['noisy'], run.ground_truth, run.extrinsic)
    assert fix_only.position_source == 'fix'
    answered = [k for k in range(N) if k not in (NO_FIX_FRAME, FAIL_FRAME)]
    horizontal = np.linalg.norm(OFFSETS_M[answered, :2], axis=1)  # ENU of a small area ~ map x, y
    assert fix_only.median_error_m == pytest.approx(float(np.median(horizontal)), abs=0.01)


def test_bag_without_the_needed_topics_lists_what_it_has(world: tuple[Path, Path], tmp_path: Path) -> None:
    _, params = world
    bag = tmp_path / 'chatter'
    from rosbags.typesys.stores.ros2_kilted import std_msgs__msg__String as String

    with BagWriter(bag) as writer:
        writer.add_topic('/chatter', 'std_msgs/msg/String')
        writer.write('/chatter', String(data='hi'), 1)
    with pytest.raises(EvalError, match=r'no image topic /camera/image_raw .*/chatter \(std_msgs/msg/String, 1\)'):
        run_offline(bag, params, progress=False)
    # the console script: exit 1 and the same message, nothing written
    proc = subprocess.run([sys.executable, '-m', 'vizloc_ros.evaluation.cli', '--bag', str(bag), '--params', str(params),
                           '--out', str(tmp_path / 'out')], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and '/chatter (std_msgs/msg/String, 1)' in proc.stderr
    assert main(['--bag', str(tmp_path / 'missing'), '--params', str(params), '--out', str(tmp_path / 'o2')]) == 1


def test_live_scores_what_the_running_node_publishes(world: tuple[Path, Path], tmp_path: Path,
                                                      example_plugin_site: Path, example_bundle: Path) -> None:
    """--live: vizloc_node subprocess + vizloc-replay + subscriptions. The example localizer is
    deterministic, so every frame the node answered must score exactly as the offline run of the
    same frame, and offline + dropped frames account for every image."""
    import os

    from example_plugin_support import EXAMPLE_TYPE, example_plugin_module, subprocess_env
    from test_node_support import domain_id_for
    from vizloc_ros.evaluation.live import run_live
    from vizloc_ros.evaluation.metrics import score_run

    bag, _ = world
    params = tmp_path / 'color.yaml'
    params.write_text(yaml.safe_dump({'/**': {'ros__parameters': {
        'localizers': ['color'], 'color': {'type': EXAMPLE_TYPE, 'bundle': str(example_bundle), 'backend': 'onnxruntime'}}}}))
    offline = run_offline(bag, params, progress=False, extra_plugins=[example_plugin_module()])
    env = subprocess_env(example_plugin_site)
    env['ROS_DOMAIN_ID'] = str(domain_id_for(__name__ + 'live'))
    old = os.environ.get('ROS_DOMAIN_ID')
    os.environ['ROS_DOMAIN_ID'] = env['ROS_DOMAIN_ID']  # the recorder (this process) joins the same domain
    try:
        live = run_live(bag, params, rate=1.0, env=env, log_dir=tmp_path)
    finally:
        if old is None:
            os.environ.pop('ROS_DOMAIN_ID')
        else:
            os.environ['ROS_DOMAIN_ID'] = old
    assert live.mode == 'live' and list(live.estimates) == ['color']
    got = {e.stamp_ns: e for e in live.estimates['color']}
    want = {e.stamp_ns: e for e in offline.estimates['color']}
    assert got, (tmp_path / 'vizloc_node.log').read_text()
    assert set(got) <= set(want) and len(got) + live.dropped['color'] == N
    assert len(got) >= N // 2, f'the node answered only {len(got)} of {N} frames at 10 Hz'
    for stamp, est in got.items():
        ref = want[stamp]
        assert est.status == ref.status
        np.testing.assert_allclose(est.T_map_base, ref.T_map_base, atol=1e-9)
        assert est.fix_lla == pytest.approx(ref.fix_lla, abs=1e-9)
        assert est.room == ref.room
        assert 0.0 < est.latency_ms < 5000.0
    report = score_run(live)['color']
    assert report.frames == N and report.dropped == live.dropped['color'] and report.estimates == len(got)
    assert report.latency_ms_p50 > 0.0
