"""``vizloc-eval --live``: score what the running node publishes, so drops, latency and QoS show up.

The node runs as a subprocess (``vizloc_node --ros-args --params-file PARAMS``, image and
camera_info remapped to the bag's topics), the bag is replayed at its recorded timing
(``ros2 bag play`` where rosbag2 is installed, else ``vizloc-replay``), and a client node in this
process records, through real subscriptions, the image topic (arrival time per stamp), every
``/vizloc/<name>/{fix,pose}`` and ``/vizloc/markers`` (the room label with its stamp:
``std_msgs/String`` has none) and ``/vizloc/timing`` (the node runs with ``publish_timing``). Each
output becomes an :class:`~.run.Estimate`: latency = the node's own timestamps, image callback ->
outputs published (queueing + conversion + model + publishing; transport is not in it),
``dropped`` = frames the localizer never answered. Node parameters (extrinsic, map frame) are read with the node's own
parameter code from the same params file.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..bags import bag_info
from ..conversions import matrix_from_pose, stamp_to_ns
from ..eval_bag import CAMERA_INFO_TOPIC, IMAGE_TOPIC
from ..frames import CameraExtrinsic
from .run import EvalError, EvalRun, Estimate, check_bag_topics, read_ground_truth

__all__ = ['run_live', 'replay_command', 'node_command']

logger = logging.getLogger(__name__)

NODE_NAME = 'vizloc'
OUTPUT_RE = re.compile(rf'^/{NODE_NAME}/(\w+)/(fix|pose)$')


def node_command() -> list[str]:
    exe = shutil.which('vizloc_node') or str(Path(sys.executable).parent / 'vizloc_node')
    return [exe] if Path(exe).exists() else [sys.executable, '-m', 'vizloc_ros.node']


def replay_command(bag: Path, topics: Sequence[str], rate: float) -> list[str]:
    """``ros2 bag play`` where rosbag2 is installed, else ``vizloc-replay`` (same options)."""
    ros2 = shutil.which('ros2')
    if ros2 and subprocess.run([ros2, 'bag', 'play', '--help'], capture_output=True, timeout=30).returncode == 0:
        return [ros2, 'bag', 'play', str(bag), '--rate', str(rate), '--topics', *topics]
    exe = shutil.which('vizloc-replay') or str(Path(sys.executable).parent / 'vizloc-replay')
    cmd = [exe] if Path(exe).exists() else [sys.executable, '-m', 'vizloc_ros.replay']
    return cmd + [str(bag), '--rate', str(rate), '--topics', *topics, '--wait-for-subscribers', '30']


def _node_settings(params_file: Path, overrides: Sequence[str]) -> tuple[CameraExtrinsic, str, str, dict[str, str]]:
    """(extrinsic, base_frame, map_frame, {localizer: type}) as the node reads them (its own parameter code,
    unconfigured, own context)."""
    import rclpy
    from rclpy.context import Context

    from .. import params as vparams
    from ..localizer import ConfigError
    from ..node import VizlocNode

    context = Context()
    rclpy.init(context=context, args=[])
    cli = ['--ros-args', '--params-file', str(params_file)] + [a for o in overrides for a in ('-p', o)]
    node = VizlocNode('vizloc_eval_params', context=context, cli_args=cli, start_parameter_services=False)
    try:
        p = vparams.read_node_params(node)
        given = node.parameter_overrides  # the parameters the params file and the overrides set, by name
        types = {name: str(given[f'{name}.type']) for name in p.localizers if f'{name}.type' in given}
        return CameraExtrinsic(p.T_base_camera_xyz, p.T_base_camera_rpy), p.base_frame, p.map_frame, types
    except ConfigError as exc:
        raise EvalError(f'{params_file}: {exc}') from exc
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


class _Recorder:
    """Client node: subscribes to the image and, as they appear, to the node's outputs."""

    def __init__(self, image_topic: str, compressed: bool) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        self.context = Context()
        rclpy.init(context=self.context, args=[])
        self.node = rclpy.create_node('vizloc_eval_recorder', context=self.context)
        self.qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.lock = threading.Lock()
        self.image_arrival_ns: dict[int, int] = {}
        self.outputs: list[tuple[str, str, Any, int]] = []  # (localizer, kind, msg, arrival ns)
        self._subs: dict[str, Any] = {}
        self.node.create_subscription(CompressedImage if compressed else Image, image_topic, self._on_image,
                                      QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self._subscribe_markers()
        self.latency_ms: dict[tuple[str, int], float] = {}  # (localizer, stamp) -> node latency
        self._subscribe_timing()
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def _on_image(self, msg: Any) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        with self.lock:
            self.image_arrival_ns.setdefault(stamp, time.monotonic_ns())

    def _subscribe_markers(self) -> None:
        from visualization_msgs.msg import MarkerArray

        def on_markers(msg: Any) -> None:
            now = time.monotonic_ns()
            with self.lock:
                for m in msg.markers:
                    if m.action == 0 and m.type == 9 and ': ' in m.text:  # ADD TEXT_VIEW_FACING 'name: label (p)'
                        self.outputs.append((m.ns, 'room', m, now))

        self.node.create_subscription(MarkerArray, f'/{NODE_NAME}/markers', on_markers, self.qos)

    def _subscribe_timing(self) -> None:
        from diagnostic_msgs.msg import DiagnosticStatus

        def on_timing(msg: Any) -> None:
            values = {kv.key: int(kv.value) for kv in msg.values}
            with self.lock:
                self.latency_ms[(msg.name, values['stamp_ns'])] = (values['published_ns'] - values['received_ns']) / 1e6

        self.node.create_subscription(DiagnosticStatus, f'/{NODE_NAME}/timing', on_timing, self.qos)

    def discover(self) -> list[str]:
        """Subscribe to every /vizloc/<name>/{fix,pose} in the graph not yet subscribed; returns the localizer names."""
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from sensor_msgs.msg import NavSatFix

        for topic, _types in self.node.get_topic_names_and_types():
            match = OUTPUT_RE.match(topic)
            if match is None or topic in self._subs:
                continue
            name, kind = match.groups()

            def callback(msg: Any, name: str = name, kind: str = kind) -> None:
                with self.lock:
                    self.outputs.append((name, kind, msg, time.monotonic_ns()))

            cls = NavSatFix if kind == 'fix' else PoseWithCovarianceStamped
            self._subs[topic] = self.node.create_subscription(cls, topic, callback, self.qos)
        return sorted({OUTPUT_RE.match(t).group(1) for t in self._subs})

    def close(self) -> None:
        import rclpy

        self._stop.set()
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def _estimates(name: str, outputs: list[tuple[str, str, Any, int]], latency_ms: dict[tuple[str, int], float]) -> list[Estimate]:
    from sensor_msgs.msg import NavSatStatus

    by_stamp: dict[int, Estimate] = {}
    for loc, kind, msg, arrival in outputs:
        if loc != name:
            continue
        stamp = stamp_to_ns(msg.header.stamp)
        est = by_stamp.setdefault(stamp, Estimate(localizer=name, stamp_ns=stamp, status='ok',
                                                  latency_ms=latency_ms.get((name, stamp), math.nan)))
        if kind == 'fix':
            if msg.status.status == NavSatStatus.STATUS_NO_FIX:
                est.status = 'no_fix'
            else:
                est.fix_lla = (float(msg.latitude), float(msg.longitude), float(msg.altitude))
                est.cov_enu_m2 = np.asarray(msg.position_covariance, dtype=np.float64).reshape(3, 3)
        elif kind == 'pose':
            est.T_map_base = matrix_from_pose(msg.pose.pose)
            est.cov_6x6 = np.asarray(msg.pose.covariance, dtype=np.float64).reshape(6, 6)
        else:  # room from the text marker 'name: label (0.87)'
            est.room = msg.text.split(': ', 1)[1].rsplit(' (', 1)[0]
        est.messages.append((kind, msg))
    return [by_stamp[s] for s in sorted(by_stamp)]


def run_live(bag: str | os.PathLike[str], params_file: str | os.PathLike[str], *,
             image_topic: str = IMAGE_TOPIC, camera_info_topic: str = CAMERA_INFO_TOPIC, rate: float = 1.0,
             overrides: Sequence[str] = (), startup_timeout_s: float = 60.0, drain_s: float = 3.0,
             env: dict[str, str] | None = None, log_dir: Path | None = None) -> EvalRun:
    """Replay ``bag`` into a running ``vizloc_node`` and score what it publishes (see the module docstring).

    ``env``: the subprocesses' environment (ROS_DOMAIN_ID, PYTHONPATH for plugins...); default os.environ.
    """
    bag, params_file = Path(bag), Path(params_file)
    if not params_file.is_file():
        raise EvalError(f'{params_file}: no such params file')
    image, has_info = check_bag_topics(bag, image_topic, camera_info_topic)
    extrinsic, base_frame, map_frame, types = _node_settings(params_file, overrides)
    env = dict(os.environ if env is None else env)
    log_dir = Path(log_dir) if log_dir is not None else bag.parent
    topics = [image] + ([camera_info_topic] if has_info else [])
    node_cmd = node_command() + ['--ros-args', '--params-file', str(params_file), '-p', 'input_qos:=reliable', '-p', 'publish_timing:=true',
                                 '-r', f'image:={image_topic}', '-r', f'image/compressed:={image_topic}/compressed',
                                 '-r', f'camera_info:={camera_info_topic}']
    for item in overrides:
        node_cmd += ['-p', item]
    recorder = _Recorder(image, compressed=image.endswith('/compressed'))
    node_log = (log_dir / 'vizloc_node.log').open('w') if log_dir.is_dir() else subprocess.DEVNULL
    node = subprocess.Popen(node_cmd, env=env, stdout=node_log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_timeout_s
        names: list[str] = []
        while time.monotonic() < deadline and node.poll() is None:
            names = recorder.discover()
            if names:
                time.sleep(1.0)  # let every localizer's publishers appear, then subscribe to all
                names = recorder.discover()
                break
            time.sleep(0.2)
        if not names:
            raise EvalError(f'vizloc_node published no /{NODE_NAME}/<name>/(fix|pose) topic within {startup_timeout_s} s '
                            f'(exit code {node.poll()}; log {log_dir / "vizloc_node.log"})')
        replay = subprocess.run(replay_command(bag, topics, rate), env=env, capture_output=True, text=True)
        if replay.returncode != 0:
            raise EvalError(f'replay failed ({replay.returncode}): {replay.stderr[-2000:]}')
        time.sleep(drain_s)
    finally:
        node.terminate()
        try:
            node.wait(timeout=15)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
        recorder.close()
        if node_log is not subprocess.DEVNULL:
            node_log.close()
    info = bag_info(bag)
    frame_stamps = sorted(recorder.image_arrival_ns)
    total_frames = info['topics'][image]['count']
    estimates = {name: _estimates(name, recorder.outputs, recorder.latency_ms) for name in names}
    return EvalRun(bag=bag, mode='live', frame_stamps_ns=frame_stamps, estimates=estimates,
                   types={n: types.get(n, '') for n in names}, frames_total=total_frames,
                   extrinsic=extrinsic, base_frame=base_frame, map_frame=map_frame, node_name=f'/{NODE_NAME}',
                   dropped={n: total_frames - len(e) for n, e in estimates.items()},
                   ground_truth=read_ground_truth(bag))
