"""Classification metrics against hand-computed cases."""
import math

import numpy as np
import pytest

from vizloc_training.metrics.classification import (accuracy, classification_report, confusion_matrix,
                                                    precision_recall, top_k_accuracy)


def test_accuracy_and_confusion_matrix_hand_computed():
    labels = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 0, 2]
    assert accuracy(pred, labels) == pytest.approx(4 / 6)
    cm = confusion_matrix(pred, labels, 3)
    # rows = true, columns = predicted
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    precision, recall = precision_recall(cm)
    np.testing.assert_allclose(precision, [1 / 2, 2 / 3, 1 / 1])
    np.testing.assert_allclose(recall, [1 / 2, 2 / 2, 1 / 2])


def test_top_k_accuracy_hand_computed():
    probs = np.array([[0.5, 0.3, 0.2, 0.0],   # label 2: rank 3
                      [0.1, 0.2, 0.3, 0.4],   # label 0: rank 4
                      [0.7, 0.1, 0.1, 0.1],   # label 0: rank 1
                      [0.2, 0.5, 0.1, 0.2]])  # label 3: rank 2 or 3 (tie with 0 -> lower index first)
    labels = [2, 0, 0, 3]
    assert top_k_accuracy(probs, labels, k=1) == pytest.approx(1 / 4)
    assert top_k_accuracy(probs, labels, k=2) == pytest.approx(1 / 4)  # class 0 wins the tie for rank 2
    assert top_k_accuracy(probs, labels, k=3) == pytest.approx(3 / 4)
    assert top_k_accuracy(probs, labels, k=10) == pytest.approx(1.0)


def test_undefined_precision_is_nan_and_ignored_in_macro():
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0]])
    report = classification_report(probs, [0, 1, 1], ['a', 'b', 'c'], k=2)
    assert report['accuracy'] == pytest.approx(2 / 3)
    assert report['top2_accuracy'] == pytest.approx(1.0)
    assert math.isnan(report['per_class']['c']['precision']) and math.isnan(report['per_class']['c']['recall'])
    assert report['per_class']['a'] == {'precision': 0.5, 'recall': 1.0, 'support': 1}
    assert report['per_class']['b'] == {'precision': 1.0, 'recall': 0.5, 'support': 2}
    assert report['macro_precision'] == pytest.approx(0.75)
    assert report['macro_recall'] == pytest.approx(0.75)
    assert report['confusion_matrix'] == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert report['num_samples'] == 3


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match='differ in length'):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match='num_classes'):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match='integer'):
        accuracy([0.5], [0])
    with pytest.raises(ValueError, match='square'):
        precision_recall(np.zeros((2, 3)))
    with pytest.raises(ValueError, match='k must be'):
        top_k_accuracy(np.eye(2), [0, 1], k=0)
    assert math.isnan(accuracy([], []))
