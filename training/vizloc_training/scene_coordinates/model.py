"""Network: a scene-agnostic stride-8 CNN encoder and a scene-specific 1x1-conv regression head.

ACE's split: the encoder (:class:`Encoder`) is trained once (on synthetic data, or on the scene
itself) and then frozen; mapping a scene trains only the head (:class:`Head`) from a buffer of
encoder features. :class:`SceneCoordinateNet` joins both for export and predicts, for every cell
of the 1/8 grid, the scene coordinate in metres (``coords_N3hw``) and the log of a Laplace scale in
metres (``log_scale_N1hw``, CrossLoc's MLE uncertainty). The head predicts coordinates relative to
the scene mean and in units of the scene scale (both buffers, stored in the bundle metadata), so
the same head works for a 5 m room and a 2 km aerial scene.

Cell (i, j) of the output grid stands for input pixel ``(8 j + 4, 8 i + 4)`` (the DSAC*/ACE
convention, pixel k's centre at coordinate k; the same as the ``init/`` files of the datasets).

The encoder is saved as its own self-describing checkpoint (:func:`save_encoder`) ``encoder.pt``:
``{'format': 'vizloc-scene-encoder', 'version': 1, 'config': EncoderConfig fields, 'state_dict',
'trained_on', 'saved_utc'}``.
"""
from __future__ import annotations

import datetime as _dt
import logging
import pickle
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from vizloc_plugins.scene_coordinates_contract import OUTPUT_STRIDE

__all__ = ['OUTPUT_STRIDE', 'ENCODER_KINDS', 'EncoderConfig', 'HeadConfig', 'Encoder', 'Head', 'SceneCoordinateNet',
           'EncoderCheckpointError', 'save_encoder', 'load_encoder', 'cell_centres_px', 'LOG_SCALE_MIN',
           'LOG_SCALE_MAX']

logger = logging.getLogger(__name__)

#: Encoder kinds: the CNN trained here, or a frozen ImageNet-pretrained EfficientNet-Lite.
ENCODER_KINDS = ('cnn', 'efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2')
ENCODER_FORMAT = 'vizloc-scene-encoder'
ENCODER_VERSION = 1
#: log-scale range (in scene-scale units) the head may predict; keeps the NLL finite.
LOG_SCALE_MIN = -9.0
LOG_SCALE_MAX = 3.0


class EncoderCheckpointError(ValueError):
    """An encoder.pt that is not a vizloc scene encoder or does not match the requested config."""


@dataclass(frozen=True)
class EncoderConfig:
    """Encoder kind and size.

    ``kind='cnn'``: the small CNN trained here: ``width`` channels at 1/2 resolution (x2 at 1/4, x4
    at 1/8), ``blocks`` depthwise-separable residual blocks at 1/8 with dilations cycling through
    ``dilations`` (receptive field ~ 15 + 16 * sum(dilations used) pixels), ``feature_dim`` output
    channels.

    ``kind='efficientnet_lite0'`` (``1``, ``2``): ACE's recipe with an ImageNet-pretrained, frozen
    EfficientNet-Lite: the last feature maps at each stride in ``levels`` (8 and 16: 40 + 112
    channels for Lite0), upsampled to stride 8 and concatenated; ``feature_dim`` is derived from the
    network (the field is ignored); width/blocks/dilations/norm/context_dim do not apply.
    """

    width: int = 24
    blocks: int = 4
    feature_dim: int = 128
    dilations: tuple[int, ...] = (1, 2, 4, 1)
    norm: str = 'none'
    context_dim: int = 0
    kind: str = 'cnn'
    levels: tuple[int, ...] = (8, 16)

    def __post_init__(self) -> None:
        if self.kind not in ENCODER_KINDS:
            raise ValueError(f'encoder kind must be one of {ENCODER_KINDS}, got {self.kind!r}')
        levels = tuple(int(v) for v in self.levels)
        if not levels or levels[0] != OUTPUT_STRIDE or any(v not in (8, 16, 32) for v in levels) \
                or list(levels) != sorted(set(levels)):
            raise ValueError(f'encoder levels must be increasing strides from 8, 16, 32 starting at 8, got {self.levels}')
        object.__setattr__(self, 'levels', levels)
        if self.width < 4 or self.blocks < 0 or self.feature_dim < 4 or not self.dilations:
            raise ValueError(f'bad encoder config {self}')
        if self.norm not in ('none', 'group'):
            raise ValueError(f"encoder norm must be 'none' or 'group', got {self.norm!r}")
        if not 0 <= self.context_dim < self.feature_dim:
            raise ValueError(f'context_dim must be in [0, feature_dim), got {self.context_dim}')
        object.__setattr__(self, 'dilations', tuple(int(d) for d in self.dilations))


@dataclass(frozen=True)
class HeadConfig:
    """Head size: ``layers`` residual 1x1-conv blocks of ``width`` channels."""

    width: int = 256
    layers: int = 2

    def __post_init__(self) -> None:
        if self.width < 4 or self.layers < 0:
            raise ValueError(f'bad head config {self}')


class _DSBlock(nn.Module):
    """Depthwise 3x3 (dilated) + pointwise 1x1, residual."""

    def __init__(self, channels: int, dilation: int, norm: str = 'none') -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, groups=channels)
        self.norm = _norm(norm, channels)
        self.pw = nn.Conv2d(channels, channels, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw(self.act(self.norm(self.dw(x))))


def _norm(kind: str, channels: int) -> nn.Module:
    """GroupNorm (batch-size independent, identical in train and eval mode) or identity."""
    if kind == 'group':
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class _PretrainedMultiScale(nn.Module):
    """EfficientNet-Lite stem + blocks; the last block output at each stride of ``levels``, upsampled
    (bilinear) to the stride-8 grid and concatenated. Input: ImageNet-normalised NCHW images."""

    def __init__(self, kind: str, levels: tuple[int, ...], pretrained: bool) -> None:
        super().__init__()
        from ..models.backbones import make_backbone

        backbone, _ = make_backbone(kind, pretrained=pretrained)
        self.weights_source = dict(backbone.weights_source)
        lite = backbone.features  # _LiteFeatures: input affine + the EfficientNet
        self.register_buffer('scale', lite.scale.clone(), persistent=False)
        self.register_buffer('shift', lite.shift.clone(), persistent=False)
        net = lite.net
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        # which blocks end a stride level: probe the strides once on a dummy input (eval mode: the
        # probe must not touch the batch-norm statistics)
        blocks = list(net._blocks)
        net.eval()
        with torch.no_grad():
            x = self.stem(torch.zeros(1, 3, 64, 64))
            strides = []
            for block in blocks:
                x = block(x)
                strides.append(64 // x.shape[-1])
        # the last block of each wanted stride; the blocks after the last tap are not needed
        keep = [i for i, s_ in enumerate(strides) if s_ in levels and (i + 1 == len(strides) or strides[i + 1] != s_)]
        self.blocks = nn.ModuleList(blocks[:keep[-1] + 1])
        self.taps = tuple(keep)
        self.feature_dim = int(sum(blocks[i]._project_conv.out_channels for i in keep))

    def forward(self, x_N3HW: torch.Tensor) -> torch.Tensor:
        x = self.stem(x_N3HW * self.scale + self.shift)
        maps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                maps.append(x)
        size = maps[0].shape[-2:]
        return torch.cat([maps[0]] + [nn.functional.interpolate(m, size=size, mode='bilinear', align_corners=False)
                                      for m in maps[1:]], dim=1)

    def train(self, mode: bool = True) -> '_PretrainedMultiScale':
        """Batch-norm statistics stay frozen (ImageNet's) even when fine-tuning."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self


class Encoder(nn.Module):
    """uint8-free: takes normalised float NCHW images, returns (N, feature_dim, H/8, W/8) features.

    ``pretrained`` (pretrained kinds only) loads the packaged ImageNet weights; without it the
    network is built empty, for :func:`load_encoder` to fill. :attr:`feature_dim` is the output width.
    """

    def __init__(self, config: EncoderConfig = EncoderConfig(), pretrained: bool = False) -> None:
        super().__init__()
        self.config = config
        self.weights_source: dict[str, str] = {'source': 'scratch'}
        if config.kind != 'cnn':
            self.pretrained = _PretrainedMultiScale(config.kind, config.levels, pretrained)
            self.weights_source = self.pretrained.weights_source
            self.feature_dim = self.pretrained.feature_dim
            self.context = None
            return
        self.feature_dim = config.feature_dim
        w = config.width
        n = config.norm
        layers: list[nn.Module] = [
            nn.Conv2d(3, w, 3, stride=2, padding=1), _norm(n, w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), _norm(n, 2 * w), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), _norm(n, 4 * w), nn.ReLU(inplace=True),
            nn.Conv2d(4 * w, config.feature_dim, 1), nn.ReLU(inplace=True),
        ]
        for i in range(config.blocks):
            layers.append(_DSBlock(config.feature_dim, config.dilations[i % len(config.dilations)], n))
        local_dim = config.feature_dim - config.context_dim
        layers.append(nn.Conv2d(config.feature_dim, local_dim, 1))
        self.net = nn.Sequential(*layers)
        # image-level context: a global-average-pooled descriptor appended to every cell
        self.context = (nn.Sequential(nn.Linear(local_dim, config.context_dim), nn.ReLU(inplace=True),
                                      nn.Linear(config.context_dim, config.context_dim))
                        if config.context_dim else None)

    def forward(self, x_N3HW: torch.Tensor) -> torch.Tensor:
        if self.config.kind != 'cnn':
            return self.pretrained(x_N3HW)
        local = self.net(x_N3HW)
        if self.context is None:
            return local
        ctx = self.context(local.mean(dim=(2, 3)))[:, :, None, None].expand(-1, -1, local.shape[2], local.shape[3])
        return torch.cat([local, ctx], dim=1)


class Head(nn.Module):
    """Per-cell MLP (1x1 convs) on encoder features -> normalised coordinates (3) + log scale (1).

    Works on (N, C, h, w) maps and on (B, C, 1, 1) buffer batches alike.
    """

    def __init__(self, feature_dim: int, config: HeadConfig = HeadConfig()) -> None:
        super().__init__()
        self.config = config
        self.inp = nn.Sequential(nn.Conv2d(feature_dim, config.width, 1), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(config.width, config.width, 1), nn.ReLU(inplace=True),
                          nn.Conv2d(config.width, config.width, 1)) for _ in range(config.layers))
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Conv2d(config.width, 4, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (coords in scene-scale units relative to the scene mean, log scale in those units)."""
        x = self.inp(features)
        for block in self.blocks:
            x = self.act(x + block(x))
        out = self.out(x)
        return out[:, :3], out[:, 3:4].clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)


class SceneCoordinateNet(nn.Module):
    """Encoder + head with the scene normalisation baked in: returns (coords_N3hw [m], log_scale_N1hw [log m])."""

    def __init__(self, encoder: Encoder, head: Head, scene_mean_m: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 scene_scale_m: float = 1.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.register_buffer('scene_mean_m', torch.tensor(scene_mean_m, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer('scene_scale_m', torch.tensor(float(scene_scale_m), dtype=torch.float32))

    def set_scene_normalisation(self, mean_m: Any, scale_m: float) -> None:
        if not scale_m > 0.0 or not math.isfinite(scale_m):
            raise ValueError(f'scene scale must be positive and finite, got {scale_m}')
        self.scene_mean_m.copy_(torch.as_tensor(mean_m, dtype=torch.float32).view(1, 3, 1, 1))
        self.scene_scale_m.fill_(float(scale_m))

    def forward_normalised(self, x_N3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.encoder(x_N3HW))

    def denormalise(self, coords_n: torch.Tensor, log_scale_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return coords_n * self.scene_scale_m + self.scene_mean_m, log_scale_n + torch.log(self.scene_scale_m)

    def forward(self, x_N3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.denormalise(*self.forward_normalised(x_N3HW))


def cell_centres_px(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) pixel centres of the output cells for an input of ``height`` x ``width``: (h, w) each."""
    h, w = output_size(height, width)
    v = torch.arange(h, dtype=torch.float32) * OUTPUT_STRIDE + OUTPUT_STRIDE // 2
    u = torch.arange(w, dtype=torch.float32) * OUTPUT_STRIDE + OUTPUT_STRIDE // 2
    return u.view(1, w).expand(h, w), v.view(h, 1).expand(h, w)


def output_size(height: int, width: int) -> tuple[int, int]:
    """Output grid size of the encoder (three stride-2 convs with padding 1)."""
    h, w = height, width
    for _ in range(3):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def save_encoder(encoder: Encoder, path: Path, trained_on: Mapping[str, Any] | None = None) -> Path:
    """Write a self-describing ``encoder.pt``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        'format': ENCODER_FORMAT,
        'version': ENCODER_VERSION,
        'config': {**asdict(encoder.config), 'dilations': list(encoder.config.dilations),
                   'levels': list(encoder.config.levels)},
        'weights_source': dict(encoder.weights_source),
        'output_stride': OUTPUT_STRIDE,
        'state_dict': encoder.state_dict(),
        'trained_on': dict(trained_on or {}),
        'saved_utc': _dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
    }
    tmp = path.with_name(f'.{path.name}.tmp')
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_encoder(path: Path) -> tuple[Encoder, dict[str, Any]]:
    """Load an ``encoder.pt`` (or a bundle directory containing one); returns (encoder, checkpoint info)."""
    path = Path(path)
    if path.is_dir():
        path = path / 'encoder.pt'
    if not path.is_file():
        raise EncoderCheckpointError(f'{path}: no such encoder checkpoint (expected an encoder.pt written by '
                                     f'vizloc-train scene_coordinates)')
    try:
        payload = torch.load(path, map_location='cpu', weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # weights_only refuses pickled objects
        raise EncoderCheckpointError(f'{path}: cannot read: {exc}') from exc
    if not isinstance(payload, dict) or payload.get('format') != ENCODER_FORMAT:
        raise EncoderCheckpointError(f'{path}: not a vizloc scene encoder checkpoint (format '
                                     f'{payload.get("format") if isinstance(payload, dict) else type(payload).__name__!r})')
    if payload.get('version') != ENCODER_VERSION:
        raise EncoderCheckpointError(f'{path}: encoder checkpoint version {payload.get("version")} is not supported')
    try:
        config = EncoderConfig(**{**payload['config'], 'dilations': tuple(payload['config']['dilations']),
                                  'levels': tuple(payload['config'].get('levels', (8, 16)))})
    except (TypeError, ValueError) as exc:
        raise EncoderCheckpointError(f'{path}: bad encoder config {payload.get("config")}: {exc}') from exc
    encoder = Encoder(config)
    missing, unexpected = encoder.load_state_dict(payload['state_dict'], strict=False)
    if missing or unexpected:
        raise EncoderCheckpointError(f'{path}: state_dict does not match {config}: missing {missing}, '
                                     f'unexpected {unexpected}')
    encoder.weights_source = dict(payload.get('weights_source', {'source': 'scratch'}))
    info = {k: v for k, v in payload.items() if k != 'state_dict'}
    info['path'] = str(path)
    return encoder, info
