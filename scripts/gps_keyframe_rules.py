#!/usr/bin/env python3
"""Compare the GPS regressor's keyframe-map rules on one bundle, without retraining.

For every val and test image of a GPS-format dataset: the bundle's network estimate (ONNX Runtime,
through the plugin with ``keyframes: false``), the frame's keyframe votes and the two-view inliers of
every image any rule makes a candidate (:class:`vizloc_plugins.keyframes.PlaceMap`). Then each rule
picks candidates and a place (:func:`vizloc_plugins.keyframes.choose_place`) from those cached
figures (inliers and scales) and the published position (the place's, else the network's) is scored:

* candidates: the ``k`` images with most votes (the plugin: ``candidates``), or the most voted among
  the images inside the network's ellipse (``gate p``);
* tracking (the plugin's own :class:`vizloc_plugins.keyframes.PlaceTracker`): the previous frame's place
  (split order = the walk's order) as the prior instead of the network's, its standard deviation
  ``sigma`` m grown by ``speed`` m/s over the frame period; the network's prior when no place is inside
  the track's gate;
* the last placed frames (``chain_frames`` of the tracker, 0 in the other tracking rows): a frame without
  a place, and one whose places all lie beyond the track's reach if it overlaps a recent frame better
  than any training image, is placed where the recent frame it verifiably overlaps most was;
* place hypotheses (``hypotheses`` of the tracker, 1 = the single track above): the best places along the
  run kept, each frame's places continuing those within reach or starting new ones;
* places: ``place_radius_m``; at their images' inlier-weighted mean instead of read at the query's scale
  (:func:`vizloc_plugins.keyframes.scale_aligned_position`);
* candidates near the track: the ``n`` most voted images inside the track's gate besides the ``k``.

Prints median, % within 5 / 10 / 25 m, % answered by the map (or the last placed frames), the *candidate oracle* (% of
frames with a candidate image within 10 m of the truth) and the share of errors inside the published 95 %
ellipses (the network's covariance where nothing placed the frame). ``--rates`` adds the plugin's rule at
other camera rates over the same images: a walk filmed at 1 Hz (every image 1 s apart) and every 5th image
0.5 s apart (gaps of ~5.5 m):

    python scripts/gps_keyframe_rules.py --bundle /tmp/b/gps_final2 --data /tmp/worlds/campus
"""
from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vizloc_plugins.keyframes import gate_d2

RULES_K = (10, 20, 40)
GATES = (0.999, 0.99, 0.95)
TRACKS = ((3.0, 15.0), (10.0, 15.0), (10.0, 5.0))  # (sigma m, speed m/s)
RADII = (15.0, 25.0, 40.0)


def _cache(bundle: Path, data: Path, split: str) -> tuple[list[dict[str, Any]], Any]:
    import cv2

    from vizloc_ros.bundle import load_bundle
    from vizloc_ros.localizer import LocalizerConfig, LocalizerContext
    from vizloc_ros.plugin_manager import load_registry
    from vizloc_ros.types import Frame
    from vizloc_plugins.gps_regressor_contract import GPSRegressorContract
    from vizloc_plugins.keyframes import PlaceMap, root_sift
    from vizloc_training.datasets.gps import read_gps_dataset
    from vizloc_training.gps_regressor.data import TargetFrame
    from vizloc_training.train.loop import progress

    b = load_bundle(bundle, expected_type='gps_regressor')
    frame = TargetFrame.from_mapping(b.metadata['target_frame'])
    settings = GPSRegressorContract.from_bundle(b).keyframes
    if settings is None:
        raise SystemExit(f'{bundle}: no keyframe map in this bundle')
    places = PlaceMap(b.file('keyframes.npz'), b.file('keyframes.faiss'), settings)
    localizer = load_registry().registry.create(
        LocalizerConfig(name='gps', type='gps_regressor', bundle=str(bundle), backend='onnxruntime'),
        {'keyframes': False}, LocalizerContext(cache_dir=Path(tempfile.mkdtemp(prefix='gps_rules_'))))
    rows = read_gps_dataset(data).split(split)
    out = []
    try:
        for i, row in enumerate(progress(rows, f'{split} frames', total=len(rows))):
            rgb = cv2.cvtColor(cv2.imread(str(row.image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            mean, cov = localizer.estimate(Frame(rgb_HW3=rgb, stamp_ns=i, frame_id='camera'))
            alt = row.alt_m if math.isfinite(row.alt_m) else 0.0
            truth = frame.to_en_m(np.array([[row.lat_deg, row.lon_deg, alt]]))[0]
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            px, descs = places.describe(gray)
            votes = places.frames.votes(descs, settings.neighbours) if len(px) >= 8 else np.zeros(len(places.frames.names), np.int64)
            d = places.positions_FD - mean
            d2 = np.einsum('ni,ij,nj->n', d, np.linalg.pinv(cov), d)
            tops = set(np.argsort(-votes, kind='stable')[:max(RULES_K)])
            for gate in GATES:
                tops |= set(np.argsort(-np.where(d2 <= gate_d2(gate), votes, -1), kind='stable')[:10])
            query = root_sift(descs)
            shape_hw = places.described_shape(gray)
            overlaps = {int(f): places.overlap(px, query, int(f), shape_hw) for f in tops if votes[f] > 0}
            out.append({'mean': mean, 'cov': cov, 'truth': truth, 'votes': votes, 'd2': d2, 'overlaps': overlaps,
                        'px': px, 'query': query, 'descs': descs, 'shape_hw': shape_hw})
    finally:
        localizer.close()
    return out, places


def _overlap(q: dict[str, Any], places: Any, frame: int) -> Any:
    """The cached :meth:`PlaceMap.overlap` of query ``q`` with ``frame``, computed on first use."""
    if frame not in q['overlaps']:
        q['overlaps'][frame] = places.overlap(q['px'], q['query'], frame, q['shape_hw'])
    return q['overlaps'][frame]


def _score(cache: list[dict[str, Any]], places: Any, *, k: int, gate: float | None = None,
           track: tuple[float, float] | None = None, radius_m: float | None = None,
           track_candidates: int = 0, chain: int = 0, hypotheses: int = 1, period_s: float = 0.1,
           stride: int = 1, scales: bool = True) -> dict[str, float]:
    from vizloc_plugins.keyframes import Overlap, PlaceTracker, choose_place

    settings = places.settings if radius_m is None else replace(places.settings, place_radius_m=radius_m)
    P = places.positions_FD
    errors, answered, oracle, inside = [], 0, 0, 0
    # along the run: the plugin's own PlaceTracker (track, recent frames) on the cached verification
    tracker = (PlaceTracker(places, track_sigma_m=track[0], track_speed_mps=track[1], chain_frames=chain,
                            hypotheses=hypotheses)
               if track is not None else None)
    for i, q in enumerate(cache[::stride]):
        stamp_ns = round(i * period_s * 1e9)
        score = q['votes'].astype(np.float64)
        if gate is not None:
            score = np.where(q['d2'] <= gate_d2(gate), score, -1.0)
        candidates = [int(f) for f in np.argsort(-score, kind='stable')[:k] if score[f] > 0]
        reach = tracker.track.prior(stamp_ns) if tracker is not None and track_candidates else None
        if reach is not None:
            # also the most voted images inside the track's gate
            position, sigma_m = reach
            near = np.sum((P - position) ** 2, axis=1) <= gate_d2(settings.prior_gate) * sigma_m ** 2
            near_votes = np.where(near, q['votes'], 0)
            extra = [int(f) for f in np.argsort(-near_votes, kind='stable')[:track_candidates] if near_votes[f] > 0]
            candidates += [f for f in extra if f not in candidates]
        verified = [o if scales else Overlap(o.frame, o.inliers)
                    for f in candidates if (o := _overlap(q, places, f)).inliers >= settings.min_inliers]
        oracle += any(np.linalg.norm(P[f] - q['truth']) < 10.0 for f in candidates)
        if tracker is not None:
            chosen = tracker.choose(q['px'], q['descs'], verified, stamp_ns, q['mean'], q['cov'])
        else:
            chosen = choose_place(verified, P, settings, q['mean'], q['cov'])
        position_m, cov_m2 = chosen.position_m, chosen.cov_m2
        answered += position_m is not None
        if position_m is None:
            position_m, cov_m2 = q['mean'], q['cov']
        d = position_m - q['truth']
        errors.append(np.linalg.norm(d))
        inside += float(d @ np.linalg.pinv(cov_m2) @ d) <= gate_d2(0.95)
    e, n = np.asarray(errors), len(errors)
    return {'median_m': float(np.median(e)), 'within_5m': 100.0 * np.mean(e < 5.0),
            'within_10m': 100.0 * np.mean(e < 10.0), 'within_25m': 100.0 * np.mean(e < 25.0),
            'map_pct': 100.0 * answered / n, 'oracle_10m': 100.0 * oracle / n, 'ellipse_95': 100.0 * inside / n}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--bundle', type=Path, required=True, help='gps_regressor bundle with a keyframe map')
    parser.add_argument('--data', type=Path, required=True, help='GPS-format dataset (vizloc-synth campus --out)')
    parser.add_argument('--splits', nargs='+', default=['val', 'test'])
    parser.add_argument('--frame-period-s', type=float, default=0.1,
                        help='time between consecutive split images for the tracking rules (the bag: 0.1)')
    parser.add_argument('--rates', action='store_true',
                        help="also the plugin's default rule at other camera rates: every image 1 s apart, and "
                             'every 5th image 0.5 s apart')
    args = parser.parse_args(argv)

    rules: list[tuple[str, dict[str, Any]]] = [(f'votes, k={k}', {'k': k}) for k in RULES_K]
    rules += [(f'gate {g}, k=10', {'k': 10, 'gate': g}) for g in GATES]
    rules += [(f'track sigma {s:g} m + {v:g} m/s', {'k': 10, 'track': (s, v)}) for s, v in TRACKS]
    rules += [(f'place_radius_m {r:g}', {'k': 10, 'radius_m': r}) for r in RADII]
    rules += [(f'track sigma 10 m + 15 m/s, + {n} candidates inside it', {'k': 10, 'track': (10.0, 15.0),
                                                                         'track_candidates': n}) for n in (5, 10)]
    rules += [(f'track sigma 10 m + 15 m/s + the last {n} placed frames (the plugin, chain_frames {n})', {
        'k': 10, 'track': (10.0, 15.0), 'chain': n}) for n in (1, 5, 10)]
    rules += [(f'the same, chain_frames 5, {m} place hypotheses along the run', {
        'k': 10, 'track': (10.0, 15.0), 'chain': 5, 'hypotheses': m}) for m in (3, 5, 10)]
    rules += [('the same, 5 hypotheses, places at their images\' inlier-weighted mean (no scale)', {
        'k': 10, 'track': (10.0, 15.0), 'chain': 5, 'hypotheses': 5, 'scales': False})]
    rules = [(name, {**kw, 'period_s': args.frame_period_s}) for name, kw in rules]
    if args.rates:
        # the plugin's defaults at the other camera rates the trainer calibrates on
        from vizloc_plugins.gps_regressor import GPSRegressorOptions
        from vizloc_plugins.gps_regressor_contract import GPSKeyframes
        from vizloc_training.gps_regressor.train import CALIBRATION_RUNS

        options, k = GPSRegressorOptions(), GPSKeyframes().candidates
        plugin = {'k': k, 'track': (options.track_sigma_m, options.track_speed_mps), 'chain': options.chain_frames,
                  'hypotheses': options.track_hypotheses}
        for period_s, stride in CALIBRATION_RUNS[1:]:
            every = f'every {"" if stride == 1 else f"{stride}th "}image {period_s:g} s apart'
            rules += [(f'the plugin, {every}', {**plugin, 'period_s': period_s, 'stride': stride}),
                      (f'the plugin with a single track (track_hypotheses 1), {every}',
                       {**plugin, 'hypotheses': 1, 'period_s': period_s, 'stride': stride})]
            if stride > 1:
                rules += [(f'no track, every {stride}th image (frame by frame)', {'k': k, 'stride': stride})]
    print('| rule | split | median | within 5 / 10 / 25 m | map answers | candidate within 10 m | 95 % ellipse holds |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for split in args.splits:
        cache, places = _cache(args.bundle, args.data, split)
        for name, kwargs in rules:
            r = _score(cache, places, **kwargs)
            print(f"| {name} | {split} | {r['median_m']:.2f} m | {r['within_5m']:.1f} / {r['within_10m']:.1f} / "
                  f"{r['within_25m']:.1f} % | {r['map_pct']:.1f} % | {r['oracle_10m']:.1f} % | "
                  f"{r['ellipse_95']:.1f} % |", flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
