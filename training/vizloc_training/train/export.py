"""ONNX export with the preprocessing baked in, parity check against ONNX Runtime, and bundling.

The exported graph takes what the node has: a ``uint8`` ``NHWC`` ``RGB`` batch of the bundle's
input size. :class:`PreprocessWrapper` turns it into the float ``NCHW`` normalised tensor the
trained model expects (``x / 255``, ``(x - mean) / std``), so no preprocessing code has to be kept
in sync between training and runtime.

Every export is checked: ``onnx.checker``, then the same random ``uint8`` batch through torch and
through ONNX Runtime (CPU); the largest absolute output difference is logged, returned through
``report`` and, divided by the output's magnitude ``max(1, max|torch output|)``, must be below
``parity_tol`` (:class:`ExportError` otherwise): probabilities are compared absolutely, large
logits/maps relative to their scale (float32 rounding grows with magnitude).

ONNX ``metadata_props`` make the file self-describing: ``vizloc.localizer_type``,
``vizloc.format_version`` (the bundle format version), ``vizloc.metadata`` (JSON of the given
metadata), ``vizloc.mean`` / ``vizloc.std``.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from vizloc_ros.bundle import FORMAT_VERSION, InputSpec, write_bundle

from ..models.backbones import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['ExportError', 'PreprocessWrapper', 'export_onnx', 'export_and_bundle', 'measure_onnx_latency',
           'OPSET']

logger = logging.getLogger(__name__)

OPSET = 17


class ExportError(RuntimeError):
    """The exported model failed the ONNX checker or the torch/ORT parity check."""


class PreprocessWrapper(nn.Module):
    """``uint8`` image batch (layout/colour of ``input_spec``) -> normalised float NCHW RGB -> ``model``."""

    def __init__(self, model: nn.Module, input_spec: InputSpec, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f'mean/std must be 3 values (std > 0), got mean={mean} std={std}')
        self.model = model
        self.nhwc = input_spec.layout == 'NHWC'
        self.bgr = input_spec.color == 'BGR'
        self.register_buffer('scale', (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, 3, 1, 1))
        self.register_buffer('shift', (torch.tensor(mean, dtype=torch.float32) /
                                       torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> Any:
        x = image.to(torch.float32)
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        if self.bgr:
            x = x.flip(1)
        return self.model(x * self.scale - self.shift)


def _as_tuple(outputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    if isinstance(outputs, (tuple, list)):
        return tuple(outputs)
    if isinstance(outputs, Mapping):
        return tuple(outputs.values())
    raise ExportError(f'model must return a tensor or a tuple of tensors, got {type(outputs).__name__}')


def export_onnx(model: nn.Module, out_path: Path | str, *, input_spec: InputSpec,
                mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                output_names: Sequence[str], metadata: Mapping[str, Any] | None = None,
                dynamic_batch: bool = True, localizer_type: str | None = None, parity_tol: float = 1e-4,
                parity_input: np.ndarray | None = None, report: dict[str, Any] | None = None) -> Path:
    """Export ``model`` (float NCHW normalised input -> outputs) with baked-in preprocessing.

    ``parity_input``: a uint8 batch in the model's input layout (e.g. real validation images) for
    the parity check; default: one random image (weak for untrained networks, whose outputs hardly
    depend on the input). ``localizer_type`` defaults to ``metadata['localizer_type']``. If ``report`` is a dict it
    receives ``parity_max_abs_diff``, ``opset`` and ``export_s``. The model is exported on the CPU
    in eval mode; its own training mode and device are restored afterwards.
    """
    import onnx

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    metadata = dict(metadata or {})
    localizer_type = localizer_type or metadata.get('localizer_type')
    if not localizer_type:
        raise ValueError('export_onnx: localizer_type is required (argument or metadata["localizer_type"])')
    output_names = list(output_names)
    if not output_names:
        raise ValueError('export_onnx: output_names must name every model output')

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device('cpu')
    was_training = model.training
    wrapper = PreprocessWrapper(model, input_spec, mean, std).cpu().eval()
    shape = ((1, input_spec.height, input_spec.width, 3) if input_spec.layout == 'NHWC'
             else (1, 3, input_spec.height, input_spec.width))
    generator = torch.Generator().manual_seed(0)
    dummy = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    check_input = dummy
    if parity_input is not None:
        parity_input = np.ascontiguousarray(parity_input)
        if parity_input.dtype != np.uint8 or parity_input.shape[1:] != shape[1:]:
            raise ValueError(f'parity_input must be uint8 of shape (N, {", ".join(map(str, shape[1:]))}), got '
                             f'{parity_input.dtype} {parity_input.shape}')
        check_input = torch.from_numpy(parity_input)
    started = time.perf_counter()
    try:
        with torch.no_grad():
            reference = _as_tuple(wrapper(check_input))
            if len(reference) != len(output_names):
                raise ExportError(f'model returns {len(reference)} outputs but output_names has {len(output_names)}: '
                                  f'{output_names}')
            dynamic_axes = None
            if dynamic_batch:
                dynamic_axes = {input_spec.name: {0: 'batch'}, **{n: {0: 'batch'} for n in output_names}}
            # The TorchScript exporter (dynamo=False): the dynamo exporter needs onnxscript, which the
            # training environment does not carry; the legacy path is stable for these CNNs.
            with warnings.catch_warnings():
                warnings.filterwarnings('ignore', category=DeprecationWarning, message='.*legacy TorchScript')
                torch.onnx.export(wrapper, (dummy,), str(out_path), input_names=[input_spec.name],
                                  output_names=output_names, dynamic_axes=dynamic_axes, opset_version=OPSET,
                                  do_constant_folding=True, dynamo=False)
    finally:
        model.to(device).train(was_training)

    proto = onnx.load(str(out_path))
    props = {
        'vizloc.localizer_type': str(localizer_type),
        'vizloc.format_version': str(FORMAT_VERSION),
        'vizloc.metadata': json.dumps(metadata, sort_keys=True, default=str),
        'vizloc.mean': json.dumps(list(map(float, mean))),
        'vizloc.std': json.dumps(list(map(float, std))),
        'vizloc.input': json.dumps({'name': input_spec.name, 'height': input_spec.height, 'width': input_spec.width,
                                    'layout': input_spec.layout, 'dtype': input_spec.dtype,
                                    'color': input_spec.color}),
    }
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f'{out_path}: ONNX checker failed: {exc}') from exc
    onnx.save(proto, str(out_path))

    diff, scaled = _ort_parity(out_path, input_spec.name, check_input.numpy(), [r.numpy() for r in reference],
                               output_names)
    export_s = time.perf_counter() - started
    logger.info('exported %s (opset %d, %.1f s); torch vs ONNX Runtime max abs diff %.3g (%.3g relative)',
                out_path, OPSET, export_s, diff, scaled)
    if report is not None:
        report.update({'parity_max_abs_diff': diff, 'parity_max_rel_diff': scaled, 'opset': OPSET,
                       'export_s': export_s})
    if not scaled <= parity_tol:
        raise ExportError(f'{out_path}: torch vs ONNX Runtime outputs differ by {diff:.3g} ({scaled:.3g} relative to '
                          f'the output magnitude) > {parity_tol:g}')
    return out_path


def _ort_parity(path: Path, input_name: str, batch: np.ndarray, reference: list[np.ndarray],
                output_names: list[str]) -> tuple[float, float]:
    """(max abs diff, max abs diff relative to each output's magnitude max(1, max|torch|)) over all outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=['CPUExecutionProvider'])
    outputs = session.run(output_names, {input_name: batch})
    diff, scaled = 0.0, 0.0
    for name, got, want in zip(output_names, outputs, reference):
        if got.shape != want.shape:
            raise ExportError(f'{path}: output {name!r} has shape {got.shape} in ONNX Runtime, {want.shape} in torch')
        if got.size:
            d = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
            diff = max(diff, d)
            scaled = max(scaled, d / max(1.0, float(np.max(np.abs(want)))))
    return diff, scaled


def measure_onnx_latency(onnx_path: Path | str, *, input_name: str = 'image', shape: Sequence[int] = (1, 224, 224, 3),
                         threads: int = 1, warmup: int = 5, runs: int = 30) -> dict[str, float]:
    """Latency of one ONNX Runtime CPU inference with ``threads`` intra-op threads: p50/p95/mean in ms."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=['CPUExecutionProvider'])
    batch = np.random.default_rng(0).integers(0, 256, size=tuple(shape), dtype=np.uint8)
    for _ in range(warmup):
        session.run(None, {input_name: batch})
    times_ms = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, {input_name: batch})
        times_ms.append((time.perf_counter() - started) * 1e3)
    return {'latency_p50_ms': float(np.percentile(times_ms, 50)), 'latency_p95_ms': float(np.percentile(times_ms, 95)),
            'latency_mean_ms': float(np.mean(times_ms)), 'latency_threads': int(threads), 'latency_runs': int(runs)}


def export_and_bundle(model: nn.Module, bundle_dir: Path | str, *, localizer_type: str, input_spec: InputSpec,
                      output_names: Sequence[str], metadata: Mapping[str, Any] | None = None,
                      metrics: Mapping[str, Any] | None = None, extra_files: Mapping[str, Path | str] | None = None,
                      mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                      dynamic_batch: bool = True, parity_tol: float = 1e-4, parity_input: np.ndarray | None = None,
                      measure_latency: bool = True,
                      latency_runs: int = 20, producer: str = '') -> Path:
    """Export to ONNX and write a verified bundle (``vizloc_ros.bundle.write_bundle``); returns the bundle dir.

    The bundle's metrics get ``onnx_parity_max_abs_diff`` and (with ``measure_latency``) the ONNX
    Runtime CPU latency on one thread at the bundle's input size (``onnx_latency_p50_ms``...).
    """
    metadata = {'localizer_type': localizer_type, 'mean': list(mean), 'std': list(std), **dict(metadata or {})}
    metrics = dict(metrics or {})
    if not producer:
        try:
            from importlib.metadata import version

            producer = f'vizloc_training {version("vizloc-ros-training")}, torch {torch.__version__}'
        except ImportError:
            producer = f'vizloc_training, torch {torch.__version__}'
    with tempfile.TemporaryDirectory(prefix='vizloc-export-') as tmp:
        onnx_path = Path(tmp) / 'model.onnx'
        report: dict[str, Any] = {}
        export_onnx(model, onnx_path, input_spec=input_spec, mean=mean, std=std, output_names=output_names,
                    metadata=metadata, dynamic_batch=dynamic_batch, localizer_type=localizer_type,
                    parity_tol=parity_tol, parity_input=parity_input, report=report)
        metrics['onnx_parity_max_abs_diff'] = report['parity_max_abs_diff']
        metrics['onnx_parity_max_rel_diff'] = report['parity_max_rel_diff']
        if measure_latency:
            shape = ((1, input_spec.height, input_spec.width, 3) if input_spec.layout == 'NHWC'
                     else (1, 3, input_spec.height, input_spec.width))
            latency = measure_onnx_latency(onnx_path, input_name=input_spec.name, shape=shape, threads=1,
                                           runs=latency_runs)
            metrics.update({f'onnx_{k}': v for k, v in latency.items()})
        return write_bundle(bundle_dir, localizer_type, onnx_path, input_spec, outputs=list(output_names),
                            metadata=metadata, metrics=metrics, extra_files=extra_files, producer=producer)
