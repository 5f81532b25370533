"""Image tensors for training: uint8 batches to float, ImageNet normalisation, photometric/geometric
augmentation. Shared by the trainers that feed an ImageNet backbone (GPS regressor, S2 classifier,
retrieval); the exported ONNX graphs bake the same preprocessing in (:mod:`.export`)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..models.backbones import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['AUGMENT_LEVELS', 'augment_batch', 'to_unit', 'imagenet_normalise']

#: ``augment`` choices of the trainers that use :func:`augment_batch`.
AUGMENT_LEVELS = ('none', 'light', 'strong')

_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def to_unit(images_NHW3: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC RGB -> float NCHW in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(images_NHW3)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def imagenet_normalise(x_N3HW: torch.Tensor) -> torch.Tensor:
    """Float RGB in [0, 1] -> ImageNet-normalised (the pretrained backbones' input)."""
    return (x_N3HW - _MEAN.to(x_N3HW.device)) / _STD.to(x_N3HW.device)


def augment_batch(x_N3HW: torch.Tensor, level: str, generator: torch.Generator) -> torch.Tensor:
    """Random augmentation of a float batch in [0, 1] (per-sample parameters; same size out).

    ``light``: brightness/contrast/saturation jitter. ``strong``: also a small affine jitter
    (scale 0.9-1.1, rotation +-3 deg, shift +-4 %, reflection padding), Gaussian blur (p 0.2),
    Gaussian noise (sigma <= 0.04) and a grey occluding rectangle (p 0.3, 5-25 % of the area).
    No flips: mirroring a view changes where it was taken.
    """
    if level == 'none':
        return x_N3HW
    n, _, h, w = x_N3HW.shape
    dev = x_N3HW.device

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return (torch.rand(shape or (n,), generator=generator) * (hi - lo) + lo).to(dev)

    x = x_N3HW * u(0.6, 1.4).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.7, 1.3).view(n, 1, 1, 1) + mean
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * u(0.6, 1.4).view(n, 1, 1, 1) + gray
    if level == 'strong':
        angle = torch.deg2rad(u(-3.0, 3.0))
        scale = u(0.9, 1.1)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, u(-0.08, 0.08)], 1),
                             torch.stack([sin, cos, u(-0.08, 0.08)], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=False)
        blur = (torch.rand(n, generator=generator) < 0.2).nonzero().flatten().to(dev)
        if len(blur):  # only the drawn images are convolved (the convolution is most of a batch's time)
            k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=dev)
            k = (k[:, None] * k[None, :]) / 256.0
            blurred = F.conv2d(F.pad(x[blur], (2, 2, 2, 2), mode='replicate'), k.expand(3, 1, 5, 5).contiguous(),
                               groups=3)
            x = x.index_copy(0, blur, blurred)
        x = x + torch.randn(x.shape, generator=generator).to(dev) * u(0.0, 0.04).view(n, 1, 1, 1)
        occlude = (torch.rand(n, generator=generator) < 0.3).tolist()
        area = u(0.05, 0.25).tolist()
        aspect = u(0.5, 2.0).tolist()
        fx, fy = torch.rand(n, generator=generator).tolist(), torch.rand(n, generator=generator).tolist()
        for i in range(n):
            if not occlude[i]:
                continue
            oh = max(1, min(h, int(round(math.sqrt(area[i] * h * w / aspect[i])))))
            ow = max(1, min(w, int(round(math.sqrt(area[i] * h * w * aspect[i])))))
            y0, x0 = int(fy[i] * (h - oh + 1)), int(fx[i] * (w - ow + 1))
            x[i, :, y0:y0 + oh, x0:x0 + ow] = 0.5
    return x.clamp(0.0, 1.0)
