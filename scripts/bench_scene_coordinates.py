#!/usr/bin/env python3
"""Benchmark of the scene_coordinates localizer: accuracy on a test split and localization speed.

Everything goes through the runtime plugin (registry -> ONNX Runtime -> RANSAC PnP), exactly as the
node runs it::

    python scripts/bench_scene_coordinates.py --bundle bundles/aerial --data /tmp/worlds/aerial \
        [--split test] [--limit 100] [--frame-size 480x360] [--threads 2] [--runs 30]

Prints (1) CrossLoc's pose-error table on ``--data/--split`` (median/mean translation and rotation
error, % within thresholds, no-fix count, inlier ratio, share of position errors inside the
published 95 % covariance ellipsoid), (2) localization latency p50/p95 (network and RANSAC apart)
for frames of ``--frame-size`` on ``--threads`` ONNX Runtime threads, and (3) the training figures
stored in the bundle (mapping time, encoder training time). ``--oracle-noise-m M`` runs the
solver alone on the dataset's ground-truth coordinates with noise and outliers (what pose accuracy a
network of that accuracy would give). ``--arch-input WxH`` additionally
times the bundle's architecture exported at another network input size (random weights; needs
the training package), e.g. to see the cost of a 480x360 network input.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

logger = logging.getLogger('bench_scene_coordinates')


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f'expected WxH, got {text!r}') from exc
    return w, h


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--bundle', type=Path, required=True, help='scene_coordinates bundle directory')
    parser.add_argument('--data', type=Path, default=None, help='DSAC*-layout dataset for the accuracy table')
    parser.add_argument('--split', default='test')
    parser.add_argument('--limit', type=int, default=0, help='evaluate at most this many frames (0 = all)')
    parser.add_argument('--frame-size', type=_size, default=(480, 360), help='camera frame size for the timing')
    parser.add_argument('--threads', type=int, default=2, help='ONNX Runtime intra-op threads')
    parser.add_argument('--hypotheses', type=int, default=256)
    parser.add_argument('--runs', type=int, default=30, help='timed localizations')
    parser.add_argument('--arch-input', type=_size, default=None,
                        help='also time the architecture at this network input size (random weights)')
    parser.add_argument('--oracle-noise-m', type=float, default=None,
                        help='also run the RANSAC solver on the ground-truth scene coordinates (init/) of --data with '
                             'this Gaussian noise (m) per axis and --oracle-outliers gross outliers: the pose accuracy '
                             'the solver reaches for a given network accuracy')
    parser.add_argument('--oracle-outliers', type=float, default=0.4)
    parser.add_argument('--no-keyframes', action='store_true',
                        help="network cells only: ignore the bundle's keyframe map (plugin option keyframes=false)")
    return parser.parse_args(argv)


def _make_localizer(bundle: Path, threads: int, hypotheses: int, cache_dir: Path, keyframes: bool = True):
    from vizloc_ros.localizer import LocalizerConfig, LocalizerContext
    from vizloc_ros.plugin_manager import load_registry

    registry = load_registry().registry
    return registry.create(
        LocalizerConfig(name='scene', type='scene_coordinates', bundle=str(bundle), backend='onnxruntime'),
        {'intra_op_num_threads': threads, 'hypotheses': hypotheses, 'keyframes': keyframes},
        LocalizerContext(cache_dir=cache_dir))


def accuracy(localizer, data: Path, split: str, limit: int) -> dict[str, float]:
    from vizloc_ros.localizer import run_localizer
    from vizloc_ros.types import CameraIntrinsics, Frame, ResultStatus
    from vizloc_training.metrics.pose import (AERIAL_THRESHOLDS, INDOOR_THRESHOLDS, ellipsoid_coverage, pose_errors,
                                              summarize_pose_errors)
    from vizloc_training.scene_coordinates.data import open_split, prepare_sample

    dataset = open_split(data, split)
    spec = localizer.model.input
    n = len(dataset) if not limit else min(limit, len(dataset))
    estimates, truths, errors, covs, ratios, latencies, cell_errors = [], [], [], [], [], [], []
    sources: list[str] = []
    for i in range(n):
        sample = dataset[i]
        h, w = sample.rgb_HW3.shape[:2]
        frame = Frame(rgb_HW3=sample.rgb_HW3, stamp_ns=i, frame_id='camera',
                      camera=CameraIntrinsics(K=sample.K, width=w, height=h))
        target = prepare_sample(sample, spec.width, spec.height)
        if target.coords_3hw is not None:  # the network's cells against the ground truth (no RANSAC)
            coords = localizer.model.run(frame, ['coords'])['coords'][0]
            cell_errors.append(float(np.median(np.linalg.norm(coords - target.coords_3hw, axis=0)[target.valid_hw])))
        result, _, _ = run_localizer(localizer, frame, 'scene')  # timed and stamped as the node does
        latencies.append(result.latency_ms)
        sources.append(result.diagnostics.get('source', ''))
        truths.append(sample.T_world_camera)
        if result.status != ResultStatus.OK:
            estimates.append(None)
            continue
        estimates.append(result.pose.T_map_camera)
        errors.append(result.pose.T_map_camera[:3, 3] - sample.T_world_camera[:3, 3])
        covs.append(result.pose.cov_6x6[:3, :3])
        ratios.append(result.pose.inlier_ratio)
    t_err, r_err = pose_errors(estimates, truths)
    scale = float(localizer.model.bundle.metadata.get('scene_scale_m', 100.0))
    thresholds = INDOOR_THRESHOLDS if scale < 20.0 else AERIAL_THRESHOLDS
    out = summarize_pose_errors(t_err, r_err, thresholds).as_dict()
    out['mean_inlier_ratio'] = float(np.mean(ratios)) if ratios else 0.0
    if cell_errors:  # median over frames of each frame's median cell error (m)
        out['median_cell_error_m'] = float(np.median(cell_errors))
    out['position_95pct_ellipsoid_coverage'] = (ellipsoid_coverage(np.asarray(errors), np.asarray(covs))
                                                if errors else float('nan'))
    out['latency_p50_ms_native_frames'] = float(np.percentile(latencies, 50))
    out['keyframe_share'] = float(np.mean([s == 'keyframes' for s in sources]))  # poses from the keyframe map
    return out


def oracle(localizer, data: Path, split: str, limit: int, noise_m: float, outlier_ratio: float) -> dict[str, float]:
    """Solver-only accuracy: ground-truth cell coordinates + noise + outliers -> estimate_pose."""
    from vizloc_plugins.scene_coordinates import estimate_pose
    from vizloc_training.metrics.pose import AERIAL_THRESHOLDS, ellipsoid_coverage, pose_errors, summarize_pose_errors
    from vizloc_training.scene_coordinates.data import open_split, prepare_sample

    dataset = open_split(data, split)
    spec = localizer.model.input
    rng = np.random.default_rng(0)
    n = len(dataset) if not limit else min(limit, len(dataset))
    estimates, truths, errors, covs = [], [], [], []
    for i in range(n):
        image = prepare_sample(dataset[i], spec.width, spec.height)
        if image.coords_3hw is None:
            raise SystemExit(f'{data}/{split} has no scene coordinates or depth: no oracle possible')
        coords = image.coords_3hw.astype(np.float64) + rng.normal(0.0, noise_m, image.coords_3hw.shape)
        outliers = rng.random(image.valid_hw.shape) < outlier_ratio
        coords[:, outliers] += rng.normal(0.0, 10.0 * max(noise_m, 1.0) + 100.0, (3, int(outliers.sum())))
        coords[:, ~image.valid_hw] = np.nan
        solution = estimate_pose(coords, None, image.K, localizer.ransac, covariance_scale=localizer.covariance_scale)
        truths.append(image.T_world_camera)
        estimates.append(None if solution is None else solution.T_map_camera)
        if solution is not None:
            errors.append(solution.T_map_camera[:3, 3] - image.T_world_camera[:3, 3])
            covs.append(solution.cov_6x6[:3, :3])
    t_err, r_err = pose_errors(estimates, truths)
    out = summarize_pose_errors(t_err, r_err, AERIAL_THRESHOLDS).as_dict()
    out['position_95pct_ellipsoid_coverage'] = (ellipsoid_coverage(np.asarray(errors), np.asarray(covs))
                                                if errors else float('nan'))
    return out


def speed(localizer, data: Path | None, split: str, frame_size: tuple[int, int], runs: int) -> dict[str, float]:
    import cv2

    from vizloc_ros.types import CameraIntrinsics, Frame

    w, h = frame_size
    if data is not None:
        from vizloc_training.scene_coordinates.data import open_split

        sample = open_split(data, split)[0]
        sh, sw = sample.rgb_HW3.shape[:2]
        image = cv2.resize(sample.rgb_HW3, (w, h), interpolation=cv2.INTER_LINEAR)
        camera = CameraIntrinsics(K=sample.K, width=sw, height=sh).scaled(w, h)
    else:
        image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        camera = CameraIntrinsics.from_fov(60.0, w, h)
    frame = Frame(rgb_HW3=image, stamp_ns=0, frame_id='camera', camera=camera)
    for _ in range(3):
        localizer.localize(frame)
    total, network, ransac = [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        result = localizer.localize(frame)
        total.append((time.perf_counter() - started) * 1e3)
        network.append(float(result.diagnostics['network_ms']))
        ransac.append(float(result.diagnostics['ransac_ms']))
    return {'frame': f'{w}x{h}', 'latency_p50_ms': float(np.percentile(total, 50)),
            'latency_p95_ms': float(np.percentile(total, 95)), 'rate_hz_p50': 1e3 / float(np.percentile(total, 50)),
            'network_p50_ms': float(np.percentile(network, 50)), 'ransac_p50_ms': float(np.percentile(ransac, 50))}


def arch_speed(bundle_meta: dict, size: tuple[int, int], threads: int, runs: int) -> dict[str, float]:
    """ORT latency of the bundle's architecture (random weights) at another network input size."""
    from vizloc_ros.bundle import InputSpec
    from vizloc_training.scene_coordinates.model import Encoder, EncoderConfig, Head, HeadConfig, SceneCoordinateNet
    from vizloc_training.train.export import export_onnx, measure_onnx_latency

    enc = bundle_meta['encoder']
    encoder = Encoder(EncoderConfig(width=enc['width'], blocks=enc['blocks'], feature_dim=enc['feature_dim'],
                                    dilations=tuple(enc['dilations']), norm=enc.get('norm', 'none'),
                                    context_dim=enc.get('context_dim', 0), kind=enc.get('kind', 'cnn'),
                                    levels=tuple(enc.get('levels', (8, 16)))))
    head = Head(encoder.feature_dim, HeadConfig(**bundle_meta['head']))
    net = SceneCoordinateNet(encoder, head).eval()
    w, h = size
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(net, Path(tmp) / 'arch.onnx', input_spec=InputSpec(height=h, width=w),
                           output_names=['coords', 'log_scale'], localizer_type='scene_coordinates',
                           parity_tol=1e-3)
        out = measure_onnx_latency(path, shape=(1, h, w, 3), threads=threads, runs=runs)
    return {'network_input': f'{w}x{h}', **out}


def _print_table(title: str, rows: dict) -> None:
    print(f'\n{title}')
    width = max(len(k) for k in rows) + 2
    for key, value in rows.items():
        text = f'{value:.4g}' if isinstance(value, float) else str(value)
        print(f'  {key:<{width}}{text}')


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    args = parse_args(argv)
    os.environ.setdefault('VIZLOC_NO_PROGRESS', '1')
    print(f'host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared machine: timings include '
          f'contention)')
    with tempfile.TemporaryDirectory() as cache:
        localizer = _make_localizer(args.bundle, args.threads, args.hypotheses, Path(cache), not args.no_keyframes)
        try:
            bundle = localizer.model.bundle
            print(f'bundle {bundle.path}: input {bundle.input.width}x{bundle.input.height}, backend '
                  f'{localizer.backend_name}, ransac {localizer.ransac}')
            if args.data is not None:
                _print_table(f'accuracy on {args.data}/{args.split} (runtime plugin, ONNX Runtime)',
                             accuracy(localizer, args.data, args.split, args.limit))
            _print_table(f'localization speed ({args.threads} ORT threads, {args.runs} runs)',
                         speed(localizer, args.data, args.split, args.frame_size, args.runs))
            stored = {k: v for k, v in bundle.metrics.items()
                      if k.endswith('_s') or k.startswith('onnx_latency') or k == 'covariance_scale'}
            _print_table('training figures stored in the bundle', stored)
            if args.oracle_noise_m is not None and args.data is not None:
                _print_table(f'RANSAC PnP on ground-truth coordinates + {args.oracle_noise_m} m noise + '
                             f'{args.oracle_outliers:.0%} outliers (solver only)',
                             oracle(localizer, args.data, args.split, args.limit, args.oracle_noise_m,
                                    args.oracle_outliers))
            if args.arch_input is not None:
                _print_table('architecture at another network input (random weights)',
                             arch_speed(dict(bundle.metadata), args.arch_input, args.threads, args.runs))
        finally:
            localizer.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
