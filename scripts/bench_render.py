#!/usr/bin/env python3
"""Rendering speed of the synthetic worlds: frames/s at 320x240 on one core.

Aerial: the height-field ray caster + orthophoto lookup + shading (``TerrainRenderer.render``) and
the shared photometric variation, over poses from the test trajectory (50-300 m AGL, nadir to 45 deg).
Prints one line per measured stage. Run with ``nice -n 10``; it pins OpenCV and BLAS to one thread.

    python scripts/bench_render.py [--world aerial|all] [--frames 40] [--size 320x240] [--seed 0]

Frames/s are reported per CPU second of this single-threaded process (robust on a shared
machine) and per wall-clock second.
"""
from __future__ import annotations

import os

os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import argparse  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from vizloc_training.synth import aerial  # noqa: E402
from vizloc_training.synth.cli import parse_size  # noqa: E402
from vizloc_training.synth.heightfield import TerrainRenderer  # noqa: E402
from vizloc_training.synth.photometric import apply_photometric  # noqa: E402


def bench_aerial(frames: int, size: tuple[int, int], seed: int) -> None:
    cfg = replace(aerial.AerialWorldConfig(), size=size)
    t0 = time.perf_counter()
    terrain = aerial.build_terrain(cfg, np.random.default_rng([seed, 7]))
    texture, source = aerial.build_orthophoto(cfg, terrain, np.random.default_rng([seed, 8]))
    renderer = TerrainRenderer(terrain.field, texture)
    f = terrain.field
    half_area = cfg.flight_area_fraction * (f.x1_m - f.x0_m) / 2.0
    plan = aerial.flight_plan('test', frames, cfg, half_area, seed)
    poses = aerial.plan_poses(plan, terrain, cfg)
    print(f'aerial world setup (terrain {f.nx}x{f.ny}, texture {texture.shape[1]}x{texture.shape[0]} '
          f'[{source["kind"]}]): {time.perf_counter() - t0:.2f} s')
    K = cfg.K()
    renderer.render(poses[0], K, *size, plan.sun_dir[0])  # warm-up (ray cache)
    t_render = 0.0
    t_photo = 0.0
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    for k, T in enumerate(poses):
        t1 = time.process_time()
        res = renderer.render(T, K, *size, plan.sun_dir[k])
        t2 = time.process_time()
        apply_photometric(res.rgb_HW3, np.random.default_rng(k))
        t3 = time.process_time()
        t_render += t2 - t1
        t_photo += t3 - t2
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    n = len(poses)
    # CPU time of this (single-threaded) process: robust on a shared machine; wall time for reference.
    print(f'aerial render {size[0]}x{size[1]}: {n / t_render:.1f} frames/s CPU time ({1000 * t_render / n:.1f} ms/frame)')
    print(f'aerial render + photometric {size[0]}x{size[1]}: {n / (t_render + t_photo):.1f} frames/s CPU time, '
          f'{n / wall:.1f} frames/s wall ({1000 * cpu / n:.1f} ms CPU/frame, {n} frames, AGL '
          f'{min(T[2, 3] - float(f.height_at(np.array(T[0, 3]), np.array(T[1, 3]))) for T in poses):.0f}-'
          f'{max(T[2, 3] - float(f.height_at(np.array(T[0, 3]), np.array(T[1, 3]))) for T in poses):.0f} m)')


#: World name -> benchmark(frames, size, seed); other worlds register here.
BENCHES = {'aerial': bench_aerial}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--world', choices=[*BENCHES, 'all'], default='all')
    parser.add_argument('--frames', type=int, default=40)
    parser.add_argument('--size', type=parse_size, default=(320, 240))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    for name, bench in BENCHES.items():
        if args.world in (name, 'all'):
            bench(args.frames, args.size, args.seed)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
