"""Evaluation of the GPS regressor: the seed-001 error table, ellipse calibration and robustness.

Two ways in:

* :func:`evaluate_arrays` - from predictions (metres in the regression frame) and ground truth; used
  by the trainer on the validation/test splits (torch model in memory).
* :func:`evaluate_localizer_on_bag` - end to end: a rosbag2 evaluation bag (``vizloc-synth ... /
  eval.bag``) replayed frame by frame through the *runtime* ``gps_regressor`` localizer (plugin,
  ONNX Runtime) and compared with ``/ground_truth/fix``. ``python -m
  vizloc_training.gps_regressor.evaluate --bundle B [--bundle B2 ...] --bag DIR/eval_bag [--option
  KEY=VALUE ...]`` prints the table.

Errors are haversine distances between predicted and true latitude/longitude (the seed's metric);
ellipse coverage uses the error vector in the regression ENU frame and the predicted (calibrated)
2x2 covariance.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..metrics import geo as geo_metrics
from .robustness import VARIANTS, corrupt_batch

__all__ = ['evaluate_arrays', 'nearest_train_distance', 'robustness_table', 'evaluate_localizer_on_bag', 'main']

logger = logging.getLogger(__name__)

COVERAGE_PROB = 0.95


def evaluate_arrays(pred_en_m_N2: np.ndarray, cov_en_m2_N22: np.ndarray, true_lla_N3: np.ndarray,
                    to_lat_lon: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                    true_en_m_N2: np.ndarray, variance_scale: float = 1.0) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of one split and the per-sample errors (metres).

    ``to_lat_lon`` maps (N, 2) regression-frame positions to latitude/longitude; the error is the
    haversine distance to the true latitude/longitude. The dict holds :func:`geo_error_stats`
    plus ``ellipse95_coverage_pct`` (share of true positions inside the predicted 95 % ellipse,
    covariance multiplied by ``variance_scale``) and ``sigma_median_m`` (median predicted
    horizontal standard deviation, sqrt of half the covariance trace).
    """
    pred_lat, pred_lon = to_lat_lon(pred_en_m_N2)
    errors = geo_metrics.haversine_m(pred_lat, pred_lon, true_lla_N3[:, 0], true_lla_N3[:, 1])
    stats = geo_metrics.geo_error_stats(errors)
    cov = np.asarray(cov_en_m2_N22, dtype=np.float64) * variance_scale
    err_vec = np.asarray(pred_en_m_N2, dtype=np.float64) - np.asarray(true_en_m_N2, dtype=np.float64)
    stats['ellipse95_coverage_pct'] = 100.0 * geo_metrics.ellipse_coverage(err_vec, cov, COVERAGE_PROB)
    stats['sigma_median_m'] = float(np.median(np.sqrt(0.5 * (cov[:, 0, 0] + cov[:, 1, 1]))))
    return stats, errors


def nearest_train_distance(query_en_m_N2: np.ndarray, train_en_m_M2: np.ndarray) -> dict[str, float]:
    """How far the evaluation positions are from the nearest *training* position (metres).

    A model that can only recall training positions cannot do better than this (the analogue of
    seed 002's "best cell" bound): a test route far from every training route is extrapolation.
    Keys: ``median_m``, ``p90_m``, ``within_5m_pct``, ``within_10m_pct``.
    """
    q = np.asarray(query_en_m_N2, dtype=np.float64)
    t = np.asarray(train_en_m_M2, dtype=np.float64)
    best = np.full(q.shape[0], np.inf)
    for start in range(0, t.shape[0], 2048):  # bounded memory
        chunk = t[start:start + 2048]
        best = np.minimum(best, np.linalg.norm(q[:, None, :] - chunk[None], axis=2).min(axis=1))
    return {'median_m': float(np.median(best)), 'p90_m': float(np.percentile(best, 90)),
            'within_5m_pct': float(100.0 * np.mean(best <= 5.0)), 'within_10m_pct': float(100.0 * np.mean(best <= 10.0))}


def robustness_table(predict_errors: Callable[[np.ndarray], np.ndarray], images_NHW3: np.ndarray,
                     regular_errors_m: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Mean error and degradation per corruption variant, plus the pooled ``augmented`` set.

    ``predict_errors(images) -> errors_m`` runs the model on a batch of corrupted test images.
    Keys: ``regular_mean_m``, ``<variant>_mean_m``, ``<variant>_degradation``, ``augmented_mean_m``,
    ``augmented_degradation`` (seed 001's robustness table).
    """
    table: dict[str, float] = {'regular_mean_m': float(np.mean(regular_errors_m))}
    pooled = []
    for i, variant in enumerate(VARIANTS):
        errors = predict_errors(corrupt_batch(images_NHW3, variant, seed=seed + i))
        pooled.append(errors)
        table[f'{variant}_mean_m'] = float(np.mean(errors))
        table[f'{variant}_degradation'] = geo_metrics.degradation(regular_errors_m, errors)
    all_errors = np.concatenate(pooled)
    table['augmented_mean_m'] = float(np.mean(all_errors))
    table['augmented_degradation'] = geo_metrics.degradation(regular_errors_m, all_errors)
    return table


def evaluate_localizer_on_bag(bundles: Sequence[Path], bag: Path, *, max_frames: int | None = None,
                              backend: str = 'onnxruntime', robustness: bool = True,
                              cache_dir: Path | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replay ``bag`` through the runtime ``gps_regressor`` (plugin from the real registry) and score it.

    ``bundles[0]`` is the localizer's bundle, the others its ``ensemble_bundles``; ``options``: more
    localizer options (:class:`vizloc_plugins.gps_regressor.GPSRegressorOptions` fields). Returns
    ``{'test': table, 'robustness': table, 'latency_ms_median': ..., 'frames': N}``; coverage uses
    the published 3x3 ENU covariance's horizontal block and the ENU error at the ground truth.
    """
    from vizloc_ros.eval_bag import read_evaluation_bag
    from vizloc_ros.localizer import LocalizerConfig, LocalizerContext, run_localizer
    from vizloc_ros.plugin_manager import load_registry
    from vizloc_ros.types import Frame

    registry = load_registry().registry
    config = LocalizerConfig(name='gps', type='gps_regressor', bundle=str(bundles[0]), backend=backend)
    context = LocalizerContext(cache_dir=cache_dir or Path.home() / '.cache' / 'vizloc_ros')
    localizer = registry.create(config, {**(options or {}), 'ensemble_bundles': [str(b) for b in bundles[1:]]},
                                context)
    try:
        images, truth, preds, covs, latencies = [], [], [], [], []
        for i, sample in enumerate(read_evaluation_bag(bag)):
            if max_frames is not None and i >= max_frames:
                break
            if sample.fix_lla is None:
                continue
            frame = Frame(rgb_HW3=sample.rgb_HW3, stamp_ns=sample.stamp_ns, frame_id=sample.frame_id)
            result, _, _ = run_localizer(localizer, frame, 'gps')  # timed and checked as the node does
            if result.geo is None:
                raise RuntimeError(f'gps_regressor returned no estimate for frame {i} ({result.status})')
            images.append(sample.rgb_HW3)
            truth.append(sample.fix_lla)
            preds.append((result.geo.lat_deg, result.geo.lon_deg))
            covs.append(result.geo.cov_enu_m2[:2, :2])
            latencies.append(result.latency_ms)
        if not truth:
            raise ValueError(f'{bag}: no frames with /ground_truth/fix')
        truth_a = np.asarray(truth, dtype=np.float64)
        pred_a = np.asarray(preds, dtype=np.float64)
        errors = geo_metrics.haversine_m(pred_a[:, 0], pred_a[:, 1], truth_a[:, 0], truth_a[:, 1])
        table = geo_metrics.geo_error_stats(errors)
        err_vec = geo_metrics.enu_error_m(pred_a[:, 0], pred_a[:, 1], truth_a[:, 0], truth_a[:, 1])
        table['ellipse95_coverage_pct'] = 100.0 * geo_metrics.ellipse_coverage(err_vec, np.stack(covs), COVERAGE_PROB)
        out: dict[str, Any] = {'frames': len(truth), 'test': table,
                               'latency_ms_median': float(np.median(latencies)),
                               'backend': localizer.backend_name}
        if robustness:
            def predict_errors(batch: np.ndarray) -> np.ndarray:
                got = []
                for image in batch:
                    geo = localizer.localize(Frame(rgb_HW3=image, stamp_ns=0, frame_id='camera')).geo
                    got.append((geo.lat_deg, geo.lon_deg))
                g = np.asarray(got)
                return geo_metrics.haversine_m(g[:, 0], g[:, 1], truth_a[:, 0], truth_a[:, 1])

            out['robustness'] = robustness_table(predict_errors, np.stack(images), errors)
        return out
    finally:
        localizer.close()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: score bundle(s) on an evaluation bag through the runtime plugin and print the tables."""
    from ..train.metrics_table import flatten_metrics, format_table

    parser = argparse.ArgumentParser(prog='python -m vizloc_training.gps_regressor.evaluate',
                                     description='Score gps_regressor bundle(s) on a rosbag2 evaluation bag.')
    parser.add_argument('--bundle', type=Path, action='append', required=True,
                        help='bundle directory (repeat for an ensemble)')
    parser.add_argument('--bag', type=Path, required=True, help='evaluation bag (e.g. DIR/eval_bag)')
    parser.add_argument('--max-frames', type=int, default=None)
    parser.add_argument('--backend', default='onnxruntime')
    parser.add_argument('--no-robustness', action='store_true')
    parser.add_argument('--option', action='append', default=[], metavar='KEY=VALUE',
                        help="a gps_regressor localizer option (the node's ROS parameter <name>.KEY), repeatable; "
                             'e.g. --option track_hypotheses=1')
    ns = parser.parse_args(argv)
    from vizloc_plugins.gps_regressor import GPSRegressorOptions
    from vizloc_ros.localizer import ConfigError, options_from_text, parse_key_values

    try:  # a malformed item, an unknown key, a bad value or GPSRegressorOptions' own checks: a usage error
        texts = parse_key_values(ns.option, '--option')
        parsed = options_from_text(GPSRegressorOptions, texts, where='--option')
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    started = time.perf_counter()
    result = evaluate_localizer_on_bag(ns.bundle, ns.bag, max_frames=ns.max_frames, backend=ns.backend,
                                       robustness=not ns.no_robustness,
                                       options={key: getattr(parsed, key) for key in texts})
    result['eval_s'] = time.perf_counter() - started
    print(format_table(flatten_metrics(result), title=f'gps_regressor on {ns.bag} ({len(ns.bundle)} bundle(s))'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
