"""Trainer of the ``s2_classifier`` localizer: ``vizloc-train s2_classifier --data DIR --out BUNDLE``.

Pipeline (seed 002 / PlaNet):

1. Read a GPS-format dataset (gt.csv / EXIF; :func:`vizloc_training.gps_regressor.data.load_gps_data`),
   decode the images at the preset's input size (the runtime's own resize).
2. Partition the sphere from the **training split** (:func:`vizloc_plugins.s2_cells.adaptive_partition`:
   split cells holding more than ``t_max`` images, drop cells with fewer than ``t_min``); training
   images in dropped cells are not used. Optionally (``parent_levels_up`` > 0) a second head
   classifies the cells' ancestors that many levels up (the seed's "parent-child" next step;
   ``parent_weight`` scales its loss).
3. Train backbone (``backbone``: any name of :func:`vizloc_training.models.backbones.make_backbone`,
   ``--init-weights`` for a local state_dict) + linear head(s) with cross-entropy (label smoothing),
   AdamW, warm-up + cosine learning rate over ``epochs`` or ``time_budget_s``
   (:func:`vizloc_training.train.loop.lr_factor`), the GPS regressor's augmentation plus horizontal
   flips (``hflip``: a mirrored street is still in the same city).
   Every epoch: validation km table; the best epoch (within 25 km, then cell accuracy) is kept.
4. Evaluate on the test split: % within 1/25/200/750/2500 km of the plugin's fix
   (:func:`vizloc_plugins.s2_classifier.estimate_fix`), of the top-1 cell, and the "best cell" oracle.
5. Export ONNX (``probs`` [+ ``parent_probs``], preprocessing baked in) and write the bundle with the
   contract (:class:`vizloc_plugins.s2_classifier_contract.S2ClassifierContract`) and ``cells.csv``.

Metrics in bundle.yaml: ``test/fix/*``, ``test/top1_cell/*``, ``test/oracle/*`` (km tables),
``test/cell_accuracy``, ``val/*``, ``cells``, ``train_images_used``, ``train_s``, ``params``,
``flops``, ONNX latency.
"""
from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vizloc_plugins.s2_cells import CELL_POSITIONS, adaptive_partition
from vizloc_plugins.s2_classifier_contract import (LOCALIZER_TYPE, OUTPUT_PARENT_PROBS, OUTPUT_PROBS,
                                                  S2ClassifierContract)
from vizloc_ros.bundle import InputSpec

from ..gps_regressor.data import GPSData, load_gps_data
from ..gps_regressor.train import AUGMENT_LEVELS, augment_batch
from ..models.backbones import count_flops, count_params
from ..train.config import TrainArgs, TrainConfigError, resolve_preset
from ..train.export import PreprocessWrapper, export_and_bundle
from ..train.loop import (CheckpointManager, ddp_cleanup, ddp_setup, discriminative_param_groups, is_main_process,
                          lr_factor, progress, select_device, set_lr, set_seed, work_dir)
from .evaluate import fix_errors_m, km_table, oracle_errors_m, top1_errors_m
from .model import S2ClassifierExport, S2ClassifierNet

__all__ = ['PRESETS', 'LOCALIZER_TYPE', 'train', 'predict_probs']

logger = logging.getLogger(__name__)

_BASE: dict[str, Any] = {
    'backbone': 'efficientnet_lite0',
    'pretrained': True,          # start from the packaged ImageNet weights (seed 002 starts from ImageNet)
    'backbone_lr_factor': 0.3,   # fine-tuning: the backbone learns at lr x this, the heads at lr
    'image_height': 72,
    'image_width': 96,
    'epochs': 60,
    'batch_size': 32,
    'lr': 2e-3,
    'weight_decay': 0.05,
    'warmup_epochs': 1,
    'label_smoothing': 0.1,
    'dropout': 0.2,
    'bn_momentum': 0.1,          # BatchNorm running-stat momentum (torchvision's MobileNets use 0.01: too slow
                                 # for short runs, the evaluation statistics would lag the weights)
    'augment': 'light',
    'hflip': True,               # mirror half the training images: a mirrored street is still in the same city
    't_max': 60,                 # PlaNet: split cells holding more training images than this
    't_min': 8,                  # PlaNet: drop cells holding fewer
    'max_level': 20,
    'parent_levels_up': 0,       # > 0: also classify the ancestors this many levels up (hierarchical output)
    'parent_weight': 0.5,
    'cell_position': 'train_mean',
    'top_k': 3,
    'neighbourhood_km': 2.5,     # average only over cells of the best cell's district (finer than the 25 km scale)
    'time_budget_s': 0.0,        # > 0: the cosine schedule ends at whichever comes first, epochs or this wall time
    'threads': 1,                # torch intra-op threads (0 = torch default; >1 thrashes on a shared CPU)
    'max_per_split': 0,
    'latency_runs': 20,
}

#: ``demo``: CPU-friendly default (<= 9 min of training on a shared 2-core machine, see
#: docs/localizers/s2_classifier.md); ``tiny``: seconds, for tests; ``full``: 224 px, longer, GPU.
PRESETS: dict[str, dict[str, Any]] = {
    'demo': {**_BASE, 'time_budget_s': 540.0},
    'tiny': {**_BASE, 'backbone': 'resnet18', 'pretrained': False, 'image_height': 32, 'image_width': 40, 'epochs': 2, 'batch_size': 8,
             'warmup_epochs': 0, 't_max': 12, 't_min': 2, 'parent_levels_up': 2, 'latency_runs': 2},
    'full': {**_BASE, 'image_height': 224, 'image_width': 224, 'epochs': 40, 'batch_size': 64, 'lr': 1e-3,
             'augment': 'strong', 'threads': 0, 'latency_runs': 50},
}


def _check_config(cfg: dict[str, Any]) -> None:
    for key in ('image_height', 'image_width', 'epochs', 'batch_size', 't_max', 't_min', 'top_k'):
        if int(cfg[key]) <= 0:
            raise TrainConfigError(f's2_classifier: {key} must be positive, got {cfg[key]}')
    if int(cfg['t_min']) > int(cfg['t_max']):
        raise TrainConfigError(f's2_classifier: t_min ({cfg["t_min"]}) must not exceed t_max ({cfg["t_max"]})')
    if cfg['augment'] not in AUGMENT_LEVELS:
        raise TrainConfigError(f's2_classifier: augment must be one of {AUGMENT_LEVELS}, got {cfg["augment"]!r}')
    if cfg['cell_position'] not in CELL_POSITIONS:
        raise TrainConfigError(f's2_classifier: cell_position must be one of {CELL_POSITIONS}')
    if int(cfg['parent_levels_up']) < 0 or float(cfg['parent_weight']) < 0:
        raise TrainConfigError('s2_classifier: parent_levels_up and parent_weight must be >= 0')


def _scaled(images_NHW3: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images_NHW3)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def predict_probs(graph: PreprocessWrapper, images_NHW3: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Cell probabilities (N, C) of uint8 RGB images through the export graph (the same preprocessing as ONNX)."""
    was_training = graph.training
    graph.eval()
    device = next(graph.parameters()).device
    out = []
    try:
        for start in range(0, len(images_NHW3), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images_NHW3[start:start + batch_size])).to(device)
            out.append(graph(batch)[0].double().cpu().numpy())
    finally:
        graph.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0))


def train(args: TrainArgs) -> Path:
    """Partition, train, evaluate, export; returns the bundle directory ``args.out``."""
    cfg = resolve_preset(PRESETS, args)
    _check_config(cfg)
    set_seed(args.seed)
    if int(cfg['threads']):
        torch.set_num_threads(int(cfg['threads']))
    device = select_device(args.device)
    dist = ddp_setup(device)
    try:
        return _train(args, cfg, device, dist)
    finally:
        ddp_cleanup()


def _train(args: TrainArgs, cfg: dict[str, Any], device: torch.device, dist) -> Path:
    height, width = int(cfg['image_height']), int(cfg['image_width'])
    data: GPSData = load_gps_data(args.data, width=width, height=height, max_per_split=int(cfg['max_per_split']) or None)
    train_split = data.splits['train']
    partition = adaptive_partition(train_split.lla_N3[:, 0], train_split.lla_N3[:, 1], t_max=int(cfg['t_max']),
                                   t_min=int(cfg['t_min']), max_level=int(cfg['max_level']))
    contract = S2ClassifierContract(
        cell_position=cfg['cell_position'], parent_levels_up=int(cfg['parent_levels_up']), t_max=int(cfg['t_max']),
        t_min=int(cfg['t_min']), max_level=int(cfg['max_level']), top_k=int(cfg['top_k']),
        neighbourhood_km=float(cfg['neighbourhood_km']), backbone=cfg['backbone'], partition=partition)
    parent_tokens, parent_of_cell = contract.parents()
    labels = partition.assign(train_split.lla_N3[:, 0], train_split.lla_N3[:, 1])
    used = np.flatnonzero(labels >= 0)
    if used.size == 0:
        raise ValueError(f'{args.data}: no training image lies in a kept cell (t_min={cfg["t_min"]})')
    labels_t = torch.from_numpy(labels)
    parent_labels_t = torch.from_numpy(parent_of_cell[np.clip(labels, 0, None)]) if parent_tokens else None
    positions = partition.positions_N3(contract.cell_position)
    extent_var = partition.extent_var_m2()
    logger.info('s2_classifier: %d cells%s, %d of %d training images in kept cells', len(partition),
                f' ({len(parent_tokens)} parents)' if parent_tokens else '', used.size, len(train_split))

    net = S2ClassifierNet(cfg['backbone'], len(partition), len(parent_tokens), dropout=float(cfg['dropout']),
                          init_weights=args.init_weights, pretrained=bool(cfg['pretrained'])).to(device)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = float(cfg['bn_momentum'])
    input_spec = InputSpec(height=height, width=width)
    graph = PreprocessWrapper(S2ClassifierExport(net), input_spec).to(device)
    train_graph = PreprocessWrapper(net, replace(input_spec, layout='NCHW')).to(device)  # float 0..255 NCHW in
    model: torch.nn.Module = train_graph
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            train_graph, device_ids=[device.index] if device.type == 'cuda' else None)
    optimizer = torch.optim.AdamW(discriminative_param_groups(net, net.backbone, float(cfg['lr']),
                                                              float(cfg['backbone_lr_factor'])),
                                  lr=float(cfg['lr']), weight_decay=float(cfg['weight_decay']))
    batch_size = int(cfg['batch_size'])
    steps_per_epoch = max(1, math.ceil(math.ceil(used.size / dist.world_size) / batch_size))
    epochs = int(cfg['epochs'])
    budget_s = float(cfg['time_budget_s'])
    if budget_s > 0 and dist.enabled:
        logger.warning('time_budget_s is ignored under DDP (ranks must run the same number of steps)')
        budget_s = 0.0
    schedule = {'warmup_steps': int(cfg['warmup_epochs']) * steps_per_epoch, 'total_steps': epochs * steps_per_epoch,
                'budget_s': budget_s}
    smoothing = float(cfg['label_smoothing'])

    checkpoints = CheckpointManager(work_dir(args.out) / 'checkpoints', describe={
        'type': LOCALIZER_TYPE, 'preset': args.preset, 'args': args.to_dict(), 'config': cfg,
        'cells': list(partition.tokens)})
    start_epoch, best_score, best_state, history, global_step, train_s = 0, (-1.0, -1.0), None, [], 0, 0.0
    if args.resume:
        payload = checkpoints.load_latest(map_location=device)
        if payload is not None:
            if payload.get('cells') != list(partition.tokens):
                raise TrainConfigError(f'{payload["path"]}: checkpoint was trained on another cell partition')
            net.load_state_dict(payload['model'])
            optimizer.load_state_dict(payload['optimizer'])
            extra = payload['extra']
            start_epoch, global_step = int(payload['epoch']), int(extra['global_step'])
            best_score, best_state = tuple(extra['best_score']), extra['best_state']
            history, train_s = list(extra['history']), float(extra['train_s'])
            logger.info('resumed from %s at epoch %d of %d', payload['path'], start_epoch, epochs)

    val = data.splits['val']

    def val_record() -> dict[str, float]:
        if not len(val):
            return {}
        probs = predict_probs(graph, val.images_NHW3)
        errors = fix_errors_m(probs, positions, extent_var, val.lla_N3[:, 0], val.lla_N3[:, 1],
                              top_k=contract.top_k, neighbourhood_km=contract.neighbourhood_km)
        truth = partition.assign(val.lla_N3[:, 0], val.lla_N3[:, 1])
        table = km_table(errors)
        return {'val_within_25km_pct': table['within_25km_pct'], 'val_median_km': table['median_km'],
                'val_cell_accuracy': float(np.mean(np.argmax(probs, axis=1) == truth))}

    generator = torch.Generator().manual_seed(args.seed + 1)
    logger.info('s2_classifier: %s at %dx%d, %d epochs x %d steps, batch %d, time budget %s, device %s',
                cfg['backbone'], width, height, epochs, steps_per_epoch, batch_size,
                f'{budget_s:.0f} s' if budget_s > 0 else 'none', device)
    out_of_time = False
    first_step = global_step
    for epoch in range(start_epoch, epochs):
        if out_of_time:
            break
        started = time.perf_counter()
        model.train()
        order = used[torch.randperm(used.size, generator=generator).numpy()][dist.rank::dist.world_size]
        loss_sum, loss_count = 0.0, 0
        for step in progress(range(steps_per_epoch), desc=f'epoch {epoch + 1}/{epochs}'):
            elapsed = train_s + time.perf_counter() - started
            if budget_s > 0 and elapsed >= budget_s and global_step > first_step:
                out_of_time = True
                logger.info('time budget of %.0f s used up in epoch %d of %d', budget_s, epoch + 1, epochs)
                break
            idx = np.sort(order[step * batch_size:(step + 1) * batch_size])
            if idx.size == 0:
                continue
            set_lr(optimizer, lr_factor(global_step, elapsed, **schedule))
            global_step += 1
            x = augment_batch(_scaled(train_split.images_NHW3[idx], device), cfg['augment'], generator) * 255.0
            if cfg['hflip']:
                mirror = (torch.rand(len(idx), generator=generator) < 0.5).to(device)
                x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(3), x)
            logits, parent_logits = model(x)
            loss = F.cross_entropy(logits, labels_t[idx].to(device), label_smoothing=smoothing)
            if parent_logits is not None and parent_labels_t is not None:
                loss = loss + float(cfg['parent_weight']) * F.cross_entropy(
                    parent_logits, parent_labels_t[idx].to(device), label_smoothing=smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            loss_count += 1
        train_s += time.perf_counter() - started
        record: dict[str, float] = {'epoch': epoch + 1, 'loss': loss_sum / max(1, loss_count),
                                    'lr': optimizer.param_groups[0]['lr'], 'elapsed_s': train_s}
        if is_main_process():
            record.update(val_record())
        # without a val split the last epoch is kept
        score = (record.get('val_within_25km_pct', float(epoch)), record.get('val_cell_accuracy', 0.0))
        if score >= best_score:
            best_score, best_state = score, copy.deepcopy(net.state_dict())
        history.append(record)
        logger.info('epoch %d/%d: %s', epoch + 1, epochs,
                    ', '.join(f'{k}={v:.4g}' for k, v in record.items() if k != 'epoch'))
        checkpoints.save(epoch + 1, net, optimizer, extra={
            'global_step': global_step, 'best_score': list(best_score), 'best_state': best_state,
            'history': history, 'train_s': train_s})

    if not is_main_process():
        return args.out
    if best_state is not None:
        net.load_state_dict(best_state)
    net.cpu().eval()
    graph.cpu().eval()
    metrics: dict[str, Any] = {
        'cells': len(partition), 'parent_cells': len(parent_tokens),
        'cell_levels': {'min': min(partition.levels), 'max': max(partition.levels)},
        'train_images_used': int(used.size), 'train_images': len(train_split),
        'train_s': train_s, 'epochs_run': len(history), 'torch_threads': torch.get_num_threads(),
        'params': count_params(net),
        'flops': count_flops(S2ClassifierExport(net), (1, 3, height, width)),
        'val': {k.removeprefix('val_'): v for k, v in val_record().items()},
    }
    test = data.splits['test']
    if len(test):
        probs = predict_probs(graph, test.images_NHW3)
        lat, lon = test.lla_N3[:, 0], test.lla_N3[:, 1]
        metrics['test'] = {
            'fix': km_table(fix_errors_m(probs, positions, extent_var, lat, lon, top_k=contract.top_k,
                                         neighbourhood_km=contract.neighbourhood_km)),
            'top1_cell': km_table(top1_errors_m(probs, positions, lat, lon)),
            'oracle': km_table(oracle_errors_m(positions, lat, lon)),
            'cell_accuracy': float(np.mean(np.argmax(probs, axis=1) == partition.assign(lat, lon))),
            'images_outside_cells': int(np.sum(partition.assign(lat, lon) < 0)),
        }
        logger.info('test: within 25 km %.1f %%, 200 km %.1f %% (oracle %.1f %% / %.1f %%)',
                    metrics['test']['fix']['within_25km_pct'], metrics['test']['fix']['within_200km_pct'],
                    metrics['test']['oracle']['within_25km_pct'], metrics['test']['oracle']['within_200km_pct'])
    contract = replace(contract, backbone_weights=net.backbone.weights_source)
    metadata = contract.to_metadata(
        preset=args.preset, config=cfg, args=args.to_dict(), history=history,
        outputs={OUTPUT_PROBS: 'N x C softmax over the cells of cells.csv (file order)',
                 **({OUTPUT_PARENT_PROBS: f'N x P softmax over the ancestors {contract.parent_levels_up} levels up '
                     '(S2 id order)'} if parent_tokens else {})})
    check = test if len(test) else train_split
    with tempfile.TemporaryDirectory(prefix='vizloc-s2-') as tmp:
        extra_files = contract.write_files(Path(tmp))
        bundle_dir = export_and_bundle(
            S2ClassifierExport(net), args.out, localizer_type=LOCALIZER_TYPE, input_spec=input_spec,
            output_names=contract.output_names, metadata=metadata, metrics=metrics,
            parity_input=check.images_NHW3[:8], extra_files=extra_files, latency_runs=int(cfg['latency_runs']))
    logger.info('s2_classifier bundle written to %s', bundle_dir)
    return bundle_dir
