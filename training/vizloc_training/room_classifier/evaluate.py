"""Evaluating a room classifier: split metrics (torch) and the test trajectory through the bundle.

The trajectory evaluation runs the *deployed* path: the bundle's ONNX model through
:class:`vizloc_ros.runner.BundleModel` (same resizing as the node), frame by frame in temporal
order, then the plugin's filters (:mod:`vizloc_plugins.smoothing`) over the per-frame
probabilities. It reports accuracy per smoothing mode and the number of label switches (flicker)
next to the number of true room changes. ``hmm`` uses the plugin's fixed defaults (``p_stay`` 0.95,
uniform switches, temperature 1); ``hmm_calibrated`` the parameters the trainer chose on the
validation trajectory and stored in the bundle (``metadata.smoothing``; what the plugin uses by
default).

:func:`calibrate_smoothing` makes that choice: the room-change statistics of the training
trajectory (switch matrix) and a grid search over ``p_stay`` x emission temperature x switch prior
on the validation trajectory (:func:`vizloc_plugins.smoothing.calibrate_hmm`).

CLI::

    python -m vizloc_training.room_classifier.evaluate --bundle BUNDLE --data DIR [--p-stay 0.95]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vizloc_plugins.room_classifier_contract import (LOCALIZER_TYPE, OUTPUT_PROBS, RoomClassifierContract,
                                                     SmoothingCalibration)

from .data import AugmentedRooms, RoomSplit, eval_transform, iter_trajectory, temporal_order

__all__ = ['predict_split', 'predict_probs', 'calibrate_smoothing', 'evaluate_trajectory', 'main']

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict_split(model: torch.nn.Module, split: RoomSplit, size: int, device: torch.device,
                  batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities (N x C) of ``model`` on ``split`` with the evaluation transform."""
    was_training = model.training
    model.eval()
    dataset = AugmentedRooms(split, eval_transform(size))
    out = []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = torch.stack([dataset[i][0] for i in range(start, min(len(dataset), start + batch_size))])
            out.append(torch.softmax(model(batch.to(device)), dim=1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.head.out_features))


@torch.no_grad()
def predict_probs(export: torch.nn.Module, split: RoomSplit, size: int, indices: Sequence[int] | None = None,
                  batch_size: int = 64) -> np.ndarray:
    """``probs`` (N x C) of an export graph (first output: softmax, e.g. with ``tta_flip``) on ``split[indices]``."""
    dataset = AugmentedRooms(split, eval_transform(size))
    order = list(range(len(dataset))) if indices is None else list(indices)
    out = []
    for start in range(0, len(order), batch_size):
        batch = torch.stack([dataset[i][0] for i in order[start:start + batch_size]])
        out.append(export(batch)[0].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def calibrate_smoothing(export: torch.nn.Module, train_split: RoomSplit, val_split: RoomSplit, num_classes: int,
                        size: int) -> SmoothingCalibration | None:
    """HMM parameters for the bundle (``metadata.smoothing``), chosen on the validation trajectory.

    ``switch_matrix``: room changes of the training split in temporal order (file names) with one
    pseudo-count per row; ``train_p_stay``: that trajectory's fraction of frame pairs in the same
    room (for information: it depends on its frame rate). Then ``p_stay``, ``temperature`` and
    ``transition`` (``uniform`` or ``learned``) maximise the filtered accuracy on the validation split
    in temporal order (ties: mean log belief of the true room). None without a val split.
    """
    from vizloc_plugins.smoothing import calibrate_hmm, estimate_switch_matrix

    if not len(val_split):
        return None
    train_labels = np.asarray(train_split.labels)[temporal_order(train_split)]
    switch_CC, train_p_stay = estimate_switch_matrix([train_labels], num_classes)
    order = temporal_order(val_split)
    probs_TC = predict_probs(export, val_split, size, order)
    labels_T = np.asarray(val_split.labels)[order]
    best = calibrate_hmm(probs_TC, labels_T, switch_CC=switch_CC)
    result = SmoothingCalibration(
        **best.to_dict(), single_frame_accuracy=float(np.mean(probs_TC.argmax(axis=1) == labels_T)),
        calibrated_on='val split in file-name order', switch_matrix=switch_CC.round(6).tolist(),
        train_p_stay=train_p_stay)
    logger.info('smoothing calibrated on %d val frames: p_stay=%.3f temperature=%.2f transition=%s -> accuracy %.4f '
                '(single frame %.4f)', best.frames, best.p_stay, best.temperature, best.transition, best.accuracy,
                result.single_frame_accuracy)
    return result


def _switches(labels: np.ndarray) -> int:
    return int(np.count_nonzero(labels[1:] != labels[:-1])) if labels.size > 1 else 0


def evaluate_trajectory(bundle_dir: Path | str, data: Path | str, *, p_stay: float = 0.95, ema_alpha: float = 0.3,
                        backend: str = 'onnxruntime', max_frames: int = 0) -> dict[str, Any]:
    """Accuracy on the ordered test trajectory without smoothing and with each filter.

    Keys: ``frames``, ``true_switches``, ``<mode>_accuracy`` and ``<mode>_switches`` for modes
    ``none``, ``hmm``, ``ema`` (``hmm_adjacency`` when the bundle carries a room map,
    ``hmm_calibrated`` when it carries ``metadata.smoothing``), ``p_stay``, ``ema_alpha``.
    Raises FileNotFoundError when the dataset has no test trajectory.
    """
    from vizloc_ros.runner import BundleModel
    from vizloc_plugins.room_classifier import load_room_map
    from vizloc_plugins.smoothing import adjacency_from_polygons, filter_sequence, make_filter
    from vizloc_ros.types import Frame

    model = BundleModel(bundle_dir, backend=backend, expected_type=LOCALIZER_TYPE)
    probs, labels = [], []
    try:
        contract = RoomClassifierContract.from_bundle(model.bundle)
        classes = list(contract.classes)
        for i, (rgb, label, _source) in enumerate(iter_trajectory(Path(data), classes)):
            if max_frames and i >= max_frames:
                break
            out = model.run(Frame(rgb_HW3=rgb, stamp_ns=i, frame_id='camera'), outputs=[OUTPUT_PROBS])
            probs.append(out[OUTPUT_PROBS][0])
            labels.append(label)
    finally:
        model.close()
    if not labels:
        raise FileNotFoundError(f'{data}: the test trajectory is empty')
    probs_TC, labels_T = np.stack(probs), np.asarray(labels)
    result: dict[str, Any] = {'frames': int(labels_T.size), 'true_switches': _switches(labels_T),
                              'p_stay': p_stay, 'ema_alpha': ema_alpha}
    filters = {mode: make_filter(mode, len(classes), p_stay=p_stay, ema_alpha=ema_alpha)
               for mode in ('none', 'hmm', 'ema')}
    if contract.room_map:
        polygons = load_room_map(model.bundle.file(contract.room_map))
        adjacency = adjacency_from_polygons(polygons, classes)
        filters['hmm_adjacency'] = make_filter('hmm', len(classes), p_stay=p_stay, adjacency_CC=adjacency)
    calibrated = contract.smoothing
    if calibrated is not None:
        filters['hmm_calibrated'] = make_filter(
            'hmm', len(classes), p_stay=calibrated.p_stay, temperature=calibrated.temperature,
            switch_CC=calibrated.switch_CC if calibrated.transition == 'learned' else None)
    for mode, filt in filters.items():
        pred = filter_sequence(filt, probs_TC).argmax(axis=1)
        result[f'{mode}_accuracy'] = float(np.mean(pred == labels_T))
        result[f'{mode}_switches'] = _switches(pred)
    logger.info('trajectory (%d frames): %s', labels_T.size,
                ', '.join(f'{m}={result[f"{m}_accuracy"]:.4f}' for m in filters))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    from ..train.metrics_table import flatten_metrics, format_table

    parser = argparse.ArgumentParser(description='Evaluate a room_classifier bundle on a rooms dataset test trajectory.')
    parser.add_argument('--bundle', type=Path, required=True)
    parser.add_argument('--data', type=Path, required=True)
    parser.add_argument('--p-stay', type=float, default=0.95)
    parser.add_argument('--ema-alpha', type=float, default=0.3)
    parser.add_argument('--backend', default='onnxruntime')
    parser.add_argument('--max-frames', type=int, default=0)
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    result = evaluate_trajectory(ns.bundle, ns.data, p_stay=ns.p_stay, ema_alpha=ns.ema_alpha, backend=ns.backend,
                                 max_frames=ns.max_frames)
    print(format_table(flatten_metrics(result), title=f'test trajectory of {ns.data}'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
