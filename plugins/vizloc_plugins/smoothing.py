"""Temporal smoothing of per-frame class probabilities (pure numpy): HMM forward filter, EMA, none.

A single-frame room classifier flickers near doors and on ambiguous views. Consecutive frames of a
moving camera are strongly correlated: the room rarely changes between two frames. The filters
here turn the per-frame distribution ``p_t(room | image_t)`` into a smoothed belief.

**HMM forward filter** (:class:`HMMFilter`). Hidden state: the room. Transition prior per frame::

    P(r_t = j | r_{t-1} = i) = p_stay                        if j == i
                             = (1 - p_stay) * S[i, j]        otherwise

where the switch distribution ``S`` is uniform over the other rooms (``transition='uniform'``), or
uniform over the rooms adjacent to ``i`` (``transition='adjacency'``, adjacency from the room map
polygons), mixed with a small ``leak`` towards every room so that a wrong adjacency or a missed
frame can never lock the filter. The classifier's posterior is used as a scaled likelihood
(hybrid HMM/ANN): ``L_t(j) ∝ max(p_t(j) / prior(j) / max_k(p_t(k) / prior(k)), min_likelihood)``
with the training class prior (uniform by default). The floor (default 0.01) caps the evidence of
one frame at 100:1: deep classifiers are over-confident, and without it one bad frame with
p = 1e-4 for the true room would override any temporal prior. The forward recursion is::

    predicted = belief_{t-1} @ T
    belief_t  = normalise(predicted * L_t)

Each step costs O(C^2) for C rooms. ``p_stay`` is per frame, ``1 - 1 / (expected frames per room
visit)``: at 10 Hz, ``p_stay = 0.95`` expects a room change every 2 s a priori (people stay longer;
the prior is deliberately weak); the likelihood still overrides it after a few consistent frames.

**EMA** (:class:`EMAFilter`): ``belief_t = normalise(alpha * p_t + (1 - alpha) * belief_{t-1})``.

**none** (:class:`NoFilter`): returns ``p_t`` unchanged.

All filters share ``update(probs_C) -> belief_C`` and ``reset()``; :func:`make_filter` builds one
by name and :func:`filter_sequence` runs one over an ordered sequence (evaluation).
"""
from __future__ import annotations

import logging
from typing import Iterable, Mapping, Protocol, Sequence

import numpy as np

__all__ = ['SMOOTHING_MODES', 'TRANSITIONS', 'ProbabilityFilter', 'NoFilter', 'EMAFilter', 'HMMFilter',
           'transition_matrix', 'adjacency_from_polygons', 'make_filter', 'filter_sequence']

logger = logging.getLogger(__name__)

SMOOTHING_MODES = ('hmm', 'ema', 'none')
TRANSITIONS = ('uniform', 'adjacency')


def _check_probs(probs_C: np.ndarray, num_classes: int) -> np.ndarray:
    p = np.asarray(probs_C, dtype=np.float64).reshape(-1)
    if p.shape[0] != num_classes:
        raise ValueError(f'expected {num_classes} class probabilities, got {p.shape[0]}')
    if not np.all(np.isfinite(p)) or np.any(p < 0.0):
        raise ValueError('class probabilities must be finite and non-negative')
    total = p.sum()
    if total <= 0.0:
        raise ValueError('class probabilities sum to zero')
    return p / total


class ProbabilityFilter(Protocol):
    num_classes: int

    def update(self, probs_C: np.ndarray) -> np.ndarray:
        ...

    def reset(self) -> None:
        ...


class NoFilter:
    """Identity filter (single-frame predictions)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)

    def update(self, probs_C: np.ndarray) -> np.ndarray:
        return _check_probs(probs_C, self.num_classes)

    def reset(self) -> None:
        """Nothing to forget."""


class EMAFilter:
    """Exponential moving average of the probability vectors, weight ``alpha`` on the newest frame."""

    def __init__(self, num_classes: int, alpha: float = 0.3) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f'ema alpha must be in (0, 1], got {alpha}')
        self.num_classes = int(num_classes)
        self.alpha = float(alpha)
        self._belief: np.ndarray | None = None

    def update(self, probs_C: np.ndarray) -> np.ndarray:
        p = _check_probs(probs_C, self.num_classes)
        if self._belief is None:
            self._belief = p
        else:
            mixed = self.alpha * p + (1.0 - self.alpha) * self._belief
            self._belief = mixed / mixed.sum()
        return self._belief.copy()

    def reset(self) -> None:
        self._belief = None


def transition_matrix(num_classes: int, p_stay: float, adjacency_CC: np.ndarray | None = None,
                      leak: float = 0.01) -> np.ndarray:
    """Row-stochastic ``C x C`` transition matrix (rows: from, columns: to); see the module docstring.

    With ``adjacency_CC`` (boolean, symmetric, diagonal ignored) switching goes to neighbours; a
    room without neighbours switches uniformly. ``leak`` of the switch mass goes to all other rooms.
    """
    if num_classes < 1:
        raise ValueError(f'num_classes must be >= 1, got {num_classes}')
    if not 0.0 <= p_stay <= 1.0:
        raise ValueError(f'p_stay must be in [0, 1], got {p_stay}')
    if not 0.0 <= leak <= 1.0:
        raise ValueError(f'leak must be in [0, 1], got {leak}')
    if num_classes == 1:
        return np.ones((1, 1))
    others = ~np.eye(num_classes, dtype=bool)
    uniform = others / (num_classes - 1.0)
    if adjacency_CC is None:
        switch = uniform
    else:
        adj = np.asarray(adjacency_CC, dtype=bool)
        if adj.shape != (num_classes, num_classes):
            raise ValueError(f'adjacency must be {num_classes}x{num_classes}, got {adj.shape}')
        adj = (adj | adj.T) & others
        degree = adj.sum(axis=1, keepdims=True)
        neighbours = np.where(degree > 0, adj / np.maximum(degree, 1), uniform)
        switch = (1.0 - leak) * neighbours + leak * uniform
    T = (1.0 - p_stay) * switch
    T[np.diag_indices(num_classes)] = p_stay
    return T


class HMMFilter:
    """Forward filter of a discrete HMM over rooms (see the module docstring)."""

    def __init__(self, num_classes: int, p_stay: float = 0.95, adjacency_CC: np.ndarray | None = None,
                 class_prior_C: np.ndarray | None = None, min_likelihood: float = 1e-2, leak: float = 0.01) -> None:
        if not 0.0 < p_stay < 1.0:
            raise ValueError(f'p_stay must be in (0, 1), got {p_stay}')
        if not 0.0 < min_likelihood < 1.0:
            raise ValueError(f'min_likelihood must be in (0, 1), got {min_likelihood}')
        self.num_classes = int(num_classes)
        self.T_CC = transition_matrix(self.num_classes, p_stay, adjacency_CC, leak)
        if class_prior_C is None:
            self.prior_C = np.full(self.num_classes, 1.0 / self.num_classes)
        else:
            self.prior_C = _check_probs(class_prior_C, self.num_classes)
            if np.any(self.prior_C <= 0.0):
                raise ValueError('class prior must be positive for every class')
        self.min_likelihood = float(min_likelihood)
        self._belief: np.ndarray | None = None

    def update(self, probs_C: np.ndarray) -> np.ndarray:
        p = _check_probs(probs_C, self.num_classes)
        likelihood = p / self.prior_C
        likelihood = np.maximum(likelihood / likelihood.max(), self.min_likelihood)
        predicted = self.prior_C if self._belief is None else self._belief @ self.T_CC
        belief = predicted * likelihood
        self._belief = belief / belief.sum()
        return self._belief.copy()

    def reset(self) -> None:
        self._belief = None


def _point_segment_distance(points_P2: np.ndarray, a_S2: np.ndarray, b_S2: np.ndarray) -> np.ndarray:
    """Distance of every point to every segment: P x S."""
    ab = b_S2 - a_S2
    ap = points_P2[:, None, :] - a_S2[None, :, :]
    denom = np.maximum(np.sum(ab * ab, axis=1), 1e-12)
    t = np.clip(np.sum(ap * ab[None], axis=2) / denom[None], 0.0, 1.0)
    closest = a_S2[None] + t[..., None] * ab[None]
    return np.linalg.norm(points_P2[:, None, :] - closest, axis=2)


def adjacency_from_polygons(polygons: Mapping[str, np.ndarray], labels: Sequence[str],
                            tolerance_m: float = 0.5) -> np.ndarray:
    """Rooms are adjacent when their polygon outlines come within ``tolerance_m`` (shared walls, doors).

    ``labels`` gives the class order; a label without a polygon has no neighbours (uniform switch).
    """
    n = len(labels)
    adj = np.zeros((n, n), dtype=bool)
    rings = {}
    for label in labels:
        if label in polygons:
            pts = np.asarray(polygons[label], dtype=np.float64)[:, :2]
            rings[label] = (pts, np.roll(pts, -1, axis=0))
    for i, a in enumerate(labels):
        for j in range(i + 1, n):
            b = labels[j]
            if a not in rings or b not in rings:
                continue
            (pa, qa), (pb, qb) = rings[a], rings[b]
            d = min(_point_segment_distance(pa, pb, qb).min(), _point_segment_distance(pb, pa, qa).min())
            adj[i, j] = adj[j, i] = d <= tolerance_m
    return adj


def make_filter(mode: str, num_classes: int, *, p_stay: float = 0.95, ema_alpha: float = 0.3,
                adjacency_CC: np.ndarray | None = None, class_prior_C: np.ndarray | None = None) -> ProbabilityFilter:
    """Build the filter named ``mode`` (``hmm``, ``ema`` or ``none``)."""
    if mode == 'hmm':
        return HMMFilter(num_classes, p_stay=p_stay, adjacency_CC=adjacency_CC, class_prior_C=class_prior_C)
    if mode == 'ema':
        return EMAFilter(num_classes, alpha=ema_alpha)
    if mode == 'none':
        return NoFilter(num_classes)
    raise ValueError(f'smoothing must be one of {SMOOTHING_MODES}, got {mode!r}')


def filter_sequence(filt: ProbabilityFilter, probs_TC: Iterable[np.ndarray]) -> np.ndarray:
    """Run ``filt`` (after a reset) over an ordered sequence; returns the T x C beliefs."""
    filt.reset()
    out = [filt.update(p) for p in probs_TC]
    return np.stack(out) if out else np.zeros((0, filt.num_classes))
