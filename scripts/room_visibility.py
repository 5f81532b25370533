#!/usr/bin/env python3
"""How often a frame of an indoor world *shows* mostly another room than the one it is labelled with.

A room label is where the camera stands; what the classifier sees is where the camera looks. For
every val/test frame of a world written by ``vizloc-synth indoor`` this reads the frame's scene
coordinates (``scene/<split>/init/*.npy``, 1/8 resolution: floor, walls, ceiling, furniture),
assigns each visible cell to the room whose floor polygon (``rooms.yaml``) contains it, and counts
the frames where less than half of the visible cells lie in the labelled room. It prints the share
and the frame sequence ('.' = mostly its own room, 'X' = mostly another one):

    python scripts/room_visibility.py /tmp/worlds/indoor
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from vizloc_training.synth.indoor import own_room_share


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('world', type=Path, help='indoor world directory (vizloc-synth indoor --out)')
    parser.add_argument('--splits', nargs='+', default=['val', 'test'])
    args = parser.parse_args(argv)
    for split in args.splits:
        shares = own_room_share(args.world, split)
        other = [s < 0.5 for _stem, _label, s in shares]
        print(f'{split}: {len(shares)} frames, {sum(other)} ({100.0 * sum(other) / len(shares):.1f} %) show mostly '
              f'another room than their label')
        print(''.join('X' if o else '.' for o in other))
    return 0


if __name__ == '__main__':
    sys.exit(main())
