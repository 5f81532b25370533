"""PyTorch backend, for development only (parity checks against the exported ONNX, debugging).

torch is imported inside :meth:`TorchBackend.load`, never at module import, so the runtime stays
torch-free. The model is a TorchScript file (``torch.jit.save``) or an ``nn.Module`` passed
directly. Input/output names and specs come from ``input_specs``/``output_names`` or, when those
are not given, from an ONNX file of the same model (``specs_from_onnx``; for a bundle's
``model.onnx`` with a sibling TorchScript ``model.pt`` this happens automatically).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .base import BackendError, BackendUnavailableError, InferenceBackend, TensorSpec

__all__ = ['TorchBackend', 'onnx_tensor_specs']

logger = logging.getLogger(__name__)


def onnx_tensor_specs(onnx_path: str | os.PathLike) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """(input specs, output specs) declared by an ONNX file, read with onnxruntime (CPU)."""
    from .onnxruntime_backend import OnnxRuntimeBackend

    with OnnxRuntimeBackend(onnx_path, providers=['CPUExecutionProvider'], intra_op_num_threads=1) as ort_runner:
        return dict(ort_runner.input_specs), dict(ort_runner.output_specs)


class TorchBackend(InferenceBackend):
    """Runs a TorchScript file or an ``nn.Module`` on ``device`` (``cpu`` or ``cuda``), fp32."""

    name = 'torch'

    def __init__(self, model: Any, *, input_specs: Mapping[str, TensorSpec] | None = None,
                 output_names: Sequence[str] | None = None, specs_from_onnx: str | os.PathLike | None = None,
                 device: str = 'cpu', precision: str = 'fp32') -> None:
        super().__init__()
        if precision != 'fp32':
            raise BackendError(f"torch backend runs fp32 only (development use), got precision {precision!r}")
        self.device = device
        self.model_path: Path | None = None
        self._module: Any = None
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if path.suffix == '.onnx':
                # A bundle's model.onnx: run the TorchScript copy next to it, specs from the ONNX.
                specs_from_onnx = specs_from_onnx or path
                candidates = [path.with_suffix(s) for s in ('.pt', '.ts', '.torchscript')]
                found = [c for c in candidates if c.is_file()]
                if not found:
                    raise BackendUnavailableError(
                        f'torch backend needs a TorchScript file next to {path} (one of {[c.name for c in candidates]})')
                path = found[0]
            if not path.is_file():
                raise BackendError(f'torch backend: model file {path} does not exist')
            self.model_path = path
        else:
            self._module = model
        self._given_input_specs = dict(input_specs or {})
        self._given_output_names = list(output_names or [])
        self._specs_from_onnx = Path(specs_from_onnx) if specs_from_onnx is not None else None
        if not self._given_input_specs and self._specs_from_onnx is None:
            raise BackendError('torch backend needs input_specs (and output_names) or specs_from_onnx')

    def _load(self) -> None:
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError(f'torch backend: torch is not installed ({exc})') from exc
        self._torch = torch
        if self._specs_from_onnx is not None:
            in_specs, out_specs = onnx_tensor_specs(self._specs_from_onnx)
        else:
            in_specs = self._given_input_specs
            out_specs = {n: TensorSpec(n, np.dtype(np.float32), ()) for n in self._given_output_names}
        if self._given_input_specs:
            in_specs = self._given_input_specs
        if self._given_output_names:
            out_specs = {n: out_specs.get(n, TensorSpec(n, np.dtype(np.float32), ())) for n in self._given_output_names}
        if not out_specs:
            raise BackendError('torch backend: no output names (give output_names or specs_from_onnx)')
        if self.model_path is not None:
            module = torch.jit.load(str(self.model_path), map_location=self.device)
        else:
            module = self._module.to(self.device)
        module.eval()
        self._loaded_module = module
        self.input_specs, self.output_specs = dict(in_specs), dict(out_specs)
        logger.info('torch backend loaded %s on %s', self.model_path or type(module).__name__, self.device)

    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device) for name in self.input_specs]
        with torch.inference_mode():
            result = self._loaded_module(*args)
        names = list(self.output_specs)
        if isinstance(result, Mapping):
            values = {name: result[name] for name in names}
        else:
            tensors = list(result) if isinstance(result, (tuple, list)) else [result]
            if len(tensors) != len(names):
                raise BackendError(f'torch backend: model returned {len(tensors)} outputs, expected {names}')
            values = dict(zip(names, tensors))
        return {name: values[name].detach().cpu().numpy() for name in outputs}

    def _close(self) -> None:
        self._loaded_module = None

    @property
    def description(self) -> str:
        return f'torch:{self.device}'
