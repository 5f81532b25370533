"""Training data of the GPS regressor: images in memory and targets in a train-split-only ENU frame.

The dataset (format "GPS", seed 001: ``DIR/images/*`` + ``DIR/gt.csv`` or EXIF GPS) is read by
:func:`vizloc_training.datasets.gps.read_gps_dataset`. From the **training split only** this module
derives (:class:`TargetFrame`):

* the regression frame: a local East-North-Up frame (:class:`vizloc_ros.geodesy.LocalENU`, pyproj)
  at the training split's centroid (mean latitude, longitude, altitude);
* the target normalisation: per-axis mean and standard deviation of the training positions in that
  frame (metres).

Validation and test positions are mapped with the same frame and statistics: no val/test
statistics leak into training (seed 001's "train-split-only normalisation"). Images are decoded
and resized once to the model input size with the runtime's own resize
(:func:`vizloc_ros.runner.resize_for_model`, ``stretch``), so training sees exactly what the
plugin feeds the ONNX model.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

__all__ = ['SPLITS', 'TargetFrame', 'SplitArrays', 'GPSData', 'load_gps_data', 'load_image']

logger = logging.getLogger(__name__)

SPLITS = ('train', 'val', 'test')


@dataclass(frozen=True)
class TargetFrame:
    """Regression frame and target normalisation, fitted on the training split only.

    ``origin_*`` is the ENU origin (train centroid); ``mean_en_m``/``std_en_m`` are the per-axis
    statistics of the training positions in that frame. ``altitude_known`` is False when the
    dataset has no altitudes (then ``origin_alt_m`` is 0 and ``alt_std_m`` NaN).
    """

    origin_lat_deg: float
    origin_lon_deg: float
    origin_alt_m: float
    mean_en_m: tuple[float, float]
    std_en_m: tuple[float, float]
    altitude_known: bool
    alt_std_m: float
    n_train: int

    @classmethod
    def fit(cls, train_lla_N3: np.ndarray, *, min_std_m: float = 1.0) -> 'TargetFrame':
        """Fit on the training split's (N, 3) latitude/longitude/altitude (altitude NaN = unknown)."""
        lla = np.asarray(train_lla_N3, dtype=np.float64)
        if lla.ndim != 2 or lla.shape[1] != 3 or lla.shape[0] < 2:
            raise ValueError(f'need at least 2 training positions as (N, 3) lat/lon/alt, got {lla.shape}')
        alt = lla[:, 2]
        altitude_known = bool(np.all(np.isfinite(alt)))
        origin_alt = float(alt.mean()) if altitude_known else 0.0
        alt_std = float(alt.std()) if altitude_known else math.nan
        lat0, lon0 = float(lla[:, 0].mean()), float(lla[:, 1].mean())
        en = _to_en(lat0, lon0, origin_alt, lla)
        std = np.maximum(en.std(axis=0), min_std_m)
        return cls(origin_lat_deg=lat0, origin_lon_deg=lon0, origin_alt_m=origin_alt,
                   mean_en_m=(float(en[:, 0].mean()), float(en[:, 1].mean())),
                   std_en_m=(float(std[0]), float(std[1])), altitude_known=altitude_known, alt_std_m=alt_std,
                   n_train=int(lla.shape[0]))

    def to_en_m(self, lla_N3: np.ndarray) -> np.ndarray:
        """(N, 2) east/north in metres in this frame (altitude NaN taken as the origin's)."""
        return _to_en(self.origin_lat_deg, self.origin_lon_deg, self.origin_alt_m, np.asarray(lla_N3, np.float64))

    def to_lat_lon(self, en_N2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Latitude/longitude (degrees) of (N, 2) east/north positions at the frame's height."""
        from vizloc_ros.geodesy import LocalENU

        en = np.asarray(en_N2, dtype=np.float64)
        lat, lon, _ = LocalENU(self.origin_lat_deg, self.origin_lon_deg, self.origin_alt_m).to_geodetic(
            en[:, 0], en[:, 1], np.zeros(en.shape[0]))
        return np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)

    def normalise(self, en_N2: np.ndarray) -> np.ndarray:
        return ((np.asarray(en_N2, np.float64) - np.asarray(self.mean_en_m)) / np.asarray(self.std_en_m)).astype(
            np.float32)

    def denormalise(self, z_N2: np.ndarray) -> np.ndarray:
        return np.asarray(z_N2, np.float64) * np.asarray(self.std_en_m) + np.asarray(self.mean_en_m)

    def geo_mapping(self) -> dict[str, list[float]]:
        """The :class:`vizloc_ros.geodesy.GeoReference` mapping of the regression (scene) frame."""
        return {'enu_origin': [self.origin_lat_deg, self.origin_lon_deg, self.origin_alt_m]}

    def to_mapping(self) -> dict[str, Any]:
        return {
            'origin_lat_deg': self.origin_lat_deg, 'origin_lon_deg': self.origin_lon_deg,
            'origin_alt_m': self.origin_alt_m, 'mean_en_m': list(self.mean_en_m), 'std_en_m': list(self.std_en_m),
            'altitude_known': self.altitude_known, 'alt_std_m': self.alt_std_m, 'n_train': self.n_train,
        }

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> 'TargetFrame':
        return cls(origin_lat_deg=float(d['origin_lat_deg']), origin_lon_deg=float(d['origin_lon_deg']),
                   origin_alt_m=float(d['origin_alt_m']), mean_en_m=tuple(map(float, d['mean_en_m'])),
                   std_en_m=tuple(map(float, d['std_en_m'])), altitude_known=bool(d['altitude_known']),
                   alt_std_m=float(d['alt_std_m']), n_train=int(d['n_train']))


def _to_en(lat0: float, lon0: float, alt0: float, lla: np.ndarray) -> np.ndarray:
    from vizloc_ros.geodesy import LocalENU

    alt = np.where(np.isfinite(lla[:, 2]), lla[:, 2], alt0)
    e, n, _ = LocalENU(lat0, lon0, alt0).to_enu(lla[:, 0], lla[:, 1], alt)
    return np.stack([np.asarray(e, np.float64), np.asarray(n, np.float64)], axis=1)


@dataclass(frozen=True)
class SplitArrays:
    """One split in memory: uint8 (N, H, W, 3) RGB images, (N, 3) lat/lon/alt, image names and files."""

    images_NHW3: np.ndarray
    lla_N3: np.ndarray
    names: tuple[str, ...]
    paths: tuple[Path, ...] = ()

    def __len__(self) -> int:
        return int(self.images_NHW3.shape[0])


@dataclass(frozen=True)
class GPSData:
    """All splits at the model input size plus the train-only :class:`TargetFrame`."""

    splits: Mapping[str, SplitArrays]
    frame: TargetFrame
    root: Path
    skipped: int = 0

    def targets_z(self, split: str) -> np.ndarray:
        """Normalised (N, 2) targets of ``split`` (train-split statistics)."""
        return self.frame.normalise(self.frame.to_en_m(self.splits[split].lla_N3))


def load_image(path: Path, width: int, height: int) -> np.ndarray:
    """Decode an image file to RGB uint8 and resize it exactly like the runtime plugin does."""
    from vizloc_ros.runner import resize_for_model

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f'cannot decode image {path}')
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    resized, _ = resize_for_model(rgb, width, height, 'stretch')
    return np.ascontiguousarray(resized)


def load_gps_data(root: Path, *, width: int, height: int, max_per_split: int | None = None,
                  splits: Sequence[str] = SPLITS) -> GPSData:
    """Read a GPS-format dataset, decode its images at ``width`` x ``height`` and fit the target frame.

    ``max_per_split`` keeps only the first N samples of each split (quick runs, tests).
    Raises ValueError when the training split has fewer than 2 images.
    """
    from vizloc_training.datasets.gps import read_gps_dataset

    dataset = read_gps_dataset(Path(root))
    by_split: dict[str, list[tuple[Path, float, float, float]]] = {
        s: [(r.image, r.lat_deg, r.lon_deg, r.alt_m) for r in dataset.split(s)] for s in SPLITS}
    arrays: dict[str, SplitArrays] = {}
    for split in splits:
        rows = by_split[split][:max_per_split] if max_per_split else by_split[split]
        images = np.zeros((len(rows), height, width, 3), dtype=np.uint8)
        for i, (path, *_rest) in enumerate(rows):
            images[i] = load_image(path, width, height)
        lla = np.array([[lat, lon, alt] for _, lat, lon, alt in rows], dtype=np.float64).reshape(-1, 3)
        arrays[split] = SplitArrays(images_NHW3=images, lla_N3=lla, names=tuple(p.name for p, *_ in rows),
                                    paths=tuple(Path(p) for p, *_ in rows))
    if 'train' not in arrays or len(arrays['train']) < 2:
        raise ValueError(f'{root}: the training split needs at least 2 images, got '
                         f'{len(arrays["train"]) if "train" in arrays else 0}')
    frame = TargetFrame.fit(arrays['train'].lla_N3)
    logger.info('GPS dataset %s: %s; ENU origin (train centroid) %.7f, %.7f, %.2f m; train std E/N %.1f/%.1f m',
                root, ', '.join(f'{s} {len(a)}' for s, a in arrays.items()), frame.origin_lat_deg,
                frame.origin_lon_deg, frame.origin_alt_m, *frame.std_en_m)
    return GPSData(splits=arrays, frame=frame, root=Path(root), skipped=len(dataset.skipped))
