"""Feature maps of a frozen backbone for the frozen-feature training modes, through ONNX Runtime on CPU.

The frozen modes (room classifier and GPS regressor ``freeze_backbone``) spend almost all their time in
one forward pass per cached view. On the project's 2-core CPU, EfficientNet-Lite0's
``forward_features`` at 224x168 takes ~30 ms per image in torch (batch 64, 2 threads) and ~5 ms in
ONNX Runtime (one image per call, two calls at once on one thread each);
``scripts/bench_frozen_features.py`` prints the ratio on any machine. :class:`FrozenFeatures` exports the
backbone's feature trunk once per input size (in eval mode, to a temporary file), checks ONNX Runtime
against torch on the first batch (:func:`vizloc_training.train.export._ort_parity`, the bundle exporter's
check), and runs every batch through the session, ``threads`` images at a time. On a non-CPU device it is
the backbone's own ``forward_features`` under ``torch.no_grad``.
"""
from __future__ import annotations

import logging
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ['FrozenFeatures', 'FrozenFeaturesError']

logger = logging.getLogger(__name__)

#: Images per ONNX Runtime call. One is fastest here (Lite0 at 224x168, one two-thread call at a time:
#: 5.7 ms per image at 1, 7.0 at 8, 9.2 at 16): the activations of one image stay in cache.
#: The calls run ``threads`` at a time, each on one thread: one two-thread call at a time took 7.1 ms
#: per image (10.2 ms with the strong augmentation between batches, as in the trainers), two one-thread
#: calls at once 4.9 ms (6.2 ms) (Lite0 at 224x168 on 2 cores, ``scripts/bench_frozen_features.py``).
ORT_CHUNK = 1
#: Largest torch-vs-ONNX-Runtime difference accepted, relative to max(1, max |torch|) (as the exporter).
PARITY_TOL = 1e-3


class FrozenFeaturesError(RuntimeError):
    """The frozen backbone could not be exported, or ONNX Runtime disagrees with torch."""


class _Trunk(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x_N3HW: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x_N3HW)


class FrozenFeatures:
    """``maps = frozen(x_N3HW)``: ``backbone.forward_features`` of normalised float images (N, 3, H, W)
    as float32 on the CPU, by ONNX Runtime when ``device`` is the CPU. Use as a context manager (or
    call :meth:`close`); the backbone must not change while it is open (it is frozen)."""

    def __init__(self, backbone: nn.Module, device: torch.device, *, threads: int | None = None) -> None:
        self.backbone = backbone
        self.device = torch.device(device)
        self.threads = int(threads or torch.get_num_threads())
        self.use_ort = self.device.type == 'cpu'
        self._sessions: dict[tuple[int, int], object] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix='vizloc-frozen-') if self.use_ort else None
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix='frozen') if self.use_ort else None

    def __enter__(self) -> FrozenFeatures:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._sessions.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @torch.no_grad()
    def __call__(self, x_N3HW: torch.Tensor) -> torch.Tensor:
        if x_N3HW.ndim != 4 or x_N3HW.shape[1] != 3:
            raise ValueError(f'expected (N, 3, H, W) images, got {tuple(x_N3HW.shape)}')
        if not self.use_ort:
            was_training = self.backbone.training
            self.backbone.eval()
            try:
                return self.backbone.forward_features(x_N3HW.to(self.device)).float().cpu()
            finally:
                self.backbone.train(was_training)
        x = np.ascontiguousarray(x_N3HW.detach().to('cpu', torch.float32).numpy())
        session = self._session(x)
        outputs = list(self._pool.map(lambda i: session.run(['maps'], {'x': x[i:i + ORT_CHUNK]})[0],
                                      range(0, len(x), ORT_CHUNK)))
        return torch.from_numpy(np.concatenate(outputs))

    def _session(self, x_N3HW: np.ndarray):
        key = (int(x_N3HW.shape[2]), int(x_N3HW.shape[3]))
        if key in self._sessions:
            return self._sessions[key]
        import onnxruntime as ort

        from ..train.export import OPSET, _ort_parity

        if self._tmp is None:
            raise FrozenFeaturesError('FrozenFeatures is closed')
        path = Path(self._tmp.name) / f'trunk_{key[0]}x{key[1]}.onnx'
        sample = torch.from_numpy(x_N3HW[:2])
        trunk = _Trunk(self.backbone)
        was_training = self.backbone.training
        self.backbone.eval()
        started = time.perf_counter()
        try:
            reference = trunk(sample).numpy()
            with warnings.catch_warnings():
                warnings.filterwarnings('ignore', category=DeprecationWarning, message='.*legacy TorchScript')
                warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
                torch.onnx.export(trunk, (sample,), str(path), input_names=['x'], output_names=['maps'],
                                  dynamic_axes={'x': {0: 'batch'}, 'maps': {0: 'batch'}}, opset_version=OPSET,
                                  do_constant_folding=True, dynamo=False)
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:
            raise FrozenFeaturesError(f'cannot export the frozen backbone at {key[0]}x{key[1]}: {exc}') from exc
        finally:
            self.backbone.train(was_training)
        diff, scaled = _ort_parity(path, 'x', sample.numpy(), [reference], ['maps'])
        if not scaled <= PARITY_TOL:
            raise FrozenFeaturesError(f'frozen backbone: torch vs ONNX Runtime feature maps differ by {diff:.3g} '
                                      f'({scaled:.3g} relative) > {PARITY_TOL:g}')
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # ORT_CHUNK: ``threads`` calls run at once
        session = ort.InferenceSession(str(path), sess_options=options, providers=['CPUExecutionProvider'])
        logger.info('frozen backbone at %dx%d through ONNX Runtime (%d images at once; exported and checked in '
                    '%.1f s, max abs diff to torch %.2g)', key[0], key[1], self.threads,
                    time.perf_counter() - started, diff)
        self._sessions[key] = session
        return session
