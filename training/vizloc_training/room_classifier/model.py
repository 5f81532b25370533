"""Room classifier network: torchvision backbone, global average pooling, dropout, linear head.

The GAP + linear head makes class-activation maps exact (Zhou et al., CAM): the logit of class k
is the spatial mean of ``cam_k = W_k · F + b_k`` over the final feature maps ``F``. The exported
model (:class:`RoomClassifierExport`) therefore has two outputs:

* ``probs`` (N x C): softmax over rooms;
* ``cam`` (N x C x h x w): the class-activation maps at the backbone's output stride (only for
  backbones whose pooled feature is the plain mean of the maps; not convnext_tiny).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vizloc_plugins.room_classifier_contract import OUTPUT_CAM, OUTPUT_PROBS

from ..models.backbones import Backbone, make_backbone

__all__ = ['RoomClassifier', 'RoomClassifierExport', 'build_model']


class RoomClassifier(nn.Module):
    """``forward(x_N3HW normalised) -> logits_NC``."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f'need at least 2 rooms, got {num_classes}')
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.feature_dim, num_classes)

    def forward(self, x_N3HW: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x_N3HW)))

    def cam(self, x_N3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits N x C, cam N x C x h x w) from one pass; mean of cam over h, w equals the logits."""
        maps = self.backbone.forward_features(x_N3HW)
        cam = torch.einsum('kc,nchw->nkhw', self.head.weight, maps) + self.head.bias.view(1, -1, 1, 1)
        return cam.mean(dim=(2, 3)), cam


class RoomClassifierExport(nn.Module):
    """Inference graph: ``probs`` (+ ``cam`` when the backbone supports it).

    ``tta_flip``: test-time augmentation baked into the graph: the image and its mirror image run
    as one batch of 2N, logits and (mirrored back) CAMs are averaged. Twice the compute; the CAM
    property (spatial mean of ``cam`` = logits, ``probs = softmax(logits)``) still holds.
    """

    def __init__(self, model: RoomClassifier, tta_flip: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_cam = model.backbone.supports_cam
        self.tta_flip = bool(tta_flip)

    @property
    def output_names(self) -> list[str]:
        return [OUTPUT_PROBS, OUTPUT_CAM] if self.with_cam else [OUTPUT_PROBS]

    def forward(self, x_N3HW: torch.Tensor):
        n = x_N3HW.shape[0]
        if self.tta_flip:
            x_N3HW = torch.cat([x_N3HW, x_N3HW.flip(3)], dim=0)
        if self.with_cam:
            logits, cam = self.model.cam(x_N3HW)
            if self.tta_flip:
                logits = (logits[:n] + logits[n:]) / 2
                cam = (cam[:n] + cam[n:].flip(3)) / 2
            return torch.softmax(logits, dim=1), cam
        logits = self.model(x_N3HW)
        if self.tta_flip:
            logits = (logits[:n] + logits[n:]) / 2
        return (torch.softmax(logits, dim=1),)


def build_model(backbone: str, num_classes: int, *, dropout: float = 0.2,
                init_weights: Path | None = None, pretrained: bool = False) -> RoomClassifier:
    net, _ = make_backbone(backbone, init_weights=init_weights, pretrained=pretrained)
    return RoomClassifier(net, num_classes, dropout=dropout)
