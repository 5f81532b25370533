"""The rooms dataset (seed 000 format) loaded into memory for training.

Layout: ``DIR/{train,val,test}/<room_label>/*.{jpg,jpeg,png,bmp}`` and video clips
``DIR/{train,val,test}/<room_label>/*.{mp4,mov,avi}`` (every ``video_stride``-th frame is used),
read with the shared reader :class:`vizloc_training.datasets.rooms.RoomsDataset`.
Class names are the room labels of the train split, sorted (a room only in val/test is an error:
the classifier could never output it). Images are decoded once and kept as
uint8 RGB, downscaled so that the shorter side is at most ``max_side_px`` (enough for the
training resolution plus random crops).

Test trajectory (frames in temporal order) for the smoothing evaluation: ``DIR/eval_bag`` (or the older ``DIR/eval.bag``; the
rosbag2 evaluation bag the synthetic worlds write, rooms on ``/ground_truth/room``) when it exists,
else the test split ordered by file name across rooms (frame names are expected to carry the
frame index or timestamp, e.g. ``000123.png``), videos frame by frame.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..datasets.rooms import RoomSample, RoomsDataset, RoomsDatasetError

__all__ = ['RoomsDataError', 'RoomSplit', 'load_split', 'list_classes', 'AugmentedRooms', 'iter_trajectory',
           'temporal_order', 'eval_transform', 'train_transform']

logger = logging.getLogger(__name__)

RoomsDataError = RoomsDatasetError


@dataclass
class RoomSplit:
    """One split in memory: images (uint8 RGB, varying sizes allowed), integer labels, sources."""

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=num_classes)


def list_classes(data: Path) -> list[str]:
    """Room labels (sorted) of ``data/train``."""
    train = Path(data) / 'train'
    if not train.is_dir():
        raise RoomsDataError(f'{data}: no train/ directory; expected DIR/{{train,val,test}}/<room_label>/*.png')
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise RoomsDataError(f'{train}: need at least 2 room directories, found {classes}')
    return classes


def _downscale(rgb: np.ndarray, max_side_px: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    short = min(h, w)
    if max_side_px <= 0 or short <= max_side_px:
        return rgb
    s = max_side_px / short
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def _source(sample: RoomSample) -> str:
    return str(sample.path) if sample.frame_index is None else f'{sample.path}#{sample.frame_index}'


def load_split(data: Path, split: str, classes: list[str], *, max_side_px: int = 0, video_stride: int = 1,
               limit_per_class: int = 0) -> RoomSplit:
    """Load ``data/split`` into memory (empty when the split folder does not exist)."""
    out = RoomSplit()
    if not (Path(data) / split).is_dir():
        return out
    dataset = RoomsDataset(data, split, labels=classes, clip_stride=video_stride)
    counts = np.zeros(len(classes), dtype=np.int64)
    for rgb, label, sample in dataset.iter_frames():
        if limit_per_class and counts[label] >= limit_per_class:
            continue
        counts[label] += 1
        out.images.append(_downscale(rgb, max_side_px))
        out.labels.append(int(label))
        out.sources.append(_source(sample))
    logger.info('%s/%s: %d frames in %d rooms', data, split, len(out), int(np.count_nonzero(counts)))
    return out


def train_transform(size: int, *, scale_min: float = 0.35, jitter: float = 0.3, blur_p: float = 0.3,
                    hflip: bool = True, erase_p: float = 0.0, mean=(0.485, 0.456, 0.406),
                    std=(0.229, 0.224, 0.225)):
    """Augmentation: random resized crop, horizontal flip, colour jitter, Gaussian blur, normalise, random erasing.

    Random erasing (probability ``erase_p``, 2-25 % of the area, filled with the mean colour) hides a
    part of the view, as furniture, people or a door frame do, so that no single region decides the room.
    """
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(size, scale=(scale_min, 1.0), antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if jitter > 0:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=min(0.05, jitter / 8)))
    if blur_p > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=blur_p))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if erase_p > 0:
        steps.append(v2.RandomErasing(p=erase_p, scale=(0.02, 0.25), value=0.0))
    return v2.Compose(steps)


def eval_transform(size: int, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """Resize to ``size x size`` exactly as the plugin does at run time ('stretch', OpenCV), normalise.

    Validation and test figures then measure the deployed preprocessing: torchvision's antialiased
    resize and OpenCV's INTER_AREA differ by enough to flip frames near a decision boundary.
    """
    from torchvision.transforms import v2
    from vizloc_ros.runner import resize_for_model

    normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def transform(chw: torch.Tensor) -> torch.Tensor:
        hwc = np.ascontiguousarray(chw.permute(1, 2, 0).numpy())
        resized, _ = resize_for_model(hwc, size, size, 'stretch')
        return normalise(torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1))

    return transform


class AugmentedRooms(Dataset):
    """A :class:`RoomSplit` as (normalised float CHW tensor, label) pairs through ``transform``."""

    def __init__(self, split: RoomSplit, transform) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        chw = torch.from_numpy(np.ascontiguousarray(self.split.images[i])).permute(2, 0, 1)
        return self.transform(chw), self.split.labels[i]


def _order_key(source: str) -> tuple[str, str, int]:
    path, _, frame = source.partition('#')
    return Path(path).stem, Path(path).name, int(frame) if frame else 0


def temporal_order(split: RoomSplit) -> list[int]:
    """Indices of ``split`` in temporal order: by file name across rooms (``000123.png``), clips frame by frame."""
    return sorted(range(len(split)), key=lambda i: _order_key(split.sources[i]))


def iter_trajectory(data: Path, classes: list[str], split: str = 'test') -> Iterator[tuple[np.ndarray, int, str]]:
    """A split as a trajectory in temporal order: (RGB uint8 image, class index, source).

    For ``test``: from ``data/eval_bag`` (or ``data/eval.bag``) when present (frames with a ground-truth room). Otherwise
    the split's frames ordered by file name across rooms (clips frame by frame).
    """
    data = Path(data)
    index = {name: i for i, name in enumerate(classes)}
    from vizloc_ros.eval_bag import EVAL_BAG_NAME, find_evaluation_bag

    bag = find_evaluation_bag(data) or data / EVAL_BAG_NAME
    if split == 'test' and bag.exists():
        from vizloc_ros.eval_bag import read_evaluation_bag

        for sample in read_evaluation_bag(bag):
            if sample.room is None:
                continue
            if sample.room not in index:
                raise RoomsDataError(f'{bag}: room {sample.room!r} is not a trained class ({classes})')
            yield sample.rgb_HW3, index[sample.room], f'{bag}@{sample.stamp_ns}'
        return
    if not (data / split).is_dir():
        raise FileNotFoundError(f'{data}: no {split}/ trajectory' + (f' and no {EVAL_BAG_NAME}' if split == 'test' else ''))
    dataset = RoomsDataset(data, split, labels=classes)
    order = sorted(dataset.samples, key=lambda s: (s.path.stem, s.path.name, s.frame_index or 0))
    try:
        for sample in order:
            yield dataset.load(sample), sample.label_index, _source(sample)
    finally:
        dataset.close()
