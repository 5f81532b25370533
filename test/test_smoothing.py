"""Temporal filters of the room classifier on hand-made probability sequences."""
import numpy as np
import pytest

from vizloc_plugins.smoothing import (EMAFilter, HMMFilter, NoFilter, SmoothingCalibration, adjacency_from_polygons,
                                      calibrate_hmm, estimate_switch_matrix, filter_sequence, make_filter,
                                      transition_matrix)

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


def test_switch_matrix_learned_from_an_ordered_trajectory():
    # a -> b -> c -> b -> a: four changes in eight frame pairs; a and c are never adjacent
    switch, p_stay = estimate_switch_matrix([[0, 0, 1, 1, 2, 2, 1, 1, 0]], 3, pseudo_count=1.0)
    assert p_stay == pytest.approx(0.5)
    # counts plus one pseudo-count spread over the other rooms, rows normalised
    np.testing.assert_allclose(switch, [[0, 0.75, 0.25], [0.5, 0, 0.5], [0.25, 0.75, 0]])
    # several sequences: no change is counted across their boundary
    _, p_two = estimate_switch_matrix([[0, 0], [2, 2, 2]], 3)
    assert p_two == 1.0
    T = transition_matrix(3, 0.9, switch_CC=switch)
    np.testing.assert_allclose(T, 0.1 * switch + 0.9 * np.eye(3))
    with pytest.raises(ValueError, match='not both'):
        transition_matrix(3, 0.9, adjacency_CC=np.ones((3, 3), bool), switch_CC=switch)
    with pytest.raises(ValueError, match='labels must be'):
        estimate_switch_matrix([[0, 3]], 3)


def test_hmm_emission_temperature():
    hot = HMMFilter(3, p_stay=0.9, temperature=2.0)
    first = np.sqrt(np.array(A) / np.max(A))
    np.testing.assert_allclose(hot.update(A), first / first.sum())  # a flatter first belief than A itself
    got = hot.update(B)
    predicted = first / first.sum() @ transition_matrix(3, 0.9)
    expected = predicted * np.sqrt(np.array(B) / np.max(B))  # temperature 2: square root of the scaled likelihood
    np.testing.assert_allclose(got, expected / expected.sum())
    # a colder emission trusts single frames more: the flicker of the uniform test above gets through
    seq = [A] * 5 + [B] + [A] * 3
    assert filter_sequence(HMMFilter(3, p_stay=0.9, temperature=1.0), seq).argmax(1)[5] == 0
    assert filter_sequence(HMMFilter(3, p_stay=0.9, temperature=0.5), seq).argmax(1)[5] == 1
    with pytest.raises(ValueError, match='temperature'):
        HMMFilter(3, temperature=0.0)


def test_calibration_chooses_parameters_that_fix_the_validation_sequence():
    # true rooms a (12) -> b (12) -> c (12); single frames: moderate evidence for the true room and one
    # confident flicker a -> c inside a (a and c are never adjacent on the training trajectory)
    soft = {0: [0.6, 0.25, 0.15], 1: [0.15, 0.6, 0.25], 2: [0.25, 0.15, 0.6]}
    labels = np.repeat([0, 1, 2], 12)
    probs = np.array([soft[k] for k in labels])
    probs[5] = [0.1, 0.1, 0.8]
    single = float(np.mean(probs.argmax(1) == labels))
    assert single < 1.0
    switch, _ = estimate_switch_matrix([[0, 1, 2, 1, 0]], 3)  # a-b-c chain, learned from "training"
    best = calibrate_hmm(probs, labels, switch_CC=switch)
    assert best.accuracy == 1.0 and best.frames == labels.size and best.transition == 'learned'
    # without the learned switch prior no grid point removes the flicker without delaying a real change
    assert calibrate_hmm(probs, labels).accuracy < 1.0
    filt = make_filter('hmm', 3, p_stay=best.p_stay, temperature=best.temperature,
                       switch_CC=switch if best.transition == 'learned' else None)
    np.testing.assert_array_equal(filter_sequence(filt, probs).argmax(1), labels)  # reproducible from the result
    # a one-point grid that follows the single frames is worse; calibration never picks below the single frame
    weak = calibrate_hmm(probs, labels, p_stays=[0.34], temperatures=[0.25])
    assert weak.accuracy == pytest.approx(single) and weak.transition == 'uniform'
    with pytest.raises(ValueError, match='T x C'):
        calibrate_hmm(probs, labels[:-1])


def test_calibration_is_what_the_bundle_stores():
    """One class for the HMM parameters: calibrate_hmm returns the contract's SmoothingCalibration, which
    the room contract parses from metadata.smoothing (the learned switch matrix travels with it)."""
    from vizloc_plugins.room_classifier_contract import RoomClassifierContract, SmoothingCalibration as FromContract

    soft = {0: [0.6, 0.25, 0.15], 1: [0.15, 0.6, 0.25], 2: [0.25, 0.15, 0.6]}  # as above: 'learned' wins
    labels = np.repeat([0, 1, 2], 12)
    probs = np.array([soft[k] for k in labels])
    probs[5] = [0.1, 0.1, 0.8]
    switch, _ = estimate_switch_matrix([[0, 1, 2, 1, 0]], 3)
    best = calibrate_hmm(probs, labels, switch_CC=switch)
    assert isinstance(best, SmoothingCalibration) and SmoothingCalibration is FromContract
    assert best.transition == 'learned'
    np.testing.assert_allclose(best.switch_CC, switch)
    contract = RoomClassifierContract(classes=('a', 'b', 'c'), smoothing=best)
    parsed = RoomClassifierContract.from_metadata(contract.to_metadata())
    assert parsed.smoothing == best
