"""Losses: CrossLoc's MLE coordinate loss and ACE's reprojection loss with a shrinking threshold.

All functions take flat per-cell tensors (B = cells), so they serve both dense image batches
(flattened) and ACE feature-buffer batches.

Coordinate NLL (supervision with ground-truth scene coordinates or depth), in scene-scale units:
``e = ||c_pred - c_gt||_2``, ``s = log b``:

* ``laplace``: ``e / b + 3 s`` (negative log-likelihood of an isotropic 3D Laplace-type density
  ``p(c) ~ b^-3 exp(-e / b)``, constants dropped);
* ``gaussian``: ``e^2 / (2 b^2) + 3 s``;
* ``none``: plain ``e`` (log scale unused).

Reprojection loss (no 3D supervision; ACE, Brachmann et al. 2023): predicted coordinates are
projected with the ground-truth pose; for *valid* cells (in front of the camera by at least
``min_depth_m``, reprojection error below ``max_reprojection_px``) the loss is
``tau * tanh(err / tau)`` with the robust threshold shrinking over training,
``tau(t) = sqrt(1 - t) * (tau_max - tau_min) + tau_min`` for training progress ``t`` in [0, 1];
*invalid* cells are pulled (L1, scene-scale units) towards the point at ``target_depth_m`` on
their pixel ray. The log scale is trained on the (detached) reprojection error converted to metres
at the predicted depth with the same NLL.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ['coordinate_nll', 'shrinking_threshold_px', 'ReprojectionLossConfig', 'reprojection_loss']


def coordinate_nll(pred_B3: torch.Tensor, gt_B3: torch.Tensor, log_scale_B: torch.Tensor,
                   kind: str = 'laplace') -> torch.Tensor:
    """Per-cell NLL (B,) of ``gt`` under the predicted coordinate and scale (same units)."""
    if pred_B3.shape != gt_B3.shape or pred_B3.shape[-1] != 3:
        raise ValueError(f'pred {tuple(pred_B3.shape)} and gt {tuple(gt_B3.shape)} must both be (B, 3)')
    err = torch.linalg.vector_norm(pred_B3 - gt_B3, dim=-1)
    return _nll(err, log_scale_B.reshape(-1), kind)


def _nll(err_B: torch.Tensor, log_scale_B: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == 'laplace':
        return err_B * torch.exp(-log_scale_B) + 3.0 * log_scale_B
    if kind == 'gaussian':
        return 0.5 * err_B ** 2 * torch.exp(-2.0 * log_scale_B) + 3.0 * log_scale_B
    if kind == 'none':
        return err_B
    raise ValueError(f"uncertainty kind must be 'laplace', 'gaussian' or 'none', got {kind!r}")


def shrinking_threshold_px(progress: float, tau_max_px: float = 50.0, tau_min_px: float = 1.0) -> float:
    """ACE's curriculum: ``sqrt(1 - t) * (tau_max - tau_min) + tau_min`` for progress t in [0, 1]."""
    t = min(max(float(progress), 0.0), 1.0)
    return math.sqrt(1.0 - t) * (tau_max_px - tau_min_px) + tau_min_px


@dataclass(frozen=True)
class ReprojectionLossConfig:
    tau_max_px: float = 50.0
    tau_min_px: float = 1.0
    min_depth_m: float = 0.1
    max_reprojection_px: float = 1000.0
    target_depth_m: float = 10.0
    uncertainty: str = 'laplace'


def reprojection_loss(coords_world_B3: torch.Tensor, log_scale_B: torch.Tensor, pixels_B2: torch.Tensor,
                      T_camera_world_B34: torch.Tensor, K_B33: torch.Tensor, progress: float, scene_scale_m: float,
                      config: ReprojectionLossConfig = ReprojectionLossConfig()) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean reprojection loss over the cells; returns (loss, stats) with the share of valid cells.

    ``coords_world_B3`` in metres; ``log_scale_B`` in scene-scale units (log); ``pixels_B2`` are the
    cells' pixel centres; ``T_camera_world_B34`` the ground-truth world->camera transforms.
    """
    R = T_camera_world_B34[:, :, :3]
    t = T_camera_world_B34[:, :, 3]
    X_cam = torch.einsum('bij,bj->bi', R, coords_world_B3) + t
    z = X_cam[:, 2]
    z_safe = torch.where(z.abs() > 1e-6, z, torch.full_like(z, 1e-6))
    proj = torch.einsum('bij,bj->bi', K_B33, X_cam / z_safe[:, None])[:, :2]
    err_px = torch.linalg.vector_norm(proj - pixels_B2, dim=-1)
    valid = (z > config.min_depth_m) & (err_px < config.max_reprojection_px)
    tau = shrinking_threshold_px(progress, config.tau_max_px, config.tau_min_px)
    loss = torch.zeros((), dtype=coords_world_B3.dtype, device=coords_world_B3.device)
    n = coords_world_B3.shape[0]
    if valid.any():
        robust = tau * torch.tanh(err_px[valid] / tau)
        focal = 0.5 * (K_B33[valid, 0, 0] + K_B33[valid, 1, 1])
        err_scene = (err_px[valid] * z[valid] / focal).detach() / scene_scale_m
        loss = loss + robust.sum() + _nll(err_scene, log_scale_B[valid], config.uncertainty).sum()
    invalid = ~valid
    if invalid.any():
        ones = torch.ones_like(pixels_B2[invalid, :1])
        rays = torch.linalg.solve(K_B33[invalid], torch.cat([pixels_B2[invalid], ones], dim=1)[..., None])[..., 0]
        target_cam = rays / rays[:, 2:3] * config.target_depth_m
        loss = loss + (torch.abs(X_cam[invalid] - target_cam).sum(dim=1) / scene_scale_m).sum()
    stats = {'valid_ratio': float(valid.float().mean()) if n else 0.0, 'tau_px': tau}
    return loss / max(n, 1), stats
