"""rosbag2 I/O (vizloc_ros.bags) and the evaluation-bag contract (vizloc_ros.eval_bag): round trips through both storages, read back by rosbags and by
the independent ``mcap`` reader, atomic writes and clear errors for damaged bags."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import transforms3d
import yaml
from rosbags.rosbag2 import Reader

from vizloc_ros.bags import BagError, BagWriter, TopicQos, bag_info, read_messages, typestore
from vizloc_ros.eval_bag import (
    CAMERA_INFO_TOPIC,
    COMPRESSED_IMAGE_TOPIC,
    EVAL_BAG_NAME,
    FIX_TOPIC,
    IMAGE_TOPIC,
    LEGACY_EVAL_BAG_NAME,
    POSE_TOPIC,
    ROOM_TOPIC,
    EvalSample,
    find_evaluation_bag,
    read_evaluation_bag,
    write_evaluation_bag,
)
from vizloc_ros.types import CameraIntrinsics, InvalidInputError

W, H, N = 64, 48, 5
T0_NS = 1_700_000_000_123_456_789
DT_NS = 100_000_000


def _image(i: int) -> np.ndarray:
    """A smooth, frame-specific RGB image (JPEG keeps it within a few grey levels)."""
    yy, xx = np.mgrid[0:H, 0:W]
    r = (xx * 255 // (W - 1) + 40 * i) % 256
    g = yy * 255 // (H - 1)
    b = np.full_like(xx, 30 * i + 20)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def _samples(n: int = N, *, with_truth: bool = True) -> list[EvalSample]:
    cam = CameraIntrinsics(K=np.array([[50.0, 0, 31.5], [0, 52.0, 23.5], [0, 0, 1]]), width=W, height=H,
                           D=np.array([0.1, -0.05, 0.001, 0.002, 0.0]))
    out = []
    for i in range(n):
        T = np.eye(4)
        T[:3, :3] = transforms3d.euler.euler2mat(0.1 * i, -0.2, 0.3 + 0.05 * i)
        T[:3, 3] = [10.0 + i, -2.5, 1.25 * i]
        out.append(EvalSample(
            stamp_ns=T0_NS + i * DT_NS,
            rgb_HW3=_image(i),
            camera=cam,
            frame_id='cam_optical',
            fix_lla=(46.5 + 1e-5 * i, 6.6 - 2e-5 * i, 400.0 + i) if with_truth else None,
            T_map_camera=T if with_truth else None,
            room=f'room_{i % 2}' if with_truth else None,
        ))
    return out


def _assert_same(written: list[EvalSample], read: list[EvalSample], *, max_abs_mean: float) -> None:
    assert [s.stamp_ns for s in read] == [s.stamp_ns for s in written]
    for a, b in zip(written, read):
        assert b.frame_id == a.frame_id
        assert b.rgb_HW3.shape == (H, W, 3) and b.rgb_HW3.dtype == np.uint8
        assert np.abs(b.rgb_HW3.astype(int) - a.rgb_HW3).mean() <= max_abs_mean
        np.testing.assert_allclose(b.camera.K, a.camera.K)
        np.testing.assert_allclose(b.camera.D, a.camera.D)
        assert b.camera.distortion_model == a.camera.distortion_model
        assert b.room == a.room
        if a.fix_lla is None:
            assert b.fix_lla is None and b.T_map_camera is None
        else:
            np.testing.assert_allclose(b.fix_lla, a.fix_lla, rtol=0, atol=1e-12)
            np.testing.assert_allclose(b.T_map_camera, a.T_map_camera, atol=1e-12)


@pytest.mark.parametrize('storage,compressed', [('sqlite3', False), ('mcap', False), ('mcap', True), ('sqlite3', True)])
def test_evaluation_bag_round_trip(tmp_path: Path, storage: str, compressed: bool) -> None:
    samples = _samples()
    bag = write_evaluation_bag(tmp_path / EVAL_BAG_NAME, samples, storage=storage, compressed=compressed,
                               map_frame='world')
    assert sorted(p.name for p in bag.iterdir()) == sorted(['metadata.yaml', f'{EVAL_BAG_NAME}.{"db3" if storage == "sqlite3" else "mcap"}'])
    assert [p.name for p in tmp_path.iterdir()] == [EVAL_BAG_NAME]  # no temp dirs left behind

    read = list(read_evaluation_bag(bag))
    _assert_same(samples, read, max_abs_mean=3.0 if compressed else 0.0)

    image_topic = COMPRESSED_IMAGE_TOPIC if compressed else IMAGE_TOPIC
    info = bag_info(bag)
    assert info['storage'] == storage
    assert info['message_count'] == 5 * N
    assert {t: v['count'] for t, v in info['topics'].items()} == {
        image_topic: N, CAMERA_INFO_TOPIC: N, FIX_TOPIC: N, POSE_TOPIC: N, ROOM_TOPIC: N}
    assert info['start_ns'] == T0_NS and info['end_ns'] == T0_NS + (N - 1) * DT_NS
    assert info['duration_s'] == pytest.approx((N - 1) * DT_NS / 1e9)

    # Read back directly with rosbags: every message at the image stamp, headers carry it too.
    store = typestore()
    with Reader(bag) as reader:
        assert {c.topic: c.msgtype for c in reader.connections}[image_topic] == (
            'sensor_msgs/msg/CompressedImage' if compressed else 'sensor_msgs/msg/Image')
        seen = 0
        for connection, timestamp, raw in reader.messages():
            msg = store.deserialize_cdr(raw, connection.msgtype)
            assert (timestamp - T0_NS) % DT_NS == 0
            if hasattr(msg, 'header'):
                assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == timestamp
            if connection.topic == POSE_TOPIC:
                assert msg.header.frame_id == 'world'
            if connection.topic == IMAGE_TOPIC:
                assert msg.encoding == 'rgb8' and msg.step == 3 * W
            seen += 1
        assert seen == 5 * N


def test_metadata_is_what_rosbag2_expects(tmp_path: Path) -> None:
    bag = write_evaluation_bag(tmp_path / 'b', _samples(2), storage='mcap')
    meta = yaml.safe_load((bag / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['version'] == 8 and meta['storage_identifier'] == 'mcap'
    assert meta['relative_file_paths'] == ['b.mcap'] and (bag / 'b.mcap').is_file()
    assert meta['message_count'] == 10 == sum(t['message_count'] for t in meta['topics_with_message_count'])
    assert meta['files'][0]['path'] == 'b.mcap'
    for entry in meta['topics_with_message_count']:
        topic = entry['topic_metadata']
        assert topic['serialization_format'] == 'cdr'
        assert topic['type_description_hash'].startswith('RIHS01_')
        # v8: a YAML string of profiles with rmw enum values (KEEP_LAST=1, RELIABLE=1, VOLATILE=2).
        (qos,) = yaml.safe_load(topic['offered_qos_profiles'])
        assert (qos['history'], qos['depth'], qos['reliability'], qos['durability'], qos['liveliness']) == (1, 10, 1, 2, 1)


@pytest.mark.skipif(shutil.which('ros2') is None, reason='ros2 CLI (rosbag2) not installed in this environment')
def test_ros2_bag_info_accepts_bags(tmp_path: Path) -> None:
    for storage in ('sqlite3', 'mcap'):
        bag = write_evaluation_bag(tmp_path / storage, _samples(2), storage=storage)
        result = subprocess.run(['ros2', 'bag', 'info', str(bag)], capture_output=True, text=True, timeout=60)
        if 'invalid choice' in result.stderr:
            pytest.skip('ros2 CLI has no bag verb (rosbag2 not installed)')
        assert result.returncode == 0, result.stderr
        assert 'Messages:' in result.stdout and '10' in result.stdout


def test_mcap_readable_by_mcap_library(tmp_path: Path) -> None:
    from mcap.reader import make_reader

    bag = write_evaluation_bag(tmp_path / 'm', _samples(), storage='mcap', compressed=True)
    with open(bag / 'm.mcap', 'rb') as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert summary is not None
        channels = {c.id: c for c in summary.channels.values()}
        schemas = {s.id: s for s in summary.schemas.values()}
        by_topic = {c.topic: schemas[c.schema_id].name for c in channels.values()}
        assert by_topic == {
            COMPRESSED_IMAGE_TOPIC: 'sensor_msgs/msg/CompressedImage',
            CAMERA_INFO_TOPIC: 'sensor_msgs/msg/CameraInfo',
            FIX_TOPIC: 'sensor_msgs/msg/NavSatFix',
            POSE_TOPIC: 'geometry_msgs/msg/PoseStamped',
            ROOM_TOPIC: 'std_msgs/msg/String',
        }
        assert all(c.message_encoding == 'cdr' for c in channels.values())
        assert all(s.encoding == 'ros2msg' for s in schemas.values())
        counts: dict[str, int] = {}
        for _schema, channel, message in reader.iter_messages():
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            if channel.topic == ROOM_TOPIC:
                assert message.log_time == message.publish_time
                room = typestore().deserialize_cdr(message.data, 'std_msgs/msg/String').data
                assert room == f'room_{(message.log_time - T0_NS) // DT_NS % 2}'
        assert counts == {t: N for t in by_topic}
        assert {channels[k].topic: v for k, v in summary.statistics.channel_message_counts.items()} == counts


def test_partial_ground_truth_declares_only_present_topics(tmp_path: Path) -> None:
    samples = _samples(3, with_truth=False)
    samples[1] = EvalSample(stamp_ns=samples[1].stamp_ns, rgb_HW3=samples[1].rgb_HW3, camera=samples[1].camera,
                            frame_id='cam_optical', room='kitchen')
    bag = write_evaluation_bag(tmp_path / 'p', samples)
    assert set(bag_info(bag)['topics']) == {IMAGE_TOPIC, CAMERA_INFO_TOPIC, ROOM_TOPIC}
    read = list(read_evaluation_bag(bag))
    assert [s.room for s in read] == [None, 'kitchen', None]
    assert all(s.fix_lla is None and s.T_map_camera is None for s in read)


def test_generic_writer_and_reader(tmp_path: Path) -> None:
    store = typestore()
    String = store.types['std_msgs/msg/String']
    with BagWriter(tmp_path / 'g', storage='mcap') as bag:
        bag.add_topic('/a', 'std_msgs/msg/String', qos=TopicQos(reliable=False, depth=3))
        bag.add_topic('/b', 'std_msgs/msg/String', qos=TopicQos(transient_local=True))
        for i in (3, 1, 2):  # written out of order: read back in bag-time order
            bag.write('/a', String(data=f'a{i}'), timestamp_ns=i * 1000)
        bag.write('/b', String(data='b'), timestamp_ns=1500)
        with pytest.raises(BagError, match='was not added'):
            bag.write('/c', String(data='x'), timestamp_ns=1)
    got = list(read_messages(tmp_path / 'g'))
    assert [(t, ts, m.data) for t, _type, ts, m in got] == [
        ('/a', 1000, 'a1'), ('/b', 1500, 'b'), ('/a', 2000, 'a2'), ('/a', 3000, 'a3')]
    assert [m.data for _t, _ty, _ts, m in read_messages(tmp_path / 'g', ['/b'])] == ['b']
    info = bag_info(tmp_path / 'g')
    assert info['topics']['/a']['offered_qos'] == [{'reliability': 'best_effort', 'durability': 'volatile', 'history': 'keep_last', 'depth': 3}]
    assert info['topics']['/b']['offered_qos'][0]['durability'] == 'transient_local'
    with pytest.raises(BagError, match='not in bag'):
        list(read_messages(tmp_path / 'g', ['/nope']))


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def broken():
        yield from _samples(2)
        raise RuntimeError('camera unplugged')

    with pytest.raises(RuntimeError, match='camera unplugged'):
        write_evaluation_bag(tmp_path / 'x', broken(), storage='mcap')
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(InvalidInputError, match='no samples'):
        write_evaluation_bag(tmp_path / 'y', [])
    assert list(tmp_path.iterdir()) == []


def test_existing_bag_is_kept_unless_overwrite(tmp_path: Path) -> None:
    first = write_evaluation_bag(tmp_path / 'e', _samples(2))
    with pytest.raises(BagError, match='exists already'):
        write_evaluation_bag(first, _samples(3))
    assert bag_info(first)['message_count'] == 10
    write_evaluation_bag(first, _samples(3), storage='mcap', overwrite=True)
    assert bag_info(first)['message_count'] == 15 and bag_info(first)['storage'] == 'mcap'
    assert [p.name for p in tmp_path.iterdir()] == ['e']


def test_eval_sample_validation() -> None:
    good = _samples(1)[0]
    with pytest.raises(InvalidInputError, match='camera is 64x48'):
        EvalSample(stamp_ns=0, rgb_HW3=np.zeros((10, 10, 3), np.uint8), camera=good.camera)
    with pytest.raises(InvalidInputError, match='uint8'):
        EvalSample(stamp_ns=0, rgb_HW3=good.rgb_HW3.astype(np.float32), camera=good.camera)
    with pytest.raises(InvalidInputError, match='impossible fix'):
        EvalSample(stamp_ns=0, rgb_HW3=good.rgb_HW3, camera=good.camera, fix_lla=(95.0, 0.0, 0.0))
    with pytest.raises(InvalidInputError, match='4x4'):
        EvalSample(stamp_ns=0, rgb_HW3=good.rgb_HW3, camera=good.camera, T_map_camera=np.eye(3))
    with pytest.raises(InvalidInputError, match='storage'):
        write_evaluation_bag('/nonexistent/never', [good], storage='rosbag1')


# ---- damaged bags --------------------------------------------------------------------------


@pytest.fixture(scope='module')
def good_bags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('good')
    return {s: write_evaluation_bag(root / s, _samples(), storage=s) for s in ('sqlite3', 'mcap')}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _read_all(bag: Path) -> int:
    return sum(1 for _ in read_messages(bag))


def test_truncated_mcap(good_bags: dict[str, Path], tmp_path: Path) -> None:
    bag = _copy(good_bags['mcap'], tmp_path / 't')
    data = bag / 'mcap.mcap'
    os.truncate(data, data.stat().st_size * 2 // 3)
    with pytest.raises(BagError, match=r't: cannot open bag: .*magic'):
        _read_all(bag)
    with pytest.raises(BagError, match=str(bag)):
        list(read_evaluation_bag(bag))


def test_mcap_damaged_inside_chunk_names_message_index(good_bags: dict[str, Path], tmp_path: Path) -> None:
    bag = _copy(good_bags['mcap'], tmp_path / 'd')
    data = bag / 'mcap.mcap'
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 3: len(raw) // 2] = b'\xab' * (len(raw) // 2 - len(raw) // 3)
    data.write_bytes(bytes(raw))
    with pytest.raises(BagError, match=rf'{bag}: .*(message index \d+|cannot open bag)'):
        _read_all(bag)


def test_corrupt_sqlite_database(good_bags: dict[str, Path], tmp_path: Path) -> None:
    bag = _copy(good_bags['sqlite3'], tmp_path / 'c')
    db = bag / 'sqlite3.db3'
    raw = bytearray(db.read_bytes())
    raw[:100] = b'\x00' * 100  # wipe the SQLite header
    db.write_bytes(bytes(raw))
    with pytest.raises(BagError, match=r'c: cannot open bag: .*sqlite3\.db3'):
        _read_all(bag)


def test_corrupt_sqlite_row_names_message_index(good_bags: dict[str, Path], tmp_path: Path) -> None:
    bag = _copy(good_bags['sqlite3'], tmp_path / 'r')
    with sqlite3.connect(bag / 'sqlite3.db3') as con:
        con.execute("UPDATE messages SET data = x'0001' WHERE id = 7")
    con.close()
    with pytest.raises(BagError, match=r'cannot decode message index [5-9] on '):
        _read_all(bag)


def test_missing_and_garbage_metadata(good_bags: dict[str, Path], tmp_path: Path) -> None:
    missing = _copy(good_bags['mcap'], tmp_path / 'missing')
    (missing / 'metadata.yaml').unlink()
    with pytest.raises(BagError, match='metadata.yaml is missing'):
        bag_info(missing)

    garbage = _copy(good_bags['mcap'], tmp_path / 'garbage')
    (garbage / 'metadata.yaml').write_text('rosbag2_bagfile_information: {version: [unclosed\n')
    with pytest.raises(BagError, match=r'garbage: cannot open bag: Could not load YAML'):
        _read_all(garbage)

    wrong = _copy(good_bags['sqlite3'], tmp_path / 'wrong')
    (wrong / 'metadata.yaml').write_text('hello: world\n')
    with pytest.raises(BagError, match=r'wrong: cannot open bag: .*missing'):
        list(read_evaluation_bag(wrong))

    with pytest.raises(BagError, match='no such bag'):
        bag_info(tmp_path / 'does-not-exist')


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_anyreader_opens_the_evaluation_bags_the_project_writes(tmp_path: Path, storage: str) -> None:
    """rosbags' AnyReader (what evo and other tools use) takes '*.bag' for ROS 1 and refused 'eval.bag' dirs."""
    from rosbags.highlevel import AnyReader

    world = tmp_path / 'world'
    bag = write_evaluation_bag(world / EVAL_BAG_NAME, _samples(), storage=storage)
    assert find_evaluation_bag(world) == bag
    with AnyReader([bag]) as reader:
        topics = {c.topic for c in reader.connections}
        assert {IMAGE_TOPIC, FIX_TOPIC, POSE_TOPIC} <= topics
        fixes = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                 if c.topic == FIX_TOPIC]
    assert len(fixes) == sum(s.fix_lla is not None for s in _samples())
    # datasets of earlier versions (DIR/eval.bag) are still found and read by the project's own reader
    legacy = tmp_path / 'legacy'
    write_evaluation_bag(legacy / LEGACY_EVAL_BAG_NAME, _samples(), storage=storage)
    assert find_evaluation_bag(legacy) == legacy / LEGACY_EVAL_BAG_NAME
    assert len(list(read_evaluation_bag(find_evaluation_bag(legacy)))) == N
    assert find_evaluation_bag(tmp_path / 'nothing') is None
