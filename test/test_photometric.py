"""Shared photometric variation (vizloc_training.synth.photometric): determinism, strength, effects."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from vizloc_training.synth.photometric import (
    PhotometricConfig,
    PhotometricParams,
    apply_photometric,
    apply_photometric_params,
    sample_photometric_params,
)

H, W = 48, 64


@pytest.fixture(scope='module')
def textured() -> np.ndarray:
    rng = np.random.default_rng(123)
    base = cv2.resize(rng.integers(40, 215, size=(12, 16, 3)).astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST)
    return base


def _neutral(**overrides: float) -> PhotometricParams:
    values = dict(gain=1.0, gamma=1.0, wb_gains_rgb=(1.0, 1.0, 1.0), saturation=1.0, contrast=1.0,
                  motion_blur_px=0.0, motion_blur_angle_rad=0.0, defocus_radius_px=0.0,
                  read_noise_std=0.0, shot_noise_scale=0.0)
    values.update(overrides)
    return PhotometricParams(**values)


def test_same_seed_same_output_different_seed_different(textured: np.ndarray) -> None:
    a = apply_photometric(textured, np.random.default_rng(5))
    b = apply_photometric(textured, np.random.default_rng(5))
    c = apply_photometric(textured, np.random.default_rng(6))
    assert a.dtype == np.uint8 and a.shape == textured.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, textured)


def test_strength_zero_is_identity_and_consumes_same_draws(textured: np.ndarray) -> None:
    rng0, rng1 = np.random.default_rng(9), np.random.default_rng(9)
    out = apply_photometric(textured, rng0, strength=0.0)
    assert np.array_equal(out, textured)
    assert out is not textured
    apply_photometric(textured, rng1, strength=1.0)
    # Both generators advanced identically: a later draw is the same.
    assert rng0.integers(1 << 30) == rng1.integers(1 << 30)


def test_stronger_means_larger_change_on_average(textured: np.ndarray) -> None:
    def mean_change(strength: float) -> float:
        return float(np.mean([np.abs(apply_photometric(textured, np.random.default_rng(s), strength).astype(float) - textured).mean()
                              for s in range(12)]))

    weak, strong = mean_change(0.25), mean_change(2.0)
    assert 0 < weak < strong


def test_input_is_not_modified(textured: np.ndarray) -> None:
    copy = textured.copy()
    apply_photometric(textured, np.random.default_rng(1), 2.0)
    assert np.array_equal(copy, textured)


def test_exposure_gain_moves_mean_brightness(textured: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    brighter = apply_photometric_params(textured, _neutral(gain=1.5), rng)
    darker = apply_photometric_params(textured, _neutral(gain=0.6), rng)
    assert brighter.mean() > textured.mean() + 20
    assert darker.mean() < textured.mean() - 20


def test_neutral_params_reproduce_the_image(textured: np.ndarray) -> None:
    out = apply_photometric_params(textured, _neutral(), np.random.default_rng(0))
    assert np.abs(out.astype(int) - textured).max() <= 1


def test_blur_reduces_high_frequencies(textured: np.ndarray) -> None:
    def hf_energy(img: np.ndarray) -> float:
        return float(np.abs(cv2.Laplacian(img.astype(np.float32), cv2.CV_32F)).mean())

    rng = np.random.default_rng(0)
    motion = apply_photometric_params(textured, _neutral(motion_blur_px=6.0, motion_blur_angle_rad=0.3), rng)
    defocus = apply_photometric_params(textured, _neutral(defocus_radius_px=2.0), rng)
    assert hf_energy(motion) < 0.8 * hf_energy(textured)
    assert hf_energy(defocus) < 0.8 * hf_energy(textured)


def test_sensor_noise_is_signal_dependent() -> None:
    rng = np.random.default_rng(0)
    dark = np.full((H, W, 3), 30, np.uint8)
    bright = np.full((H, W, 3), 220, np.uint8)
    params = _neutral(read_noise_std=0.002, shot_noise_scale=0.01)
    std_dark = apply_photometric_params(dark, params, rng).astype(float).std()
    std_bright = apply_photometric_params(bright, params, rng).astype(float).std()
    assert 0 < std_dark < std_bright


def test_forced_probabilities_change_params() -> None:
    always = PhotometricConfig(motion_blur_prob=1.0, defocus_prob=1.0)
    never = PhotometricConfig(motion_blur_prob=0.0, defocus_prob=0.0)
    p_always = [sample_photometric_params(np.random.default_rng(s), 1.0, always) for s in range(5)]
    p_never = [sample_photometric_params(np.random.default_rng(s), 1.0, never) for s in range(5)]
    assert all(p.motion_blur_px > 0 and p.defocus_radius_px > 0 for p in p_always)
    assert all(p.motion_blur_px == 0 and p.defocus_radius_px == 0 for p in p_never)


def test_config_from_mapping_rejects_unknown_keys_and_bad_values() -> None:
    cfg = PhotometricConfig.from_mapping({'exposure_stops': 1.0})
    assert cfg.exposure_stops == 1.0
    assert PhotometricConfig.from_mapping(cfg.to_mapping()) == cfg
    with pytest.raises(ValueError, match='unknown PhotometricConfig keys'):
        PhotometricConfig.from_mapping({'exposure': 1.0})
    with pytest.raises(ValueError, match='probability'):
        PhotometricConfig(motion_blur_prob=1.5)
    with pytest.raises(ValueError, match='>= 0'):
        PhotometricConfig(contrast=-0.1)


@pytest.mark.parametrize('bad', [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8)])
def test_rejects_non_rgb_uint8(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match='uint8 HxWx3'):
        apply_photometric(bad, np.random.default_rng(0))


def test_rejects_bad_strength_and_rng(textured: np.ndarray) -> None:
    with pytest.raises(ValueError, match='strength'):
        apply_photometric(textured, np.random.default_rng(0), strength=-1.0)
    with pytest.raises(TypeError, match='Generator'):
        apply_photometric(textured, 0)  # type: ignore[arg-type]
