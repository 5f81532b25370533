"""Evaluation of a retrieval bundle against a reference database, exactly as the node runs it.

Each query image goes through :class:`vizloc_ros.runner.BundleModel` (the ONNX descriptor) and
:class:`vizloc_plugins.retrieval.RetrievalPipeline` (FAISS, SIFT verification, PnP). Metrics:

* ``recall_at_{1,5,10}_pct``: share of queries with a retrieved entry (FAISS order) within
  ``recall_radius_m`` (25 m) of the true position among the first k; ``reranked_recall_at_1_pct``: the same
  for the best entry after geometric re-ranking;
* ``pose_*``: :func:`vizloc_training.metrics.pose.summarize_pose_errors` of the PnP poses (fallbacks
  count as failures), thresholds :data:`RETRIEVAL_THRESHOLDS`;
* ``position_*``: :func:`vizloc_training.metrics.geo.geo_error_stats` of the published position
  (PnP, or the best reference for fallbacks), and ``pnp_pct`` (share of queries with a PnP pose).

    python -m vizloc_training.retrieval.evaluate --bundle BUNDLE --data CAMPUS [--split test] [--max-queries N]
        [--option KEY=VALUE ...]   # a localizer option, as the node's <name>.KEY parameter

The queries that get no PnP pose are counted by the pipeline's failure kind (``no_pose_<kind>_pct``,
:data:`vizloc_plugins.retrieval.FAILURES`).
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..metrics.geo import geo_error_stats
from ..metrics.pose import pose_errors, summarize_pose_errors
from .data import load_queries, read_rgb

__all__ = ['RETRIEVAL_THRESHOLDS', 'evaluate_bundle', 'main']

logger = logging.getLogger(__name__)

#: (metres, degrees) pose thresholds reported for the retrieval localizer.
RETRIEVAL_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (1.0, 5.0), (5.0, 10.0))
POSITION_THRESHOLDS_M = (1.0, 5.0, 10.0, 25.0)


def evaluate_bundle(bundle: Path, data: Path, *, database: Path | None = None, split: str = 'test',
                    max_queries: int = 0, options: Any = None, sequence_period_s: float = 0.0) -> dict[str, float]:
    """Metrics of ``bundle`` on the ``split`` queries of the campus-layout dataset ``data`` (database:
    ``data/refdb`` unless given; its descriptors and index must have been built with this bundle).
    ``sequence_period_s`` > 0: the queries are one run in file order, ``sequence_period_s`` apart, and each
    frame gets the previous pose as its prior and the last poses' map points as the plugin does (``PoseTrack``);
    0: every query on its own."""
    from vizloc_ros.runner import BundleModel
    from vizloc_plugins.retrieval import PoseTrack, RetrievalOptions, RetrievalPipeline
    from vizloc_plugins.retrieval_contract import LOCALIZER_TYPE, RetrievalContract, descriptor_model_name
    from vizloc_ros.types import CameraIntrinsics, Frame

    from ..train.loop import progress

    database = database or data / 'refdb'
    options = options or RetrievalOptions(database=str(database))
    queries = load_queries(data, split, max_queries)
    camera = CameraIntrinsics(K=queries.K, width=queries.width, height=queries.height)
    with BundleModel(bundle, backend='onnxruntime', expected_type=LOCALIZER_TYPE) as model:
        contract = RetrievalContract.from_bundle(model.bundle)
        pipeline = RetrievalPipeline(database, descriptor_model_name(model.bundle.model_sha256), options)
        ref_position = {e.uid: e.T_map_camera[:3, 3] for e in pipeline.db if e.E is not None}
        hits = np.zeros((len(queries.images), 3), bool)
        reranked_hit = np.zeros(len(queries.images), bool)
        estimates: list[np.ndarray | None] = []
        position_err = np.zeros(len(queries.images))
        latency_ms = []
        failures: collections.Counter[str] = collections.Counter()
        example: dict[str, str] = {}
        chained = 0
        track = PoseTrack(options if sequence_period_s > 0 else replace(options, track_speed_mps=0.0), 'evaluate')

        for i, path in enumerate(progress(queries.images, desc=f'evaluate {split}')):
            rgb = read_rgb(path)
            started = time.perf_counter()
            stamp_ns = int(round(i * sequence_period_s * 1e9))
            frame = Frame(rgb_HW3=rgb, stamp_ns=stamp_ns, frame_id='camera', camera=camera)
            descriptor = model.run(frame, ['descriptor'])['descriptor'][0]
            outcome, _ = track.step(pipeline, rgb, descriptor, camera, stamp_ns)
            chained += outcome.chained
            latency_ms.append((time.perf_counter() - started) * 1e3)
            truth = queries.T_map_camera[i, :3, 3]
            near = [np.linalg.norm(ref_position[u][:2] - truth[:2]) <= contract.recall_radius_m
                    for u in outcome.candidates]
            for j, k in enumerate((1, 5, 10)):
                hits[i, j] = any(near[:k])
            if outcome.best_uid is not None:
                reranked_hit[i] = np.linalg.norm(ref_position[outcome.best_uid][:2] - truth[:2]) <= contract.recall_radius_m
            estimates.append(outcome.T_map_camera)
            if outcome.T_map_camera is None:
                failures[outcome.failure] += 1
                example.setdefault(outcome.failure, outcome.reason)
            published = (outcome.T_map_camera[:3, 3] if outcome.T_map_camera is not None
                         else ref_position.get(outcome.best_uid, np.full(3, np.nan)))
            position_err[i] = float(np.linalg.norm(published[:2] - truth[:2]))
    t_err, r_err = pose_errors(estimates, list(queries.T_map_camera))
    summary = summarize_pose_errors(t_err, r_err, RETRIEVAL_THRESHOLDS)
    metrics: dict[str, float] = {'queries': float(len(queries.images)), 'database_entries': float(len(pipeline.db)),
                                 'database_version': float(pipeline.db.version)}
    for j, k in enumerate((1, 5, 10)):
        metrics[f'recall_at_{k}_pct'] = float(100.0 * hits[:, j].mean())
    metrics['reranked_recall_at_1_pct'] = float(100.0 * reranked_hit.mean())
    metrics['pnp_pct'] = float(100.0 * np.mean([e is not None for e in estimates]))
    metrics.update({f'pose_{k}': v for k, v in summary.as_dict().items()})
    finite = np.where(np.isfinite(position_err), position_err, 1e9)
    metrics.update({f'position_{k}': v for k, v in geo_error_stats(finite, POSITION_THRESHOLDS_M).items()})
    metrics['latency_p50_ms'] = float(np.percentile(latency_ms, 50))
    metrics['chained_pct'] = float(100.0 * chained / len(queries.images))
    for failure, count in failures.most_common():
        metrics[f'no_pose_{failure}_pct'] = float(100.0 * count / len(queries.images))
        logger.info('no PnP pose for %d of %d queries: %s (e.g. %s)', count, len(queries.images), failure,
                    example[failure])
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description='Evaluate a retrieval bundle on a campus-layout dataset.')
    parser.add_argument('--bundle', type=Path, required=True)
    parser.add_argument('--data', type=Path, required=True)
    parser.add_argument('--database', type=Path, default=None, help='default: DATA/refdb')
    parser.add_argument('--split', default='test')
    parser.add_argument('--max-queries', type=int, default=0)
    parser.add_argument('--option', action='append', default=[], metavar='KEY=VALUE',
                        help="a retrieval localizer option (the node's ROS parameter <name>.KEY), repeatable; "
                             'e.g. --option verify_k=20')
    parser.add_argument('--sequence-period-s', type=float, default=0.0,
                        help='> 0: the split is one run in file order, frames this many seconds apart, and each '
                             "frame gets the previous pose as prior and the last poses' map points like the node's "
                             'plugin (options track_*, chain_frames); '
                             '0 (default): every query on its own')
    ns = parser.parse_args(argv)
    if not (math.isfinite(ns.sequence_period_s) and ns.sequence_period_s >= 0.0):
        parser.error(f'--sequence-period-s must be >= 0, got {ns.sequence_period_s}')
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    from vizloc_plugins.retrieval import RetrievalOptions
    from vizloc_ros.localizer import ConfigError, options_from_text, parse_key_values

    try:  # a malformed item, an unknown key, a bad value or RetrievalOptions' own checks: a usage error
        texts = {'database': str(ns.database or ns.data / 'refdb'), **parse_key_values(ns.option, '--option')}
        options = options_from_text(RetrievalOptions, texts, where='--option')
    except ConfigError as exc:
        parser.error(str(exc))
    metrics = evaluate_bundle(ns.bundle, ns.data, database=ns.database, split=ns.split, max_queries=ns.max_queries,
                              options=options, sequence_period_s=ns.sequence_period_s)
    print(json.dumps(metrics, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
