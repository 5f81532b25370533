"""Photo textures for the box worlds (indoor, campus), with a deterministic procedural fallback.

The photos come from Debian's ``opencv-doc`` package (``/usr/share/doc/opencv-doc/examples/data/``:
building.jpg, home.jpg, fruits.jpg, baboon.jpg, graf1.png, leuvenA.jpg, ...). A handful of photos
become many distinct textures through random crops, mirrored tiling and colour variants (hue
rotation, saturation/brightness changes, channel mixing), all drawn from the caller's
:class:`numpy.random.Generator`, so a seed fixes every texture.

When the folder is missing (``opencv-doc`` not installed) or ``VIZLOC_TEXTURE_DIR`` names an empty
folder, textures are made procedurally (bricks, planks, tiles, noise), still deterministic for a
seed. :meth:`TextureSource.describe` says which source was used; the generators record it in
``world.yaml``.

Usage::

    source = TextureSource.load()            # photos if available, else procedural
    rng = np.random.default_rng(0)
    wall_rgb_SS3 = source.make(rng, 'wall')  # uint8 S x S x 3, S = source.size_px
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

__all__ = ['DEFAULT_PHOTO_DIR', 'PHOTO_NAMES', 'TEXTURE_KINDS', 'TextureSource', 'procedural_texture']

_LOG = logging.getLogger(__name__)

#: Where Debian/Ubuntu's ``opencv-doc`` package installs its example images.
DEFAULT_PHOTO_DIR = Path('/usr/share/doc/opencv-doc/examples/data')
#: Photos used (in this order; missing ones are skipped).
PHOTO_NAMES = (
    'building.jpg', 'home.jpg', 'fruits.jpg', 'baboon.jpg', 'board.jpg', 'graf1.png', 'graf3.png',
    'leuvenA.jpg', 'leuvenB.jpg', 'messi5.jpg', 'left01.jpg', 'aero1.jpg', 'starry_night.jpg',
    'orange.jpg', 'apple.jpg', 'pic1.png', 'butterfly.jpg', 'sudoku.png', 'smarties.png', 'stuff.jpg',
    'blox.jpg', 'HappyFish.jpg', 'squirrel_cls.jpg', 'rubberwhale1.png', 'aloeL.jpg', 'basketball1.png',
    'box_in_scene.png', 'Blender_Suzanne1.jpg',
)
#: Kinds of texture :meth:`TextureSource.make` knows; they differ in crop size and colour treatment.
TEXTURE_KINDS = ('wall', 'floor', 'ceiling', 'furniture', 'poster', 'facade', 'grass', 'path', 'foliage', 'bark')
#: Photos that look like facades (preferred for ``facade`` textures when present).
_FACADE_PHOTOS = ('building.jpg', 'leuvenA.jpg', 'leuvenB.jpg', 'graf1.png', 'graf3.png', 'home.jpg', 'aero1.jpg')

# Base colours (RGB) and colour strengths per kind: 'tint' mixes the photo towards a kind colour so
# that grass stays green-ish and paths grey-ish whatever photo was cropped.
_KIND_TINT = {
    'grass': ((70, 120, 45), 0.65),
    'path': ((150, 145, 135), 0.7),
    'foliage': ((45, 95, 40), 0.6),
    'bark': ((95, 70, 50), 0.6),
    'ceiling': ((225, 225, 220), 0.75),
    'floor': (None, 0.0),
    'wall': (None, 0.0),
    'furniture': (None, 0.0),
    'poster': (None, 0.0),
    'facade': (None, 0.0),
}


@dataclass(frozen=True)
class _Photo:
    name: str
    rgb_HW3: np.ndarray


class TextureSource:
    """Makes square uint8 RGB textures of ``size_px`` pixels from photos or procedurally."""

    def __init__(self, photos: Sequence[_Photo], photo_dir: Path | None, size_px: int = 128) -> None:
        if size_px < 8 or size_px & (size_px - 1):
            raise ValueError(f'size_px must be a power of two >= 8, got {size_px}')
        self._photos = tuple(photos)
        self.photo_dir = photo_dir
        self.size_px = int(size_px)

    @classmethod
    def load(cls, photo_dir: str | Path | None = None, size_px: int = 128, *,
             allow_photos: bool = True) -> 'TextureSource':
        """Photos from ``photo_dir`` (default: ``$VIZLOC_TEXTURE_DIR`` or :data:`DEFAULT_PHOTO_DIR`).

        Falls back to procedural textures (with a log line saying so) when no photo can be read.
        ``allow_photos=False`` forces the procedural source.
        """
        if not allow_photos:
            return cls((), None, size_px)
        if photo_dir is None:
            photo_dir = os.environ.get('VIZLOC_TEXTURE_DIR') or DEFAULT_PHOTO_DIR
        folder = Path(photo_dir)
        photos: list[_Photo] = []
        if folder.is_dir():
            for name in PHOTO_NAMES:
                path = folder / name
                if not path.is_file():
                    continue
                bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if bgr is None or min(bgr.shape[:2]) < 64:
                    _LOG.warning('texture photo %s cannot be read or is too small; skipped', path)
                    continue
                photos.append(_Photo(name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        if not photos:
            _LOG.info('no texture photos in %s (install Debian package opencv-doc for photo textures); '
                      'using procedural textures', folder)
            return cls((), None, size_px)
        return cls(photos, folder, size_px)

    @property
    def kind(self) -> str:
        return 'photos' if self._photos else 'procedural'

    @property
    def photo_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self._photos)

    def describe(self) -> dict[str, Any]:
        """What world.yaml records about the texture source."""
        if not self._photos:
            return {'source': 'procedural', 'size_px': self.size_px}
        return {'source': 'photos', 'dir': str(self.photo_dir), 'files': list(self.photo_names),
                'size_px': self.size_px, 'variants': 'random crops, mirrored tiling, hue/saturation/brightness'}

    def make(self, rng: np.random.Generator, kind: str, size_px: int | None = None) -> np.ndarray:
        """One new texture of ``kind`` (see :data:`TEXTURE_KINDS`); deterministic for ``rng``'s state.

        ``size_px`` overrides the source's texture size (e.g. larger for facades seen up close).

        Consumes a fixed number of draws whatever the source, so worlds built from photos and from
        the procedural fallback have the same geometry for the same seed.
        """
        if kind not in _KIND_TINT:
            raise ValueError(f'unknown texture kind {kind!r}; known: {TEXTURE_KINDS}')
        size = self.size_px if size_px is None else int(size_px)
        if size < 8:
            raise ValueError(f'size_px must be >= 8, got {size}')
        u = rng.uniform(0.0, 1.0, size=16)
        if self._photos:
            rgb = self._photo_texture(u, kind, size)
        else:
            rgb = procedural_texture(u, kind, size)
        tint, amount = _KIND_TINT[kind]
        if tint is not None:
            grey = rgb.astype(np.float32).mean(axis=2, keepdims=True) / 128.0
            tinted = grey * np.asarray(tint, np.float32)
            rgb = np.clip((1 - amount) * rgb.astype(np.float32) + amount * tinted, 0, 255).astype(np.uint8)
        return rgb

    def _photo_texture(self, u: np.ndarray, kind: str, S: int) -> np.ndarray:
        pool = self._photos
        if kind == 'facade':
            facades = [p for p in pool if p.name in _FACADE_PHOTOS]
            pool = tuple(facades) or pool
        photo = pool[int(u[0] * len(pool)) % len(pool)].rgb_HW3
        H, W = photo.shape[:2]
        # Crop: large for facades/posters (whole-picture look), smaller for materials.
        lo, hi = (0.6, 1.0) if kind in ('facade', 'poster') else (0.2, 0.6)
        side = int(min(H, W) * (lo + (hi - lo) * u[1]))
        side = max(side, 16)
        y0 = int((H - side) * u[2])
        x0 = int((W - side) * u[3])
        crop = photo[y0:y0 + side, x0:x0 + side]
        if kind in ('floor', 'wall', 'ceiling', 'grass', 'path', 'foliage', 'bark') and u[4] < 0.5:
            # Mirrored 2x2 tiling: a seamless, finer-grained material.
            top = np.concatenate([crop, crop[:, ::-1]], axis=1)
            crop = np.concatenate([top, top[::-1]], axis=0)
        tex = cv2.resize(crop, (S, S), interpolation=cv2.INTER_AREA)
        return _colour_variant(tex, u[5:10], strong=kind in ('wall', 'floor', 'furniture', 'ceiling'))


def _colour_variant(rgb_SS3: np.ndarray, u: np.ndarray, strong: bool) -> np.ndarray:
    """Hue rotation, saturation and brightness change; ``u`` holds 5 uniforms in [0, 1)."""
    hsv = cv2.cvtColor(rgb_SS3, cv2.COLOR_RGB2HSV).astype(np.float32)
    hue_shift = 180.0 * u[0] if strong else 40.0 * (u[0] - 0.5)
    hsv[..., 0] = np.mod(hsv[..., 0] + hue_shift, 180.0)
    hsv[..., 1] *= 0.4 + 1.0 * u[1]
    hsv[..., 2] = hsv[..., 2] * (0.6 + 0.6 * u[2]) + 30.0 * (u[3] - 0.5)
    hsv = np.clip(hsv, 0, [179, 255, 255]).astype(np.uint8)
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if strong and u[4] < 0.25:
        out = out[..., ::-1].copy()  # channel swap: a clearly different colour scheme
    return out


def procedural_texture(u: np.ndarray, kind: str, size_px: int) -> np.ndarray:
    """Deterministic procedural texture from 16 uniforms ``u`` (bricks, planks, tiles or noise)."""
    S = int(size_px)
    seed = int(u[15] * 2**31)
    rng = np.random.default_rng(seed)
    base = np.array([60 + 170 * u[5], 60 + 170 * u[6], 60 + 170 * u[7]], np.float32)
    accent = np.array([40 + 200 * u[8], 40 + 200 * u[9], 40 + 200 * u[10]], np.float32)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S
    # Smooth value noise: upsampled random grid (wraps, so textures tile).
    cells = 4 + int(u[11] * 12)
    grid = rng.uniform(0.0, 1.0, size=(cells, cells)).astype(np.float32)
    noise = cv2.resize(np.tile(grid, (2, 2)), (2 * S, 2 * S), interpolation=cv2.INTER_CUBIC)[S // 2:S // 2 + S,
                                                                                          S // 2:S // 2 + S]
    fine = rng.uniform(-0.5, 0.5, size=(S, S)).astype(np.float32)
    pattern = int(u[12] * 4)
    if kind in ('grass', 'foliage', 'bark', 'ceiling'):
        pattern = 3
    if pattern == 0:  # bricks
        rows = 4 + int(u[13] * 6)
        row = np.floor(yy * rows)
        shift = (row % 2) * 0.5 / 2
        cols = max(2, rows // 2)
        mortar = (np.mod(yy * rows, 1.0) < 0.08) | (np.mod((xx + shift) * cols, 1.0) < 0.05)
        mask = mortar.astype(np.float32)
    elif pattern == 1:  # planks
        planks = 3 + int(u[13] * 6)
        mask = (np.mod(xx * planks, 1.0) < 0.04).astype(np.float32)
        noise = noise * 0.5 + 0.5 * (0.5 + 0.5 * np.sin(yy * (20 + 40 * u[14]) + noise * 6))
    elif pattern == 2:  # tiles
        n = 2 + int(u[13] * 6)
        checker = (np.floor(xx * n) + np.floor(yy * n)) % 2
        mask = checker.astype(np.float32) * 0.6
    else:  # plain noise material
        mask = np.zeros((S, S), np.float32)
    shade = 0.75 + 0.35 * noise[..., None] + 0.12 * fine[..., None]
    rgb = base * shade * (1 - mask[..., None]) + accent * shade * mask[..., None]
    return np.clip(rgb, 0, 255).astype(np.uint8)
