"""Classification metrics (pure numpy): accuracy, top-k accuracy, confusion matrix, per-class precision/recall.

Conventions: ``labels_N`` are integer class indices in ``[0, num_classes)``; ``probs_NC`` are scores
per class (probabilities or logits: only their order matters); the confusion matrix is indexed
``[true, predicted]``. A class that is never predicted has precision NaN (0/0) and one that never
occurs has recall NaN; macro averages ignore NaNs.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ['accuracy', 'top_k_accuracy', 'confusion_matrix', 'precision_recall', 'classification_report']


def _labels(labels: Any, num_classes: int | None = None, what: str = 'labels') -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f'{what} must be 1-D, got shape {array.shape}')
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f'{what} must be integer class indices, got dtype {array.dtype}')
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f'{what} must be >= 0')
    if num_classes is not None and array.size and array.max() >= num_classes:
        raise ValueError(f'{what} contains class {array.max()} but num_classes is {num_classes}')
    return array


def accuracy(pred_N: Any, labels_N: Any) -> float:
    """Fraction of predictions equal to the label (NaN for no samples)."""
    pred, labels = _labels(pred_N, what='pred_N'), _labels(labels_N)
    if pred.shape != labels.shape:
        raise ValueError(f'pred_N {pred.shape} and labels_N {labels.shape} differ in length')
    return float(np.mean(pred == labels)) if labels.size else float('nan')


def top_k_accuracy(probs_NC: Any, labels_N: Any, k: int = 3) -> float:
    """Fraction of samples whose label is among the ``k`` highest scores (ties: lower index first)."""
    probs = np.asarray(probs_NC, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f'probs_NC must be 2-D, got shape {probs.shape}')
    labels = _labels(labels_N, probs.shape[1])
    if labels.shape[0] != probs.shape[0]:
        raise ValueError(f'probs_NC has {probs.shape[0]} rows but labels_N has {labels.shape[0]}')
    if k < 1:
        raise ValueError(f'k must be >= 1, got {k}')
    if not labels.size:
        return float('nan')
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind='stable')[:, :k]
    return float(np.mean(np.any(order == labels[:, None], axis=1)))


def confusion_matrix(pred_N: Any, labels_N: Any, num_classes: int) -> np.ndarray:
    """``num_classes x num_classes`` int64 counts, rows = true class, columns = predicted class."""
    pred, labels = _labels(pred_N, num_classes, 'pred_N'), _labels(labels_N, num_classes)
    if pred.shape != labels.shape:
        raise ValueError(f'pred_N {pred.shape} and labels_N {labels.shape} differ in length')
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm


def precision_recall(cm_CC: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision and recall from a confusion matrix (NaN where undefined)."""
    cm = np.asarray(cm_CC, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f'confusion matrix must be square, got shape {cm.shape}')
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(actual > 0, tp / actual, np.nan)
    return precision, recall


def classification_report(probs_NC: Any, labels_N: Any, class_names: Sequence[str], k: int = 3) -> dict[str, Any]:
    """Everything the room classifier reports: accuracy, top-k, macro P/R, per-class P/R, confusion matrix.

    Returns plain Python values (YAML-able): ``accuracy``, ``top{k}_accuracy``, ``macro_precision``,
    ``macro_recall``, ``per_class`` (name -> {precision, recall, support}), ``confusion_matrix``
    (list of rows, true x predicted, in ``class_names`` order), ``num_samples``.
    """
    probs = np.asarray(probs_NC, dtype=np.float64)
    names = list(class_names)
    if probs.ndim != 2 or probs.shape[1] != len(names):
        raise ValueError(f'probs_NC must be N x {len(names)}, got shape {probs.shape}')
    labels = _labels(labels_N, len(names))
    pred = np.argmax(probs, axis=1) if probs.shape[0] else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(pred, labels, len(names))
    precision, recall = precision_recall(cm)
    support = cm.sum(axis=1)
    return {
        'num_samples': int(labels.size),
        'accuracy': accuracy(pred, labels),
        f'top{k}_accuracy': top_k_accuracy(probs, labels, k),
        'macro_precision': float(np.nanmean(precision)) if np.any(np.isfinite(precision)) else float('nan'),
        'macro_recall': float(np.nanmean(recall)) if np.any(np.isfinite(recall)) else float('nan'),
        'per_class': {name: {'precision': float(precision[i]), 'recall': float(recall[i]), 'support': int(support[i])}
                      for i, name in enumerate(names)},
        'confusion_matrix': cm.tolist(),
    }
