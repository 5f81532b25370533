"""``vizloc-eval``: score the node's localizers on an evaluation bag.

    vizloc-eval --bag DIR/eval_bag --params config/localize.yaml --out results/ [--align se3]

Writes results/report.json, report.md, PNG plots, TUM trajectories and estimates/ (rosbag2, mcap).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from ..bags import BagError
from ..eval_bag import CAMERA_INFO_TOPIC, IMAGE_TOPIC
from .metrics import ALIGNMENTS, score_run
from .report import format_table, write_estimates_bag, write_plots, write_report_json, write_report_md
from .run import EvalError, EvalRun, run_offline

__all__ = ['build_parser', 'evaluate', 'main']

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='vizloc-eval',
        description='Run the localizers that the vizloc node builds from PARAMS over every frame of an evaluation '
                    'bag (offline, deterministic; or --live through the running node), match their outputs to /ground_truth/{fix,pose,room} by stamp, '
                    'and write report.json, report.md, PNG plots, TUM trajectories and estimates/ (rosbag2 mcap).')
    p.add_argument('--bag', type=Path, required=True, help='rosbag2 evaluation bag (e.g. DIR/eval_bag)')
    p.add_argument('--params', type=Path, required=True, help='the node\'s params file (e.g. config/localize.yaml)')
    p.add_argument('--out', type=Path, required=True, help='output directory (created)')
    p.add_argument('--image-topic', default=IMAGE_TOPIC, help=f'image topic in the bag (default {IMAGE_TOPIC}; '
                   'its /compressed form is used when only that exists)')
    p.add_argument('--camera-info-topic', default=CAMERA_INFO_TOPIC, help=f'default {CAMERA_INFO_TOPIC}')
    p.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                   help='override a node parameter (as ros2 run ... -p), repeatable')
    p.add_argument('--align', choices=ALIGNMENTS, default='none',
                   help='trajectory alignment before evo APE: none (default), se3 or sim3 (Umeyama)')
    p.add_argument('--max-dt-ms', type=float, default=0.0,
                   help='match ground truth within this many ms of an estimate (default 0: equal stamps)')
    p.add_argument('--max-frames', type=int, default=None, help='stop after this many frames (offline)')
    p.add_argument('--live', action='store_true',
                   help='start vizloc_node, replay the bag at its timing (ros2 bag play, else vizloc-replay) and score '
                        'what arrives through subscriptions: drops, end-to-end latency and QoS show up')
    p.add_argument('--rate', type=float, default=1.0, help='--live: replay speed factor (default 1.0)')
    p.add_argument('--no-plots', action='store_true', help='skip the PNG plots')
    p.add_argument('--no-progress', action='store_true', help='no progress bar (also VIZLOC_NO_PROGRESS=1)')
    return p


def evaluate(ns: argparse.Namespace, extra_plugins: Sequence[object] = ()) -> dict[str, Any]:
    """Run, score and write everything; returns {'run', 'reports', 'plots'}."""
    out: Path = ns.out
    out.mkdir(parents=True, exist_ok=True)
    if ns.live:
        from .live import run_live

        run: EvalRun = run_live(ns.bag, ns.params, image_topic=ns.image_topic, camera_info_topic=ns.camera_info_topic,
                                rate=ns.rate, overrides=ns.param, log_dir=out)
    else:
        run = run_offline(ns.bag, ns.params, image_topic=ns.image_topic, camera_info_topic=ns.camera_info_topic,
                          max_frames=ns.max_frames, progress=not ns.no_progress, overrides=ns.param,
                          extra_plugins=extra_plugins)
    reports = score_run(run, alignment=ns.align, max_dt_ns=int(ns.max_dt_ms * 1e6), tum_dir=out)
    plots = [] if ns.no_plots else write_plots(out, reports)
    write_estimates_bag(out / 'estimates', run)
    write_report_json(out / 'report.json', run, reports, {'params': str(ns.params), 'alignment': ns.align})
    write_report_md(out / 'report.md', run, reports, plots)
    return {'run': run, 'reports': reports, 'plots': plots}


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        result = evaluate(ns)
    except (EvalError, BagError, FileNotFoundError) as exc:
        print(f'vizloc-eval: {exc}', file=sys.stderr)
        return 1
    print(format_table(result['reports']))
    print(f'\nreport: {ns.out / "report.md"} (json: {ns.out / "report.json"}); plots: {len(result["plots"])} PNG in '
          f'{ns.out}; estimates: {ns.out / "estimates" / "estimates.mcap"} (rosbag2 {ns.out / "estimates"})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
