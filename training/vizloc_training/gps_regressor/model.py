"""The GPS regressor network: a torchvision backbone and a heteroscedastic 2-D Gaussian head.

:class:`GPSRegressorNet` maps a normalised image batch (float NCHW, ImageNet mean/std) to a Gaussian
over the horizontal position in *normalised* ENU units (see :mod:`.losses`). :class:`MetricHead`
wraps it for export: de-normalises to metres in the training split's ENU frame and returns
``mean_en_m`` (N, 2) and ``cov_en_m2`` (N, 2, 2), the two outputs of the bundle's ONNX model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..models.backbones import make_backbone
from .losses import MAX_ABS_RHO, covariance_from_head

__all__ = ['BACKBONE_CHOICES', 'HEADS', 'POOLING', 'GPSRegressorNet', 'MetricHead', 'grid_anchors']

#: Backbones the seed compares (EfficientNet-B0 is the default); the lighter MobileNets also work.
BACKBONE_CHOICES = ('efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2', 'efficientnet_b0', 'resnet18',
                    'convnext_tiny', 'mobilenet_v3_small', 'mobilenet_v3_large')
#: ``avg``: global average pooling (the seed's heads). ``spatial``: 1x1 conv + flatten of the final
#: feature map, keeping where things are in the image (needs a fixed input size).
POOLING = ('avg', 'spatial')
#: Clamp range of the predicted log-variances (normalised units): keeps exp() finite.
LOG_VAR_MIN, LOG_VAR_MAX = -16.0, 6.0
#: ``gaussian``: the seed's direct regression (mean, log-variances, correlation). ``bins``: a
#: probability over place anchors (cells of a metric grid that hold training positions); the
#: Gaussian is the mixture's moment match (see :meth:`GPSRegressorNet.forward`).
HEADS = ('gaussian', 'bins')


def grid_anchors(train_en_m: np.ndarray, bin_size_m: float, *, min_anchors: int = 16,
                 max_anchors: int = 1024) -> tuple[np.ndarray, float]:
    """Centres (K, 2) in metres of the grid cells that hold at least one training position, and the cell size.

    The grid starts at ``bin_size_m`` and is aligned to the training positions' minimum corner; only
    the training split goes in (no leakage), so places never visited in training have no anchor.
    The cell size is doubled while there are more than ``max_anchors`` cells (a large area) and
    halved while there are fewer than ``min_anchors`` (a small one; not below 1/64 of the start), so
    one default fits a courtyard and a city district.
    """
    if bin_size_m <= 0.0:
        raise ValueError(f'bin_size_m must be positive, got {bin_size_m}')
    en = np.asarray(train_en_m, dtype=np.float64).reshape(-1, 2)
    if len(en) == 0:
        raise ValueError('grid_anchors needs at least one training position')
    corner = en.min(axis=0)

    def cells(size: float) -> np.ndarray:
        return np.unique(np.floor((en - corner) / size).astype(np.int64), axis=0)

    size = float(bin_size_m)
    occupied = cells(size)
    while len(occupied) > max_anchors:
        size *= 2.0
        occupied = cells(size)
    while len(occupied) < min_anchors and size > bin_size_m / 64.0:
        finer = cells(size / 2.0)
        if len(finer) > max_anchors:
            break
        size, occupied = size / 2.0, finer
    return corner + (occupied + 0.5) * size, size


class GPSRegressorNet(nn.Module):
    """Backbone -> pooling -> MLP head (the seed's ``feat -> 256 -> 128``) -> (mu, log_var, rho).

    ``forward`` returns ``mu_N2`` and ``log_var_N2`` (normalised ENU units) and ``rho_N`` (the
    east/north correlation, 0 when ``correlation`` is False).
    """

    def __init__(self, backbone: str = 'efficientnet_b0', *, hidden: tuple[int, int] = (256, 128),
                 dropout: float = 0.2, correlation: bool = True, init_weights: Path | None = None,
                 pool: str = 'avg', image_hw: tuple[int, int] = (224, 224), spatial_channels: int = 32,
                 anchors_z_K2: torch.Tensor | None = None, bin_var_z_2: torch.Tensor | None = None,
                 pretrained: bool = False) -> None:
        super().__init__()
        if backbone not in BACKBONE_CHOICES:
            raise ValueError(f'unknown backbone {backbone!r} for the GPS regressor; choose one of {BACKBONE_CHOICES}')
        if pool not in POOLING:
            raise ValueError(f'unknown pooling {pool!r}; choose one of {POOLING}')
        self.backbone_name = backbone
        self.pool = pool
        self.head_kind = 'gaussian' if anchors_z_K2 is None else 'bins'
        if anchors_z_K2 is not None:
            if anchors_z_K2.ndim != 2 or anchors_z_K2.shape[1] != 2 or len(anchors_z_K2) < 2:
                raise ValueError(f'anchors must be (K >= 2, 2), got {tuple(anchors_z_K2.shape)}')
            # Quantisation variance of one cell (normalised units per axis): the floor of the covariance.
            self.register_buffer('anchors_z', anchors_z_K2.detach().clone().float())
            self.register_buffer('bin_var_z', (bin_var_z_2 if bin_var_z_2 is not None
                                               else torch.zeros(2)).detach().clone().float().reshape(1, 2))
        self.backbone, feature_dim = make_backbone(backbone, init_weights=init_weights, pretrained=pretrained)
        self.correlation = correlation
        if pool == 'spatial':
            # Keep the layout of the final feature map (where things are in the view says where the
            # camera is): 1x1 conv to a few channels, then flatten the whole map.
            with torch.no_grad():
                was_training = self.backbone.training
                self.backbone.eval()
                h, w = self.backbone.forward_features(torch.zeros(1, 3, *image_hw)).shape[2:]
                self.backbone.train(was_training)
            self.reduce = nn.Sequential(nn.Conv2d(feature_dim, spatial_channels, 1, bias=False),
                                        nn.BatchNorm2d(spatial_channels), nn.SiLU())
            head_in = spatial_channels * h * w
        else:
            self.reduce = None
            head_in = feature_dim
        self.head = nn.Sequential(
            nn.Linear(head_in, hidden[0]),
            nn.LayerNorm(hidden[0]),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden[0], hidden[1]),
            nn.SiLU(),
            nn.Linear(hidden[1], 5 if anchors_z_K2 is None else len(anchors_z_K2) + 1),
        )
        out: nn.Linear = self.head[-1]  # type: ignore[assignment]
        nn.init.zeros_(out.bias)
        nn.init.normal_(out.weight, std=1e-3)
        #: ``bins``: None -> the published mean is the mixture's mean; a (2,) radius in normalised units per
        #: axis -> the mean of the anchors within that radius of the most probable one (:meth:`publish_mode`).
        #: A non-persistent buffer: it moves with the module and stays out of checkpoints.
        self.register_buffer('mode_radius_z', None, persistent=False)

    def publish_mode(self, radius_m: float, std_en_m: np.ndarray | Sequence[float]) -> None:
        """Publish the place distribution's main mode instead of its mean (``bins`` head; after training):
        the probability-weighted mean of the anchors within ``radius_m`` of the most probable anchor. The
        covariance stays the second moment of the whole distribution, now about that point, so views that
        could be in two places keep their wide ellipses. ``radius_m`` 0: the mixture mean (as trained)."""
        if self.head_kind != 'bins':
            raise ValueError('publish_mode needs the bins head')
        if radius_m < 0:
            raise ValueError(f'mode radius must be >= 0 m, got {radius_m}')
        std = torch.as_tensor(np.asarray(std_en_m, np.float64), dtype=torch.float32).reshape(2)
        self.mode_radius_z = None if radius_m == 0 else (radius_m / std).to(self.anchors_z.device)

    def features(self, x_N3HW: torch.Tensor) -> torch.Tensor:
        return self.pooled(self.backbone.forward_features(x_N3HW))

    def pooled(self, maps_NChw: torch.Tensor) -> torch.Tensor:
        """The head's input from the backbone's feature maps: the 1x1-reduced, flattened map
        (``spatial``) or the global average (``avg``, the backbone's own pooling)."""
        if self.reduce is None:
            return self.backbone.pool(maps_NChw)
        return torch.flatten(self.reduce(maps_NChw), 1)

    def forward(self, x_N3HW: torch.Tensor, return_logits: bool = False):
        """``(mu_N2, log_var_N2, rho_N)``, plus the anchor logits (N, K) with ``return_logits`` (``bins`` only).

        ``bins``: ``p = softmax(logits)``; the mean is ``sum_k p_k a_k`` and the covariance
        ``sum_k p_k (a_k - mu)(a_k - mu)^T`` plus a learned residual variance and the cell's
        quantisation variance, i.e. the moment-matched Gaussian of the mixture over anchors, returned
        as log-variances and a correlation like the ``gaussian`` head. After :meth:`publish_mode` the mean
        is the main mode's instead (the covariance is then about it).
        """
        return self.from_maps(self.backbone.forward_features(x_N3HW), return_logits)

    def from_maps(self, maps_NChw: torch.Tensor, return_logits: bool = False):
        """:meth:`forward` from the backbone's feature maps (the frozen-feature mode trains on cached maps)."""
        raw = self.head(self.pooled(maps_NChw))
        if self.head_kind == 'bins':
            logits = raw[:, :-1]
            p = torch.softmax(logits, dim=1)
            if self.mode_radius_z is None:
                mu = p @ self.anchors_z
            else:  # the main mode: anchors within the radius (an ellipse in z, a circle in metres) of the argmax
                top = self.anchors_z[logits.argmax(dim=1)]
                near = ((((self.anchors_z.unsqueeze(0) - top.unsqueeze(1)) / self.mode_radius_z) ** 2).sum(dim=2)
                        <= 1.0).to(p.dtype)
                w = p * near
                mu = (w @ self.anchors_z) / w.sum(dim=1, keepdim=True)
            d = self.anchors_z.unsqueeze(0) - mu.unsqueeze(1)
            cov = torch.einsum('nk,nki,nkj->nij', p, d, d)
            floor = torch.exp(raw[:, -1:].clamp(LOG_VAR_MIN, LOG_VAR_MAX)) + self.bin_var_z
            var = torch.stack([cov[:, 0, 0], cov[:, 1, 1]], dim=1) + floor
            log_var = torch.log(var).clamp(LOG_VAR_MIN, LOG_VAR_MAX)
            rho = (cov[:, 0, 1] / torch.sqrt(var[:, 0] * var[:, 1])).clamp(-MAX_ABS_RHO, MAX_ABS_RHO)
            return (mu, log_var, rho, logits) if return_logits else (mu, log_var, rho)
        if return_logits:
            raise ValueError('return_logits needs the bins head')
        mu = raw[:, 0:2]
        log_var = raw[:, 2:4].clamp(LOG_VAR_MIN, LOG_VAR_MAX)
        if self.correlation:
            rho = MAX_ABS_RHO * torch.tanh(raw[:, 4])
        else:
            rho = torch.zeros_like(raw[:, 4])
        return mu, log_var, rho

    def soft_labels(self, target_z_N2: torch.Tensor, std_en_m: torch.Tensor, sigma_m: float) -> torch.Tensor:
        """(N, K) target distribution over anchors: a Gaussian kernel of ``sigma_m`` metres around each target."""
        d_m = (self.anchors_z.unsqueeze(0) - target_z_N2.unsqueeze(1)) * std_en_m.reshape(1, 1, 2)
        return torch.softmax(-(d_m ** 2).sum(dim=2) / (2.0 * sigma_m ** 2), dim=1)


class MetricHead(nn.Module):
    """Export wrapper: normalised outputs -> ``mean_en_m`` (N, 2) and ``cov_en_m2`` (N, 2, 2) in metres.

    ``mean_en_m``/``std_en_m`` are the train-split statistics of the ENU targets; the covariance
    is ``diag(std) S diag(std)``. A calibration ``variance_scale`` is *not* baked in: it is stored
    in the bundle metadata and applied by the plugin, so it stays visible and adjustable.
    """

    def __init__(self, net: GPSRegressorNet, mean_en_m: torch.Tensor, std_en_m: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer('mean_en_m', mean_en_m.detach().clone().float().reshape(1, 2))
        self.register_buffer('std_en_m', std_en_m.detach().clone().float().reshape(1, 2))

    def forward(self, x_N3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._metric(*self.net(x_N3HW))

    def from_maps(self, maps_NChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` from the backbone's feature maps (validation of a head trained on cached maps)."""
        return self._metric(*self.net.from_maps(maps_NChw))

    def _metric(self, mu: torch.Tensor, log_var: torch.Tensor, rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean_en_m = mu * self.std_en_m + self.mean_en_m
        cov = covariance_from_head(log_var, rho)
        scale = self.std_en_m.reshape(1, 2, 1) * self.std_en_m.reshape(1, 1, 2)
        return mean_en_m, cov * scale
