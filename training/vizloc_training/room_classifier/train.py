"""Training the room classifier: ``vizloc-train room_classifier --data DIR --out BUNDLE [--preset demo]``.

Pipeline: load the rooms dataset (:mod:`.data`) into memory, train backbone + linear head from
scratch (or from ``--init-weights``) with AdamW, warm-up + cosine learning rate (over ``epochs`` or
the wall-time budget ``time_budget_s``, whichever ends first), label smoothing and augmentation
(random resized crop, flip, colour jitter, blur, random erasing), optionally an exponential moving
average of the weights (``weight_ema``); keep the weights with the best validation accuracy;
calibrate the HMM smoothing on the val trajectory (``metadata.smoothing``, see
:func:`.evaluate.calibrate_smoothing`); evaluate on the test split; export ONNX (``probs`` + ``cam``)
with baked-in preprocessing; write the bundle with its metrics in bundle.yaml ``metrics``; then replay
the test trajectory through the written bundle with and without temporal smoothing and write that
evaluation to its own file, ``OUT.eval/trajectory.yaml`` (:mod:`vizloc_training.train.evaluation_file`;
the bundle is not rewritten):

* ``test/accuracy``, ``test/top3_accuracy``, ``test/macro_precision``, ``test/macro_recall``,
  ``test/per_class/<room>/{precision,recall,support}``, ``test/confusion_matrix`` (true x predicted);
* (``OUT.eval/trajectory.yaml``) ``{none,hmm,ema}_accuracy`` (+ ``hmm_adjacency`` with a room map,
  ``hmm_calibrated`` with the HMM parameters chosen on the val trajectory, stored in
  ``metadata.smoothing``), label switches;
* ``params``, ``flops`` (at the input size and at 224x224), ``onnx_latency_p50_ms`` (1 thread);
* ``train_s`` (wall time of the training loop), ``train_cpu_s`` (its process CPU time, all threads: on
  a shared machine the honest measure of the work), ``epochs_run``, ``best_val_accuracy``.

Checkpoints (every epoch) go to ``OUT.work/checkpoints``; ``--resume`` continues from the latest.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from vizloc_plugins.room_classifier_contract import LOCALIZER_TYPE, OUTPUT_CAM, OUTPUT_PROBS, RoomClassifierContract
from vizloc_ros.bundle import InputSpec

from ..metrics.classification import classification_report
from ..models.backbones import count_flops, count_params
from ..train.config import TrainArgs, resolve_preset
from ..train.evaluation_file import write_evaluation
from ..train.export import export_and_bundle
from ..train.loop import (CheckpointError, CheckpointManager, ddp_cleanup, ddp_setup, discriminative_param_groups,
                          is_main_process, lr_factor, set_lr,
                          progress, select_device, set_seed, work_dir)
from .data import AugmentedRooms, RoomSplit, eval_transform, list_classes, load_split, train_transform
from .evaluate import calibrate_smoothing, evaluate_trajectory, predict_split
from .model import RoomClassifierExport, build_model

__all__ = ['PRESETS', 'LOCALIZER_TYPE', 'train']

logger = logging.getLogger(__name__)

_COMMON: dict[str, Any] = {
    'backbone': 'efficientnet_lite0',
    'pretrained': True,         # start from the packaged ImageNet weights (backbones with them; see docs/training.md)
    'backbone_lr_factor': 0.2,  # fine-tuning: the backbone learns at lr x this, the new head at lr
    'weight_decay': 0.05,
    'label_smoothing': 0.1,
    'dropout': 0.2,
    'warmup_epochs': 1,
    'scale_min': 0.5,           # RandomResizedCrop area range [scale_min, 1]
    'jitter': 0.2,              # ColorJitter brightness/contrast/saturation (hue jitter/8)
    'blur_p': 0.3,              # probability of a Gaussian blur
    'hflip': True,
    'erase_p': 0.25,            # probability of random erasing (2-25 % of the crop)
    'time_budget_s': 0.0,       # > 0: the cosine schedule ends at whichever comes first, epochs or this wall time
    'weight_ema': 0.0,          # > 0: keep an exponential moving average of the weights (decay per step); it is
                                # what gets validated, selected and exported
    'bn_momentum': 0.1,         # BatchNorm running-stat momentum (torchvision mobilenets use 0.01)
    'bn_recalibrate': 200,      # after training: recompute BN statistics on up to this many train frames
    'video_stride': 5,          # every n-th frame of training/val/test video clips
    'limit_per_class': 0,       # 0 = all frames
    'num_threads': 1,           # torch intra-op threads (0 = torch default; >1 thrashes on a shared CPU)
    'tta_flip': False,          # bake mirror test-time augmentation into the exported graph (2x compute)
    'train_on_val': False,      # also train on the val split (then the last epoch is exported, no selection)
    'latency_runs': 20,         # ONNX Runtime latency measurement (1 thread)
    'eval_trajectory': True,    # replay the test trajectory through the bundle with/without smoothing
    'p_stay': 0.95,             # HMM stay probability of the uncalibrated 'hmm' trajectory evaluation
    'calibrate_smoothing': True,  # choose HMM p_stay/temperature/switch prior on the val trajectory (bundle metadata)
    'ema_alpha': 0.3,
    'freeze_backbone': False,   # True: frozen-feature mode: backbone features computed once (feature_views
                                # augmented copies of every training frame, the first un-augmented), then
                                # only the linear head trains on the cache (seconds); no BN recalibration
    'feature_views': 8,
}

#: Named presets. ``demo`` (the default): frozen-feature mode: the pretrained backbone's features of
#: 6 views of every training frame cached once, the linear head trained on them (measured on the
#: synthetic indoor world: 91.8 % single frame / 94.6 % calibrated HMM, against 90.3 % / 91.8 % for
#: fine-tuning in 420 s; docs/localizers/room_classifier.md); its cost is the features (~7200 forward
#: passes at 160 px), not a time budget, so a slow machine gets the same model later, not a worse one.
#: ``finetune``: the backbone fine-tuned with discriminative LRs, training loop capped at 7 min wall by
#: ``time_budget_s``; ``tiny``: seconds, for tests; ``full``: 224 px, longer fine-tuning (GPU).
PRESETS: dict[str, dict[str, Any]] = {
    'tiny': {**_COMMON, 'image_size': 48, 'max_side_px': 64, 'epochs': 4, 'batch_size': 8, 'lr': 2e-3,
             'warmup_epochs': 0, 'latency_runs': 3, 'video_stride': 10, 'erase_p': 0.0},
    'demo': {**_COMMON, 'image_size': 160, 'max_side_px': 192, 'epochs': 60, 'batch_size': 64, 'lr': 3e-3,
             'warmup_epochs': 0, 'freeze_backbone': True, 'feature_views': 6},
    'finetune': {**_COMMON, 'image_size': 160, 'max_side_px': 192, 'epochs': 40, 'batch_size': 32, 'lr': 2e-3,
                 'tta_flip': True, 'time_budget_s': 420.0},
    'full': {**_COMMON, 'image_size': 224, 'max_side_px': 256, 'epochs': 60, 'batch_size': 64, 'lr': 1e-3,
             'warmup_epochs': 2, 'video_stride': 2, 'latency_runs': 50, 'num_threads': 0, 'tta_flip': True},
}


def _ema_with_warmup(decay: float):
    """Weight EMA for :class:`torch.optim.swa_utils.AveragedModel` with the decay ramped up as
    ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates: a from-scratch network's random
    initial weights must not linger in the average."""
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        for a, c in zip(averaged, current):
            if a.is_floating_point():
                a.lerp_(c, 1.0 - d)
            else:
                a.copy_(c)  # counters such as BatchNorm's num_batches_tracked
    return update


def train(args: TrainArgs) -> Path:
    """Train, export and bundle a room classifier; returns the bundle directory ``args.out``."""
    cfg = resolve_preset(PRESETS, args)
    if cfg['num_threads']:
        torch.set_num_threads(int(cfg['num_threads']))
    set_seed(args.seed)
    device = select_device(args.device)
    dist = ddp_setup(device)
    try:
        return _train(args, cfg, device, dist)
    finally:
        ddp_cleanup()


def _train(args: TrainArgs, cfg: dict[str, Any], device: torch.device, dist) -> Path:
    size = int(cfg['image_size'])
    classes = list_classes(args.data)
    load_kw = {'max_side_px': int(cfg['max_side_px']), 'video_stride': int(cfg['video_stride']),
               'limit_per_class': int(cfg['limit_per_class'])}
    train_split = load_split(args.data, 'train', classes, **load_kw)
    val_split = load_split(args.data, 'val', classes, **load_kw)
    test_split = load_split(args.data, 'test', classes, **load_kw)
    if not len(train_split):
        raise ValueError(f'{args.data}/train has no frames')
    if cfg['train_on_val'] and len(val_split):
        # More viewpoints for the final model; the test split stays held out. No model selection then.
        train_split = RoomSplit(images=train_split.images + val_split.images,
                                labels=train_split.labels + val_split.labels,
                                sources=train_split.sources + val_split.sources)
        val_split = RoomSplit()
    train_counts = train_split.class_counts(len(classes))
    logger.info('rooms %s; frames train/val/test = %d/%d/%d', classes, len(train_split), len(val_split),
                len(test_split))

    model = build_model(cfg['backbone'], len(classes), dropout=float(cfg['dropout']),
                        init_weights=args.init_weights, pretrained=bool(cfg['pretrained'])).to(device)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = float(cfg['bn_momentum'])
    augment = train_transform(size, scale_min=float(cfg['scale_min']), jitter=float(cfg['jitter']),
                              blur_p=float(cfg['blur_p']), hflip=bool(cfg['hflip']), erase_p=float(cfg['erase_p']))
    train_ds = AugmentedRooms(train_split, augment)
    sampler = None
    if dist.enabled:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_ds, seed=args.seed, drop_last=True)
    generator = torch.Generator().manual_seed(args.seed)
    batch_size = int(cfg['batch_size'])
    loader = DataLoader(train_ds, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                        drop_last=len(train_ds) > batch_size, generator=generator, num_workers=0)
    epochs = int(cfg['epochs'])
    steps_per_epoch = max(1, len(loader))
    base_lr = float(cfg['lr'])
    optimizer = torch.optim.AdamW(discriminative_param_groups(model, model.backbone, base_lr,
                                                              float(cfg['backbone_lr_factor'])),
                                  lr=base_lr, weight_decay=float(cfg['weight_decay']))
    budget_s = float(cfg['time_budget_s'])
    if budget_s > 0 and dist.enabled:
        logger.warning('time_budget_s is ignored under DDP (ranks must run the same number of steps)')
        budget_s = 0.0
    schedule = {'warmup_steps': int(cfg['warmup_epochs']) * steps_per_epoch, 'total_steps': epochs * steps_per_epoch,
                'budget_s': budget_s}
    criterion = nn.CrossEntropyLoss(label_smoothing=float(cfg['label_smoothing']))

    checkpoints = CheckpointManager(work_dir(args.out) / 'checkpoints', describe={
        'type': LOCALIZER_TYPE, 'preset': args.preset, 'args': args.to_dict(), 'config': cfg, 'classes': classes})
    start_epoch, best_val, best_state, history, global_step = 0, -1.0, None, [], 0
    ema_decay = float(cfg['weight_ema'])
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f'weight_ema must be in [0, 1), got {ema_decay}')
    averaged = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=_ema_with_warmup(ema_decay), use_buffers=True)
                if ema_decay else None)
    train_s = train_cpu_s = 0.0
    if args.resume:
        payload = checkpoints.load_latest()
        if payload is None:
            logger.warning('--resume: no checkpoint in %s; starting from scratch', checkpoints.directory)
        else:
            if payload.get('classes') != classes or payload['config'].get('backbone') != cfg['backbone']:
                raise CheckpointError(
                    f'{payload["path"]}: checkpoint has rooms {payload.get("classes")} / backbone '
                    f'{payload["config"].get("backbone")}, this run {classes} / {cfg["backbone"]}')
            model.load_state_dict(payload['model'])
            optimizer.load_state_dict(payload['optimizer'])
            global_step = int(payload['extra'].get('global_step', int(payload['epoch']) * steps_per_epoch))
            start_epoch = int(payload['epoch'])
            best_val = float(payload['extra']['best_val'])
            best_state = payload['extra']['best_state']
            if averaged is not None and payload['extra'].get('ema_state') is not None:
                averaged.load_state_dict(payload['extra']['ema_state'])
            history = list(payload['extra']['history'])
            train_s = float(payload['extra']['train_s'])
            train_cpu_s = float(payload['extra'].get('train_cpu_s', 0.0))
            logger.info('resumed from %s at epoch %d of %d', payload['path'], start_epoch, epochs)

    if cfg['freeze_backbone']:
        if not cfg['pretrained'] and args.init_weights is None:
            raise ValueError('freeze_backbone needs pretrained weights (pretrained=true or --init-weights)')
        history, train_s, train_cpu_s = _train_head_on_cached_features(
            model, train_split, val_split, augment, cfg, device, args.seed)
        start_epoch = epochs  # the fine-tuning loop below does not run

    net: nn.Module = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)

    out_of_time = False
    first_step = global_step
    for epoch in range(start_epoch, epochs):
        if out_of_time or (budget_s > 0 and train_s >= budget_s and global_step > first_step):
            break
        started, started_cpu = time.perf_counter(), time.process_time()
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        losses, correct, seen = [], 0, 0
        for images, labels in progress(loader, desc=f'epoch {epoch + 1}/{epochs}', total=len(loader)):
            elapsed_s = train_s + time.perf_counter() - started
            if budget_s > 0 and elapsed_s >= budget_s and global_step > first_step:
                out_of_time = True
                logger.info('time budget of %.0f s used up in epoch %d of %d', budget_s, epoch + 1, epochs)
                break
            set_lr(optimizer, lr_factor(global_step, elapsed_s, **schedule))
            global_step += 1
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            logits = net(images)
            loss = criterion(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if averaged is not None:
                averaged.update_parameters(model)
            losses.append(float(loss.detach()))
            correct += int((logits.detach().argmax(1) == labels).sum())
            seen += int(labels.numel())
        record = {'epoch': epoch + 1, 'loss': float(np.mean(losses)) if losses else math.nan,
                  'train_accuracy': correct / max(1, seen), 'lr': optimizer.param_groups[0]['lr']}
        if len(val_split):
            probs = predict_split(model if averaged is None else averaged.module, val_split, size, device)
            record['val_accuracy'] = float(np.mean(probs.argmax(1) == np.asarray(val_split.labels)))
        # without a val split the last epoch is kept (the cosine schedule ends at its lowest lr)
        score = record['val_accuracy'] if 'val_accuracy' in record else float(epoch)
        if score >= best_val:
            best_val, best_state = score, copy.deepcopy((model if averaged is None else averaged.module).state_dict())
        train_s += time.perf_counter() - started
        train_cpu_s += time.process_time() - started_cpu
        record['elapsed_s'] = train_s
        history.append(record)
        logger.info('epoch %d/%d: %s', epoch + 1, epochs,
                    ', '.join(f'{k}={v:.4g}' for k, v in record.items() if k != 'epoch'))
        checkpoints.save(epoch + 1, model, optimizer, extra={
            'global_step': global_step, 'best_val': best_val, 'best_state': best_state,
            'ema_state': None if averaged is None else averaged.state_dict(),
            'history': history, 'train_s': train_s, 'train_cpu_s': train_cpu_s})

    if not is_main_process():
        return args.out
    if best_state is not None:
        model.load_state_dict(best_state)
    if int(cfg['bn_recalibrate']) and not cfg['freeze_backbone']:  # a frozen backbone keeps its statistics
        recalibrate_batchnorm(model, train_split, size, device, int(cfg['bn_recalibrate']))
    model.eval()
    export = RoomClassifierExport(model.cpu(), tta_flip=bool(cfg['tta_flip']))
    smoothing = (calibrate_smoothing(export, train_split, val_split, len(classes), size)
                 if cfg['calibrate_smoothing'] else None)
    metrics: dict[str, Any] = {
        'train_s': train_s, 'train_cpu_s': train_cpu_s, 'torch_threads': torch.get_num_threads(),
        'epochs_run': len(history),
        'best_val_accuracy': max((r['val_accuracy'] for r in history if 'val_accuracy' in r), default=float('nan')),
        'train_frames': len(train_split), 'val_frames': len(val_split), 'test_frames': len(test_split),
        'params': count_params(model),
        # FLOPs of the deployed graph per frame (CAM head and tta_flip's mirror pass included)
        'flops': count_flops(export, (1, 3, size, size)),
        'flops_224': count_flops(export, (1, 3, 224, 224)),
    }
    if len(test_split):
        probs = predict_split(model, test_split, size, torch.device('cpu'))
        metrics['test'] = classification_report(probs, test_split.labels, classes, k=3)
    rooms_yaml = Path(args.data) / 'rooms.yaml'
    contract = RoomClassifierContract(
        classes=tuple(classes), resize='stretch', tta_flip=bool(cfg['tta_flip']), backbone=cfg['backbone'],
        backbone_weights=model.backbone.weights_source, room_map='rooms.yaml' if rooms_yaml.is_file() else '',
        smoothing=smoothing)
    metadata = contract.to_metadata(
        image_size=size,
        outputs={OUTPUT_PROBS: 'N x C softmax over classes',
                 **({OUTPUT_CAM: 'N x C x h x w class-activation maps'} if export.with_cam else {})},
        class_prior=(train_counts / train_counts.sum()).tolist(), train_counts=train_counts.tolist(),
        preset=args.preset, config=cfg, args=args.to_dict(), history=history)
    check_split = test_split if len(test_split) else train_split
    parity_input = np.stack([cv2.resize(check_split.images[i], (size, size), interpolation=cv2.INTER_AREA)
                             for i in range(min(8, len(check_split)))])
    bundle_dir = export_and_bundle(
        export, args.out, localizer_type=LOCALIZER_TYPE, input_spec=InputSpec(height=size, width=size),
        output_names=export.output_names, metadata=metadata, metrics=metrics, parity_input=parity_input,
        extra_files={contract.room_map: rooms_yaml} if contract.room_map else None,
        latency_runs=int(cfg['latency_runs']))
    if cfg['eval_trajectory']:
        try:
            trajectory = evaluate_trajectory(bundle_dir, args.data, p_stay=float(cfg['p_stay']),
                                             ema_alpha=float(cfg['ema_alpha']))
        except FileNotFoundError as exc:
            logger.warning('no test trajectory to evaluate smoothing on: %s', exc)
        else:
            write_evaluation(bundle_dir, 'trajectory', trajectory)  # OUT.eval/trajectory.yaml; the bundle stays as written
    logger.info('room classifier bundle written to %s', bundle_dir)
    return bundle_dir


@torch.no_grad()
def _cached_features(backbone: nn.Module, datasets: list[AugmentedRooms], device: torch.device,
                     batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled backbone features (N x C) and labels of every item of every dataset, backbone in eval mode."""
    backbone.eval()
    feats, labels = [], []
    for v, dataset in enumerate(datasets):
        for start in progress(range(0, len(dataset), batch_size), desc=f'features {v + 1}/{len(datasets)}',
                              total=math.ceil(len(dataset) / batch_size)):
            items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            feats.append(backbone(torch.stack([x for x, _ in items]).to(device)).cpu())
            labels.append(torch.tensor([int(y) for _, y in items]))
    return torch.cat(feats), torch.cat(labels)


def _train_head_on_cached_features(model: nn.Module, train_split: RoomSplit, val_split: RoomSplit, augment,
                                   cfg: dict[str, Any], device: torch.device, seed: int
                                   ) -> tuple[list[dict[str, Any]], float, float]:
    """Frozen-feature mode: the backbone's pooled features of ``feature_views`` views of every training
    frame (the first with the evaluation transform, the others augmented) and of the val frames are
    computed once; the linear head (with its dropout) trains on them for ``epochs`` (cosine LR), the
    epoch with the best val accuracy is kept (loaded into ``model.head``). Returns (history, wall s, CPU s)."""
    started, started_cpu = time.perf_counter(), time.process_time()
    size = int(cfg['image_size'])
    views = max(1, int(cfg['feature_views']))
    torch.manual_seed(seed)  # the augmentations draw from torch's global generator
    model.backbone.requires_grad_(False)
    train_x, train_y = _cached_features(model.backbone, [AugmentedRooms(train_split, eval_transform(size))]
                                        + [AugmentedRooms(train_split, augment)] * (views - 1), device)
    val_x, val_y = (_cached_features(model.backbone, [AugmentedRooms(val_split, eval_transform(size))], device)
                    if len(val_split) else (None, None))
    features_s = time.perf_counter() - started
    logger.info('frozen backbone: %d cached training features (%d views), %.1f s', len(train_x), views, features_s)
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=float(cfg['lr']), weight_decay=float(cfg['weight_decay']))
    criterion = nn.CrossEntropyLoss(label_smoothing=float(cfg['label_smoothing']))
    epochs, batch = int(cfg['epochs']), int(cfg['batch_size'])
    steps = epochs * max(1, math.ceil(len(train_x) / batch))
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    best_val, best_head, step = -1.0, None, 0
    train_x, train_y = train_x.to(device), train_y.to(device)
    for epoch in range(epochs):
        model.head.train()
        model.dropout.train()
        order = torch.randperm(len(train_x), generator=generator).to(device)
        losses = []
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            set_lr(optimizer, lr_factor(step, 0.0, warmup_steps=0, total_steps=steps, budget_s=0.0))
            loss = criterion(model.head(model.dropout(train_x[idx])), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
        record: dict[str, Any] = {'epoch': epoch + 1, 'loss': float(np.mean(losses))}
        if val_x is not None:
            with torch.no_grad():
                model.head.eval()
                record['val_accuracy'] = float((model.head(val_x.to(device)).argmax(1).cpu() == val_y).float().mean())
        score = record.get('val_accuracy', float(epoch))
        if score >= best_val:
            best_val, best_head = score, copy.deepcopy(model.head.state_dict())
        record['elapsed_s'] = time.perf_counter() - started
        history.append(record)
    model.backbone.requires_grad_(True)
    logger.info('head trained on cached features: %d epochs, best val accuracy %.4f, %.1f s in all (features %.1f s)',
                epochs, best_val, time.perf_counter() - started, features_s)
    model.head.load_state_dict(best_head)
    return history, time.perf_counter() - started, time.process_time() - started_cpu


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, split, size: int, device: torch.device, max_frames: int,
                          batch_size: int = 32) -> None:
    """Precise BatchNorm statistics: cumulative mean/var over training frames with the evaluation transform.

    Running averages from training lag the final weights (and see augmented images); recomputing
    them on un-augmented training frames makes evaluation match what the weights learned.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    dataset = AugmentedRooms(split, eval_transform(size))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:max_frames].tolist()
    was_training = model.training
    model.train()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            if len(chunk) < 2:
                break
            model(torch.stack([dataset[i][0] for i in chunk]).to(device))
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.train(was_training)
    logger.info('recalibrated %d BatchNorm layers on %d training frames', len(norms), len(order))
