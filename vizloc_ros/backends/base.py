"""The inference backend interface (after Polygraphy's runners): explicit load/close, validated infer().

Every backend runs one model with named inputs and outputs::

    with create_backend('auto', bundle) as runner:       # load() on enter, close() on exit
        outputs = runner.infer({'image': batch_NHWC_uint8})

``infer`` checks names, dtypes and shapes against :attr:`InferenceBackend.input_specs` and raises
:class:`BackendInputError` with a message naming the offending input before touching the model.
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ['TensorSpec', 'InferenceBackend', 'BackendError', 'BackendUnavailableError', 'BackendInputError']

logger = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """A backend failed to load or run a model."""


class BackendUnavailableError(BackendError):
    """The backend's library or hardware is not present here (e.g. TensorRT without a GPU)."""


class BackendInputError(BackendError, ValueError):
    """infer() was given inputs that do not match the model's input specs."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape of a model input/output; ``None`` in ``shape`` = dynamic axis."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def check(self, array: np.ndarray) -> None:
        if not isinstance(array, np.ndarray):
            raise BackendInputError(f'input {self.name!r} must be a numpy array, got {type(array).__name__}')
        if array.dtype != self.dtype:
            raise BackendInputError(f'input {self.name!r} must have dtype {self.dtype}, got {array.dtype}')
        if array.ndim != len(self.shape) or any(
                want is not None and want != got for want, got in zip(self.shape, array.shape)):
            raise BackendInputError(f'input {self.name!r} must have shape {self.shape_str()}, got {array.shape}')

    def shape_str(self) -> str:
        return '(' + ', '.join('?' if d is None else str(d) for d in self.shape) + ')'


class InferenceBackend(abc.ABC):
    """Base class of the backends. Subclasses implement ``_load``, ``_infer`` and ``_close``."""

    #: Short backend name: ``onnxruntime``, ``tensorrt`` or ``torch``.
    name: str = ''

    def __init__(self) -> None:
        self._loaded = False
        self.input_specs: dict[str, TensorSpec] = {}
        self.output_specs: dict[str, TensorSpec] = {}

    # -- lifecycle --------------------------------------------------------------------------------
    def load(self) -> 'InferenceBackend':
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def close(self) -> None:
        if self._loaded:
            self._close()
            self._loaded = False

    @property
    def is_loaded(self) -> bool:
        return self._loaded

    def __enter__(self) -> 'InferenceBackend':
        return self.load()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- inference --------------------------------------------------------------------------------
    def infer(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model. ``outputs`` selects output names (default: all)."""
        if not self._loaded:
            raise BackendError(f'{self.name} backend: infer() called before load()')
        missing = sorted(set(self.input_specs) - set(feeds))
        extra = sorted(set(feeds) - set(self.input_specs))
        if missing or extra:
            raise BackendInputError(
                f'{self.name} backend: expected inputs {sorted(self.input_specs)}, missing {missing}, unexpected {extra}')
        for name, array in feeds.items():
            self.input_specs[name].check(array)
        wanted = list(outputs) if outputs is not None else list(self.output_specs)
        unknown = sorted(set(wanted) - set(self.output_specs))
        if unknown:
            raise BackendInputError(f'{self.name} backend: unknown outputs {unknown}; model has {sorted(self.output_specs)}')
        return self._infer(dict(feeds), wanted)

    @property
    def description(self) -> str:
        """What is running, for /diagnostics (e.g. ``onnxruntime:CPUExecutionProvider``)."""
        return self.name

    @abc.abstractmethod
    def _load(self) -> None:
        ...

    @abc.abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        ...

    @abc.abstractmethod
    def _close(self) -> None:
        ...
