"""ONNX Runtime backend: TensorRT EP > CUDA EP > CPU EP, whichever this onnxruntime build has.

``import vizloc_ros.backends.onnxruntime_backend`` is cheap; ``onnxruntime`` is imported when the
backend is created. The TensorRT execution provider keeps its engines in ``<cache_dir>/ort_trt``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .base import BackendError, BackendUnavailableError, InferenceBackend, TensorSpec

__all__ = ['OnnxRuntimeBackend', 'PREFERRED_PROVIDERS', 'ort_available_providers', 'ort_dtype']

logger = logging.getLogger(__name__)

#: Execution providers in order of preference (fastest first).
PREFERRED_PROVIDERS = ('TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider')

_ORT_DTYPES = {
    'tensor(float)': np.float32, 'tensor(float16)': np.float16, 'tensor(double)': np.float64,
    'tensor(uint8)': np.uint8, 'tensor(int8)': np.int8, 'tensor(uint16)': np.uint16, 'tensor(int16)': np.int16,
    'tensor(int32)': np.int32, 'tensor(int64)': np.int64, 'tensor(uint32)': np.uint32,
    'tensor(uint64)': np.uint64, 'tensor(bool)': np.bool_,
}


def ort_dtype(type_str: str) -> np.dtype:
    """numpy dtype of an ONNX Runtime type string such as ``tensor(uint8)``."""
    try:
        return np.dtype(_ORT_DTYPES[type_str])
    except KeyError:
        raise BackendError(f'onnxruntime type {type_str!r} is not supported by vizloc_ros backends') from None


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(f'onnxruntime is not installed ({exc}); pip install onnxruntime') from exc
    return onnxruntime


def ort_available_providers() -> list[str]:
    """Preferred providers this onnxruntime build offers, fastest first ([] without onnxruntime)."""
    try:
        ort = _import_ort()
    except BackendUnavailableError:
        return []
    available = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in available]


class OnnxRuntimeBackend(InferenceBackend):
    """Runs an ONNX model with ONNX Runtime.

    ``providers``: execution provider names in order of preference (default: every provider of
    :data:`PREFERRED_PROVIDERS` this build has). ``intra_op_num_threads`` 0 = ONNX Runtime's default.
    ``cache_dir``: root cache directory (TensorRT EP engines go to ``cache_dir/ort_trt``).
    ``precision``: ``fp32`` or ``fp16`` (fp16 only affects the TensorRT EP).
    """

    name = 'onnxruntime'

    def __init__(self, model_path: str | os.PathLike, providers: Sequence[str] | None = None,
                 intra_op_num_threads: int = 0, *, cache_dir: str | os.PathLike | None = None,
                 precision: str = 'fp32') -> None:
        super().__init__()
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise BackendError(f'onnxruntime backend: model file {self.model_path} does not exist')
        if precision not in ('fp32', 'fp16'):
            raise BackendError(f"onnxruntime backend: precision must be 'fp32' or 'fp16', got {precision!r}")
        if intra_op_num_threads < 0:
            raise BackendError(f'onnxruntime backend: intra_op_num_threads must be >= 0, got {intra_op_num_threads}')
        ort = _import_ort()
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in PREFERRED_PROVIDERS if p in available]
        else:
            missing = [p for p in providers if p not in available]
            if missing:
                raise BackendUnavailableError(
                    f'onnxruntime backend: provider(s) {missing} are not in this onnxruntime build (has {available})')
        if not providers:
            raise BackendUnavailableError(f'onnxruntime backend: no usable execution provider among {available}')
        self.providers = list(providers)
        self.intra_op_num_threads = intra_op_num_threads
        self.precision = precision
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self._session: Any = None

    def _provider_options(self) -> list[tuple[str, dict[str, Any]] | str]:
        out: list[tuple[str, dict[str, Any]] | str] = []
        for provider in self.providers:
            if provider == 'TensorrtExecutionProvider':
                from . import default_cache_dir  # local: avoids an import cycle

                trt_cache = (self.cache_dir or default_cache_dir()) / 'ort_trt'
                trt_cache.mkdir(parents=True, exist_ok=True)
                out.append((provider, {
                    'trt_engine_cache_enable': True,
                    'trt_engine_cache_path': str(trt_cache),
                    'trt_timing_cache_enable': True,
                    'trt_timing_cache_path': str(trt_cache),
                    'trt_fp16_enable': self.precision == 'fp16',
                }))
            else:
                out.append(provider)
        return out

    def _load(self) -> None:
        ort = _import_ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_num_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(self.model_path), sess_options=options,
                                           providers=self._provider_options())
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise BackendError(f'onnxruntime could not load {self.model_path}: {exc}') from exc
        self.input_specs = {
            i.name: TensorSpec(i.name, ort_dtype(i.type), tuple(d if isinstance(d, int) else None for d in i.shape))
            for i in session.get_inputs()}
        self.output_specs = {
            o.name: TensorSpec(o.name, ort_dtype(o.type), tuple(d if isinstance(d, int) else None for d in o.shape))
            for o in session.get_outputs()}
        self._session = session
        logger.info('onnxruntime loaded %s with providers %s', self.model_path, session.get_providers())

    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(outputs, feeds)
        except Exception as exc:  # onnxruntime's own exception types
            raise BackendError(f'onnxruntime failed running {self.model_path.name}: {exc}') from exc
        return dict(zip(outputs, values))

    def _close(self) -> None:
        self._session = None

    @property
    def active_providers(self) -> list[str]:
        """Providers the loaded session actually uses (after ONNX Runtime's own fallbacks)."""
        return list(self._session.get_providers()) if self._session is not None else []

    @property
    def description(self) -> str:
        provider = self.active_providers[0] if self._session is not None else self.providers[0]
        return f'onnxruntime:{provider}'
