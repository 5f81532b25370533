"""Temporal filters of the room classifier on hand-made probability sequences."""
import numpy as np
import pytest

from vizloc_plugins.smoothing import (EMAFilter, HMMFilter, NoFilter, adjacency_from_polygons, filter_sequence,
                                      make_filter, transition_matrix)

A, B, C = [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]


def test_transition_matrix_uniform_and_adjacency():
    T = transition_matrix(3, 0.9)
    np.testing.assert_allclose(T, [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    adj = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=bool)  # a chain a - b - c
    T = transition_matrix(3, 0.8, adj, leak=0.0)
    np.testing.assert_allclose(T, [[0.8, 0.2, 0.0], [0.1, 0.8, 0.1], [0.0, 0.2, 0.8]])
    T = transition_matrix(3, 0.8, adj, leak=0.1)
    np.testing.assert_allclose(T.sum(axis=1), 1.0)
    assert T[0, 2] == pytest.approx(0.2 * 0.1 * 0.5)


def test_hmm_suppresses_a_single_frame_flicker_but_follows_a_real_change():
    seq = [A] * 5 + [B] + [A] * 3 + [B] * 5
    raw = np.argmax(seq, axis=1)
    smoothed = filter_sequence(HMMFilter(3, p_stay=0.9), seq).argmax(axis=1)
    assert raw[5] == 1 and smoothed[5] == 0           # the one-frame flicker is removed
    assert list(smoothed[-3:]) == [1, 1, 1]           # the lasting change is followed
    first_b = int(np.argmax(smoothed[6:] == 1)) + 6
    assert 9 <= first_b <= 11                         # within two frames of the change at 9
    # with p_stay close to 0.5 (weak prior) the filter follows the flicker
    weak = filter_sequence(HMMFilter(3, p_stay=0.34), seq).argmax(axis=1)
    np.testing.assert_array_equal(weak, raw)


def test_hmm_first_frame_equals_the_classifier_and_belief_is_normalised():
    f = HMMFilter(3, p_stay=0.95)
    np.testing.assert_allclose(f.update(np.array(C) * 3.0), C)  # input normalised
    belief = f.update(B)
    assert belief.sum() == pytest.approx(1.0)
    # predicted = [0.1*0.95+..., ...]; posterior by hand
    predicted = np.array(C) @ transition_matrix(3, 0.95)
    expected = predicted * np.array(B) / np.max(B)
    np.testing.assert_allclose(belief, expected / expected.sum())


def test_hmm_likelihood_floor_prevents_lock_in_and_reset_forgets():
    f = HMMFilter(2, p_stay=0.99, min_likelihood=1e-3)
    for _ in range(20):
        f.update([1.0, 0.0])  # a classifier that is certain (zero for the other room)
    out = None
    for _ in range(10):
        out = f.update([0.0, 1.0])
    assert out.argmax() == 1  # recovers despite exact zeros
    f.reset()
    np.testing.assert_allclose(f.update([0.3, 0.7]), [0.3, 0.7])


def test_hmm_class_prior_rescales_posteriors():
    # A classifier trained on 90 % room a: p(a|x) = 0.6 is weak evidence for a.
    f = HMMFilter(2, p_stay=0.5, class_prior_C=np.array([0.9, 0.1]))
    np.testing.assert_allclose(f.update([0.6, 0.4]), [0.6, 0.4])  # first frame: the posterior itself
    # next frame: the uniform transition forgets the prior, the scaled likelihood (0.6/0.9, 0.4/0.1) favours b
    np.testing.assert_allclose(f.update([0.6, 0.4]), np.array([0.6 / 0.9, 0.4 / 0.1]) / (0.6 / 0.9 + 0.4 / 0.1))
    uniform = HMMFilter(2, p_stay=0.5)
    uniform.update([0.6, 0.4])
    assert uniform.update([0.6, 0.4]).argmax() == 0


def test_ema_and_none():
    ema = EMAFilter(2, alpha=0.5)
    np.testing.assert_allclose(ema.update([1.0, 0.0]), [1.0, 0.0])
    np.testing.assert_allclose(ema.update([0.0, 1.0]), [0.5, 0.5])
    np.testing.assert_allclose(ema.update([0.0, 1.0]), [0.25, 0.75])
    ema.reset()
    np.testing.assert_allclose(ema.update([0.0, 1.0]), [0.0, 1.0])
    none = NoFilter(3)
    np.testing.assert_allclose(none.update(B), B)
    seq = [A, B, A]
    np.testing.assert_array_equal(filter_sequence(make_filter('none', 3), seq).argmax(1), [0, 1, 0])


def test_invalid_inputs():
    with pytest.raises(ValueError, match='smoothing must be'):
        make_filter('kalman', 3)
    with pytest.raises(ValueError, match='p_stay'):
        HMMFilter(3, p_stay=1.0)
    with pytest.raises(ValueError, match='alpha'):
        EMAFilter(3, alpha=0.0)
    with pytest.raises(ValueError, match='expected 3'):
        HMMFilter(3).update([0.5, 0.5])
    with pytest.raises(ValueError, match='non-negative'):
        HMMFilter(2).update([np.nan, 1.0])
    with pytest.raises(ValueError, match='sum to zero'):
        HMMFilter(2).update([0.0, 0.0])


def test_adjacency_from_polygons():
    polygons = {
        'kitchen': [[0, 0], [4, 0], [4, 3], [0, 3]],
        'hall': [[4.2, 0], [6, 0], [6, 3], [4.2, 3]],     # 0.2 m wall: adjacent
        'office': [[10, 10], [12, 10], [12, 12]],         # far away
    }
    adj = adjacency_from_polygons(polygons, ['hall', 'kitchen', 'office', 'attic'], tolerance_m=0.5)
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 1] = expected[1, 0] = True
    np.testing.assert_array_equal(adj, expected)
    assert not adjacency_from_polygons(polygons, ['hall', 'kitchen'], tolerance_m=0.1).any()
