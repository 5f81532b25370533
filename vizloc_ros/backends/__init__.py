"""Inference backends: pick one by name and run a model with validated inputs.

::

    from vizloc_ros.backends import create_backend

    with create_backend('auto', bundle.model_path, cache_dir=context.cache_dir) as runner:
        out = runner.infer({'image': batch_NHWC_uint8})

Kinds: ``onnxruntime`` (TensorRT EP > CUDA EP > CPU EP), ``tensorrt`` (native TensorRT 10 engine
built from the ONNX and cached), ``torch`` (development only: a TorchScript file) and ``auto``
(fastest available: TensorRT > onnxruntime CUDA > onnxruntime CPU).

Importing this package imports neither torch, tensorrt nor onnxruntime; each backend imports its
library when it is created or loaded. See docs/backends.md.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from ..localizer import ConfigError
from .base import BackendError, BackendInputError, BackendUnavailableError, InferenceBackend, TensorSpec

__all__ = [
    'BACKEND_KINDS',
    'PRECISIONS',
    'BackendConfigError',
    'BackendError',
    'BackendInputError',
    'BackendUnavailableError',
    'InferenceBackend',
    'TensorSpec',
    'available_backends',
    'create_backend',
    'default_cache_dir',
]

logger = logging.getLogger(__name__)

BACKEND_KINDS = ('auto', 'onnxruntime', 'tensorrt', 'torch')
PRECISIONS = ('fp32', 'fp16')
CACHE_ENV = 'VIZLOC_CACHE_DIR'
ORT_THREADS_ENV = 'VIZLOC_ORT_THREADS'


class BackendConfigError(BackendError, ConfigError):
    """An unknown backend kind or precision (a configuration error, also a :class:`ConfigError`)."""


def default_cache_dir() -> Path:
    """``$VIZLOC_CACHE_DIR`` if set, else ``~/.cache/vizloc_ros`` (engines go to ``engines/`` below it)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / '.cache' / 'vizloc_ros'


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> list[str]:
    """Backend kinds usable here, fastest first (e.g. ``['onnxruntime']`` on a CPU-only machine).

    Never imports torch; imports tensorrt only when it is installed (to look for a GPU).
    """
    from .onnxruntime_backend import ort_available_providers
    from .tensorrt_backend import tensorrt_available

    kinds = []
    if tensorrt_available():
        kinds.append('tensorrt')
    if ort_available_providers():
        kinds.append('onnxruntime')
    if _has_module('torch'):
        kinds.append('torch')
    return kinds


def create_backend(kind: str, model_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                   precision: str = 'fp32', intra_op_num_threads: int | None = None) -> InferenceBackend:
    """A backend of ``kind`` for ``model_path`` (an ``.onnx`` file), not yet loaded.

    Call ``.load()`` or use it as a context manager. ``cache_dir`` is the vizloc cache root (default
    :func:`default_cache_dir`). ``intra_op_num_threads`` limits ONNX Runtime CPU threads (default:
    ``$VIZLOC_ORT_THREADS``, else ONNX Runtime's own choice). Raises :class:`BackendConfigError` for
    an unknown kind or precision and :class:`BackendUnavailableError` when the requested backend
    cannot run here.
    """
    if kind not in BACKEND_KINDS:
        raise BackendConfigError(f'unknown backend {kind!r}; choose one of {list(BACKEND_KINDS)}')
    if precision not in PRECISIONS:
        raise BackendConfigError(f'unknown precision {precision!r}; choose one of {list(PRECISIONS)}')
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if kind == 'auto':
        from .tensorrt_backend import tensorrt_available

        if tensorrt_available():
            kind = 'tensorrt'
        else:
            kind = 'onnxruntime'
        logger.info('backend auto -> %s', kind)
    if kind == 'tensorrt':
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend(model_path, cache_dir=root / 'engines', precision=precision)
    if kind == 'onnxruntime':
        from .onnxruntime_backend import OnnxRuntimeBackend

        if intra_op_num_threads is None:
            env = os.environ.get(ORT_THREADS_ENV, '').strip()
            try:
                intra_op_num_threads = int(env) if env else 0
            except ValueError:
                raise BackendConfigError(f'{ORT_THREADS_ENV}={env!r} is not an integer') from None
        return OnnxRuntimeBackend(model_path, intra_op_num_threads=intra_op_num_threads, cache_dir=root,
                                  precision=precision)
    from .torch_backend import TorchBackend

    return TorchBackend(model_path, precision=precision)
