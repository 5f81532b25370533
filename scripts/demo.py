"""``make demo`` / ``make demo-all``: generate a small world, train a real localizer, score it with vizloc-eval.

    python scripts/demo.py [room_classifier|gps_regressor|scene_coordinates|all] [--fresh]

For each localizer: (1) a small synthetic world (``vizloc-synth``), cached under
``.cache/demo/worlds/`` keyed by world + generator arguments + the generator's code; (2) a bundle
trained with a fast preset (``vizloc-train``), cached under ``.cache/demo/bundles/`` keyed by the
world's key + preset + the training and plugin code; (3) ``vizloc-eval`` (offline, the node's own
localizer construction) on the world's test bag ``eval_bag``. Prints one table (localizer, metric,
value, the seed's figure) and where report, plots and the estimates mcap are. ``--fresh`` ignores
the caches. Logs of each step: ``.cache/demo/logs/``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / '.cache' / 'demo'
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Demo:
    """One localizer's demo: its world, generator arguments, training preset and overrides."""

    localizer: str          # localizer type = vizloc-train subcommand
    name: str               # instance name in the node (topics /vizloc/<name>/...)
    world: str              # vizloc-synth world
    synth_args: tuple[str, ...]
    preset: str
    train_set: tuple[str, ...] = ()


#: Fast settings: minutes on a 2-core CPU, not the documented best figures (docs/localizers/*.md).
DEMOS: dict[str, Demo] = {
    'room_classifier': Demo('room_classifier', 'room', 'indoor', ('--frames', '240', '--size', '160x120', '--seed', '0'),
                            'tiny', ('image_size=96', 'max_side_px=128', 'epochs=6', 'tta_flip=false',
                                     'eval_trajectory=false')),
    'gps_regressor': Demo('gps_regressor', 'gps', 'campus', ('--frames', '400', '--size', '160x120', '--seed', '0'),
                          'tiny'),
    'scene_coordinates': Demo('scene_coordinates', 'scene', 'aerial', ('--frames', '200', '--seed', '0'), 'tiny'),
}


def code_hash(*paths: Path) -> str:
    """sha256 over the .py/.yaml/.toml files at or under ``paths`` (names and contents): the 'code version' of a cache key."""
    h = hashlib.sha256()
    for d in paths:
        for path in ([d] if d.is_file() else sorted(d.rglob('*'))):
            if path.suffix in ('.py', '.yaml', '.toml') and '__pycache__' not in path.parts:
                h.update(str(path.relative_to(REPO)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _key(*parts: str) -> str:
    return hashlib.sha256('\0'.join(parts).encode()).hexdigest()[:16]


def _run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'), VIZLOC_NO_PROGRESS='1')
    with log.open('w') as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f'demo: {" ".join(cmd)} failed (exit {proc.returncode}); log {log}:\n' + '\n'.join(tail))


def _cached(kind: str, key: str, build, fresh: bool) -> tuple[Path, bool]:
    """``.cache/demo/<kind>/<key>``, built by ``build(tmp_dir)`` unless present; (path, was cached)."""
    final = CACHE / kind / key
    if final.is_dir() and (final / '.complete').is_file() and not fresh:
        return final, True
    tmp = CACHE / kind / f'.{key}.partial'
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    build(tmp)
    (tmp / '.complete').write_text(time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()) + '\n')
    tmp.rename(final)
    return final, False


def world_for(demo: Demo, fresh: bool) -> tuple[Path, str, bool]:
    key = f'{demo.world}-' + _key(demo.world, *demo.synth_args, code_hash(REPO / 'training' / 'vizloc_training' / 'synth',
                                                                          REPO / 'vizloc_ros' / 'bags.py', REPO / 'vizloc_ros' / 'eval_bag.py',
                                                                          REPO / 'vizloc_ros' / 'geodesy.py'))

    def build(tmp: Path) -> None:
        _run([str(BIN / 'vizloc-synth'), demo.world, '--out', str(tmp / 'world'), *demo.synth_args],
             CACHE / 'logs' / f'{key}.synth.log')

    path, cached = _cached('worlds', key, build, fresh)
    return path / 'world', key, cached


def bundle_for(demo: Demo, world: Path, world_key: str, fresh: bool) -> tuple[Path, bool]:
    key = f'{demo.localizer}-' + _key(world_key, demo.preset, *demo.train_set,
                                      code_hash(REPO / 'training' / 'vizloc_training', REPO / 'plugins' / 'vizloc_plugins',
                                                REPO / 'vizloc_ros' / 'bundle.py'))

    def build(tmp: Path) -> None:
        cmd = [str(BIN / 'vizloc-train'), demo.localizer, '--data', str(world), '--out', str(tmp / 'bundle'),
               '--preset', demo.preset, '--seed', '0']
        for item in demo.train_set:
            cmd += ['--set', item]
        _run(cmd, CACHE / 'logs' / f'{key}.train.log')

    path, cached = _cached('bundles', key, build, fresh)
    return path / 'bundle', cached


def run_demo(names: Sequence[str], out_root: Path, fresh: bool = False) -> int:
    sys.path.insert(0, str(REPO))
    from vizloc_ros.eval_bag import EVAL_BAG_NAME, find_evaluation_bag
    from vizloc_ros.evaluation.cli import build_parser, evaluate
    from vizloc_ros.evaluation.report import format_table

    all_reports = {}
    outputs = []
    start = time.monotonic()
    for name in names:
        demo = DEMOS[name]
        t0 = time.monotonic()
        world, world_key, world_cached = world_for(demo, fresh)
        t1 = time.monotonic()
        print(f'[demo] {name}: world {demo.world} {"(cached)" if world_cached else "generated"} in {t1 - t0:.0f} s: {world}',
              flush=True)
        bundle, bundle_cached = bundle_for(demo, world, world_key, fresh)
        t2 = time.monotonic()
        print(f'[demo] {name}: bundle {"(cached)" if bundle_cached else "trained (preset " + demo.preset + ")"} in '
              f'{t2 - t1:.0f} s: {bundle}', flush=True)
        out = out_root / name
        out.mkdir(parents=True, exist_ok=True)
        params = out / 'params.yaml'
        params.write_text(json.dumps({'/**': {'ros__parameters': {
            'localizers': [demo.name],
            demo.name: {'type': demo.localizer, 'bundle': str(bundle), 'backend': 'onnxruntime'}}}}, indent=2) + '\n')
        ns = build_parser().parse_args(['--bag', str(find_evaluation_bag(world) or world / EVAL_BAG_NAME), '--params', str(params),
                                        '--out', str(out)])
        result = evaluate(ns)
        print(f'[demo] {name}: vizloc-eval in {time.monotonic() - t2:.0f} s', flush=True)
        all_reports.update(result['reports'])
        outputs.append((name, out))
    print()
    print(format_table(all_reports))
    print()
    for name, out in outputs:
        print(f'{name}: report {out / "report.md"}, plots {out}/*.png, estimates {out / "estimates" / "estimates.mcap"}')
    print(f'[demo] total {time.monotonic() - start:.0f} s')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('localizer', nargs='?', default='room_classifier', choices=[*DEMOS, 'all'])
    p.add_argument('--out', type=Path, default=REPO / 'demo_out', help='where reports go (default demo_out/)')
    p.add_argument('--fresh', action='store_true', help='ignore the world and bundle caches')
    ns = p.parse_args(argv)
    names = list(DEMOS) if ns.localizer == 'all' else [ns.localizer]
    return run_demo(names, ns.out, fresh=ns.fresh)


if __name__ == '__main__':
    sys.exit(main())
