"""Reader of the Rooms dataset format of the room classifier (seed 000).

Layout (docs/datasets.md)::

    DIR/{train,val,test}/<room_label>/*.jpg|jpeg|png|bmp     still images
    DIR/{train,val,test}/<room_label>/*.mp4|mov|avi          video clips, read frame by frame

Labels are the sorted union of the room folders of all splits present, so label indices agree
across splits (or pass ``labels`` explicitly, e.g. from a trained bundle; a folder not in it is an
error). Clips are opened lazily: the frame count comes from the container (counted by grabbing
frames when the container does not say), frames are decoded only when asked for.

Usage::

    ds = RoomsDataset('indoor', 'train')
    ds.labels                          # ('kitchen', 'lab', ...)
    rgb_HW3, label_index = ds[0]       # RGB uint8
    for rgb_HW3, label_index, sample in ds.iter_frames():   # sequential, fast for clips
        ...
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

__all__ = ['SPLITS', 'IMAGE_SUFFIXES', 'VIDEO_SUFFIXES', 'RoomsDatasetError', 'UnreadableImageError',
           'RoomSample', 'RoomsDataset', 'discover_labels']

_LOG = logging.getLogger(__name__)

SPLITS = ('train', 'val', 'test')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')
VIDEO_SUFFIXES = ('.mp4', '.mov', '.avi')


class RoomsDatasetError(ValueError):
    """A Rooms dataset that cannot be used (missing split folder, unknown label, empty split)."""


class UnreadableImageError(RoomsDatasetError):
    """An image or clip frame that cannot be decoded; ``path`` says which file."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f'{path}: {detail}')
        self.path = path


@dataclass(frozen=True)
class RoomSample:
    """A still image (``frame_index`` None) or one frame of a clip."""

    path: Path
    label_index: int
    label: str
    frame_index: int | None = None


def discover_labels(root: str | Path) -> tuple[str, ...]:
    """Sorted union of the room folders under ``root/{train,val,test}``."""
    root = Path(root)
    labels = {p.name for split in SPLITS if (root / split).is_dir() for p in (root / split).iterdir() if p.is_dir()}
    return tuple(sorted(labels))


def _clip_frame_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise UnreadableImageError(path, 'cannot open video clip')
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if count <= 0:  # container without a frame count: count by grabbing
            count = 0
            while cap.grab():
                count += 1
        return count
    finally:
        cap.release()


class RoomsDataset:
    """Samples of one split: ``len``, ``ds[i] -> (rgb_HW3, label_index)``, :meth:`iter_frames`."""

    def __init__(self, root: str | Path, split: str, *, labels: Sequence[str] | None = None,
                 clip_stride: int = 1) -> None:
        self._cap: cv2.VideoCapture | None = None
        self._cap_path: Path | None = None
        self._cap_next = 0
        if split not in SPLITS:
            raise RoomsDatasetError(f'unknown split {split!r}; splits: {SPLITS}')
        if clip_stride < 1:
            raise RoomsDatasetError(f'clip_stride must be >= 1, got {clip_stride}')
        self.root = Path(root)
        self.split = split
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise RoomsDatasetError(f'{split_dir}: split folder does not exist (layout: DIR/{{train,val,test}}/<room>/)')
        self.labels: tuple[str, ...] = tuple(labels) if labels is not None else discover_labels(self.root)
        if labels is not None and len(set(self.labels)) != len(self.labels):
            raise RoomsDatasetError(f'labels must be unique, got {self.labels}')
        index = {label: i for i, label in enumerate(self.labels)}
        samples: list[RoomSample] = []
        for room_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if room_dir.name not in index:
                raise RoomsDatasetError(f'{room_dir}: room {room_dir.name!r} is not one of the labels {self.labels}')
            li = index[room_dir.name]
            n_before = len(samples)
            for path in sorted(p for p in room_dir.iterdir() if p.is_file()):
                suffix = path.suffix.lower()
                if suffix in IMAGE_SUFFIXES:
                    samples.append(RoomSample(path, li, room_dir.name))
                elif suffix in VIDEO_SUFFIXES:
                    n = _clip_frame_count(path)
                    if n == 0:
                        _LOG.warning('%s: video clip has no frames; skipped', path)
                    samples.extend(RoomSample(path, li, room_dir.name, k) for k in range(0, n, clip_stride))
                else:
                    _LOG.debug('%s: not an image or clip; ignored', path)
            if len(samples) == n_before:
                _LOG.warning('%s: room folder holds no images or clips', room_dir)
        if not samples:
            raise RoomsDatasetError(f'{split_dir}: no images or clips found')
        self.samples: tuple[RoomSample, ...] = tuple(samples)
        self.clip_stride = clip_stride

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        s = self.samples[i]
        return self.load(s), s.label_index

    def label_counts(self) -> dict[str, int]:
        counts = {label: 0 for label in self.labels}
        for s in self.samples:
            counts[s.label] += 1
        return counts

    def load(self, sample: RoomSample) -> np.ndarray:
        """RGB uint8 image of ``sample``; raises :class:`UnreadableImageError` naming the file."""
        if sample.frame_index is None:
            bgr = cv2.imread(str(sample.path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise UnreadableImageError(sample.path, 'cannot decode image')
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return self._clip_frame(sample.path, sample.frame_index)

    def _clip_frame(self, path: Path, index: int) -> np.ndarray:
        if self._cap is None or self._cap_path != path or index < self._cap_next:
            self.close()
            self._cap = cv2.VideoCapture(str(path))
            if not self._cap.isOpened():
                self._cap = None
                raise UnreadableImageError(path, 'cannot open video clip')
            self._cap_path, self._cap_next = path, 0
        while self._cap_next < index:  # sequential grab: exact for every codec, cheap for nearby frames
            if not self._cap.grab():
                raise UnreadableImageError(path, f'clip ended before frame {index}')
            self._cap_next += 1
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise UnreadableImageError(path, f'cannot decode clip frame {index}')
        self._cap_next += 1
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def iter_frames(self, *, on_error: str = 'raise') -> Iterator[tuple[np.ndarray, int, RoomSample]]:
        """All samples in order as (rgb_HW3, label_index, sample); clips are decoded sequentially.

        ``on_error='warn'`` logs unreadable files (with their path) and skips them; ``'raise'``
        raises :class:`UnreadableImageError`.
        """
        if on_error not in ('raise', 'warn'):
            raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
        for s in self.samples:
            try:
                rgb = self.load(s)
            except UnreadableImageError as exc:
                if on_error == 'raise':
                    raise
                _LOG.warning('unreadable sample skipped: %s', exc)
                continue
            yield rgb, s.label_index, s
        self.close()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap, self._cap_path, self._cap_next = None, None, 0

    def __del__(self) -> None:
        self.close()
