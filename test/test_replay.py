"""vizloc-replay against real rclpy subscribers: the replayer runs as a separate process (the
console script) and this test process subscribes, checking count, order, stamps, payloads,
--remap, --clock, recorded QoS, --loop with SIGINT and --start-offset."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, NavSatFix
from std_msgs.msg import String

from vizloc_ros.bags import BagWriter, TopicQos, typestore
from vizloc_ros.eval_bag import EvalSample, write_evaluation_bag
from vizloc_ros.replay import ReplayError, ReplayOptions, _qos_profile, main, replay
from vizloc_ros.types import CameraIntrinsics, InvalidInputError

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]
DOMAIN_ID = 100 + os.getpid() % 100
W, H, N = 64, 48, 5
T0_NS = 1_650_000_000_000_000_000
DT_NS = 100_000_000


def _env() -> dict[str, str]:
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), PYTHONUNBUFFERED='1')
    profile = REPO / 'config' / 'fastdds_shm.xml'
    if profile.is_file():
        env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(profile)
    else:
        env.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
    return env


def _replay_cmd(*args: str) -> list[str]:
    script = Path(sys.executable).with_name('vizloc-replay')
    base = [str(script)] if script.is_file() else [sys.executable, '-m', 'vizloc_ros.replay']
    return [*base, *args]


@pytest.fixture(scope='module')
def eval_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(3)
    cam = CameraIntrinsics.from_fov(70.0, W, H)
    samples = [
        EvalSample(stamp_ns=T0_NS + i * DT_NS, rgb_HW3=rng.integers(0, 256, (H, W, 3), dtype=np.uint8), camera=cam,
                   fix_lla=(47.0 + i * 1e-4, 8.5, 420.0), room=f'room_{i % 2}')
        for i in range(N)
    ]
    path = write_evaluation_bag(tmp_path_factory.mktemp('replay') / 'eval.bag', samples, storage='mcap')
    return path


@pytest.fixture(scope='module')
def ros() -> Iterator[tuple[Node, SingleThreadedExecutor]]:
    context = Context()
    rclpy.init(args=[], context=context, domain_id=DOMAIN_ID)
    node = Node('replay_test_listener', context=context, start_parameter_services=False)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield node, executor
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown(context=context)


class Inbox:
    """Subscriptions created for one test; destroyed at the end so tests do not interfere."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.msgs: dict[str, list[tuple[float, Any]]] = {}
        self._subs: list[Any] = []

    def listen(self, msg_type: type, topic: str, qos: QoSProfile | int = 50) -> list[tuple[float, Any]]:
        box = self.msgs.setdefault(topic, [])
        # Each entry: (publisher-side source timestamp in s, message) - immune to a busy listener.
        self._subs.append(self.node.create_subscription(
            msg_type, topic, lambda m, info: box.append((info['source_timestamp'] / 1e9, m)), qos))
        return box

    def close(self) -> None:
        for sub in self._subs:
            self.node.destroy_subscription(sub)


@pytest.fixture
def inbox(ros: tuple[Node, SingleThreadedExecutor]) -> Iterator[Inbox]:
    box = Inbox(ros[0])
    yield box
    box.close()


def _spin_until(executor: SingleThreadedExecutor, done: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f'condition not met within {timeout_s} s')
        executor.spin_once(timeout_sec=0.02)


def _run_replay(executor: SingleThreadedExecutor, args: list[str], timeout_s: float = 30.0,
                while_running: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """Run vizloc-replay as a subprocess while spinning ``executor``; ``while_running`` is called each spin."""
    proc = subprocess.Popen(_replay_cmd(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finished() -> bool:
        if while_running is not None:
            while_running()
        return proc.poll() is not None

    try:
        _spin_until(executor, finished, timeout_s)
        for _ in range(10):  # deliveries already on the wire
            executor.spin_once(timeout_sec=0.02)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _stamp_ns(msg: Any) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def test_replay_count_order_stamps_payload_and_remap(ros, inbox: Inbox, eval_bag: Path) -> None:
    node, executor = ros
    images = inbox.listen(Image, '/replayed/image')
    original = inbox.listen(Image, '/camera/image_raw')
    fixes = inbox.listen(NavSatFix, '/ground_truth/fix')
    rooms = inbox.listen(String, '/ground_truth/room')
    result = _run_replay(executor, [
        str(eval_bag), '--rate', '2', '--wait-for-subscribers', '20',
        '--topics', '/camera/image_raw', '/ground_truth/fix', '/ground_truth/room',
        '--remap', '/camera/image_raw:=/replayed/image',
    ])
    assert result.returncode == 0, result.stderr
    assert 'Found remap rule' not in result.stderr  # argv is not parsed as ROS arguments

    expected = [T0_NS + i * DT_NS for i in range(N)]
    assert [_stamp_ns(m) for _t, m in images] == expected
    assert [_stamp_ns(m) for _t, m in fixes] == expected
    assert [m.data for _t, m in rooms] == [f'room_{i % 2}' for i in range(N)]
    assert original == []
    assert [m.latitude for _t, m in fixes] == pytest.approx([47.0 + i * 1e-4 for i in range(N)], abs=1e-12)
    rng = np.random.default_rng(3)
    for _t, msg in images:
        assert (msg.width, msg.height, msg.encoding) == (W, H, 'rgb8')
        assert np.array_equal(np.asarray(msg.data, dtype=np.uint8).reshape(H, W, 3),
                              rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    # Recorded timing at --rate 2: the 0.4 s of bag time is published over ~0.2 s, never less.
    since_first = [t - images[0][0] for t, _m in images]
    assert all(t >= k * 0.05 - 0.005 for k, t in enumerate(since_first)), since_first
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith('vizloc-replay: 15 messages on 3 topics, 0.400 s of bag time'), line
    assert float(line.split('effective rate ')[1].split('x')[0]) <= 2.2


def test_replay_clock_and_recorded_qos(ros, inbox: Inbox, tmp_path: Path) -> None:
    node, executor = ros
    String_ = typestore().types['std_msgs/msg/String']
    stamps = [T0_NS + k * 50_000_000 for k in range(4)]
    with BagWriter(tmp_path / 'chatter', storage='sqlite3') as bag:
        bag.add_topic('/chatter', 'std_msgs/msg/String', qos=TopicQos(reliable=False))
        for k, ts in enumerate(stamps):
            bag.write('/chatter', String_(data=f'msg{k}'), ts)
    clocks = inbox.listen(Clock, '/clock')
    chatter = inbox.listen(String, '/chatter', QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT))

    publisher_qos = []

    def record_publisher_qos() -> None:
        if not publisher_qos:
            publisher_qos.extend(i.qos_profile for i in node.get_publishers_info_by_topic('/chatter'))

    result = _run_replay(executor, [str(tmp_path / 'chatter'), '--clock', '--clock-hz', '100',
                                    '--wait-for-subscribers', '20'], while_running=record_publisher_qos)
    assert result.returncode == 0, result.stderr
    assert [m.data for _t, m in chatter] == ['msg0', 'msg1', 'msg2', 'msg3']
    assert publisher_qos and all(q.reliability == ReliabilityPolicy.BEST_EFFORT for q in publisher_qos)

    clock_ns = [m.clock.sec * 1_000_000_000 + m.clock.nanosec for _t, m in clocks]
    assert len(clock_ns) >= len(stamps)
    assert clock_ns == sorted(clock_ns)
    assert stamps[0] <= clock_ns[0] and clock_ns[-1] == stamps[-1]
    assert set(stamps) <= set(clock_ns)  # /clock reaches each message's time before the message


def test_replay_loop_until_sigint(ros, inbox: Inbox, eval_bag: Path) -> None:
    _node, executor = ros
    rooms = inbox.listen(String, '/ground_truth/room')
    proc = subprocess.Popen(_replay_cmd(str(eval_bag), '--loop', '--rate', '5', '--topics', '/ground_truth/room',
                                        '--wait-for-subscribers', '20'),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _spin_until(executor, lambda: len(rooms) >= 2 * N + 1 or proc.poll() is not None, 30)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert [m.data for _t, m in rooms[: 2 * N]] == [f'room_{i % 2}' for i in range(N)] * 2
    assert 'interrupted' in out and int(out.split(' loop(s)')[0].rsplit(' ', 1)[1]) >= 2


def test_replay_function_start_offset_in_process(ros, inbox: Inbox, eval_bag: Path) -> None:
    _node, executor = ros
    fixes = inbox.listen(NavSatFix, '/offset/fix')
    results: list[Any] = []
    options = ReplayOptions(topics=('/ground_truth/fix',), remaps=(('/ground_truth/fix', '/offset/fix'),),
                            start_offset_s=0.25, rate=4.0, wait_for_subscribers_s=20.0, node_name='offset_replayer',
                            domain_id=DOMAIN_ID)
    worker = threading.Thread(target=lambda: results.append(replay(eval_bag, options)))
    worker.start()
    try:
        _spin_until(executor, lambda: not worker.is_alive(), 30)
    finally:
        worker.join(timeout=30)
    for _ in range(10):
        executor.spin_once(timeout_sec=0.02)
    (summary,) = results
    assert summary.messages == 2 and summary.per_topic == {'/offset/fix': 2} and summary.loops == 1
    assert summary.bag_duration_s == pytest.approx(0.1)
    assert [_stamp_ns(m) for _t, m in fixes] == [T0_NS + 3 * DT_NS, T0_NS + 4 * DT_NS]


def test_qos_adaptation_follows_ros2_bag_play() -> None:
    def qos(rel: QosReliability, dur: QosDurability, depth: int = 1) -> Qos:
        z = QosTime(0, 0)
        return Qos(QosHistory.KEEP_LAST, depth, rel, dur, z, z, QosLiveliness.AUTOMATIC, z, False)

    from rclpy.qos import DurabilityPolicy

    p = _qos_profile([qos(QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, 50)])
    assert (p.reliability, p.durability, p.depth) == (ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL, 50)
    p = _qos_profile([qos(QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL),
                      qos(QosReliability.BEST_EFFORT, QosDurability.VOLATILE)])
    assert (p.reliability, p.durability, p.depth) == (ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE, 10)
    p = _qos_profile([])
    assert (p.reliability, p.durability) == (ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE)


def test_cli_errors(tmp_path: Path, eval_bag: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the handlers main() found are back afterwards (a function, or SIG_IGN in a background job)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    assert main([str(tmp_path / 'missing.bag')]) == 1
    assert 'missing.bag: no such bag' in capsys.readouterr().err
    assert main([str(eval_bag), '--remap', '/not/in/bag:=/x']) == 1
    assert 'remap sources' in capsys.readouterr().err
    assert main([str(eval_bag), '--rate', '0']) == 2
    assert 'rate must be > 0' in capsys.readouterr().err
    assert {sig: signal.getsignal(sig) for sig in before} == before
    with pytest.raises(ReplayError, match='not in the bag'):
        replay(eval_bag, ReplayOptions(topics=('/nope',)))
    with pytest.raises(InvalidInputError, match='absolute'):
        ReplayOptions(remaps=(('camera', '/x'),))
    with pytest.raises(SystemExit):
        main([str(eval_bag), '--remap', 'no-separator'])
    assert shutil.which('vizloc-replay') or Path(sys.executable).with_name('vizloc-replay').is_file()
