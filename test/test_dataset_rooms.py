"""Rooms dataset reader: images and video clips (written here with cv2.VideoWriter), labels
shared across splits, lazy clip decoding, unreadable files reported with their path."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from vizloc_training.datasets.rooms import RoomsDataset, RoomsDatasetError, UnreadableImageError, discover_labels

COLOURS = {'kitchen': (200, 40, 40), 'office': (40, 200, 40), 'lab': (40, 40, 200)}  # RGB


def _image(path: Path, rgb: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((24, 32, 3), np.uint8)
    img[:] = rgb[::-1]  # BGR
    assert cv2.imwrite(str(path), img)


def _clip(path: Path, rgb: tuple[int, int, int], frames: int) -> None:
    """MJPG AVI whose frame k is ``rgb`` with a brightness ramp k * 10 (frame order is checkable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10.0, (32, 24))
    assert writer.isOpened()
    for k in range(frames):
        img = np.zeros((24, 32, 3), np.uint8)
        img[:] = [min(255, c + 0) for c in rgb[::-1]]
        img[:12] = k * 10  # top half encodes the frame index
        writer.write(img)
    writer.release()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / 'rooms'
    for label, rgb in COLOURS.items():
        for k in range(2):
            _image(root / 'train' / label / f'{k}.png', rgb)
        _image(root / 'test' / label / 'a.jpg', rgb)
    _clip(root / 'train' / 'office' / 'walk.avi', COLOURS['office'], 6)
    _image(root / 'val' / 'lounge' / 'x.png', (128, 128, 128))  # a room only in val
    (root / 'train' / 'lab' / 'notes.txt').write_text('not an image')
    return root


def test_samples_labels_and_images(dataset: Path) -> None:
    ds = RoomsDataset(dataset, 'train')
    assert ds.labels == ('kitchen', 'lab', 'lounge', 'office') == discover_labels(dataset)
    assert len(ds) == 2 + 2 + 2 + 6  # images + clip frames; notes.txt ignored
    assert ds.label_counts() == {'kitchen': 2, 'lab': 2, 'lounge': 0, 'office': 8}
    clip = [s for s in ds.samples if s.frame_index is not None]
    assert [s.frame_index for s in clip] == list(range(6)) and all(s.path.name == 'walk.avi' for s in clip)
    for i, s in enumerate(ds.samples):
        rgb, li = ds[i]
        assert rgb.shape == (24, 32, 3) and ds.labels[li] == s.label
        bottom = rgb[16:].reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(bottom, COLOURS[s.label], atol=12)  # RGB order, lossy codecs


def test_clip_frames_random_access_and_sequential_agree(dataset: Path) -> None:
    ds = RoomsDataset(dataset, 'train')
    clip_idx = [i for i, s in enumerate(ds.samples) if s.frame_index is not None]
    seq = {s.frame_index: rgb for rgb, _, s in ds.iter_frames() if s.frame_index is not None}
    for i in reversed(clip_idx):  # backwards: forces re-opening and seeking
        rgb, _ = ds[i]
        k = ds.samples[i].frame_index
        assert abs(float(rgb[:10].mean()) - k * 10) < 8, k
        np.testing.assert_array_equal(rgb, seq[k])
    strided = RoomsDataset(dataset, 'train', clip_stride=2)
    assert [s.frame_index for s in strided.samples if s.frame_index is not None] == [0, 2, 4]


def test_explicit_labels_keep_indices_and_reject_unknown_rooms(dataset: Path) -> None:
    ds = RoomsDataset(dataset, 'test', labels=['office', 'lab', 'kitchen', 'lounge'])
    assert {s.label: s.label_index for s in ds.samples} == {'office': 0, 'lab': 1, 'kitchen': 2}
    with pytest.raises(RoomsDatasetError, match="'lounge' is not one of the labels"):
        RoomsDataset(dataset, 'val', labels=['office'])


def test_unreadable_image_is_reported_with_its_path(dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = dataset / 'test' / 'lab' / 'broken.png'
    bad.write_bytes(b'not a png at all')
    ds = RoomsDataset(dataset, 'test')
    i = next(k for k, s in enumerate(ds.samples) if s.path == bad)
    with pytest.raises(UnreadableImageError) as err:
        ds[i]
    assert err.value.path == bad and str(bad) in str(err.value)
    with caplog.at_level(logging.WARNING):
        frames = list(ds.iter_frames(on_error='warn'))
    assert len(frames) == len(ds) - 1
    assert str(bad) in caplog.text
    with pytest.raises(UnreadableImageError):
        list(ds.iter_frames())


def test_missing_split_and_empty_split_are_errors(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(RoomsDatasetError, match='split folder does not exist'):
        RoomsDataset(tmp_path / 'nowhere', 'train')
    with pytest.raises(RoomsDatasetError, match='unknown split'):
        RoomsDataset(dataset, 'training')
    (tmp_path / 'empty' / 'train' / 'kitchen').mkdir(parents=True)
    with pytest.raises(RoomsDatasetError, match='no images or clips'):
        RoomsDataset(tmp_path / 'empty', 'train')
    broken_clip = dataset / 'train' / 'lab' / 'broken.avi'
    broken_clip.write_bytes(b'garbage')
    with pytest.raises(UnreadableImageError, match='broken.avi'):
        RoomsDataset(dataset, 'train')
