"""The GPS regressor network: a torchvision backbone and a heteroscedastic 2-D Gaussian head.

:class:`GPSRegressorNet` maps a normalised image batch (float NCHW, ImageNet mean/std) to a Gaussian
over the horizontal position in *normalised* ENU units (see :mod:`.losses`). :class:`MetricHead`
wraps it for export: de-normalises to metres in the training split's ENU frame and returns
``mean_en_m`` (N, 2) and ``cov_en_m2`` (N, 2, 2), the two outputs of the bundle's ONNX model.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..models.backbones import make_backbone
from .losses import MAX_ABS_RHO, covariance_from_head

__all__ = ['BACKBONE_CHOICES', 'POOLING', 'GPSRegressorNet', 'MetricHead', 'OUTPUT_NAMES']

#: Backbones the seed compares (EfficientNet-B0 is the default); the lighter MobileNets also work.
BACKBONE_CHOICES = ('efficientnet_b0', 'resnet18', 'convnext_tiny', 'mobilenet_v3_small', 'mobilenet_v3_large')
OUTPUT_NAMES = ('mean_en_m', 'cov_en_m2')
#: ``avg``: global average pooling (the seed's heads). ``spatial``: 1x1 conv + flatten of the final
#: feature map, keeping where things are in the image (needs a fixed input size).
POOLING = ('avg', 'spatial')
#: Clamp range of the predicted log-variances (normalised units): keeps exp() finite.
LOG_VAR_MIN, LOG_VAR_MAX = -16.0, 6.0


class GPSRegressorNet(nn.Module):
    """Backbone -> pooling -> MLP head (the seed's ``feat -> 256 -> 128``) -> (mu, log_var, rho).

    ``forward`` returns ``mu_N2`` and ``log_var_N2`` (normalised ENU units) and ``rho_N`` (the
    east/north correlation, 0 when ``correlation`` is False).
    """

    def __init__(self, backbone: str = 'efficientnet_b0', *, hidden: tuple[int, int] = (256, 128),
                 dropout: float = 0.2, correlation: bool = True, init_weights: Path | None = None,
                 pool: str = 'avg', image_hw: tuple[int, int] = (224, 224), spatial_channels: int = 32) -> None:
        super().__init__()
        if backbone not in BACKBONE_CHOICES:
            raise ValueError(f'unknown backbone {backbone!r} for the GPS regressor; choose one of {BACKBONE_CHOICES}')
        if pool not in POOLING:
            raise ValueError(f'unknown pooling {pool!r}; choose one of {POOLING}')
        self.backbone_name = backbone
        self.pool = pool
        self.backbone, feature_dim = make_backbone(backbone, init_weights=init_weights)
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
            nn.Linear(hidden[1], 5),
        )
        out: nn.Linear = self.head[-1]  # type: ignore[assignment]
        nn.init.zeros_(out.bias)
        nn.init.normal_(out.weight, std=1e-3)

    def features(self, x_N3HW: torch.Tensor) -> torch.Tensor:
        if self.reduce is None:
            return self.backbone(x_N3HW)
        return torch.flatten(self.reduce(self.backbone.forward_features(x_N3HW)), 1)

    def forward(self, x_N3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raw = self.head(self.features(x_N3HW))
        mu = raw[:, 0:2]
        log_var = raw[:, 2:4].clamp(LOG_VAR_MIN, LOG_VAR_MAX)
        if self.correlation:
            rho = MAX_ABS_RHO * torch.tanh(raw[:, 4])
        else:
            rho = torch.zeros_like(raw[:, 4])
        return mu, log_var, rho


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
        mu, log_var, rho = self.net(x_N3HW)
        mean_en_m = mu * self.std_en_m + self.mean_en_m
        cov = covariance_from_head(log_var, rho)
        scale = self.std_en_m.reshape(1, 2, 1) * self.std_en_m.reshape(1, 1, 2)
        return mean_en_m, cov * scale
