"""Temporal smoothing of per-frame class probabilities (pure numpy): HMM forward filter, EMA, none.

A single-frame room classifier flickers near doors and on ambiguous views. Consecutive frames of a
moving camera are strongly correlated: the room rarely changes between two frames. The filters
here turn the per-frame distribution ``p_t(room | image_t)`` into a smoothed belief.

**HMM forward filter** (:class:`HMMFilter`). Hidden state: the room. Transition prior per frame::

    P(r_t = j | r_{t-1} = i) = p_stay                        if j == i
                             = (1 - p_stay) * S[i, j]        otherwise

where the switch distribution ``S`` is uniform over the other rooms (``transition='uniform'``),
uniform over the rooms adjacent to ``i`` (``transition='adjacency'``, adjacency from the room map
polygons), mixed with a small ``leak`` towards every room so that a wrong adjacency or a missed
frame can never lock the filter, or given explicitly (``switch_CC``, ``transition='learned'``:
estimated by :func:`estimate_switch_matrix` from the room changes of the training trajectory, with
a pseudo-count towards uniform so that a change never seen in training stays possible). The
classifier's posterior is used as a scaled likelihood (hybrid HMM/ANN):
``L_t(j) ∝ max((p_t(j) / prior(j) / max_k(p_t(k) / prior(k))) ** (1 / temperature), min_likelihood)``
with the training class prior (uniform by default). ``temperature`` > 1 flattens over-confident
classifier outputs (weaker evidence per frame), < 1 sharpens them. :func:`calibrate_hmm` picks
``p_stay``, ``temperature`` and the switch prior on an ordered validation trajectory. The floor (default 0.01) caps the evidence of
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

import itertools
import logging
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, Sequence

import numpy as np

from vizloc_ros.contract import ContractError
from vizloc_ros.types import InvalidOutputError

__all__ = ['SMOOTHING_MODES', 'TRANSITIONS', 'ProbabilityFilter', 'NoFilter', 'EMAFilter', 'HMMFilter',
           'SmoothingCalibration', 'transition_matrix', 'adjacency_from_polygons', 'estimate_switch_matrix',
           'calibrate_hmm', 'make_filter', 'filter_sequence']

logger = logging.getLogger(__name__)

SMOOTHING_MODES = ('hmm', 'ema', 'none')
TRANSITIONS = ('uniform', 'adjacency', 'learned')


def _check_probs(probs_C: np.ndarray, num_classes: int) -> np.ndarray:
    """The classifier's probabilities, normalised; a model output that cannot be used is an
    InvalidOutputError (a ValueError), as everywhere in the localizers."""
    p = np.asarray(probs_C, dtype=np.float64).reshape(-1)
    if p.shape[0] != num_classes:
        raise InvalidOutputError(f'expected {num_classes} class probabilities, got {p.shape[0]}')
    if not np.all(np.isfinite(p)) or np.any(p < 0.0):
        raise InvalidOutputError('class probabilities must be finite and non-negative')
    total = p.sum()
    if total <= 0.0:
        raise InvalidOutputError('class probabilities sum to zero')
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


def _check_switch(switch_CC: np.ndarray, num_classes: int) -> np.ndarray:
    S = np.asarray(switch_CC, dtype=np.float64)
    if S.shape != (num_classes, num_classes):
        raise ValueError(f'switch matrix must be {num_classes}x{num_classes}, got {S.shape}')
    S = S * ~np.eye(num_classes, dtype=bool)
    if not np.all(np.isfinite(S)) or np.any(S < 0.0):
        raise ValueError('switch matrix must be finite and non-negative')
    rows = S.sum(axis=1, keepdims=True)
    if num_classes > 1 and np.any(rows <= 0.0):
        raise ValueError('every row of the switch matrix needs positive mass off the diagonal')
    return S / np.maximum(rows, 1e-300)


def transition_matrix(num_classes: int, p_stay: float, adjacency_CC: np.ndarray | None = None,
                      leak: float = 0.01, switch_CC: np.ndarray | None = None) -> np.ndarray:
    """Row-stochastic ``C x C`` transition matrix (rows: from, columns: to); see the module docstring.

    With ``adjacency_CC`` (boolean, symmetric, diagonal ignored) switching goes to neighbours; a
    room without neighbours switches uniformly. ``leak`` of the switch mass goes to all other rooms.
    With ``switch_CC`` (non-negative, diagonal ignored, rows renormalised) the switch distribution
    is given explicitly (exclusive with ``adjacency_CC``).
    """
    if adjacency_CC is not None and switch_CC is not None:
        raise ValueError('give adjacency_CC or switch_CC, not both')
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
    if switch_CC is not None:
        switch = _check_switch(switch_CC, num_classes)
    elif adjacency_CC is None:
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
                 class_prior_C: np.ndarray | None = None, min_likelihood: float = 1e-2, leak: float = 0.01,
                 temperature: float = 1.0, switch_CC: np.ndarray | None = None) -> None:
        if not 0.0 < p_stay < 1.0:
            raise ValueError(f'p_stay must be in (0, 1), got {p_stay}')
        if not (np.isfinite(temperature) and temperature > 0.0):
            raise ValueError(f'temperature must be > 0, got {temperature}')
        self.temperature = float(temperature)
        if not 0.0 < min_likelihood < 1.0:
            raise ValueError(f'min_likelihood must be in (0, 1), got {min_likelihood}')
        self.num_classes = int(num_classes)
        self.T_CC = transition_matrix(self.num_classes, p_stay, adjacency_CC, leak, switch_CC=switch_CC)
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
        likelihood = likelihood / likelihood.max()
        if self.temperature != 1.0:
            likelihood = likelihood ** (1.0 / self.temperature)
        likelihood = np.maximum(likelihood, self.min_likelihood)
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


def estimate_switch_matrix(label_sequences: Iterable[Sequence[int]], num_classes: int,
                           pseudo_count: float = 1.0) -> tuple[np.ndarray, float]:
    """Room-change statistics of ordered label sequences (e.g. the training trajectory).

    Returns ``(switch_CC, p_stay)``: ``switch_CC[i, j]`` = P(next room j | a change away from i),
    the observed change counts plus ``pseudo_count`` spread uniformly over the other rooms (a change
    never observed stays possible; a room never left switches uniformly), and the observed fraction
    of frame pairs without a change (which depends on the frame rate of those sequences).
    """
    if num_classes < 2:
        raise ValueError(f'need at least 2 classes, got {num_classes}')
    if pseudo_count <= 0.0:
        raise ValueError(f'pseudo_count must be > 0, got {pseudo_count}')
    counts = np.zeros((num_classes, num_classes))
    pairs = 0
    for seq in label_sequences:
        labels = np.asarray(seq, dtype=np.int64).reshape(-1)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f'labels must be in [0, {num_classes})')
        np.add.at(counts, (labels[:-1], labels[1:]), 1.0)
        pairs += max(0, labels.size - 1)
    others = ~np.eye(num_classes, dtype=bool)
    changes = counts * others
    p_stay = 1.0 - changes.sum() / pairs if pairs else float('nan')
    switch = changes + pseudo_count * others / (num_classes - 1.0)
    return switch / switch.sum(axis=1, keepdims=True), float(p_stay)


@dataclass(frozen=True)
class SmoothingCalibration:
    """HMM smoothing parameters (a bundle's ``metadata.smoothing``; what :func:`calibrate_hmm` chooses); the
    defaults are the plugin's fallback.

    ``p_stay``, ``temperature``, ``transition`` (``uniform`` or ``learned``) and ``switch_matrix`` (C x C
    room changes of the training trajectory, rows sum to 1; what ``learned`` uses) configure the filter.
    The rest records how they were chosen: filtered ``accuracy`` and ``mean_log_prob`` of the true room
    on ``frames`` frames of the trajectory named by ``calibrated_on``, ``single_frame_accuracy`` there,
    and ``train_p_stay`` (share of training frame pairs in the same room).
    """

    p_stay: float = 0.95
    temperature: float = 1.0
    transition: str = 'uniform'
    switch_matrix: tuple[tuple[float, ...], ...] = ()
    accuracy: float = math.nan
    mean_log_prob: float = math.nan
    frames: int = 0
    single_frame_accuracy: float = math.nan
    calibrated_on: str = ''
    train_p_stay: float = math.nan

    def __post_init__(self) -> None:
        object.__setattr__(self, 'switch_matrix', tuple(tuple(float(v) for v in row) for row in self.switch_matrix))
        if not 0.0 < self.p_stay < 1.0 or not (math.isfinite(self.temperature) and self.temperature > 0.0):
            raise ContractError(f'smoothing: need p_stay in (0, 1) and temperature > 0, got {self.p_stay}, '
                                f'{self.temperature}')
        if self.transition not in TRANSITIONS:
            raise ContractError(f'smoothing: transition must be one of {TRANSITIONS}, got {self.transition!r}')
        if self.transition == 'learned' and not self.switch_matrix:
            raise ContractError("smoothing: transition 'learned' needs a switch_matrix")

    @property
    def switch_CC(self) -> np.ndarray | None:
        """``switch_matrix`` as an array, None when the bundle has none."""
        return np.asarray(self.switch_matrix, dtype=np.float64) if self.switch_matrix else None

    def to_dict(self) -> dict[str, float | str | int]:
        """What :func:`calibrate_hmm` decided and its scores: ``p_stay``, ``temperature``, ``transition``,
        ``accuracy``, ``mean_log_prob``, ``frames``."""
        return {'p_stay': self.p_stay, 'temperature': self.temperature, 'transition': self.transition,
                'accuracy': self.accuracy, 'mean_log_prob': self.mean_log_prob, 'frames': self.frames}


def calibrate_hmm(probs_TC: np.ndarray, labels_T: np.ndarray, *, switch_CC: np.ndarray | None = None,
                  class_prior_C: np.ndarray | None = None,
                  p_stays: Sequence[float] = (0.9, 0.95, 0.97, 0.99),
                  temperatures: Sequence[float] = (0.25, 0.5, 1.0, 2.0)) -> SmoothingCalibration:
    """Grid search of ``p_stay`` x ``temperature`` x switch prior (uniform, and ``switch_CC`` when given).

    The default ``p_stays`` start at 0.9: on a short validation walk a weak stay prior can score as
    well as a strong one while it flickers like the raw classifier (measured: p_stay 0.5 chosen on
    val gave 14 label switches on the test walk against 6 true ones), so the grid only holds values
    that actually smooth. Maximises the filtered accuracy on the ordered sequence ``probs_TC``
    (classifier outputs) with truth ``labels_T``; ties go to the higher mean log belief of the true room. Use a validation
    trajectory, never the test one. Returns the choice as the bundle stores it (:class:`SmoothingCalibration`,
    ``switch_matrix`` = ``switch_CC`` when ``learned`` won) with its scores (``accuracy``, ``mean_log_prob``,
    ``frames``).
    """
    probs = np.asarray(probs_TC, dtype=np.float64)
    labels = np.asarray(labels_T, dtype=np.int64).reshape(-1)
    if probs.ndim != 2 or probs.shape[0] != labels.size or labels.size == 0:
        raise ValueError(f'need T x C probabilities and T labels, got {probs.shape} and {labels.shape}')
    if not len(p_stays) or not len(temperatures):
        raise ValueError('calibrate_hmm needs at least one p_stay and one temperature')
    num_classes = probs.shape[1]
    switches: dict[str, np.ndarray | None] = {'uniform': None}
    if switch_CC is not None:
        switches['learned'] = switch_CC
    candidates = []
    for (name, switch), p_stay, temperature in itertools.product(switches.items(), p_stays, temperatures):
        filt = HMMFilter(num_classes, p_stay=p_stay, class_prior_C=class_prior_C, temperature=temperature,
                         switch_CC=switch)
        belief = filter_sequence(filt, probs)
        accuracy = float(np.mean(belief.argmax(axis=1) == labels))
        log_prob = float(np.mean(np.log(np.maximum(belief[np.arange(labels.size), labels], 1e-12))))
        candidates.append(SmoothingCalibration(
            p_stay=float(p_stay), temperature=float(temperature), transition=name,
            switch_matrix=np.asarray(switch).tolist() if switch is not None else (), accuracy=accuracy,
            mean_log_prob=log_prob, frames=int(labels.size)))
    # first best in grid order (uniform before learned, grid order) wins exact ties
    return max(candidates, key=lambda c: (c.accuracy, c.mean_log_prob))


def make_filter(mode: str, num_classes: int, *, p_stay: float = 0.95, ema_alpha: float = 0.3,
                adjacency_CC: np.ndarray | None = None, class_prior_C: np.ndarray | None = None,
                temperature: float = 1.0, switch_CC: np.ndarray | None = None) -> ProbabilityFilter:
    """Build the filter named ``mode`` (``hmm``, ``ema`` or ``none``)."""
    if mode == 'hmm':
        return HMMFilter(num_classes, p_stay=p_stay, adjacency_CC=adjacency_CC, class_prior_C=class_prior_C,
                         temperature=temperature, switch_CC=switch_CC)
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
