#!/usr/bin/env python3
"""Soak of the running vizloc node: memory, threads and file descriptors over many frames and lifecycle cycles.

Starts ``vizloc_node --ros-args --params-file config/localize.yaml`` in a subprocess with a real
trained bundle (``--bundle``/``--type``; default: a room classifier trained here on generated rooms
with the ``tiny`` preset of ``vizloc-train``, a real CNN in ONNX Runtime), publishes ``--frames``
640x480 rgb8 frames + CameraInfo at ``--rate`` Hz, then walks ``--cycles`` lifecycle cycles
(deactivate, cleanup, configure, activate) with a short burst of frames in each. It samples the node
process's RSS, thread count and open file descriptors from /proc and prints:

* RSS after warm-up (the first ``--warmup`` frames) and at the end of the frames, and the growth in %;
* threads and fds at the same two points;
* after the lifecycle cycles: RSS growth per cycle, threads and fds.

Pass criteria of the robustness issue: RSS growth after warm-up < 5 %, no thread/fd growth.
Example: ``FASTDDS_DEFAULT_PROFILES_FILE=$PWD/config/fastdds_shm.xml .venv/bin/python scripts/soak_node.py``
(20,000 frames at 30 Hz take 11 min).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'test'))  # the node-test helpers

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from test_node_support import NodeProcess, RosClient, diagnostics_values  # noqa: E402
from vizloc_ros.conversions import image_msg_from_rgb  # noqa: E402


def proc_sample(pid: int) -> dict[str, int]:
    """RSS (kB), threads and open fds of ``pid`` from /proc."""
    status = Path(f'/proc/{pid}/status').read_text().splitlines()
    values = {}
    for line in status:
        key, _, rest = line.partition(':')
        if rest.split():
            values[key] = rest.split()[0]
    return {'rss_kb': int(values['VmRSS']), 'threads': int(values['Threads']),
            'fds': len(os.listdir(f'/proc/{pid}/fd'))}


def train_default_bundle(work: Path) -> tuple[Path, str]:
    from test_room_classifier import make_rooms_dataset
    from vizloc_training.room_classifier.train import train
    from vizloc_training.train.config import TrainArgs

    data = make_rooms_dataset(work / 'rooms')
    return train(TrainArgs(type='room_classifier', data=data, out=work / 'bundle', preset='tiny', seed=0)), 'room_classifier'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=20000)
    parser.add_argument('--warmup', type=int, default=1000, help='frames before the reference sample')
    parser.add_argument('--rate', type=float, default=30.0)
    parser.add_argument('--cycles', type=int, default=50, help='lifecycle cycles after the frames')
    parser.add_argument('--bundle', type=Path, help='bundle directory (default: train a tiny room classifier)')
    parser.add_argument('--type', default='', help='localizer type of --bundle')
    parser.add_argument('--domain-id', type=int, default=150 + os.getpid() % 50)
    args = parser.parse_args(argv)
    os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(REPO / 'config' / 'fastdds_shm.xml'))
    os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    with tempfile.TemporaryDirectory(prefix='vizloc_soak_') as tmp:
        work = Path(tmp)
        bundle, kind = (args.bundle, args.type) if args.bundle else train_default_bundle(work)
        client = RosClient(args.domain_id, name='vizloc_soak')
        client.record(String, '/vizloc/loc/room')
        client.record(DiagnosticArray, '/diagnostics')
        client.camera_publishers()
        params = {'localizers': ['loc'], 'loc.type': kind, 'loc.bundle': str(bundle), 'loc.backend': 'onnxruntime'}
        rgb = np.random.default_rng(0).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
        template = [image_msg_from_rgb(rgb, 0, 'camera')]
        try:
            with NodeProcess(args.domain_id, params, log_path=work / 'node.log') as node:
                if client.wait_for_state('active') != 'active' or not client.wait_for_image_subscriber():
                    raise RuntimeError(f'node did not become active:\n{node.log()}')
                pid = node.proc.pid
                t0 = time.monotonic()
                client.publish_stream(args.warmup, rate_hz=args.rate, raw_messages=template)
                warm = proc_sample(pid)
                rest, chunk = args.frames - args.warmup, 1000
                samples = [warm]
                while rest > 0:
                    client.publish_stream(min(chunk, rest), rate_hz=args.rate, raw_messages=template)
                    rest -= chunk
                    samples.append(proc_sample(pid))
                    client.clear()  # keep the recorder's memory flat
                    print(f'  {args.frames - max(rest, 0)} frames: rss {samples[-1]["rss_kb"] / 1024:.1f} MB, '
                          f'threads {samples[-1]["threads"]}, fds {samples[-1]["fds"]}', flush=True)
                end = proc_sample(pid)
                frames_s = time.monotonic() - t0
                client.wait_for(lambda: bool(diagnostics_values(client.messages('/diagnostics'), 'localizer loc')), 3.0)
                diag = diagnostics_values(client.messages('/diagnostics'), 'localizer loc')
                before_cycles = end
                for i in range(args.cycles):
                    for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP,
                                       Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
                        if not client.change_state(transition):
                            raise RuntimeError(f'cycle {i}: transition {transition} failed:\n{node.log()}')
                    client.publish_stream(10, rate_hz=args.rate, raw_messages=template)
                after_cycles = proc_sample(pid)
                alive = node.alive()
        finally:
            client.close()
    growth = 100.0 * (end['rss_kb'] - warm['rss_kb']) / warm['rss_kb']
    print(f'vizloc node soak: {args.frames} frames 640x480 rgb8 at {args.rate:g} Hz ({frames_s:.0f} s), '
          f'localizer {kind} (onnxruntime)')
    print(f'  RSS after {args.warmup} frames {warm["rss_kb"] / 1024:.1f} MB, at the end {end["rss_kb"] / 1024:.1f} MB: '
          f'growth {growth:+.2f} %  (max over samples {max(s["rss_kb"] for s in samples) / 1024:.1f} MB)')
    print(f'  threads {warm["threads"]} -> {end["threads"]}, fds {warm["fds"]} -> {end["fds"]}; '
          f'node diagnostics: processed {diag.get("frames_processed")}, dropped {diag.get("frames_dropped")}, '
          f'errors {diag.get("errors")}')
    per_cycle = (after_cycles['rss_kb'] - before_cycles['rss_kb']) / max(args.cycles, 1)
    print(f'  {args.cycles} lifecycle cycles: RSS {before_cycles["rss_kb"] / 1024:.1f} -> '
          f'{after_cycles["rss_kb"] / 1024:.1f} MB ({per_cycle:+.1f} kB/cycle), threads {before_cycles["threads"]} -> '
          f'{after_cycles["threads"]}, fds {before_cycles["fds"]} -> {after_cycles["fds"]}; node alive: {alive}')
    ok = growth < 5.0 and end['threads'] <= warm['threads'] and end['fds'] <= warm['fds'] and alive
    print('  PASS' if ok else '  FAIL (criteria: RSS growth < 5 %, no thread/fd growth)')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
