"""Native TensorRT 10 backend: an engine built from the bundle's ONNX on first use, then cached.

Engines depend on the TensorRT version, the GPU and the precision, so the cache key is
``sha256(TensorRT version, GPU name, precision, sha256 of the ONNX file)`` (:func:`engine_cache_key`)
and engines live in ``<cache_dir>/<model stem>-<precision>-<key[:16]>.engine`` (default cache dir:
``$VIZLOC_CACHE_DIR/engines`` or ``~/.cache/vizloc_ros/engines``). A changed model, a TensorRT
upgrade or another GPU therefore builds a new engine instead of loading an incompatible one.

Device memory and streams use NVIDIA's ``cuda-python`` bindings (``cuda.bindings.runtime``; no
pycuda, no torch). Importing this module imports nothing heavy; creating a
:class:`TensorRTBackend` where tensorrt, cuda-python or a CUDA GPU is missing raises
:class:`~vizloc_ros.backends.base.BackendUnavailableError` saying what is missing.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .base import BackendError, BackendUnavailableError, InferenceBackend, TensorSpec

__all__ = ['TensorRTBackend', 'engine_cache_key', 'engine_file_name', 'tensorrt_available', 'tensorrt_unavailable_reason']

logger = logging.getLogger(__name__)


def engine_cache_key(onnx_sha256: str, tensorrt_version: str, gpu_name: str, precision: str) -> str:
    """Hex sha256 identifying an engine: same ONNX + TensorRT version + GPU + precision = same key."""
    for what, value in (('onnx_sha256', onnx_sha256), ('tensorrt_version', tensorrt_version),
                        ('gpu_name', gpu_name), ('precision', precision)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f'engine_cache_key: {what} must be a non-empty string, got {value!r}')
    if precision not in ('fp32', 'fp16'):
        raise ValueError(f"engine_cache_key: precision must be 'fp32' or 'fp16', got {precision!r}")
    canonical = json.dumps({'onnx_sha256': onnx_sha256.lower(), 'tensorrt': tensorrt_version.strip(),
                            'gpu': gpu_name.strip(), 'precision': precision}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def engine_file_name(model_path: str | os.PathLike, key: str, precision: str) -> str:
    """File name of a cached engine (filesystem-safe, readable: ``model-fp16-0123456789abcdef.engine``)."""
    stem = ''.join(c if c.isalnum() or c in '-_' else '_' for c in Path(model_path).stem) or 'model'
    return f'{stem}-{precision}-{key[:16]}.engine'


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError as exc:
            raise BackendUnavailableError(
                f'tensorrt backend needs NVIDIA cuda-python (pip install cuda-python): {exc}') from exc
    return cudart


def _check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple, raising BackendError on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f'CUDA error in {what}: {err}')
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _handle(obj: Any) -> int:
    """The integer value of a cuda-python handle (``cudaStream_t``...), as TensorRT's API takes it."""
    try:
        return int(obj)
    except TypeError:
        return int(obj.getPtr())


def tensorrt_unavailable_reason() -> str | None:
    """``None`` when the TensorRT backend can run here, else why not (tensorrt/cuda-python/GPU missing).

    Does not import tensorrt unless it is installed.
    """
    if importlib.util.find_spec('tensorrt') is None:
        return 'the tensorrt Python package is not installed (pip install tensorrt, or use JetPack on Jetson)'
    try:
        cudart = _import_cudart()
    except BackendUnavailableError as exc:
        return str(exc)
    try:
        count = _check(cudart.cudaGetDeviceCount(), 'cudaGetDeviceCount')
    except BackendError as exc:
        return f'no usable CUDA device ({exc})'
    if not count:
        return 'no CUDA device found'
    return None


def tensorrt_available() -> bool:
    return tensorrt_unavailable_reason() is None


class TensorRTBackend(InferenceBackend):
    """Builds (once) and runs a TensorRT engine for an ONNX model.

    ``input_shapes`` fixes dynamic input axes (name -> full shape); without it a dynamic batch axis
    is built for batch 1 and any other dynamic axis is an error.
    """

    name = 'tensorrt'

    def __init__(self, model_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 precision: str = 'fp32', workspace_bytes: int = 1 << 30,
                 input_shapes: dict[str, tuple[int, ...]] | None = None, device: int = 0) -> None:
        super().__init__()
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f'tensorrt backend unavailable: {reason}; use backend onnxruntime instead')
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise BackendError(f'tensorrt backend: model file {self.model_path} does not exist')
        if precision not in ('fp32', 'fp16'):
            raise BackendError(f"tensorrt backend: precision must be 'fp32' or 'fp16', got {precision!r}")
        if cache_dir is None:
            from . import default_cache_dir  # local: avoids an import cycle

            cache_dir = default_cache_dir() / 'engines'
        self.cache_dir = Path(cache_dir).expanduser()
        self.precision = precision
        self.workspace_bytes = workspace_bytes
        self.input_shapes = dict(input_shapes or {})
        self.device = device
        self.engine_path: Path | None = None
        self._trt: Any = None
        self._cudart: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._device_buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, nbytes)
        self._gpu_name = ''

    # -- engine cache -------------------------------------------------------------------------------
    def _engine_path(self) -> Path:
        from ..bundle import sha256_file

        key = engine_cache_key(sha256_file(self.model_path), self._trt.__version__, self._gpu_name, self.precision)
        return self.cache_dir / engine_file_name(self.model_path, key, self.precision)

    def _build_engine(self, path: Path) -> bytes:
        trt = self._trt
        trt_logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(trt_logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, trt_logger)
        if not parser.parse_from_file(str(self.model_path)):
            errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f'TensorRT could not parse {self.model_path}: {errors}')
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if self.precision == 'fp16':
            if not getattr(builder, 'platform_has_fast_fp16', True):
                logger.warning('this GPU has no fast fp16; building fp16 anyway')
            config.set_flag(trt.BuilderFlag.FP16)
        profile = None
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = tuple(tensor.shape)
            if all(d >= 0 for d in shape):
                continue
            fixed = self.input_shapes.get(tensor.name)
            if fixed is None:
                if any(d < 0 for d in shape[1:]):
                    raise BackendError(
                        f'tensorrt backend: input {tensor.name!r} has dynamic axes {shape}; pass input_shapes')
                fixed = (1, *shape[1:])
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(tensor.name, fixed, fixed, fixed)
        if profile is not None:
            config.add_optimization_profile(profile)
        if hasattr(trt, 'IProgressMonitor'):
            config.progress_monitor = _make_progress_monitor(trt)
        logger.info('building TensorRT %s engine for %s on %s (first use; cached as %s)',
                    self.precision, self.model_path, self._gpu_name, path)
        start = time.monotonic()
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f'TensorRT failed to build an engine for {self.model_path} (see the TensorRT log)')
        data = bytes(serialized)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix='.tmp', dir=path.parent)
        with os.fdopen(fd, 'wb') as fh:
            fh.write(data)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half an engine
        logger.info('TensorRT engine built in %.1f s (%d bytes)', time.monotonic() - start, len(data))
        return data

    # -- lifecycle ----------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            self._load_engine()
        except BaseException:
            self._close()  # free what a partial load allocated
            raise

    def _load_engine(self) -> None:
        import tensorrt as trt

        self._trt = trt
        cudart = self._cudart = _import_cudart()
        _check(cudart.cudaSetDevice(self.device), 'cudaSetDevice')
        props = _check(cudart.cudaGetDeviceProperties(self.device), 'cudaGetDeviceProperties')
        name = props.name
        self._gpu_name = (name.decode(errors='replace') if isinstance(name, bytes) else str(name)).rstrip('\x00')
        path = self._engine_path()
        if path.is_file():
            logger.info('loading cached TensorRT engine %s', path)
            data = path.read_bytes()
        else:
            data = self._build_engine(path)
        self.engine_path = path
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendError(f'TensorRT could not deserialize {path}; delete it to rebuild')
        context = engine.create_execution_context()
        self._engine, self._context = engine, context
        self._stream = _check(cudart.cudaStreamCreate(), 'cudaStreamCreate')
        inputs, outputs = {}, {}
        for i in range(engine.num_io_tensors):
            tname = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(tname)))
            shape = tuple(int(d) for d in engine.get_tensor_shape(tname))
            if engine.get_tensor_mode(tname) == trt.TensorIOMode.INPUT:
                fixed = self.input_shapes.get(tname) or tuple(1 if (d < 0 and j == 0) else d for j, d in enumerate(shape))
                context.set_input_shape(tname, fixed)
                inputs[tname] = TensorSpec(tname, dtype, tuple(int(d) for d in fixed))
            else:
                outputs[tname] = dtype
        for tname, spec in inputs.items():
            self._allocate(tname, int(np.prod(spec.shape)) * spec.dtype.itemsize)
        output_specs = {}
        for tname, dtype in outputs.items():
            shape = tuple(int(d) for d in context.get_tensor_shape(tname))
            output_specs[tname] = TensorSpec(tname, dtype, shape)
            self._allocate(tname, int(np.prod(shape)) * dtype.itemsize)
        self.input_specs, self.output_specs = inputs, output_specs

    def _allocate(self, name: str, nbytes: int) -> None:
        pointer = _check(self._cudart.cudaMalloc(max(nbytes, 1)), 'cudaMalloc')
        self._device_buffers[name] = (int(pointer), nbytes)
        self._context.set_tensor_address(name, int(pointer))

    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in feeds.items():
            host = np.ascontiguousarray(array)
            pointer, nbytes = self._device_buffers[name]
            _check(cudart.cudaMemcpyAsync(pointer, host.ctypes.data, nbytes, h2d, self._stream), 'cudaMemcpyAsync')
        if not self._context.execute_async_v3(_handle(self._stream)):
            raise BackendError(f'TensorRT execute_async_v3 failed for {self.model_path.name}')
        results = {}
        for name in outputs:
            spec = self.output_specs[name]
            host = np.empty(spec.shape, dtype=spec.dtype)
            pointer, nbytes = self._device_buffers[name]
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, pointer, nbytes, d2h, self._stream), 'cudaMemcpyAsync')
            results[name] = host
        _check(cudart.cudaStreamSynchronize(self._stream), 'cudaStreamSynchronize')
        return results

    def _close(self) -> None:
        cudart = self._cudart
        if cudart is None:
            return
        for pointer, _ in self._device_buffers.values():
            _check(cudart.cudaFree(pointer), 'cudaFree')
        self._device_buffers.clear()
        if self._stream is not None:
            _check(cudart.cudaStreamDestroy(self._stream), 'cudaStreamDestroy')
            self._stream = None
        self._context = None
        self._engine = None

    @property
    def description(self) -> str:
        return f'tensorrt:{self.precision}' + (f':{self._gpu_name}' if self._gpu_name else '')


def _make_progress_monitor(trt: Any) -> Any:
    """A ``trt.IProgressMonitor`` that logs build phases (built lazily: tensorrt is imported late)."""

    class LoggingProgressMonitor(trt.IProgressMonitor):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._steps[phase_name] = num_steps
            logger.info('TensorRT build: %s%s (%d steps)', f'{parent_phase} / ' if parent_phase else '',
                        phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            logger.debug('TensorRT build: %s step %d/%d', phase_name, step + 1, self._steps.get(phase_name, 0))
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            logger.debug('TensorRT build: %s done', phase_name)

    return LoggingProgressMonitor()
