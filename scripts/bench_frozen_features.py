#!/usr/bin/env python3
"""Frozen-backbone feature maps: torch (batched, as before) vs ONNX Runtime (``FrozenFeatures``); prints
ms per image and the ratio, for the frozen-feature modes' input sizes.

    .venv/bin/python scripts/bench_frozen_features.py [--backbone efficientnet_lite0] [--images 64]
        [--threads 2] [--size 168x224 --size 160x160] [--augment strong]

``--augment LEVEL`` augments each batch of ``--batch`` images (``augment_batch``) before its features, in
both columns, as the frozen modes' feature caches do: torch's threads then share the cores with the
feature pass, which is what the trainers see.
"""
from __future__ import annotations

import argparse
import time

import torch

from vizloc_training.models.backbones import make_backbone
from vizloc_training.models.frozen import FrozenFeatures
from vizloc_training.train.images import AUGMENT_LEVELS, augment_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--backbone', default='efficientnet_lite0')
    parser.add_argument('--images', type=int, default=64)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--batch', type=int, default=64, help='torch batch size (the frozen modes used 64)')
    parser.add_argument('--size', action='append', default=[], metavar='HxW',
                        help='input size; default 168x224 (GPS demo) and 160x160 (room demo)')
    parser.add_argument('--augment', choices=AUGMENT_LEVELS, default='none',
                        help='augment each batch before its features (timed with them)')
    ns = parser.parse_args()
    torch.set_num_threads(ns.threads)
    backbone, _ = make_backbone(ns.backbone, pretrained=True)
    backbone.eval()
    print(f'{ns.backbone}, {ns.images} images, {ns.threads} threads, augmentation {ns.augment}')
    print('| input | torch, batch %d | ONNX Runtime | ratio |' % ns.batch)
    print('| --- | --- | --- | --- |')
    for size in ns.size or ['168x224', '160x160']:
        h, w = (int(v) for v in size.split('x'))
        x = torch.randn(ns.images, 3, h, w, generator=torch.Generator().manual_seed(0))

        def batches():
            generator = torch.Generator().manual_seed(1)
            for i in range(0, ns.images, ns.batch):
                yield augment_batch(x[i:i + ns.batch].sigmoid(), ns.augment, generator)

        with torch.no_grad():
            backbone.forward_features(x[:2])  # warm-up
            started = time.perf_counter()
            for batch in batches():
                backbone.forward_features(batch)
            torch_ms = (time.perf_counter() - started) / ns.images * 1e3
            with FrozenFeatures(backbone, torch.device('cpu'), threads=ns.threads) as frozen:
                frozen(x[:2])  # export, parity check, warm-up
                started = time.perf_counter()
                for batch in batches():
                    frozen(batch)
                ort_ms = (time.perf_counter() - started) / ns.images * 1e3
        print(f'| {h}x{w} | {torch_ms:.1f} ms | {ort_ms:.1f} ms | {torch_ms / ort_ms:.1f}x |')


if __name__ == '__main__':
    main()
