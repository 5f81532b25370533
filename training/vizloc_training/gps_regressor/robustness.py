"""Corrupted test variants for the robustness table (seed 001's "augmented test" and degradation ratio).

Each variant is a deterministic function of the image and a seeded generator, with strengths given
relative to the image size so that it means the same at any resolution:

* ``brightness`` - exposure change: pixel values x 0.55 (under-exposed) or x 1.5 (over-exposed,
  saturating), chosen per image.
* ``blur`` - Gaussian blur with sigma = 1 % of the image width (>= 0.8 px).
* ``noise`` - additive Gaussian noise, sigma = 12 grey levels.
* ``occlusion`` - a grey rectangle of 1/2 x 1/2 of the image (25 % of the area) at a random place.

The augmented test set is the union of the four variants of every test image; the *degradation*
is its mean error divided by the regular test mean error (1.0 = no degradation).
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

__all__ = ['VARIANTS', 'corrupt', 'corrupt_batch']


def _brightness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    factor = 0.55 if rng.random() < 0.5 else 1.5
    return np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def _blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = max(0.8, 0.01 * image.shape[1])
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)


def _noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noisy = image.astype(np.float32) + rng.normal(0.0, 12.0, size=image.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _occlusion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    oh, ow = max(1, h // 2), max(1, w // 2)
    y0 = int(rng.integers(0, h - oh + 1))
    x0 = int(rng.integers(0, w - ow + 1))
    out = image.copy()
    out[y0:y0 + oh, x0:x0 + ow] = 127
    return out


VARIANTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    'brightness': _brightness,
    'blur': _blur,
    'noise': _noise,
    'occlusion': _occlusion,
}


def corrupt(image_HW3: np.ndarray, variant: str, rng: np.random.Generator) -> np.ndarray:
    """A corrupted copy of one uint8 RGB image (``variant`` in :data:`VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f'unknown robustness variant {variant!r}; known: {sorted(VARIANTS)}')
    if image_HW3.dtype != np.uint8 or image_HW3.ndim != 3 or image_HW3.shape[2] != 3:
        raise ValueError(f'expected a uint8 HxWx3 image, got {image_HW3.dtype} {image_HW3.shape}')
    return VARIANTS[variant](image_HW3, rng)


def corrupt_batch(images_NHW3: np.ndarray, variant: str, seed: int = 0) -> np.ndarray:
    """The ``variant`` of every image of a uint8 (N, H, W, 3) batch, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return np.stack([corrupt(image, variant, rng) for image in images_NHW3])
