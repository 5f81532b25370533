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

The epochs run in the training skeleton (:func:`vizloc_training.train.skeleton.fit`: schedule, time budget,
best state, checkpoints, resume, DDP); this module supplies the steps and validation (:class:`_FineTuneTask`, and
:class:`_CachedHeadTask` for the frozen-feature mode) and the typed configuration :class:`RoomConfig`.
Checkpoints (every epoch) go to ``OUT.work/checkpoints``; ``--resume`` continues from the latest.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from vizloc_plugins.room_classifier_contract import LOCALIZER_TYPE, OUTPUT_CAM, OUTPUT_PROBS, RoomClassifierContract
from vizloc_ros.bundle import InputSpec

from ..metrics.classification import classification_report
from ..models.backbones import count_flops, count_params
from ..models.frozen import FrozenFeatures
from ..train.config import TrainArgs, TrainConfig, TrainConfigError, resolve_preset
from ..train.evaluation_file import write_evaluation
from ..train.export import export_and_bundle
from ..train.loop import (CheckpointError, CheckpointManager, discriminative_param_groups, distributed, is_main_process,
                          progress, select_device, set_seed, set_threads, work_dir)
from ..train.skeleton import FitResult, Schedule, StepInfo, TrainingTask, Validation, ddp_wrap, fit
from .data import AugmentedRooms, RoomSplit, eval_transform, list_classes, load_split, train_transform
from .evaluate import calibrate_smoothing, evaluate_trajectory, predict_split
from .model import RoomClassifierExport, build_model

__all__ = ['PRESETS', 'BASE', 'RoomConfig', 'LOCALIZER_TYPE', 'train']

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class RoomConfig(TrainConfig):
    """Room classifier settings (a :class:`TrainConfig`)."""

    TYPE: ClassVar[str] = LOCALIZER_TYPE
    POSITIVE: ClassVar[tuple[str, ...]] = ('image_size', 'max_side_px', 'epochs', 'batch_size', 'lr', 'video_stride',
                                           'feature_views')

    backbone: str = 'efficientnet_lite0'
    pretrained: bool = True         # start from the packaged ImageNet weights (backbones with them; see docs/training.md)
    backbone_lr_factor: float = 0.2  # fine-tuning: the backbone learns at lr x this, the new head at lr
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    dropout: float = 0.2
    warmup_epochs: int = 1
    scale_min: float = 0.5          # RandomResizedCrop area range [scale_min, 1]
    jitter: float = 0.2             # ColorJitter brightness/contrast/saturation (hue jitter/8)
    blur_p: float = 0.3             # probability of a Gaussian blur
    hflip: bool = True
    erase_p: float = 0.25           # probability of random erasing (2-25 % of the crop)
    time_budget_s: float = 0.0      # > 0: the cosine schedule ends at whichever comes first, epochs or this wall time
    weight_ema: float = 0.0         # > 0: keep an exponential moving average of the weights (decay per step); it is
                                    # what gets validated, selected and exported
    bn_momentum: float = 0.1        # BatchNorm running-stat momentum (torchvision mobilenets use 0.01)
    bn_recalibrate: int = 200       # after training: recompute BN statistics on up to this many train frames
    video_stride: int = 5           # every n-th frame of training/val/test video clips
    limit_per_class: int = 0        # 0 = all frames
    num_threads: int = 1            # torch intra-op threads (0 = auto: torch's default, 1 on an oversubscribed machine)
    tta_flip: bool = False          # bake mirror test-time augmentation into the exported graph (2x compute)
    train_on_val: bool = False      # also train on the val split (then the last epoch is exported, no selection)
    latency_runs: int = 20          # ONNX Runtime latency measurement (1 thread)
    eval_trajectory: bool = True    # replay the test trajectory through the bundle with/without smoothing
    p_stay: float = 0.95            # HMM stay probability of the uncalibrated 'hmm' trajectory evaluation
    calibrate_smoothing: bool = True  # choose HMM p_stay/temperature/switch prior on the val trajectory (bundle metadata)
    ema_alpha: float = 0.3
    freeze_backbone: bool = False   # True: frozen-feature mode: backbone features computed once (feature_views
                                    # augmented copies of every training frame, the first un-augmented), then
                                    # only the linear head trains on the cache (seconds); no BN recalibration
    feature_views: int = 8
    image_size: int = 160           # network input (px, square)
    max_side_px: int = 192          # frames are decoded with their longer side at most this
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3                # AdamW, warm-up + cosine

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.weight_ema < 1.0:
            raise TrainConfigError(f'{self.TYPE}: weight_ema must be in [0, 1), got {self.weight_ema}')


BASE = RoomConfig()

#: Named presets. ``demo`` (the default): frozen-feature mode: the pretrained backbone's features of
#: 6 views of every training frame cached once, the linear head trained on them (measured on the
#: synthetic indoor world: 91.8 % single frame / 94.6 % calibrated HMM, against 90.3 % / 91.8 % for
#: fine-tuning in 420 s; docs/localizers/room_classifier.md); its cost is the features (~7200 forward
#: passes at 160 px), not a time budget, so a slow machine gets the same model later, not a worse one;
#: it runs on every idle core (``num_threads=0``: one thread when other jobs fill the CPUs).
#: ``finetune``: the backbone fine-tuned with discriminative LRs, training loop capped at 7 min wall by
#: ``time_budget_s``; ``tiny``: seconds, for tests; ``full``: 224 px, longer fine-tuning (GPU).
PRESETS: dict[str, RoomConfig] = {
    'tiny': replace(BASE, image_size=48, max_side_px=64, epochs=4, batch_size=8, lr=2e-3, warmup_epochs=0,
                    latency_runs=3, video_stride=10, erase_p=0.0),
    'demo': replace(BASE, image_size=160, max_side_px=192, epochs=60, batch_size=64, lr=3e-3, warmup_epochs=0,
                    freeze_backbone=True, feature_views=6, num_threads=0),
    'finetune': replace(BASE, image_size=160, max_side_px=192, epochs=40, batch_size=32, lr=2e-3, tta_flip=True,
                        time_budget_s=420.0),
    'full': replace(BASE, image_size=224, max_side_px=256, epochs=60, batch_size=64, lr=1e-3, warmup_epochs=2,
                    video_stride=2, latency_runs=50, num_threads=0, tta_flip=True),
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
    set_threads(cfg.num_threads)
    set_seed(args.seed)
    device = select_device(args.device)
    with distributed(device) as dist:
        return _train(args, cfg, device, dist)


class _FineTuneTask(TrainingTask):
    """Fine-tuning steps (backbone + head, optionally a weight EMA) and validation accuracy on the val split."""

    def __init__(self, model: nn.Module, cfg: RoomConfig, classes: list[str], train_split: RoomSplit,
                 val_split: RoomSplit, augment, device: torch.device, dist, seed: int) -> None:
        self.model, self.classes, self.val_split, self.device = model, classes, val_split, device
        self.backbone_name, self.size = cfg.backbone, cfg.image_size
        self.net = ddp_wrap(model, device, dist)
        train_ds = AugmentedRooms(train_split, augment)
        self.sampler = None
        if dist.enabled:
            from torch.utils.data.distributed import DistributedSampler

            self.sampler = DistributedSampler(train_ds, seed=seed, drop_last=True)
        self.loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=self.sampler is None, sampler=self.sampler,
                                 drop_last=len(train_ds) > cfg.batch_size, generator=torch.Generator().manual_seed(seed),
                                 num_workers=0)
        self.steps_per_epoch = max(1, len(self.loader))
        self.optimizer = torch.optim.AdamW(discriminative_param_groups(model, model.backbone, cfg.lr,
                                                                       cfg.backbone_lr_factor),
                                           lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.averaged = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=_ema_with_warmup(cfg.weight_ema),
                                                             use_buffers=True) if cfg.weight_ema else None)
        self.correct = self.seen = 0

    @property
    def evaluated(self) -> nn.Module:
        """What is validated, selected and exported: the weight EMA when there is one."""
        return self.model if self.averaged is None else self.averaged.module

    def begin_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.net.train()
        self.correct = self.seen = 0

    def batches(self, epoch: int) -> DataLoader:
        return self.loader

    def step(self, batch: tuple[torch.Tensor, torch.Tensor], at: StepInfo) -> float:
        images, labels = (t.to(self.device, non_blocking=True) for t in batch)
        logits = self.net(images)
        loss = self.update(self.criterion(logits, labels))
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        self.correct += int((logits.detach().argmax(1) == labels).sum())
        self.seen += int(labels.numel())
        return loss

    def train_record(self) -> dict[str, float]:
        return {'train_accuracy': self.correct / max(1, self.seen)}

    def validate(self) -> Validation | None:
        if not len(self.val_split):
            return None  # the last epoch is kept (the cosine schedule ends at its lowest lr)
        probs = predict_split(self.evaluated, self.val_split, self.size, self.device)
        accuracy = float(np.mean(probs.argmax(1) == np.asarray(self.val_split.labels)))
        return Validation({'val_accuracy': accuracy}, accuracy)

    def snapshot(self) -> dict[str, torch.Tensor]:
        return copy.deepcopy(self.evaluated.state_dict())

    def checkpoint_extra(self) -> dict[str, Any]:
        return {'ema_state': None if self.averaged is None else self.averaged.state_dict()}

    def resume(self, payload: Mapping[str, Any]) -> None:
        if payload.get('classes') != self.classes or payload['config'].get('backbone') != self.backbone_name:
            raise CheckpointError(
                f'{payload["path"]}: checkpoint has rooms {payload.get("classes")} / backbone '
                f'{payload["config"].get("backbone")}, this run {self.classes} / {self.backbone_name}')
        if self.averaged is not None and payload['extra'].get('ema_state') is not None:
            self.averaged.load_state_dict(payload['extra']['ema_state'])


def _train(args: TrainArgs, cfg: RoomConfig, device: torch.device, dist) -> Path:
    size = cfg.image_size
    classes = list_classes(args.data)
    load_kw = {'max_side_px': cfg.max_side_px, 'video_stride': cfg.video_stride, 'limit_per_class': cfg.limit_per_class}
    train_split = load_split(args.data, 'train', classes, **load_kw)
    val_split = load_split(args.data, 'val', classes, **load_kw)
    test_split = load_split(args.data, 'test', classes, **load_kw)
    if not len(train_split):
        raise ValueError(f'{args.data}/train has no frames')
    if cfg.train_on_val and len(val_split):
        # More viewpoints for the final model; the test split stays held out. No model selection then.
        train_split = RoomSplit(images=train_split.images + val_split.images,
                                labels=train_split.labels + val_split.labels,
                                sources=train_split.sources + val_split.sources)
        val_split = RoomSplit()
    train_counts = train_split.class_counts(len(classes))
    logger.info('rooms %s; frames train/val/test = %d/%d/%d', classes, len(train_split), len(val_split),
                len(test_split))

    model = build_model(cfg.backbone, len(classes), dropout=cfg.dropout, init_weights=args.init_weights,
                        pretrained=cfg.pretrained).to(device)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = cfg.bn_momentum
    augment = train_transform(size, scale_min=cfg.scale_min, jitter=cfg.jitter, blur_p=cfg.blur_p, hflip=cfg.hflip,
                              erase_p=cfg.erase_p)
    if cfg.freeze_backbone:
        if not cfg.pretrained and args.init_weights is None:
            raise ValueError('freeze_backbone needs pretrained weights (pretrained=true or --init-weights)')
        history, train_s, train_cpu_s = _train_head_on_cached_features(
            model, train_split, val_split, augment, cfg, device, args.seed)
    else:
        task = _FineTuneTask(model, cfg, classes, train_split, val_split, augment, device, dist, args.seed)
        checkpoints = CheckpointManager(work_dir(args.out) / 'checkpoints', describe={
            'type': LOCALIZER_TYPE, 'preset': args.preset, 'args': args.to_dict(), 'config': cfg.to_dict(),
            'classes': classes})
        result = fit(task, epochs=cfg.epochs, schedule=Schedule.over_epochs(
            cfg.epochs, task.steps_per_epoch, warmup_epochs=cfg.warmup_epochs, budget_s=cfg.time_budget_s),
            checkpoints=checkpoints, resume=args.resume, dist=dist)  # the best (EMA) weights are loaded into model
        history, train_s, train_cpu_s = result.history, result.train_s, result.train_cpu_s

    if not is_main_process():
        return args.out
    if cfg.bn_recalibrate and not cfg.freeze_backbone:  # a frozen backbone keeps its statistics
        recalibrate_batchnorm(model, train_split, size, device, cfg.bn_recalibrate)
    model.eval()
    export = RoomClassifierExport(model.cpu(), tta_flip=cfg.tta_flip)
    smoothing = (calibrate_smoothing(export, train_split, val_split, len(classes), size)
                 if cfg.calibrate_smoothing else None)
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
        classes=tuple(classes), resize='stretch', tta_flip=cfg.tta_flip, backbone=cfg.backbone,
        backbone_weights=model.backbone.weights_source, room_map='rooms.yaml' if rooms_yaml.is_file() else '',
        smoothing=smoothing)
    metadata = contract.to_metadata(
        image_size=size,
        outputs={OUTPUT_PROBS: 'N x C softmax over classes',
                 **({OUTPUT_CAM: 'N x C x h x w class-activation maps'} if export.with_cam else {})},
        class_prior=(train_counts / train_counts.sum()).tolist(), train_counts=train_counts.tolist(),
        preset=args.preset, config=cfg.to_dict(), args=args.to_dict(), history=history)
    check_split = test_split if len(test_split) else train_split
    parity_input = np.stack([cv2.resize(check_split.images[i], (size, size), interpolation=cv2.INTER_AREA)
                             for i in range(min(8, len(check_split)))])
    bundle_dir = export_and_bundle(
        export, args.out, localizer_type=LOCALIZER_TYPE, input_spec=InputSpec(height=size, width=size),
        output_names=export.output_names, metadata=metadata, metrics=metrics, parity_input=parity_input,
        extra_files={contract.room_map: rooms_yaml} if contract.room_map else None,
        latency_runs=cfg.latency_runs)
    if cfg.eval_trajectory:
        try:
            trajectory = evaluate_trajectory(bundle_dir, args.data, p_stay=cfg.p_stay, ema_alpha=cfg.ema_alpha)
        except FileNotFoundError as exc:
            logger.warning('no test trajectory to evaluate smoothing on: %s', exc)
        else:
            write_evaluation(bundle_dir, 'trajectory', trajectory)  # OUT.eval/trajectory.yaml; the bundle stays as written
    logger.info('room classifier bundle written to %s', bundle_dir)
    return bundle_dir


@torch.no_grad()
def _cached_features(frozen: FrozenFeatures, datasets: list[AugmentedRooms], batch_size: int = 64
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled frozen-backbone features (N x C) and labels of every item of every dataset (``frozen``:
    :class:`vizloc_training.models.frozen.FrozenFeatures`, ONNX Runtime on CPU; pooled by the backbone)."""
    feats, labels = [], []
    for v, dataset in enumerate(datasets):
        for start in progress(range(0, len(dataset), batch_size), desc=f'features {v + 1}/{len(datasets)}',
                              total=math.ceil(len(dataset) / batch_size)):
            items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            maps = frozen(torch.stack([x for x, _ in items]))
            feats.append(frozen.backbone.pool(maps.to(frozen.device)).cpu())
            labels.append(torch.tensor([int(y) for _, y in items]))
    return torch.cat(feats), torch.cat(labels)


class _CachedHeadTask(TrainingTask):
    """Frozen-feature mode: steps of the linear head (with its dropout) on cached features; validation
    accuracy on the cached val features; the best state is the head's alone."""

    def __init__(self, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor | None,
                 val_y: torch.Tensor | None, cfg: RoomConfig, device: torch.device, seed: int) -> None:
        self.model, self.device = model, device
        self.train_x, self.train_y, self.val_x, self.val_y = train_x.to(device), train_y.to(device), val_x, val_y
        self.batch_size = cfg.batch_size
        self.steps_per_epoch = max(1, math.ceil(len(train_x) / cfg.batch_size))
        self.optimizer = torch.optim.AdamW(model.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.generator = torch.Generator().manual_seed(seed)

    def begin_epoch(self, epoch: int) -> None:
        self.model.head.train()
        self.model.dropout.train()

    def batches(self, epoch: int):
        order = torch.randperm(len(self.train_x), generator=self.generator).to(self.device)
        for start in range(0, len(order), self.batch_size):
            yield order[start:start + self.batch_size]

    def step(self, idx: torch.Tensor, at: StepInfo) -> float:
        return self.update(self.criterion(self.model.head(self.model.dropout(self.train_x[idx])), self.train_y[idx]))

    @torch.no_grad()
    def validate(self) -> Validation | None:
        if self.val_x is None:
            return None
        self.model.head.eval()
        accuracy = float((self.model.head(self.val_x.to(self.device)).argmax(1).cpu() == self.val_y).float().mean())
        return Validation({'val_accuracy': accuracy}, accuracy)

    def snapshot(self) -> dict[str, torch.Tensor]:
        return copy.deepcopy(self.model.head.state_dict())

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        self.model.head.load_state_dict(state)


def _train_head_on_cached_features(model: nn.Module, train_split: RoomSplit, val_split: RoomSplit, augment,
                                   cfg: RoomConfig, device: torch.device, seed: int
                                   ) -> tuple[list[dict[str, Any]], float, float]:
    """Frozen-feature mode: the backbone's pooled features of ``feature_views`` views of every training
    frame (the first with the evaluation transform, the others augmented) and of the val frames are
    computed once; the linear head (with its dropout) trains on them for ``epochs`` (cosine LR), the
    epoch with the best val accuracy is kept (loaded into ``model.head``). Returns (history, wall s, CPU s)
    of features and head together."""
    started, started_cpu = time.perf_counter(), time.process_time()
    size = cfg.image_size
    views = max(1, cfg.feature_views)
    torch.manual_seed(seed)  # the augmentations draw from torch's global generator
    model.backbone.requires_grad_(False)
    with FrozenFeatures(model.backbone, device) as frozen:
        train_x, train_y = _cached_features(frozen, [AugmentedRooms(train_split, eval_transform(size))]
                                            + [AugmentedRooms(train_split, augment)] * (views - 1))
        val_x, val_y = (_cached_features(frozen, [AugmentedRooms(val_split, eval_transform(size))])
                        if len(val_split) else (None, None))
    features_s = time.perf_counter() - started
    logger.info('frozen backbone: %d cached training features (%d views), %.1f s', len(train_x), views, features_s)
    task = _CachedHeadTask(model, train_x, train_y, val_x, val_y, cfg, device, seed)
    result: FitResult = fit(task, epochs=cfg.epochs, schedule=Schedule.over_epochs(cfg.epochs, task.steps_per_epoch),
                            name='head epoch')  # the best head is loaded into model.head
    model.backbone.requires_grad_(True)
    logger.info('head trained on cached features: %d epochs, best val accuracy %.4f, %.1f s in all (features %.1f s)',
                cfg.epochs, result.best_score, time.perf_counter() - started, features_s)
    return result.history, time.perf_counter() - started, time.process_time() - started_cpu


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
