"""``vizloc-smoke``: run the vizloc node with the example plugin on generated frames and print what it publishes.

The README's plumbing check (``make demo-smoke``). It builds a tiny ``example_color`` model bundle in a temporary
directory, starts a :class:`vizloc_ros.node.VizlocNode` with ``config/localize.yaml`` semantics
(one localizer ``color``), publishes coloured frames + CameraInfo on ``image`` / ``camera_info``
and prints every NavSatFix / pose / room it gets back, then the node's diagnostics.

The example plugin must be installed (``vizloc-example-plugin``, entry point ``vizloc_example_plugin``
in the group ``vizloc_ros.localizers``): the node discovers it like any third-party plugin. ``make
setup`` installs it into ``.venv``; elsewhere ``pip install ./examples/example_plugin`` from a source
checkout.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np

__all__ = ['SmokeConfig', 'run_smoke', 'main']

logger = logging.getLogger(__name__)

EXAMPLE_ENTRY_POINT = 'vizloc_example_plugin'
INSTALL_HINT = ('pip install ./examples/example_plugin (from a vizloc_ros source checkout; `make setup` does it '
                'for .venv)')
#: Frame colours (RGB) cycled through; the example localizer maps them to rooms of the same name.
COLOURS = {'red': (230, 20, 20), 'green': (20, 230, 20), 'blue': (20, 20, 230), 'white': (240, 240, 240),
           'black': (10, 10, 10)}


class SmokeError(RuntimeError):
    """The demo cannot run here (e.g. the example plugin is not available)."""


@dataclass(frozen=True)
class SmokeConfig:
    frames: int = 15
    rate_hz: float = 10.0
    width_px: int = 320
    height_px: int = 240
    timeout_s: float = 10.0
    #: ROS_DOMAIN_ID for the demo's context; None: the environment's.
    domain_id: int | None = None


def _example_package() -> ModuleType:
    """The installed example package, found through its entry point (the node discovers it the same way)."""
    from .hookspecs import ENTRY_POINT_GROUP

    eps = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == EXAMPLE_ENTRY_POINT]
    if not eps:
        raise SmokeError(f'the example plugin is not installed (no entry point {EXAMPLE_ENTRY_POINT!r} in the group '
                         f'{ENTRY_POINT_GROUP}; it provides the localizer type example_color). Install it: {INSTALL_HINT}')
    try:
        plugin_module = eps[0].load()
    except Exception as exc:  # a broken installation: say so instead of a traceback
        raise SmokeError(f'the example plugin is installed but does not import ({eps[0].value}: {exc!r}); '
                         f'reinstall it: {INSTALL_HINT}') from exc
    return importlib.import_module(plugin_module.__name__.rpartition('.')[0])


def _frame(colour: tuple[int, int, int], width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.integers(-8, 9, size=(height, width, 3))
    return np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)


def run_smoke(config: SmokeConfig = SmokeConfig(), out: Any = None) -> int:
    """Run the demo; returns the number of frames that produced a fix (prints to ``out``, default stdout)."""
    import rclpy
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image, NavSatFix
    from std_msgs.msg import String

    from .conversions import camera_info_from_intrinsics, image_msg_from_rgb, stamp_to_ns
    from .node import VizlocNode
    from .types import CameraIntrinsics

    out = out or sys.stdout
    package = _example_package()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix='vizloc_smoke_') as tmp:
        bundle = package.make_bundle(Path(tmp) / 'example_color')
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=config.domain_id)
        cli = ['--ros-args', '-p', 'localizers:=[color]', '-p', 'color.type:=example_color',
               '-p', f'color.bundle:={bundle}', '-p', 'color.backend:=onnxruntime']
        node = VizlocNode(context=context, cli_args=cli)
        client = rclpy.create_node('vizloc_smoke_camera', context=context)
        executor = MultiThreadedExecutor(num_threads=2, context=context)
        executor.add_node(node)
        executor.add_node(client)
        outputs: dict[int, dict[str, Any]] = {}
        rooms: list[str] = []
        lock = threading.Lock()

        def record(kind: str) -> Any:
            def callback(msg: Any) -> None:
                with lock:
                    if kind == 'room':  # std_msgs/String has no header
                        rooms.append(msg.data)
                    else:
                        outputs.setdefault(stamp_to_ns(msg.header.stamp), {})[kind] = msg
            return callback

        reliable = QoSProfile(depth=50)
        client.create_subscription(NavSatFix, '/vizloc/color/fix', record('fix'), reliable)
        client.create_subscription(PoseWithCovarianceStamped, '/vizloc/color/pose', record('pose'), reliable)
        client.create_subscription(String, '/vizloc/color/room', record('room'), reliable)
        pub_image = client.create_publisher(Image, 'image', qos_profile_sensor_data)
        pub_info = client.create_publisher(CameraInfo, 'camera_info', qos_profile_sensor_data)
        stop = threading.Event()

        def spin() -> None:
            while not stop.is_set():
                executor.spin_once(timeout_sec=0.05)

        spinner = threading.Thread(target=spin, daemon=True)
        spinner.start()
        try:
            if not node.autostart():
                raise SmokeError('the node did not become active (see the log above)')
            end = time.monotonic() + config.timeout_s
            while pub_image.get_subscription_count() == 0 and time.monotonic() < end:
                time.sleep(0.05)
            time.sleep(0.3)
            camera = CameraIntrinsics.from_fov(60.0, config.width_px, config.height_px)
            names = list(COLOURS)
            sent: list[tuple[int, str]] = []
            for i in range(config.frames):
                name = names[i % len(names)]
                stamp_ns = time.time_ns()
                pub_info.publish(camera_info_from_intrinsics(camera, stamp_ns, 'camera'))
                pub_image.publish(image_msg_from_rgb(_frame(COLOURS[name], config.width_px, config.height_px, rng),
                                                     stamp_ns, 'camera'))
                sent.append((stamp_ns, name))
                time.sleep(1.0 / config.rate_hz)
            # Wait for the answers (a fix, a pose and a room per frame), not for a fixed time: on a loaded
            # machine the last frames are still being localized half a second later. A frame lost on the
            # best-effort camera topic never gets one; the deadline bounds that wait.
            end = time.monotonic() + config.timeout_s
            while time.monotonic() < end:
                with lock:
                    if len(rooms) >= len(sent) and all(len(outputs.get(stamp, {})) == 2 for stamp, _ in sent):
                        break
                time.sleep(0.05)
            with lock:
                got = dict(outputs)
            print(f'published {len(sent)} frames {config.width_px}x{config.height_px} at {config.rate_hz:g} Hz '
                  f'to /image; localizer "color" (example_color) answered:', file=out)
            fixes = 0
            for i, (stamp_ns, name) in enumerate(sent):
                o = got.get(stamp_ns, {})
                fix, pose = o.get('fix'), o.get('pose')
                if fix is None:
                    print(f'  frame {i:2d} ({name:5s}) stamp {stamp_ns}: no output (dropped or lost)', file=out)
                    continue
                fixes += 1
                p = pose.pose.pose.position if pose is not None else None
                pose_text = f'pose map ({p.x:+6.1f}, {p.y:+6.1f}, {p.z:+6.1f}) m' if p is not None else 'no pose'
                print(f'  frame {i:2d} ({name:5s}) stamp {stamp_ns}: fix {fix.latitude:.6f}, {fix.longitude:.6f}, '
                      f'alt {fix.altitude:.1f} m, sigma_e {fix.position_covariance[0] ** 0.5:.1f} m; {pose_text}', file=out)
            with lock:
                room_labels = list(rooms)
            print(f'rooms published on /vizloc/color/room, in order: {room_labels}', file=out)
            stats = node.workers['color'].stats.summary() if 'color' in node.workers else {}
            print(f'diagnostics: backend {stats.get("backend")}, {stats.get("frames_processed")} processed, '
                  f'{stats.get("frames_dropped")} dropped, model latency p50 {stats.get("latency_p50_ms", float("nan")):.2f} ms '
                  f'p95 {stats.get("latency_p95_ms", float("nan")):.2f} ms, node overhead p50 '
                  f'{stats.get("overhead_p50_ms", float("nan")):.2f} ms', file=out)
            return fixes
        finally:
            stop.set()
            spinner.join(timeout=5)
            executor.shutdown()
            node.destroy_node()
            client.destroy_node()
            rclpy.try_shutdown(context=context)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='vizloc-smoke', description=__doc__.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=SmokeConfig.frames, help='frames to publish')
    parser.add_argument('--rate', type=float, default=SmokeConfig.rate_hz, help='publish rate (Hz)')
    parser.add_argument('--size', default=f'{SmokeConfig.width_px}x{SmokeConfig.height_px}', help='frame size WxH')
    parser.add_argument('--domain-id', type=int, default=None, help='ROS domain id (default: $ROS_DOMAIN_ID or 0)')
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split('x'))
    except ValueError:
        parser.error(f'--size must be WxH, got {args.size!r}')
    if args.frames <= 0 or args.rate <= 0:
        parser.error('--frames and --rate must be positive')
    try:
        fixes = run_smoke(SmokeConfig(frames=args.frames, rate_hz=args.rate, width_px=width, height_px=height,
                                     domain_id=args.domain_id))
    except SmokeError as exc:
        print(f'vizloc-smoke: {exc}', file=sys.stderr)
        return 2
    if fixes < args.frames // 2:
        print(f'vizloc-smoke: only {fixes} of {args.frames} frames were localized', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
