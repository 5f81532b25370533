"""``vizloc-synth``: generate a synthetic world (thin shim over ``vizloc_training.synth.<world>.generate``).

    vizloc-synth {aerial,indoor,campus,multisite} --out DIR [--seed N] [--frames N] [--size WxH]
    vizloc-synth aerial ... [--orthophoto IMG] [--elevation DEM.npy] [--geo-yaml GEO.yaml] [--dem-spacing M]
                            [--train-sampling {lhs,lawnmower}]

See docs/synthetic_worlds.md.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ['WORLDS', 'build_parser', 'main', 'parse_size', 'run']

_LOG = logging.getLogger(__name__)

WORLDS = ('aerial', 'indoor', 'campus', 'multisite')


def parse_size(text: str) -> tuple[int, int]:
    """``'320x240'`` -> ``(320, 240)`` (width, height)."""
    parts = text.lower().split('x')
    try:
        w, h = (int(p) for p in parts)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f'size must be WxH, e.g. 320x240, got {text!r}') from exc
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f'size must be positive, got {text!r}')
    return w, h


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}') from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected an integer >= 1, got {value}')
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='vizloc-synth', description='Generate a synthetic world with exact ground truth.')
    parser.add_argument('world', choices=WORLDS, help='which world to generate')
    parser.add_argument('--out', required=True, type=Path, help='output directory (must be absent or empty)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (same seed -> identical files)')
    parser.add_argument('--frames', type=_positive_int, default=None,
                        help='number of training frames (val/test scale with it); default: the world\'s default')
    parser.add_argument('--size', type=parse_size, default=None, help='image size WxH; default: the world\'s default')
    aerial = parser.add_argument_group('aerial only')
    aerial.add_argument('--orthophoto', type=Path, default=None, help='north-up orthophoto image to use as texture')
    aerial.add_argument('--elevation', type=Path, default=None,
                        help='.npy 2-D elevation grid (metres in the scene frame z, row 0 = north, centred on the scene origin)')
    aerial.add_argument('--geo-yaml', type=Path, default=None, help='geo.yaml geo-referencing the scene frame')
    aerial.add_argument('--dem-spacing', type=float, default=None, help='elevation grid spacing in metres (default 2)')
    aerial.add_argument('--train-sampling', choices=('lhs', 'lawnmower'), default=None,
                        help='training views: lhs = Latin-hypercube views over position, altitude, heading, tilt and sun '
                             '(default), lawnmower = one lawnmower flight; val/test flights are the same either way')
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    return parser


def run(args: argparse.Namespace) -> Path:
    """Dispatch parsed arguments to the world's ``generate``; returns the output directory."""
    extra: dict[str, Any] = {}
    aerial_only = {'orthophoto': args.orthophoto, 'elevation': args.elevation, 'geo': args.geo_yaml,
                   'dem_spacing_m': args.dem_spacing, 'train_sampling': args.train_sampling}
    given = {k: v for k, v in aerial_only.items() if v is not None}
    if given and args.world != 'aerial':
        flags = ', '.join('--' + {'geo': 'geo-yaml', 'dem_spacing_m': 'dem-spacing', 'train_sampling': 'train-sampling'}.get(k, k) for k in given)
        raise ValueError(f'{flags}: only for the aerial world')
    extra.update(given)
    if args.size is not None:  # otherwise the world's own default size
        extra['size'] = args.size
    module = importlib.import_module(f'vizloc_training.synth.{args.world}')
    return module.generate(args.out, seed=args.seed, frames=args.frames, **extra)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    t0 = time.perf_counter()
    try:
        out = run(args)
    except (ValueError, OSError) as exc:
        _LOG.error('%s', exc)
        return 2
    print(f'{args.world} world written to {out} in {time.perf_counter() - t0:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
