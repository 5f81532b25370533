#!/usr/bin/env python3
"""ONNX Runtime inference latency of the default localizer networks on ONE CPU core.

Exports randomly initialised models (latency does not depend on the weights) with the same
preprocessing-in-graph wrapper as ``vizloc-train`` and times ``session.run`` at 224x224 with
``intra_op_num_threads=1``:

* ``room_classifier``: mobilenet_v3_small + linear head, outputs ``probs`` and ``cam`` (10 rooms),
  with the mirror test-time augmentation of the demo preset (``tta_flip``: batch of 2) and without;
* ``gps_regressor``: efficientnet_b0 + a linear head with 5 outputs (2-D mean + 2x2 covariance
  parameters; the trained head of ``vizloc_training.gps_regressor`` is comparable in size).

Prints p50/p95/mean per model; the load average is printed too, because on a shared machine
other processes inflate the figures. Target (issue #4): room classifier p50 <= 15 ms.

    python scripts/bench_inference.py [--runs 100] [--size 224] [--backbones resnet18 ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

DEFAULTS = {'room_classifier+tta_flip': 'mobilenet_v3_small', 'room_classifier': 'mobilenet_v3_small',
            'gps_regressor': 'efficientnet_b0'}


def build(kind: str, backbone: str):
    from torch import nn

    from vizloc_training.models.backbones import make_backbone
    from vizloc_training.room_classifier.model import RoomClassifierExport, build_model

    if kind.startswith('room_classifier'):
        export = RoomClassifierExport(build_model(backbone, 10), tta_flip=kind.endswith('+tta_flip'))
        return export, export.output_names
    net, dim = make_backbone(backbone)
    return nn.Sequential(net, nn.Linear(dim, 5)), ['out']


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=100)
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--backbones', nargs='*', default=[],
                        help='extra backbones to time with the room classifier head (e.g. resnet18 efficientnet_b0)')
    ns = parser.parse_args(argv)

    import onnxruntime
    import torch

    from vizloc_ros.bundle import InputSpec
    from vizloc_training.train.export import export_onnx, measure_onnx_latency

    torch.manual_seed(0)
    jobs = [(kind, backbone) for kind, backbone in DEFAULTS.items()]
    jobs += [('room_classifier', b) for b in ns.backbones if ('room_classifier', b) not in jobs]
    spec = InputSpec(height=ns.size, width=ns.size)
    print(f'onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, '
          f'load average {os.getloadavg()[0]:.2f} (1 min), intra_op_num_threads={ns.threads}, input {ns.size}x{ns.size}')
    print(f'{"localizer":<25} {"backbone":<20} {"p50_ms":>8} {"p95_ms":>8} {"mean_ms":>8}')
    with tempfile.TemporaryDirectory(prefix='vizloc-bench-') as tmp:
        for kind, backbone in jobs:
            model, outputs = build(kind, backbone)
            path = export_onnx(model.eval(), Path(tmp) / f'{kind}_{backbone}.onnx', input_spec=spec,
                               output_names=outputs, metadata={'localizer_type': kind.split('+')[0],
                                                               'backbone': backbone})
            t = measure_onnx_latency(path, shape=(1, ns.size, ns.size, 3), threads=ns.threads, warmup=ns.warmup,
                                     runs=ns.runs)
            print(f'{kind:<25} {backbone:<20} {t["latency_p50_ms"]:8.2f} {t["latency_p95_ms"]:8.2f} '
                  f'{t["latency_mean_ms"]:8.2f}', flush=True)
    print(f'load average after: {os.getloadavg()[0]:.2f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
