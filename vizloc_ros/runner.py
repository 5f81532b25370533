"""The model runner: a bundle's model run on a :class:`vizloc_ros.types.Frame` of any size.

Every localizer that runs a bundle uses it (the built-in plugins, third-party plugins, the
trainers' evaluators), so that a model sees at run time exactly the pixels it saw in training:

* :class:`BundleModel` loads and verifies a bundle (sha256 of every file, format version, localizer
  type), creates the inference backend through :func:`vizloc_ros.backends.create_backend` and feeds
  it frames of any size (``run(frame)`` -> output arrays, batch dimension kept).
* **Resizing** (:func:`resize_for_model`, the one image resizer of vizloc_ros; ``Frame.resized``
  uses it too). The bundle's ``metadata['resize']`` chooses how: ``'stretch'`` (default; plain
  ``cv2.resize`` to ``width x height``, aspect ratio not kept: what the trainers do with their
  full training images) or ``'letterbox'`` (scale to fit, keep the aspect ratio, pad with grey 114
  to the input size, image centred). :class:`Resize` records the mapping so that outputs (e.g.
  heatmaps) can be mapped back onto the original image; ``CameraIntrinsics.scaled`` is the matching
  intrinsics change for ``stretch``.
* **Layout.** Exported graphs have preprocessing baked in and take ``uint8`` batches of the
  bundle's layout/colour (``NHWC`` ``RGB`` by default); the runner converts accordingly.

No torch here: the runtime runs with numpy, OpenCV and the backend only. See docs/plugins.md.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .backends import BackendError, create_backend
from .bundle import Bundle, BundleError, load_bundle
from .localizer import ConfigError
from .types import Frame, InvalidInputError

__all__ = ['BundleConfigError', 'BundleModel', 'Resize', 'RESIZE_MODES', 'resize_for_model']

logger = logging.getLogger(__name__)

RESIZE_MODES = ('stretch', 'letterbox')
LETTERBOX_FILL = 114


class BundleConfigError(BundleError, ConfigError):
    """A bundle the runner cannot load (missing, malformed, wrong type, hash mismatch): both a
    :class:`vizloc_ros.bundle.BundleError` and a :class:`vizloc_ros.localizer.ConfigError`."""


@dataclass(frozen=True)
class Resize:
    """How an image of ``src_width x src_height`` was placed into the model input.

    Model pixel (u', v') = (u * scale_x + pad_x, v * scale_y + pad_y) for source pixel (u, v)
    (pixel-corner convention).
    """

    src_width: int
    src_height: int
    dst_width: int
    dst_height: int
    scale_x: float
    scale_y: float
    pad_x: int = 0
    pad_y: int = 0

    def crop_to_source(self, map_HW: np.ndarray) -> np.ndarray:
        """A map over the model input (any resolution) cropped to the image area and resized to the source size."""
        h, w = map_HW.shape[:2]
        fx, fy = w / self.dst_width, h / self.dst_height
        x0 = int(round(self.pad_x * fx))
        y0 = int(round(self.pad_y * fy))
        x1 = max(x0 + 1, int(round((self.dst_width - self.pad_x) * fx)))
        y1 = max(y0 + 1, int(round((self.dst_height - self.pad_y) * fy)))
        crop = np.ascontiguousarray(map_HW[y0:y1, x0:x1])
        return cv2.resize(crop, (self.src_width, self.src_height), interpolation=cv2.INTER_LINEAR)


def resize_for_model(rgb_HW3: np.ndarray, width: int, height: int, mode: str = 'stretch') -> tuple[np.ndarray, Resize]:
    """Resize an RGB uint8 image to ``width x height`` (``stretch`` or ``letterbox``)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f'resize mode must be one of {RESIZE_MODES}, got {mode!r}')
    src_h, src_w = rgb_HW3.shape[:2]
    if mode == 'stretch':
        if (src_w, src_h) == (width, height):
            out = rgb_HW3
        else:
            interpolation = cv2.INTER_AREA if width < src_w else cv2.INTER_LINEAR
            out = cv2.resize(rgb_HW3, (width, height), interpolation=interpolation)
        return out, Resize(src_w, src_h, width, height, width / src_w, height / src_h)
    scale = min(width / src_w, height / src_h)
    new_w = max(1, min(width, int(round(src_w * scale))))
    new_h = max(1, min(height, int(round(src_h * scale))))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    scaled = cv2.resize(rgb_HW3, (new_w, new_h), interpolation=interpolation)
    out = np.full((height, width, 3), LETTERBOX_FILL, dtype=np.uint8)
    pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
    out[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = scaled
    return out, Resize(src_w, src_h, width, height, new_w / src_w, new_h / src_h, pad_x, pad_y)


class BundleModel:
    """A verified bundle with a loaded backend; ``run(frame)`` returns the model outputs for one frame.

    ``backend`` is a kind for :func:`vizloc_ros.backends.create_backend` (``auto``,
    ``onnxruntime``, ``tensorrt``, ``torch``). ``intra_op_num_threads`` > 0 limits ONNX Runtime
    CPU threads (used when the backend is ``onnxruntime``; environment variable
    ``VIZLOC_ORT_THREADS`` gives a default). Bundle and backend errors become
    :class:`vizloc_ros.localizer.ConfigError` (the node reports them at configure time; bundle errors
    are :class:`BundleConfigError`, also a ``BundleError``).
    """

    def __init__(self, bundle_path: str | os.PathLike, backend: str = 'auto', expected_type: str | None = None,
                 cache_dir: Path | None = None, intra_op_num_threads: int | None = None) -> None:
        try:
            self.bundle: Bundle = load_bundle(bundle_path, expected_type=expected_type)
        except BundleError as exc:
            raise BundleConfigError(str(exc)) from exc
        self.resize_mode = str(self.bundle.metadata.get('resize', 'stretch'))
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f'{self.bundle.path}: metadata.resize must be one of {RESIZE_MODES}, '
                              f'got {self.resize_mode!r}')
        self.input = self.bundle.input
        if self.input.dtype != 'uint8':
            raise ConfigError(f'{self.bundle.path}: input dtype {self.input.dtype!r} is not supported (uint8 only)')
        self._backend = self._create_backend(backend, cache_dir, intra_op_num_threads)
        self.last_resize: Resize | None = None
        logger.info('loaded %s bundle %s on %s', self.bundle.localizer_type, self.bundle.path, self.backend_name)

    def _create_backend(self, kind: str, cache_dir: Path | None, threads: int | None):
        try:
            runner = create_backend(kind, self.bundle.model_path, cache_dir=cache_dir,
                                    intra_op_num_threads=threads or None)
            runner.load()
        except BackendError as exc:
            raise ConfigError(f'{self.bundle.path}: cannot run the model with backend {kind!r}: {exc}') from exc
        if self.input.name not in runner.input_specs:
            runner.close()
            raise ConfigError(f'{self.bundle.path}: model has inputs {sorted(runner.input_specs)}, bundle.yaml '
                              f'says {self.input.name!r}')
        missing = sorted(set(self.bundle.outputs) - set(runner.output_specs))
        if missing:
            runner.close()
            raise ConfigError(f'{self.bundle.path}: model lacks outputs {missing} that bundle.yaml lists; it has '
                              f'{sorted(runner.output_specs)}')
        return runner

    @property
    def backend_name(self) -> str:
        return self._backend.description

    @property
    def is_loaded(self) -> bool:
        return self._backend.is_loaded

    @property
    def output_names(self) -> list[str]:
        return list(self._backend.output_specs)

    def prepare(self, rgb_HW3: np.ndarray) -> tuple[np.ndarray, Resize]:
        """The model input batch (1 image) for an RGB uint8 image, plus how it was resized."""
        if rgb_HW3.dtype != np.uint8 or rgb_HW3.ndim != 3 or rgb_HW3.shape[2] != 3:
            raise InvalidInputError(f'image must be uint8 HxWx3, got {rgb_HW3.shape} {rgb_HW3.dtype}')
        image, resize = resize_for_model(rgb_HW3, self.input.width, self.input.height, self.resize_mode)
        if self.input.color == 'BGR':
            image = image[..., ::-1]
        batch = image[None]
        if self.input.layout == 'NCHW':
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch), resize

    def run(self, frame: Frame, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Model outputs (batch dimension kept) for one frame of any size; sets :attr:`last_resize`."""
        batch, resize = self.prepare(frame.rgb_HW3)
        self.last_resize = resize
        return self._backend.infer({self.input.name: batch}, outputs)

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> 'BundleModel':
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
