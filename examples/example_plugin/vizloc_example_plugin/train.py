"""The ``example_color`` trainer: ``vizloc-train example_color --data ROOMS_DIR --out BUNDLE``.

Registered by :func:`.plugin.vizloc_register_trainers` as dotted paths, so importing the plugin never
imports this module (nor anything of ``vizloc_training``). Training here is deliberately simple but
real: it *measures* the colour table. The dataset is in the Rooms format (docs/datasets.md:
``DATA/{train,val,test}/<room>/*.png``) whose room folders are colour names of :data:`.PALETTE`; each
room's colour is the mean over its training images of the per-image mean RGB that the bundle's own
model computes (same resize to ``image_size``), so the localizer compares like with like. The bundle
(:func:`.make_bundle`) carries that table as ``metadata.palette``; the nearest-colour accuracy on the
``val`` (and ``test``) split, where present, goes into the bundle's metrics.

Its settings are a typed, frozen config dataclass (:class:`ExampleColorConfig`, a
``vizloc_training.train.config.TrainConfig``) and the presets ``dataclasses.replace(BASE, ...)``, as in
the built-in trainers; there is no training loop (nothing is optimised), so it does not use the
training skeleton (``vizloc_training.train.skeleton.fit``) that they run their epochs in.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from vizloc_training.train.config import TrainConfig, TrainConfigError, resolve_preset

from .bundle import make_bundle
from .localizer import PALETTE

__all__ = ['PRESETS', 'BASE', 'ExampleColorConfig', 'train']

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ExampleColorConfig(TrainConfig):
    """``vizloc-train example_color`` settings (``--set key=value`` for any field)."""

    TYPE: ClassVar[str] = 'example_color'
    POSITIVE: ClassVar[tuple[str, ...]] = ('image_size',)

    image_size: int = 32          # the model's square input (pixels)
    max_images_per_room: int = 0  # 0 = all


BASE = ExampleColorConfig()
PRESETS: dict[str, ExampleColorConfig] = {
    'demo': BASE,
    'tiny': replace(BASE, image_size=16, max_images_per_room=8),
    'full': replace(BASE, image_size=64),
}


def _mean_rgb_per_image(data: Path, split: str, labels: tuple[str, ...] | None, size_px: int,
                        max_per_room: int) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(labels, per-image mean RGB in [0, 1] [N, 3], label index [N]) of one split, resized as the runtime does."""
    from vizloc_ros.runner import resize_for_model
    from vizloc_training.datasets.rooms import RoomsDataset

    dataset = RoomsDataset(data, split, labels=labels)
    means, label_idx, per_room = [], [], dict.fromkeys(range(len(dataset.labels)), 0)
    for rgb_HW3, label, _ in dataset.iter_frames():
        if max_per_room and per_room[label] >= max_per_room:
            continue
        per_room[label] += 1
        resized, _ = resize_for_model(rgb_HW3, size_px, size_px, 'stretch')
        means.append(resized.reshape(-1, 3).mean(axis=0) / 255.0)
        label_idx.append(label)
    return tuple(dataset.labels), np.array(means, dtype=np.float64).reshape(-1, 3), np.array(label_idx, dtype=int)


def _accuracy(palette: Mapping[str, np.ndarray], labels: tuple[str, ...], means_N3: np.ndarray,
              label_N: np.ndarray) -> float:
    table = np.array([palette[name] for name in labels])
    nearest = np.argmin(np.linalg.norm(means_N3[:, None, :] - table[None], axis=2), axis=1)
    return float(np.mean(nearest == label_N))


def train(args: Any) -> Path:
    """Measure the colour table on ``args.data`` and write the bundle to ``args.out`` (returns it).

    ``args`` is a :class:`vizloc_training.train.config.TrainArgs` (``vizloc-train``'s arguments).
    """
    config = resolve_preset(PRESETS, args)
    size_px, max_per_room = config.image_size, config.max_images_per_room
    labels, means_N3, label_N = _mean_rgb_per_image(args.data, 'train', None, size_px, max_per_room)
    unknown = sorted(set(labels) - set(PALETTE))
    if unknown:
        raise TrainConfigError(f'{args.data}: room folders {unknown} are not colour names of {sorted(PALETTE)}')
    palette = {name: means_N3[label_N == i].mean(axis=0) for i, name in enumerate(labels) if np.any(label_N == i)}
    missing = sorted(set(labels) - set(palette))
    if missing:
        raise TrainConfigError(f'{args.data}: no training image for rooms {missing}')
    metrics: dict[str, Any] = {'train_images': int(len(label_N)),
                               'train_accuracy': _accuracy(palette, labels, means_N3, label_N)}
    for split in ('val', 'test'):
        if (Path(args.data) / split).is_dir():
            _, split_means, split_labels = _mean_rgb_per_image(args.data, split, labels, size_px, 0)
            metrics[f'{split}_accuracy'] = _accuracy(palette, labels, split_means, split_labels)
            metrics[f'{split}_images'] = int(len(split_labels))
    logger.info('example_color: colour table of %d rooms from %d images; %s', len(palette), len(label_N), metrics)
    return make_bundle(args.out, height=size_px, width=size_px, palette=palette, metrics=metrics,
                       metadata={'preset': args.preset, 'config': config.to_dict()})
