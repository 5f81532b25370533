"""Scene-coordinate losses (training/vizloc_training/scene_coordinates/losses.py) against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from vizloc_training.scene_coordinates.losses import (ReprojectionLossConfig, coordinate_nll, reprojection_loss,
                                                      shrinking_threshold_px)


def test_laplace_and_gaussian_nll_hand_values() -> None:
    pred = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    gt = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])      # errors 3 and 0
    log_scale = torch.tensor([math.log(2.0), 0.0])
    laplace = coordinate_nll(pred, gt, log_scale, 'laplace')
    # 3 / 2 + 3 ln 2 ; 0 / 1 + 0
    assert laplace.tolist() == pytest.approx([1.5 + 3 * math.log(2.0), 0.0], abs=1e-6)
    gaussian = coordinate_nll(pred, gt, log_scale, 'gaussian')
    # 9 / (2 * 4) + 3 ln 2
    assert gaussian.tolist() == pytest.approx([9.0 / 8.0 + 3 * math.log(2.0), 0.0], abs=1e-6)
    assert coordinate_nll(pred, gt, log_scale, 'none').tolist() == pytest.approx([3.0, 0.0])


def test_laplace_nll_is_minimised_at_scale_equal_error_over_three() -> None:
    # d/ds (e exp(-s) + 3 s) = 0  ->  b = e / 3
    log_scale = torch.zeros(1, requires_grad=True)
    pred, gt = torch.tensor([[6.0, 0.0, 0.0]]), torch.zeros(1, 3)
    optimizer = torch.optim.SGD([log_scale], lr=0.1)
    for _ in range(300):
        optimizer.zero_grad()
        coordinate_nll(pred, gt, log_scale).sum().backward()
        optimizer.step()
    assert math.exp(log_scale.item()) == pytest.approx(2.0, rel=1e-3)


def test_nll_rejects_bad_shapes_and_kinds() -> None:
    with pytest.raises(ValueError):
        coordinate_nll(torch.zeros(2, 3), torch.zeros(3, 3), torch.zeros(2))
    with pytest.raises(ValueError):
        coordinate_nll(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), 'cauchy')


def test_shrinking_threshold_schedule() -> None:
    assert shrinking_threshold_px(0.0, 50.0, 1.0) == pytest.approx(50.0)
    assert shrinking_threshold_px(0.75, 50.0, 1.0) == pytest.approx(0.5 * 49.0 + 1.0)
    assert shrinking_threshold_px(1.0, 50.0, 1.0) == pytest.approx(1.0)
    assert shrinking_threshold_px(2.0, 50.0, 1.0) == pytest.approx(1.0)


def test_reprojection_loss_hand_values() -> None:
    K = torch.tensor([[100.0, 0.0, 50.0], [0.0, 100.0, 50.0], [0.0, 0.0, 1.0]])
    T = torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1)  # camera = world
    # cell 0: point at depth 10 projecting 3 px right of its pixel (valid)
    # cell 1: point behind the camera (invalid) -> pulled to the target on its ray at 10 m
    coords = torch.tensor([[0.3, 0.0, 10.0], [0.0, 0.0, -5.0]])
    pixels = torch.tensor([[50.0, 50.0], [50.0, 50.0]])
    log_scale = torch.zeros(2)
    config = ReprojectionLossConfig(tau_max_px=50.0, tau_min_px=1.0, target_depth_m=10.0, uncertainty='laplace')
    loss, stats = reprojection_loss(coords, log_scale, pixels, T[None].expand(2, -1, -1), K[None].expand(2, -1, -1),
                                    progress=1.0, scene_scale_m=1.0, config=config)
    tau = 1.0
    valid_term = tau * math.tanh(3.0 / tau) + (3.0 * 10.0 / 100.0)  # robust + Laplace NLL of 0.3 m with b = 1
    invalid_term = abs(-5.0 - 10.0)                                 # L1 to (0, 0, 10)
    assert loss.item() == pytest.approx((valid_term + invalid_term) / 2.0, rel=1e-5)
    assert stats['valid_ratio'] == pytest.approx(0.5)
    assert stats['tau_px'] == pytest.approx(1.0)
