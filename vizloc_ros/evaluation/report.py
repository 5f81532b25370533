"""Write what ``vizloc-eval`` produced: report.json, report.md, PNG plots and the estimates bag.

Plots (matplotlib, Agg backend, no display needed), per localizer where it applies:
``<name>_trajectory.png`` (estimate vs ground truth in the map frame, or ENU metres for fixes),
``<name>_error_cdf.png``, ``<name>_error_time.png``, ``<name>_error_sigma.png`` (error vs the
predicted horizontal sigma with the 95 % line, error = sqrt(5.991) sigma) and
``<name>_room_confusion.png``.

``estimates/`` is a rosbag2 directory (mcap storage, ``estimates/estimates.mcap``) with the outputs
as the node publishes them (``/vizloc/<name>/{fix,pose,room}``) plus the bag's ground truth, so RViz
(``ros2 bag play``), Foxglove (open the .mcap) and evo (``evo_traj bag2 estimates ...``) read it.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..bags import BagWriter, bag_info, read_raw_messages
from ..eval_bag import FIX_TOPIC, POSE_TOPIC, ROOM_TOPIC
from .metrics import THRESHOLDS_M, LocalizerReport
from .run import EvalRun

__all__ = ['write_report_json', 'write_report_md', 'write_plots', 'write_estimates_bag', 'format_table',
           'SEED_FIGURES']

logger = logging.getLogger(__name__)

#: The seeds' published figures beside ours in report.md and the demo table (localizer type -> metric -> text).
#: Seed 001 (campus image-to-GPS, README table): mean 5.24 m, median 2.75-4.01 m, 94.5 % within 10 m.
#: Seed 000 (rooms) and 003 (CrossLoc) publish no figure in the seed text: shown as such.
SEED_FIGURES: dict[str, dict[str, str]] = {
    'room_classifier': {'accuracy_pct': 'seed 000: none published ("reasonable" room-level results)'},
    'gps_regressor': {'mean_error_m': 'seed 001: 5.24 m', 'median_error_m': 'seed 001: 2.75-4.01 m',
                      'within_10m_pct': 'seed 001: 94.5 %'},
    'scene_coordinates': {'median_error_m': 'seed 003 (CrossLoc): none in the seed text'},
}


def _clean(value: Any) -> Any:
    """JSON without NaN (written as null)."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_report_json(path: Path, run: EvalRun, reports: dict[str, LocalizerReport], extra: dict[str, Any]) -> Path:
    doc = {
        'bag': str(run.bag), 'mode': run.mode, 'node': run.node_name, 'map_frame': run.map_frame,
        'base_frame': run.base_frame, 'T_base_camera': run.extrinsic.T_base_camera.tolist(),
        'frames': len(run.frame_stamps_ns), 'ground_truth_frames': len(run.ground_truth),
        'not_configured': run.config_errors, **extra,
        'localizers': {name: rep.summary() for name, rep in reports.items()},
    }
    path.write_text(json.dumps(_clean(doc), indent=2, sort_keys=False) + '\n')
    return path


def _fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return '–' if not math.isfinite(value) else f'{value:.{digits}f}'
    return str(value)


TABLE_METRICS = ('frames', 'estimates', 'no_fix', 'errors', 'dropped', 'median_error_m', 'mean_error_m', 'p90_error_m',
                 'p95_error_m', *(f'within_{t:g}m_pct' for t in THRESHOLDS_M), 'median_rotation_deg',
                 'coverage_95_pct', 'accuracy_pct', 'latency_ms_p50')


def table_rows(reports: dict[str, LocalizerReport]) -> list[tuple[str, str, str, str]]:
    """(localizer, metric, value, seed's figure) for every metric that applies."""
    rows = []
    for name, rep in reports.items():
        summary = rep.summary()
        for metric in TABLE_METRICS:
            value = summary.get(metric)
            if isinstance(value, float) and not math.isfinite(value):
                continue
            rows.append((name, metric, _fmt(value), SEED_FIGURES.get(rep.type, {}).get(metric, '')))
        if rep.ape.get('rmse_m') is not None:
            rows.append((name, f'ape_rmse_m ({rep.ape["alignment"]})', _fmt(rep.ape['rmse_m']), ''))
    return rows


def format_table(reports: dict[str, LocalizerReport]) -> str:
    """A Markdown table: localizer | metric | value | seed's figure."""
    lines = ['| localizer | metric | value | seed\'s figure |', '|---|---|---|---|']
    lines += [f'| {a} | {b} | {c} | {d} |' for a, b, c, d in table_rows(reports)]
    return '\n'.join(lines)


def write_report_md(path: Path, run: EvalRun, reports: dict[str, LocalizerReport], plots: list[Path]) -> Path:
    lines = [f'# vizloc-eval: {run.bag.name}', '',
             f'Bag `{run.bag}`, {len(run.frame_stamps_ns)} frames, mode **{run.mode}**; positions of '
             f'`{run.base_frame}` in `{run.map_frame}` (ground truth through the same camera extrinsic).',
             '', format_table(reports), '']
    for name, reason in run.config_errors.items():
        lines.append(f'* `{name}` was not configured: {reason}')
    for name, rep in reports.items():
        if rep.ape:
            lines.append(f'* `{name}` evo APE: ' + ', '.join(f'{k} {_fmt(v, 3)}' for k, v in rep.ape.items()))
        if rep.last_error:
            lines.append(f'* `{name}` last error: {rep.last_error}')
    if plots:
        lines += ['', '## Plots', ''] + [f'![{p.stem}]({p.name})' for p in plots]
    path.write_text('\n'.join(lines) + '\n')
    return path


def write_plots(out_dir: Path, reports: dict[str, LocalizerReport]) -> list[Path]:
    """The PNG plots of every localizer (see the module docstring)."""
    import matplotlib
    from vizloc_training.metrics.geo import chi2_2dof_quantile

    matplotlib.use('Agg')
    k95 = math.sqrt(chi2_2dof_quantile(0.95))
    import matplotlib.pyplot as plt

    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    for name, rep in reports.items():
        s = rep.series
        if s.get('error_m'):
            err = np.asarray(s['error_m'])
            unit = 'map' if rep.position_source == 'pose' else 'ENU at the first fix'
            fig, ax = plt.subplots(figsize=(6, 5))
            ax.plot(s['gt_x'], s['gt_y'], '-', color='k', lw=1.5, label='ground truth')
            ax.plot(s['est_x'], s['est_y'], '.', color='tab:red', ms=4, label=f'{name} ({rep.position_source})')
            ax.set_xlabel(f'x [m] ({unit})')
            ax.set_ylabel('y [m]')
            ax.set_aspect('equal', adjustable='datalim')
            ax.legend()
            ax.set_title(f'{name}: trajectory')
            save(fig, f'{name}_trajectory.png')

            fig, ax = plt.subplots(figsize=(6, 4))
            xs = np.sort(err)
            ax.step(xs, 100.0 * np.arange(1, xs.size + 1) / max(1, rep.frames), where='post')
            ax.set_xscale('log' if xs.size and xs.min() > 0 and xs.max() / xs.min() > 100 else 'linear')
            ax.set_xlabel('position error [m]')
            ax.set_ylabel('frames within [%]')
            ax.set_title(f'{name}: error CDF (median {rep.median_error_m:.2f} m)')
            ax.grid(True, alpha=0.3)
            save(fig, f'{name}_error_cdf.png')

            fig, ax = plt.subplots(figsize=(7, 3.5))
            t = (np.asarray(s['stamp_ns']) - s['stamp_ns'][0]) / 1e9
            ax.plot(t, err, '.-', ms=3)
            ax.set_xlabel('time [s]')
            ax.set_ylabel('position error [m]')
            ax.set_title(f'{name}: error over time')
            ax.grid(True, alpha=0.3)
            save(fig, f'{name}_error_time.png')

            sigma = np.asarray(s['sigma_m'])
            fig, ax = plt.subplots(figsize=(5, 5))
            ax.plot(sigma, err, '.', ms=4)
            top = float(max(sigma.max(initial=0.0), 1e-9)) * 1.05
            ax.plot([0, top], [0, k95 * top], 'r--', label=f'95 % (error = {k95:.2f} sigma)')
            ax.set_xlabel('predicted horizontal sigma [m]')
            ax.set_ylabel('position error [m]')
            ax.set_title(f'{name}: error vs sigma (coverage {rep.coverage_95_pct:.0f} %)')
            ax.legend()
            save(fig, f'{name}_error_sigma.png')
        if rep.confusion:
            cm = np.asarray(rep.confusion)
            fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(rep.room_labels), 1.0 + 0.6 * len(rep.room_labels)))
            ax.imshow(cm, cmap='Blues')
            ax.set_xticks(range(len(rep.room_labels)), rep.room_labels, rotation=45, ha='right')
            ax.set_yticks(range(len(rep.room_labels)), rep.room_labels)
            for (i, j), v in np.ndenumerate(cm):
                ax.text(j, i, str(v), ha='center', va='center', fontsize=8)
            ax.set_xlabel('predicted')
            ax.set_ylabel('true')
            ax.set_title(f'{name}: rooms ({rep.accuracy_pct:.0f} %)')
            save(fig, f'{name}_room_confusion.png')
    return written


_OUTPUT_TYPES = {'fix': 'sensor_msgs/msg/NavSatFix', 'pose': 'geometry_msgs/msg/PoseWithCovarianceStamped',
                 'room': 'std_msgs/msg/String'}


def write_estimates_bag(path: Path, run: EvalRun) -> Path:
    """The outputs (as the node publishes them, under its topic names) + the bag's ground truth, as rosbag2 mcap."""
    from rclpy.serialization import serialize_message

    with BagWriter(path, storage='mcap', overwrite=True) as bag:
        for name, estimates in run.estimates.items():
            added: set[str] = set()
            for est in estimates:
                for suffix, msg in est.messages:
                    topic = f'{run.node_name}/{name}/{suffix}'
                    if topic not in added:
                        bag.add_topic(topic, _OUTPUT_TYPES[suffix])
                        added.add(topic)
                    bag.write_raw(topic, serialize_message(msg), est.stamp_ns)
        truth = [t for t in (FIX_TOPIC, POSE_TOPIC, ROOM_TOPIC) if t in bag_info(run.bag)['topics']]
        types = {t: bag_info(run.bag)['topics'][t]['type'] for t in truth}
        for topic in truth:
            bag.add_topic(topic, types[topic])
        for raw in read_raw_messages(run.bag, topics=truth):
            bag.write_raw(raw.topic, raw.cdr, raw.timestamp_ns)
    return path
