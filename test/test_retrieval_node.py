"""The retrieval localizer end to end: tiny training on a small synthetic campus -> bundle -> database
descriptors + FAISS index -> the database grows with ``vizloc-db add --bundle`` (no retraining) -> the
plugin in a running ``vizloc_node`` subprocess publishes a 6-DoF pose + fix for reference views (PnP from
the references' depth) and a flagged wide-covariance fallback fix for a frame without features."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('torch')

from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from sensor_msgs.msg import NavSatFix, NavSatStatus  # noqa: E402

from test_node_support import NodeProcess, RosClient, domain_id_for  # noqa: E402
from vizloc_plugins.refdb import ReferenceDatabase, read_manifest  # noqa: E402
from vizloc_ros.conversions import camera_info_from_intrinsics, image_msg_from_rgb, stamp_to_ns  # noqa: E402
from vizloc_ros.types import CameraIntrinsics  # noqa: E402

DOMAIN_ID = domain_id_for(__name__)


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> tuple[Path, Path]:
    from vizloc_training.retrieval.train import train
    from vizloc_training.synth import campus
    from vizloc_training.train.config import TrainArgs

    world = campus.generate(tmp_path_factory.mktemp('campus') / 'w', seed=2, frames=70, size=(320, 240),
                            write_bag=False)
    bundle = train(TrainArgs(type='retrieval', data=world, out=tmp_path_factory.mktemp('b') / 'retrieval',
                             preset='tiny', seed=0))
    return world, bundle


def test_trainer_indexes_the_database_and_reports_metrics(trained) -> None:
    from vizloc_ros.bundle import load_bundle
    from vizloc_training.train.evaluation_file import read_evaluations

    world, bundle_dir = trained
    bundle = load_bundle(bundle_dir, expected_type='retrieval')
    assert bundle.outputs == ('descriptor',) and bundle.metadata['descriptor_dim'] == 32
    evaluation = read_evaluations(bundle_dir)['test']  # OUT.eval/test.yaml, beside the unchanged bundle
    for key in ('recall_at_1_pct', 'recall_at_10_pct', 'pose_median_translation_m', 'position_within_5m_pct'):
        assert key in evaluation, sorted(evaluation)
    assert 'onnx_parity_max_abs_diff' in bundle.metrics, sorted(bundle.metrics)
    db = ReferenceDatabase(world / 'refdb', verify=True)
    (model,) = db.manifest.indexes
    assert db.manifest.indexes[model]['count'] == 70 and model.startswith('retrieval-')


def test_evaluate_cli_takes_localizer_options_and_refuses_unknown_ones(trained, capsys) -> None:
    from vizloc_training.retrieval.evaluate import main

    world, bundle = trained
    argv = ['--bundle', str(bundle), '--data', str(world), '--max-queries', '4']
    assert main(argv + ['--option', 'verify_k=1', '--option', 'top_k=3']) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics['queries'] == 4 and 0.0 <= metrics['recall_at_1_pct'] <= 100.0
    from vizloc_plugins.retrieval import FAILURES

    no_pose = {k[len('no_pose_'):-len('_pct')]: v for k, v in metrics.items() if k.startswith('no_pose_')}
    assert set(no_pose) <= set(FAILURES), no_pose  # counted by stable kind, never by free text
    assert sum(no_pose.values()) == pytest.approx(100.0 - metrics['pnp_pct'])
    with pytest.raises(SystemExit):  # argparse's error: an unknown option name
        main(argv + ['--option', 'no_such_option=1'])
    assert 'no_such_option' in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the options dataclass's own check: verify_k <= top_k
        main(argv + ['--option', 'verify_k=5', '--option', 'top_k=3'])
    assert 'verify_k' in capsys.readouterr().err


def test_database_grows_without_retraining(trained, tmp_path) -> None:
    from vizloc_training.retrieval.db_cli import main

    world, bundle = trained
    version = read_manifest(world / 'refdb').version
    poses = tmp_path / 'poses.csv'
    rows = (world / 'poses.csv').read_text().splitlines()
    poses.write_text('\n'.join(rows[:1] + [r for r in rows if r.startswith('val_')][:4]) + '\n')
    geo = tmp_path / 'geo.yaml'
    geo.write_text('enu_origin: [31.262, 34.804, 300.0]\n')
    assert main(['add', str(world / 'refdb'), '--poses', str(poses), '--images', str(world / 'images'), '--geo', str(geo),
                 '--fov', '70', '--bundle', str(bundle)]) == 0
    manifest = read_manifest(world / 'refdb')
    (record,) = manifest.indexes.values()
    assert record['count'] == 74 and manifest.version > version
    assert main(['verify', str(world / 'refdb')]) == 0


def test_retrieval_plugin_in_the_running_node(trained, tmp_path) -> None:
    import yaml

    from vizloc_training.retrieval.data import read_rgb

    world, bundle = trained
    K = np.asarray(yaml.safe_load((world / 'world.yaml').read_text())['camera']['K'], float)
    db = ReferenceDatabase(world / 'refdb', verify=True)
    views = [db[u] for u in ('train_00005', 'train_00030', 'train_00060')]
    client = RosClient(DOMAIN_ID)
    try:
        for topic, msg_type in {'/vizloc/ret/pose': PoseWithCovarianceStamped, '/vizloc/ret/fix': NavSatFix}.items():
            client.record(msg_type, topic)
        client.camera_publishers()
        params = {'localizers': ['ret'], 'ret.type': 'retrieval', 'ret.bundle': str(bundle),
                  'ret.backend': 'onnxruntime', 'ret.database': str(world / 'refdb')}
        camera = CameraIntrinsics(K=K, width=320, height=240)
        truth: dict[int, np.ndarray | None] = {}
        with NodeProcess(DOMAIN_ID, params, log_path=tmp_path / 'node.log') as node:
            assert client.wait_for_state('active') == 'active', node.log()
            assert client.wait_for_image_subscriber(), node.log()
            frames = [(read_rgb(e.image), e.T_map_camera) for e in views]
            frames.append((np.full((240, 320, 3), 127, np.uint8), None))  # no features: fallback
            for rgb, T in frames:
                stamp_ns = time.time_ns()
                truth[stamp_ns] = T
                client.pub_info.publish(camera_info_from_intrinsics(camera, stamp_ns, 'camera'))
                time.sleep(0.05)
                client.pub_image.publish(image_msg_from_rgb(rgb, stamp_ns, 'camera'))
                assert client.wait_for(lambda s=stamp_ns: any(stamp_to_ns(m.header.stamp) == s
                                                              for m in client.messages('/vizloc/ret/fix')), 20.0), \
                    node.log()
            assert node.alive(), node.log()
    finally:
        client.close()
    poses = {stamp_to_ns(m.header.stamp): m for m in client.messages('/vizloc/ret/pose')}
    fixes = {stamp_to_ns(m.header.stamp): m for m in client.messages('/vizloc/ret/fix')}
    for stamp, T in truth.items():
        fix = fixes[stamp]
        assert fix.status.status == NavSatStatus.STATUS_FIX
        assert abs(fix.latitude - 31.262) < 0.002 and abs(fix.longitude - 34.804) < 0.002
        if T is None:  # fallback: the best reference's position, 25 m standard deviation, no pose
            assert stamp not in poses
            assert fix.position_covariance[0] == pytest.approx(625.0)
            continue
        # a reference view: it retrieves itself (identical descriptor), every keypoint matches with
        # exact depth, so PnP recovers the pose to the millimetre-quantised depth (well under 0.2 m)
        p = poses[stamp].pose.pose.position
        assert np.linalg.norm(np.array([p.x, p.y, p.z]) - T[:3, 3]) < 0.2
        assert poses[stamp].header.frame_id == 'map'
        assert np.all(np.linalg.eigvalsh(np.array(poses[stamp].pose.covariance).reshape(6, 6)) > 0)
        assert fix.position_covariance[0] < 1.0
