"""Place-recognition network of the ``retrieval`` localizer: backbone feature maps -> GeM -> linear -> L2 norm."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbones import make_backbone

__all__ = ['GeM', 'RetrievalNet']


class GeM(nn.Module):
    """Generalised-mean pooling (Radenovic et al.): ``mean(x^p)^(1/p)`` over the spatial axes, ``p`` learnt."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x_NCHW: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return x_NCHW.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class RetrievalNet(nn.Module):
    """``forward(x) -> (N, dim)`` L2-normalised global descriptors (the ONNX output ``descriptor``)."""

    def __init__(self, backbone: str, dim: int = 256, gem_p: float = 3.0, init_weights: Path | None = None,
                 pretrained: bool = False) -> None:
        super().__init__()
        self.backbone, feature_dim = make_backbone(backbone, init_weights=init_weights, pretrained=pretrained)
        self.pool = GeM(gem_p)
        self.proj = nn.Linear(feature_dim, dim)
        self.dim = dim

    def forward(self, x_N3HW: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.backbone.forward_features(x_N3HW))
        return F.normalize(self.proj(pooled), dim=1)
