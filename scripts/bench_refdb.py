#!/usr/bin/env python3
"""Reference-database targets of the retrieval localizer (issue 13); prints the figures.

1. FAISS query latency on one core for a 100k-entry database of synthetic 256-D descriptors:
   exact ``IndexFlatIP`` and IVF-PQ (``vizloc_plugins.refdb.build_faiss_index``), p50/p95 over the
   queries, and the IVF-PQ recall@1/@10 against exact search (brute force).
2. ``vizloc-db add`` of 1,000 entries (320x240 JPEGs + poses.csv + geo.yaml), wall-clock of the real
   console script in a subprocess (interpreter start included).

    nice -n 10 .venv/bin/python scripts/bench_refdb.py [--entries 100000] [--add 1000]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def bench_query(n: int, dim: int, queries: int) -> None:
    import faiss

    from vizloc_plugins.refdb import build_faiss_index

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    # places: 2,000 cluster centres, entries scattered around them (views of the same place are similar)
    centres = rng.standard_normal((2000, dim)).astype(np.float32)
    db = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    picks = rng.integers(0, n, queries)
    q = db[picks] + 0.3 * rng.standard_normal((queries, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact_top = None
    for kind in ('flat', 'ivfpq'):
        t0 = time.perf_counter()
        index = build_faiss_index(db, kind)
        build_s = time.perf_counter() - t0
        index.search(q[:5], 10)
        times, tops = [], []
        for i in range(queries):
            t0 = time.perf_counter()
            _, rows = index.search(q[i:i + 1], 10)
            times.append((time.perf_counter() - t0) * 1e3)
            tops.append(rows[0])
        tops = np.array(tops)
        line = (f'{kind:5s} n={n} dim={dim}: build {build_s:.1f} s, query p50 {np.percentile(times, 50):.2f} ms, '
                f'p95 {np.percentile(times, 95):.2f} ms (1 thread, top-10, {queries} queries)')
        if exact_top is None:
            exact_top = tops
        else:
            r1 = float(np.mean(tops[:, 0] == exact_top[:, 0]))
            r10 = float(np.mean([exact_top[i, 0] in tops[i] for i in range(queries)]))
            line += f'; vs exact: top-1 agreement {100 * r1:.1f} %, exact top-1 in top-10 {100 * r10:.1f} %'
        print(line, flush=True)


def bench_add(count: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix='bench-refdb-'))
    try:
        images = tmp / 'images'
        images.mkdir()
        rng = np.random.default_rng(1)
        base = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        rows = ['image,x,y,z,qx,qy,qz,qw']
        for i in range(count):
            cv2.imwrite(str(images / f'img_{i:05d}.jpg'), np.roll(base, i, axis=1))
            rows.append(f'img_{i:05d}.jpg,{i * 0.5:.3f},{i * 0.1:.3f},1.6,0.5,-0.5,0.5,-0.5')
        (tmp / 'poses.csv').write_text('\n'.join(rows) + '\n')
        (tmp / 'geo.yaml').write_text('enu_origin: [31.262, 34.804, 300.0]\n')
        db = tmp / 'db'
        cli = Path(sys.executable).with_name('vizloc-db')
        cmd = [str(cli), 'add', str(db), '--poses', str(tmp / 'poses.csv'), '--geo', str(tmp / 'geo.yaml'),
               '--fov', '70']
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={'VIZLOC_NO_PROGRESS': '1', 'PATH': '/usr/bin:/bin'})
        first = time.perf_counter() - t0
        # a second batch into the now non-empty database (manifest re-read and re-written)
        shutil.copytree(images, tmp / 'images2')
        for p in sorted((tmp / 'images2').iterdir()):
            p.rename(p.with_name('b' + p.name))
        (tmp / 'poses2.csv').write_text('\n'.join(['image,x,y,z,qx,qy,qz,qw'] + ['b' + r for r in rows[1:]]) + '\n')
        t0 = time.perf_counter()
        subprocess.run([str(cli), 'add', str(db), '--poses', str(tmp / 'poses2.csv'), '--images', str(tmp / 'images2'),
                        '--geo', str(tmp / 'geo.yaml'), '--fov', '70'], check=True,
                       env={'VIZLOC_NO_PROGRESS': '1', 'PATH': '/usr/bin:/bin'})
        second = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([str(cli), 'verify', str(db)], check=True, env={'PATH': '/usr/bin:/bin'})
        verify_s = time.perf_counter() - t0
        print(f'vizloc-db add {count} entries (320x240): {first:.1f} s into an empty database, {second:.1f} s into one '
              f'of {count}; vizloc-db verify of {2 * count}: {verify_s:.1f} s', flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--entries', type=int, default=100_000)
    parser.add_argument('--dim', type=int, default=256)
    parser.add_argument('--queries', type=int, default=200)
    parser.add_argument('--add', type=int, default=1000)
    args = parser.parse_args()
    bench_query(args.entries, args.dim, args.queries)
    bench_add(args.add)
    return 0


if __name__ == '__main__':
    sys.exit(main())
