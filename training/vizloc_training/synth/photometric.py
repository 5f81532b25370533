"""Photometric variation shared by the synthetic worlds (aerial, indoor, campus).

Synthetic renderings are too clean: a network trained on them learns the renderer, not the
scene. This module perturbs an RGB image the way a real camera and real weather would:

* exposure (global gain, in stops) and gamma (tone curve),
* colour shift (per-channel white-balance gains) and saturation change,
* contrast change around the mean grey,
* blur: motion blur (a line kernel of random length and direction) or defocus blur (a disk
  kernel), each with a probability,
* sensor noise: signal-dependent shot noise plus Gaussian read noise,
* quantisation back to uint8.

Everything is drawn from the caller's :class:`numpy.random.Generator`, always the same number of
draws in the same order whatever branch is taken, so a seed fixes the output bit for bit.

``strength`` scales every perturbation: ``0`` returns an unchanged copy, ``1`` the default ranges
of :class:`PhotometricConfig`, ``2`` twice as strong (clipped to sane limits).

Usage::

    rng = np.random.default_rng(seed)
    rgb_aug_HW3 = apply_photometric(rgb_HW3, rng, strength=1.0)

    # or: draw the parameters once, inspect / log them, then apply
    params = sample_photometric_params(rng, strength=1.0)
    rgb_aug_HW3 = apply_photometric_params(rgb_HW3, params, rng)
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import cv2
import numpy as np

__all__ = [
    'PhotometricConfig',
    'PhotometricParams',
    'apply_photometric',
    'apply_photometric_params',
    'sample_photometric_params',
]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhotometricConfig:
    """Ranges of the perturbations at ``strength == 1`` (each drawn uniformly in +/- the value).

    exposure_stops: global gain 2**U(-e, e).
    gamma_log2: gamma 2**U(-g, g) applied to the [0, 1] image.
    white_balance: per-channel gain 1 + U(-w, w) (normalised to keep brightness).
    saturation: saturation factor 1 + U(-s, s).
    contrast: contrast factor 1 + U(-c, c) around the image mean.
    motion_blur_prob / motion_blur_max_px: probability and maximum length (px) of a motion blur.
    defocus_prob / defocus_max_px: probability and maximum radius (px) of a defocus blur.
    read_noise_std: std of Gaussian read noise in [0, 1] units (drawn U(0, value)).
    shot_noise_scale: shot noise std = sqrt(value * intensity) (drawn U(0, value)).
    """

    exposure_stops: float = 0.6
    gamma_log2: float = 0.25
    white_balance: float = 0.08
    saturation: float = 0.25
    contrast: float = 0.2
    motion_blur_prob: float = 0.2
    motion_blur_max_px: float = 6.0
    defocus_prob: float = 0.15
    defocus_max_px: float = 2.0
    read_noise_std: float = 0.015
    shot_noise_scale: float = 0.004

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f'PhotometricConfig.{f.name} must be a finite number >= 0, got {value!r}')
        for name in ('motion_blur_prob', 'defocus_prob'):
            if getattr(self, name) > 1.0:
                raise ValueError(f'PhotometricConfig.{name} is a probability, got {getattr(self, name)}')

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> 'PhotometricConfig':
        """Build from a mapping (e.g. YAML); unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f'unknown PhotometricConfig keys {unknown}; known: {sorted(known)}')
        return cls(**{k: float(v) for k, v in data.items()})

    def to_mapping(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PhotometricParams:
    """One drawn set of perturbation parameters (what :func:`apply_photometric_params` applies)."""

    gain: float
    gamma: float
    wb_gains_rgb: tuple[float, float, float]
    saturation: float
    contrast: float
    motion_blur_px: float  # 0 = none
    motion_blur_angle_rad: float
    defocus_radius_px: float  # 0 = none
    read_noise_std: float
    shot_noise_scale: float

    def to_mapping(self) -> dict[str, Any]:
        return asdict(self)


def sample_photometric_params(
    rng: np.random.Generator, strength: float = 1.0, config: PhotometricConfig | None = None
) -> PhotometricParams:
    """Draw one parameter set. Always consumes the same number of draws from ``rng``."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f'rng must be a numpy.random.Generator, got {type(rng).__name__}')
    if not math.isfinite(strength) or strength < 0:
        raise ValueError(f'strength must be a finite number >= 0, got {strength!r}')
    cfg = config or PhotometricConfig()
    s = float(strength)
    u = rng.uniform(-1.0, 1.0, size=7)
    p = rng.uniform(0.0, 1.0, size=6)
    gain = 2.0 ** (s * cfg.exposure_stops * u[0])
    gamma = 2.0 ** (s * cfg.gamma_log2 * u[1])
    wb = 1.0 + np.clip(s * cfg.white_balance * u[2:5], -0.9, 0.9)
    wb = wb / wb.mean()
    saturation = max(0.0, 1.0 + s * cfg.saturation * u[5])
    contrast = max(0.05, 1.0 + s * cfg.contrast * u[6])
    motion = p[0] < min(1.0, s * cfg.motion_blur_prob)
    motion_px = float(s * cfg.motion_blur_max_px * p[1]) if motion else 0.0
    angle = float(math.pi * p[2])
    defocus = p[3] < min(1.0, s * cfg.defocus_prob)
    defocus_px = float(s * cfg.defocus_max_px * p[4]) if defocus else 0.0
    read = float(s * cfg.read_noise_std * p[5])
    shot = float(s * cfg.shot_noise_scale * p[5])
    return PhotometricParams(
        gain=float(gain),
        gamma=float(gamma),
        wb_gains_rgb=(float(wb[0]), float(wb[1]), float(wb[2])),
        saturation=float(saturation),
        contrast=float(contrast),
        motion_blur_px=motion_px,
        motion_blur_angle_rad=angle,
        defocus_radius_px=defocus_px,
        read_noise_std=read,
        shot_noise_scale=shot,
    )


def _motion_kernel(length_px: float, angle_rad: float) -> np.ndarray:
    size = int(math.ceil(length_px)) | 1  # odd
    kernel = np.zeros((size, size), np.float32)
    c = (size - 1) / 2.0
    dx, dy = math.cos(angle_rad), math.sin(angle_rad)
    # Anti-aliased line: sample densely along the segment and splat bilinearly.
    for t in np.linspace(-length_px / 2.0, length_px / 2.0, max(2, int(4 * length_px))):
        x, y = c + t * dx, c + t * dy
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        for xi, yi, w in ((x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
                          (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy)):
            if 0 <= xi < size and 0 <= yi < size:
                kernel[yi, xi] += w
    return kernel / kernel.sum()


def _disk_kernel(radius_px: float) -> np.ndarray:
    r = int(math.ceil(radius_px))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    # Soft edge of one pixel so small radii still change the image smoothly.
    kernel = np.clip(radius_px + 0.5 - np.sqrt(xx * xx + yy * yy), 0.0, 1.0)
    return kernel / kernel.sum()


def apply_photometric_params(
    rgb_HW3: np.ndarray, params: PhotometricParams, rng: np.random.Generator
) -> np.ndarray:
    """Apply ``params`` to a uint8 RGB image; ``rng`` draws the sensor noise. Returns a new uint8 image."""
    if not isinstance(rgb_HW3, np.ndarray) or rgb_HW3.dtype != np.uint8 or rgb_HW3.ndim != 3 or rgb_HW3.shape[2] != 3:
        raise ValueError(
            f'rgb_HW3 must be a uint8 HxWx3 array, got {getattr(rgb_HW3, "shape", None)} '
            f'{getattr(rgb_HW3, "dtype", type(rgb_HW3).__name__)}'
        )
    img = rgb_HW3.astype(np.float32) * np.float32(1.0 / 255.0)
    # Blur first (optics), then exposure/tone (sensor + ISP), then noise (sensor).
    if params.defocus_radius_px > 0.25:
        img = cv2.filter2D(img, -1, _disk_kernel(params.defocus_radius_px), borderType=cv2.BORDER_REFLECT)
    if params.motion_blur_px > 1.0:
        img = cv2.filter2D(img, -1, _motion_kernel(params.motion_blur_px, params.motion_blur_angle_rad),
                           borderType=cv2.BORDER_REFLECT)
    img *= np.asarray(params.wb_gains_rgb, np.float32) * np.float32(params.gain)
    mean = np.float32(img.mean())
    img = (img - mean) * np.float32(params.contrast) + mean
    grey = img @ np.asarray([0.299, 0.587, 0.114], np.float32)
    img = grey[..., None] + (img - grey[..., None]) * np.float32(params.saturation)
    np.clip(img, 0.0, 1.0, out=img)
    if params.gamma != 1.0:
        img = np.power(img, np.float32(params.gamma))
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    if params.read_noise_std > 0 or params.shot_noise_scale > 0:
        sigma = np.sqrt(np.float32(params.shot_noise_scale) * img + np.float32(params.read_noise_std) ** 2)
        img += sigma * noise
    return np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def apply_photometric(
    rgb_HW3: np.ndarray, rng: np.random.Generator, strength: float = 1.0, config: PhotometricConfig | None = None
) -> np.ndarray:
    """Perturb a uint8 HxWx3 RGB image (lighting, exposure, colour, blur, noise); deterministic for ``rng``.

    ``strength == 0`` returns an unchanged copy (still consuming the same draws from ``rng``).
    """
    params = sample_photometric_params(rng, strength, config)
    if strength == 0:
        if not isinstance(rgb_HW3, np.ndarray) or rgb_HW3.dtype != np.uint8 or rgb_HW3.ndim != 3 or rgb_HW3.shape[2] != 3:
            raise ValueError(f'rgb_HW3 must be a uint8 HxWx3 array, got {getattr(rgb_HW3, "shape", None)}')
        rng.standard_normal(rgb_HW3.shape, dtype=np.float32)
        return rgb_HW3.copy()
    _LOG.debug('photometric params %s', params)
    return apply_photometric_params(rgb_HW3, params, rng)
