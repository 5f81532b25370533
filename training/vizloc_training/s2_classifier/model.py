"""S2 cell classifier network: backbone (``vizloc_training.models.backbones``), dropout, linear cell head
and, for the hierarchical variant, a linear head over the cells' ancestor (parent) cells.

:class:`S2ClassifierExport` is the inference graph: softmax ``probs`` over cells (+ ``parent_probs``),
in the order of :attr:`vizloc_plugins.s2_classifier.S2ClassifierContract.output_names`, optionally
averaged over the image and its mirror image.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..models.backbones import make_backbone

__all__ = ['S2ClassifierNet', 'S2ClassifierExport']


class S2ClassifierNet(nn.Module):
    """``forward(x_N3HW normalised) -> (cell logits N x C, parent logits N x P or None)``."""

    def __init__(self, backbone: str, num_cells: int, num_parents: int = 0, *, dropout: float = 0.2,
                 init_weights: Path | None = None, pretrained: bool = False) -> None:
        super().__init__()
        if num_cells < 1:
            raise ValueError(f'need at least 1 cell, got {num_cells}')
        self.backbone, dim = make_backbone(backbone, init_weights=init_weights, pretrained=pretrained)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_cells)
        self.parent_head = nn.Linear(dim, num_parents) if num_parents else None

    def forward(self, x_N3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = self.dropout(self.backbone(x_N3HW))
        return self.head(features), (self.parent_head(features) if self.parent_head is not None else None)


class S2ClassifierExport(nn.Module):
    """Inference graph: ``probs`` (N x C) and, with a parent head, ``parent_probs`` (N x P).

    ``tta_flip``: each output is the mean of the softmax of the image and of its mirror image (one
    forward pass over a batch of 2N; training mirrors half its images, so both are in distribution)."""

    def __init__(self, net: S2ClassifierNet, *, tta_flip: bool = False) -> None:
        super().__init__()
        self.net = net
        self.tta_flip = tta_flip

    def forward(self, x_N3HW: torch.Tensor):
        n = x_N3HW.shape[0]
        if self.tta_flip:
            x_N3HW = torch.cat([x_N3HW, x_N3HW.flip(3)], dim=0)
        outputs = [torch.softmax(logits, dim=1) for logits in self.net(x_N3HW) if logits is not None]
        if self.tta_flip:
            outputs = [0.5 * (p[:n] + p[n:]) for p in outputs]
        return tuple(outputs)
