#!/usr/bin/env python3
"""Rendering speed of the box-world ray caster (indoor and campus worlds), frames per second.

Renders ``--frames`` views along a real walk of the chosen world at ``--size`` on the current
thread (set OMP_NUM_THREADS=1 for a one-core figure) and prints the figures: render only (ray
cast + shading), and render + photometric variation + JPEG encoding (what the generator does per frame,
without disk writes).

    OMP_NUM_THREADS=1 python scripts/bench_render_boxworld.py --world indoor --size 320x240 --frames 100
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Sequence

import numpy as np

from vizloc_training.synth import campus, indoor
from vizloc_training.synth.boxworld import encode_jpeg
from vizloc_training.synth.cli import parse_size
from vizloc_training.synth.photometric import apply_photometric
from vizloc_training.synth.textures import TextureSource


def bench(world: str, size: tuple[int, int], frames: int, seed: int = 0) -> dict[str, float]:
    """Returns {'boxes', 'render_fps', 'frame_fps', 'render_ms', 'frame_ms', 'render_cpu_fps', 'frame_cpu_fps'}.

    ``*_fps``/``*_ms`` are wall-clock figures; ``*_cpu_fps`` use this process's CPU time (what one
    free core would do; robust against a loaded machine).
    """
    source = TextureSource.load()
    if world == 'indoor':
        cfg = indoor.IndoorWorldConfig(size=size)
        plan = indoor.build_floor_plan(cfg, np.random.default_rng([seed, 11]), source)
        scene = plan.world
        poses = [f.T_world_camera for f in indoor.walk(plan, frames, np.random.default_rng([seed, 12, 0]), cfg)]
    elif world == 'campus':
        cfg = campus.CampusWorldConfig(size=size)
        c = campus.build_campus(cfg, np.random.default_rng([seed, 21]), source)
        scene = c.world
        poses = campus.route(c, frames, np.random.default_rng([seed, 22, 0]), cfg)
    else:
        raise ValueError(f'unknown world {world!r}; choose indoor or campus')
    camera = cfg.camera()
    scene.render(camera, poses[0])  # warm-up (ray cache)
    t0, c0 = time.perf_counter(), time.process_time()
    renders = [scene.render(camera, T) for T in poses]
    t_render, c_render = time.perf_counter() - t0, time.process_time() - c0
    rng = np.random.default_rng(0)
    t0, c0 = time.perf_counter(), time.process_time()
    for r in renders:
        encode_jpeg(apply_photometric(r.rgb_HW3, rng))
    t_post, c_post = time.perf_counter() - t0, time.process_time() - c0
    return {'boxes': len(scene.boxes), 'render_fps': frames / t_render, 'frame_fps': frames / (t_render + t_post),
            'render_ms': 1000 * t_render / frames, 'frame_ms': 1000 * (t_render + t_post) / frames,
            'render_cpu_fps': frames / c_render, 'frame_cpu_fps': frames / (c_render + c_post)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--world', choices=('indoor', 'campus'), nargs='+', default=['indoor', 'campus'])
    parser.add_argument('--size', type=parse_size, default=(320, 240))
    parser.add_argument('--frames', type=int, default=100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for world in args.world:
        res = bench(world, args.size, args.frames)
        print(f'{world}: {args.size[0]}x{args.size[1]}, {args.frames} frames, {res["boxes"]} boxes: '
              f'render {res["render_fps"]:.1f} fps ({res["render_ms"]:.1f} ms/frame); '
              f'render+photometric+JPEG {res["frame_fps"]:.1f} fps ({res["frame_ms"]:.1f} ms/frame); '
              f'per CPU-second: render {res["render_cpu_fps"]:.1f} fps, with photometric+JPEG {res["frame_cpu_fps"]:.1f} fps')
    return 0


if __name__ == '__main__':
    sys.exit(main())
