"""Shared helpers of the node tests (no tests here): a ROS client in its own context and domain, the node subprocess.

* :func:`domain_id_for` -- a ROS_DOMAIN_ID per test module derived from the pid, so parallel runs
  (several engineers, CI shards) do not hear each other.
* :class:`RosClient` -- a node in the test process (own rclpy Context, spun in a thread) that
  publishes Image/CameraInfo and records whatever the vizloc node publishes.
* :class:`NodeProcess` -- the ``vizloc_node`` executable started with ``config/localize.yaml``
  (the example plugin on PYTHONPATH), always killed on exit.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from vizloc_ros.conversions import camera_info_from_intrinsics, compressed_msg_from_rgb, image_msg_from_rgb
from vizloc_ros.types import CameraIntrinsics

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / 'config' / 'localize.yaml'
FASTDDS_PROFILE = REPO / 'config' / 'fastdds_shm.xml'


def domain_id_for(module_name: str) -> int:
    """A ROS domain id in 101..200 from the pid and the module name (Fast DDS allows 0..232)."""
    return 101 + (os.getpid() * 31 + zlib.crc32(module_name.encode())) % 100


def node_command() -> list[str]:
    exe = shutil.which('vizloc_node')
    if exe is None:
        venv_exe = Path(sys.executable).parent / 'vizloc_node'
        exe = str(venv_exe) if venv_exe.exists() else None
    return [exe] if exe else [sys.executable, '-m', 'vizloc_ros.node']


def node_env(domain_id: int, *python_paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(FASTDDS_PROFILE))
    env.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    env['OMP_NUM_THREADS'] = '1'
    env['PYTHONUNBUFFERED'] = '1'
    parts = [str(p) for p in python_paths] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else [])
    if parts:
        env['PYTHONPATH'] = os.pathsep.join(parts)
    return env


class NodeProcess:
    """``vizloc_node --ros-args --params-file config/localize.yaml -p ...`` in a subprocess; a context manager."""

    def __init__(self, domain_id: int, params: dict[str, Any], *, python_paths: tuple[Path, ...] = (),
                 namespace: str = '', log_path: Path | None = None) -> None:
        args = node_command() + ['--ros-args', '--params-file', str(PARAMS_FILE)]
        for key, value in params.items():
            args += ['-p', f'{key}:={_param_text(value)}']
        if namespace:
            args += ['-r', f'__ns:={namespace}']
        self.args = args
        self.env = node_env(domain_id, *python_paths)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    def __enter__(self) -> 'NodeProcess':
        self._log = open(self.log_path, 'w') if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ''


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        return '[' + ','.join(_param_text(v) for v in value) + ']'
    if isinstance(value, str):
        return f'"{value}"' if value.startswith('[') else value
    return repr(value)


def color_image(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    """A test frame whose mean colour changes with ``i`` (so outputs differ frame to frame)."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = (37 * i) % 256
    rgb[..., 1] = 200
    rgb[..., 2] = (255 - 11 * i) % 256
    return rgb


class RosClient:
    """A node in the test process, in its own context/domain, spun by a background thread."""

    def __init__(self, domain_id: int, name: str = 'vizloc_test_client') -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: dict[str, list[tuple[float, Any]]] = {}
        self._lock = threading.Lock()
        self._clients: dict[tuple[type, str], Any] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - context shut down under us at teardown
                if self._stop:
                    return
                raise

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    # -- subscriptions --------------------------------------------------------------------------------
    def record(self, msg_type: type, topic: str, qos: QoSProfile | None = None) -> None:
        self.received.setdefault(topic, [])

        def callback(msg: Any, topic: str = topic) -> None:
            with self._lock:
                self.received[topic].append((time.time(), msg))

        self.node.create_subscription(msg_type, topic, callback,
                                      qos or QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))

    def messages(self, topic: str) -> list[Any]:
        with self._lock:
            return [m for _, m in self.received.get(topic, [])]

    def clear(self) -> None:
        with self._lock:
            for v in self.received.values():
                v.clear()

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    # -- camera publisher ------------------------------------------------------------------------------
    def camera_publishers(self, compressed: bool = False, qos: QoSProfile = qos_profile_sensor_data,
                          namespace: str = '') -> None:
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        prefix = f'{namespace.rstrip("/")}/' if namespace else ''
        self.compressed = compressed
        self.pub_image = self.node.create_publisher(CompressedImage if compressed else Image,
                                                    f'{prefix}image/compressed' if compressed else f'{prefix}image', qos)
        self.pub_info = self.node.create_publisher(CameraInfo, f'{prefix}camera_info', qos)

    def wait_for_image_subscriber(self, timeout_s: float = 20.0) -> bool:
        ok = self.wait_for(lambda: self.pub_image.get_subscription_count() > 0, timeout_s)
        time.sleep(0.3)  # let the matching settle on both sides
        return ok

    def publish_frame(self, rgb: np.ndarray, stamp_ns: int, frame_id: str = 'camera') -> None:
        camera = CameraIntrinsics.from_fov(60.0, rgb.shape[1], rgb.shape[0])
        self.pub_info.publish(camera_info_from_intrinsics(camera, stamp_ns, frame_id))
        if self.compressed:
            self.pub_image.publish(compressed_msg_from_rgb(rgb, stamp_ns, frame_id))
        else:
            self.pub_image.publish(image_msg_from_rgb(rgb, stamp_ns, frame_id))

    def publish_stream(self, n: int, rate_hz: float = 30.0, make: Callable[[int], np.ndarray] = color_image,
                       raw_messages: list[Any] | None = None) -> list[int]:
        """Publish ``n`` frames at ``rate_hz`` (absolute schedule); returns their stamps (ns)."""
        stamps = []
        period = 1.0 / rate_hz
        start = time.monotonic()
        for i in range(n):
            stamp_ns = time.time_ns()
            if raw_messages is not None:
                msg = raw_messages[i % len(raw_messages)]
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
                self.pub_image.publish(msg)
            else:
                self.publish_frame(make(i), stamp_ns)
            stamps.append(stamp_ns)
            delay = start + (i + 1) * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return stamps

    # -- services --------------------------------------------------------------------------------------
    def call(self, srv_type: type, name: str, request: Any, timeout_s: float = 15.0, idempotent: bool = False) -> Any:
        """One service request. Clients are kept, so a server matches each of them once.

        Fast DDS drops a response whose reader the server has not matched yet ("failed to send response
        (timeout)" in the server's log; seen on loaded 2-core CI machines). An ``idempotent`` request is
        therefore asked again every few seconds until ``timeout_s``; other requests are asked once.
        """
        key = (srv_type, name)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = self.node.create_client(srv_type, name)
        end = time.monotonic() + timeout_s
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise TimeoutError(f'service {name} not available after {timeout_s} s')
        while True:
            attempt_end = min(end, time.monotonic() + 3.0) if idempotent else end
            future = client.call_async(request)
            while not future.done() and time.monotonic() < attempt_end:
                time.sleep(0.02)
            if future.done():
                return future.result()
            client.remove_pending_request(future)
            if time.monotonic() >= end:
                raise TimeoutError(f'service {name} did not answer in {timeout_s} s')

    def lifecycle_state(self, node: str = '/vizloc', timeout_s: float = 15.0) -> str:
        from lifecycle_msgs.srv import GetState

        return self.call(GetState, f'{node}/get_state', GetState.Request(), timeout_s, idempotent=True).current_state.label

    def change_state(self, transition_id: int, node: str = '/vizloc') -> bool:
        """Request a transition; if its answer is lost, the node's state says whether it happened."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        goal_state = {Transition.TRANSITION_CONFIGURE: 'inactive', Transition.TRANSITION_CLEANUP: 'unconfigured',
                      Transition.TRANSITION_ACTIVATE: 'active', Transition.TRANSITION_DEACTIVATE: 'inactive'}
        request = ChangeState.Request(transition=Transition(id=transition_id))
        try:
            return bool(self.call(ChangeState, f'{node}/change_state', request, timeout_s=8.0).success)
        except TimeoutError:
            if transition_id not in goal_state:
                raise
            return self.wait_for_state(goal_state[transition_id], node, timeout_s=15.0) == goal_state[transition_id]

    def wait_for_state(self, label: str, node: str = '/vizloc', timeout_s: float = 25.0) -> str:
        end = time.monotonic() + timeout_s
        state = ''
        while time.monotonic() < end:
            try:
                state = self.lifecycle_state(node, timeout_s=max(0.5, end - time.monotonic()))
            except TimeoutError:
                continue
            if state == label:
                return state
            time.sleep(0.1)
        return state


def diagnostics_values(array_msgs: list[Any], status_suffix: str) -> dict[str, str]:
    """Key/values of the newest DiagnosticStatus whose name ends with ``status_suffix``."""
    for array in reversed(array_msgs):
        for status in array.status:
            if status.name.endswith(status_suffix):
                values = {kv.key: kv.value for kv in status.values}
                values['_level'] = str(int.from_bytes(status.level, 'little') if isinstance(status.level, bytes)
                                       else int(status.level))
                values['_message'] = status.message
                return values
    return {}
