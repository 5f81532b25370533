#!/usr/bin/env python3
"""Benchmark of the vizloc node (issue #2 section 8): node overhead, cross-process latency, frame loss.

Starts ``vizloc_node --ros-args --params-file config/localize.yaml`` in a subprocess with the example
plugin (``example_color``, pip-installed into a temporary directory as a user would) and
``publish_timing: true``, publishes N frames (default 300) of 640x480 rgb8 + CameraInfo at 30 Hz
from this process, and prints:

* node overhead p50/p95: image callback received -> outputs published, minus the model's time
  (from the node's per-frame timestamps on ``~/timing``; conversion, queueing in the latest-frame
  slot, message building and publishing);
* cross-process latency p50/p95: publish in this process -> NavSatFix received back (includes the
  model);
* frame loss: 1 - frames the node's image callback received (``/diagnostics`` frames_received) / N,
  and separately the frames the node dropped on purpose (overwritten in the slot while busy).

Run with the Fast DDS profile as `make` does:
``FASTDDS_DEFAULT_PROFILES_FILE=$PWD/config/fastdds_shm.xml python scripts/bench_node.py``;
``--no-profile`` runs both processes with the library defaults instead, for comparison.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'test'))  # the node-test helpers and the example plugin support

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import NavSatFix  # noqa: E402

from example_plugin_support import EXAMPLE_TYPE, install_example_plugin, make_example_bundle  # noqa: E402
from test_node_support import NodeProcess, RosClient, diagnostics_values  # noqa: E402
from vizloc_ros.conversions import image_msg_from_rgb, stamp_to_ns  # noqa: E402


@dataclass(frozen=True)
class BenchResult:
    frames_sent: int
    frames_received_by_node: int
    frames_dropped_by_node: int
    outputs: int
    overhead_p50_ms: float
    overhead_p95_ms: float
    model_p50_ms: float
    latency_p50_ms: float
    latency_p95_ms: float

    @property
    def loss(self) -> float:
        return 1.0 - self.frames_received_by_node / self.frames_sent


def run(frames: int, rate_hz: float, width: int, height: int, domain_id: int, use_profile: bool,
        backend: str) -> BenchResult:
    with tempfile.TemporaryDirectory(prefix='vizloc_bench_') as tmp:
        tmp_path = Path(tmp)
        site = install_example_plugin(tmp_path / 'site')
        bundle = make_example_bundle(tmp_path / 'bundle')
        if not use_profile:
            os.environ.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
            os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(tmp_path / 'none.xml')
            (tmp_path / 'none.xml').write_text(
                '<?xml version="1.0"?><profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">'
                '<participant profile_name="defaults" is_default_profile="true"><rtps/></participant></profiles>')
        client = RosClient(domain_id, name='vizloc_bench')
        params = {'localizers': ['color'], 'color.type': EXAMPLE_TYPE, 'color.bundle': str(bundle),
                  'color.backend': backend, 'publish_timing': True, 'diagnostics_period_s': 0.5}
        received_at: dict[int, int] = {}
        try:
            client.record(DiagnosticStatus, '/vizloc/timing')
            client.record(DiagnosticArray, '/diagnostics')
            client.node.create_subscription(NavSatFix, '/vizloc/color/fix',
                                            lambda m: received_at.setdefault(stamp_to_ns(m.header.stamp), time.time_ns()),
                                            50)
            client.camera_publishers()
            with NodeProcess(domain_id, params, python_paths=(site,), log_path=tmp_path / 'node.log') as node:
                if client.wait_for_state('active') != 'active':
                    raise RuntimeError(f'node did not become active:\n{node.log()}')
                if not client.wait_for_image_subscriber():
                    raise RuntimeError(f'node did not subscribe:\n{node.log()}')
                rgb = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
                template = [image_msg_from_rgb(rgb, 0, 'camera')]

                def node_received() -> int:
                    return int(diagnostics_values(client.messages('/diagnostics'), ': input').get('frames_received', -1))

                client.wait_for(lambda: node_received() >= 0, 5.0)
                before = node_received()
                stamps = client.publish_stream(frames, rate_hz=rate_hz, raw_messages=template)
                last, end = -1, time.monotonic() + 10.0
                while time.monotonic() < end:
                    time.sleep(0.6)
                    if node_received() == last:
                        break
                    last = node_received()
                got = node_received() - before
                diag = diagnostics_values(client.messages('/diagnostics'), 'localizer color')
        finally:
            client.close()
    sent = set(stamps)
    overhead, model = [], []
    for status in client.messages('/vizloc/timing'):
        t = {kv.key: int(kv.value) for kv in status.values}
        if t['stamp_ns'] in sent:
            model_ms = (t['model_end_ns'] - t['model_start_ns']) / 1e6
            model.append(model_ms)
            overhead.append((t['published_ns'] - t['received_ns']) / 1e6 - model_ms)
    latency = [(received_at[s] - s) / 1e6 for s in stamps if s in received_at]

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float('nan')

    return BenchResult(frames_sent=frames, frames_received_by_node=got,
                       frames_dropped_by_node=int(diag.get('frames_dropped', 0)), outputs=len(latency),
                       overhead_p50_ms=pct(overhead, 50), overhead_p95_ms=pct(overhead, 95), model_p50_ms=pct(model, 50),
                       latency_p50_ms=pct(latency, 50), latency_p95_ms=pct(latency, 95))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=300)
    parser.add_argument('--rate', type=float, default=30.0, help='publish rate in Hz')
    parser.add_argument('--size', default='640x480', help='WxH')
    parser.add_argument('--backend', default='onnxruntime')
    parser.add_argument('--domain-id', type=int, default=150 + os.getpid() % 50)
    parser.add_argument('--no-profile', action='store_true', help='Fast DDS defaults instead of config/fastdds_shm.xml')
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split('x'))
    if not args.no_profile:
        os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(REPO / 'config' / 'fastdds_shm.xml'))
    os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    r = run(args.frames, args.rate, width, height, args.domain_id, not args.no_profile, args.backend)
    profile = 'defaults' if args.no_profile else os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE', '')
    print(f'vizloc node benchmark: {r.frames_sent} frames {width}x{height} rgb8 at {args.rate:g} Hz, '
          f'localizer example_color ({args.backend}), Fast DDS profile: {profile}')
    print(f'  node overhead (callback -> published, minus model)  p50 {r.overhead_p50_ms:7.2f} ms  '
          f'p95 {r.overhead_p95_ms:7.2f} ms   (model p50 {r.model_p50_ms:.2f} ms)')
    print(f'  cross-process latency (publish -> fix received)      p50 {r.latency_p50_ms:7.2f} ms  '
          f'p95 {r.latency_p95_ms:7.2f} ms   ({r.outputs} outputs)')
    print(f'  frame loss between processes: {r.frames_sent - r.frames_received_by_node}/{r.frames_sent} = {r.loss:.1%}; '
          f'dropped by the node while busy: {r.frames_dropped_by_node}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
