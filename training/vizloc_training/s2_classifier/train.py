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
   (:func:`vizloc_training.train.loop.lr_factor`), :func:`vizloc_training.train.images.augment_batch` plus horizontal
   flips (``hflip``: a mirrored street is still in the same city).
   Every epoch: validation km table; the best epoch (within 25 km, then cell accuracy) is kept.
   The epochs run in the training skeleton (:func:`vizloc_training.train.skeleton.fit`); this module
   supplies the steps and validation (:class:`_S2Task`) and the typed configuration :class:`S2Config`.
4. Evaluate on the test split: % within 1/25/200/750/2500 km of the plugin's fix
   (:func:`vizloc_plugins.s2_classifier.estimate_fix`, with the bundle's defaults: the region rule of
   ``region_km``), of the top-1 cell, and the "best cell" oracle.
5. Export ONNX (``probs`` [+ ``parent_probs``], preprocessing baked in; with ``tta_flip`` the mean of
   the probabilities of the image and its mirror image) and write the bundle with the
   contract (:class:`vizloc_plugins.s2_classifier_contract.S2ClassifierContract`) and ``cells.csv``.

Metrics in bundle.yaml: ``test/fix/*``, ``test/top1_cell/*``, ``test/oracle/*`` (km tables),
``test/cell_accuracy``, ``val/*``, ``cells``, ``train_images_used``, ``train_s``, ``params``,
``flops``, ONNX latency.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from vizloc_plugins.s2_cells import CELL_POSITIONS, adaptive_partition
from vizloc_plugins.s2_classifier_contract import (LOCALIZER_TYPE, OUTPUT_PARENT_PROBS, OUTPUT_PROBS,
                                                  S2ClassifierContract)
from vizloc_ros.bundle import InputSpec

from ..gps_regressor.data import GPSData, load_gps_data
from ..train.images import AUGMENT_LEVELS, augment_batch, to_unit
from ..models.backbones import count_flops, count_params
from ..train.config import TrainArgs, TrainConfig, TrainConfigError, resolve_preset
from ..train.export import PreprocessWrapper, export_and_bundle
from ..train.loop import (CheckpointManager, discriminative_param_groups, distributed, is_main_process, select_device,
                          set_seed, set_threads, work_dir)
from ..train.skeleton import Schedule, StepInfo, TrainingTask, Validation, ddp_wrap, fit, shard, sharded_steps
from .evaluate import fix_errors_m, km_table, oracle_errors_m, top1_errors_m
from .model import S2ClassifierExport, S2ClassifierNet

__all__ = ['PRESETS', 'BASE', 'S2Config', 'LOCALIZER_TYPE', 'train', 'predict_probs']

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class S2Config(TrainConfig):
    """S2 classifier settings (a :class:`TrainConfig`)."""

    TYPE: ClassVar[str] = LOCALIZER_TYPE
    POSITIVE: ClassVar[tuple[str, ...]] = ('image_height', 'image_width', 'epochs', 'batch_size', 't_max', 't_min',
                                           'top_k')
    CHOICES: ClassVar[Mapping[str, tuple[str, ...]]] = {'augment': AUGMENT_LEVELS, 'cell_position': CELL_POSITIONS}

    backbone: str = 'efficientnet_lite0'
    pretrained: bool = True          # start from the packaged ImageNet weights (seed 002 starts from ImageNet)
    backbone_lr_factor: float = 0.3  # fine-tuning: the backbone learns at lr x this, the heads at lr
    image_height: int = 96
    image_width: int = 128
    epochs: int = 60
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    dropout: float = 0.2
    bn_momentum: float = 0.1         # BatchNorm running-stat momentum (torchvision's MobileNets use 0.01: too slow
                                     # for short runs, the evaluation statistics would lag the weights)
    augment: str = 'light'
    hflip: bool = True               # mirror half the training images: a mirrored street is still in the same city
    t_max: int = 60                  # PlaNet: split cells holding more training images than this
    t_min: int = 8                   # PlaNet: drop cells holding fewer
    max_level: int = 20
    parent_levels_up: int = 0        # > 0: also classify the ancestors this many levels up (hierarchical output)
    parent_weight: float = 0.5
    cell_position: str = 'train_mean'
    top_k: int = 3
    neighbourhood_km: float = 2.5    # average only over cells of the best cell's district (finer than the 25 km scale)
    region_km: float = 25.0          # the fix first picks the 25 km circle holding the most probability (0: best cell)
    tta_flip: bool = True            # the exported graph averages the probabilities of the image and its mirror image
    time_budget_s: float = 0.0       # > 0: the cosine schedule ends at whichever comes first, epochs or this wall time
                                     # (the clock counts the training steps, not the validation)
    threads: int = 0                 # torch intra-op threads (0 = auto: torch's default, 1 on an oversubscribed machine)
    max_per_split: int = 0
    latency_runs: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.t_min > self.t_max:
            raise TrainConfigError(f'{self.TYPE}: t_min ({self.t_min}) must not exceed t_max ({self.t_max})')
        if self.parent_levels_up < 0 or self.parent_weight < 0:
            raise TrainConfigError(f'{self.TYPE}: parent_levels_up and parent_weight must be >= 0')


BASE = S2Config()

#: ``demo``: CPU default, a 900 s training budget (17-18 epochs on 2 idle cores: 99.7-99.8 % within
#: 200 km on two seeds, against 98.6-99.1 % with 540 s; the ``strong`` augmentation, see
#: docs/localizers/s2_classifier.md); ``tiny``: seconds, for tests; ``full``: 224 px, longer, GPU.
PRESETS: dict[str, S2Config] = {
    'demo': replace(BASE, time_budget_s=900.0, augment='strong'),
    'tiny': replace(BASE, backbone='resnet18', pretrained=False, image_height=32, image_width=40, epochs=2, batch_size=8,
                    warmup_epochs=0, t_max=12, t_min=2, parent_levels_up=2, latency_runs=2),
    'full': replace(BASE, image_height=224, image_width=224, epochs=40, batch_size=64, lr=1e-3, augment='strong',
                    threads=0, latency_runs=50),
}


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
    set_seed(args.seed)
    set_threads(cfg.threads)
    device = select_device(args.device)
    with distributed(device) as dist:
        return _train(args, cfg, device, dist)


class _S2Task(TrainingTask):
    """Steps of backbone + cell head(s) (cross-entropy with label smoothing, the shared augmentation
    plus mirroring) on this rank's shard of the kept training images; validation km table of the plugin's fix."""

    def __init__(self, net: S2ClassifierNet, cfg: S2Config, images_NHW3: np.ndarray, used: np.ndarray,
                 labels: np.ndarray, parent_of_cell: np.ndarray | None, cells: list[str], val_record,
                 device: torch.device, dist, seed: int) -> None:
        self.model, self.cfg, self.images_NHW3, self.used, self.device, self.dist = net, cfg, images_NHW3, used, device, dist
        self.cells = cells
        self.labels_t = torch.from_numpy(labels)
        self.parent_labels_t = (torch.from_numpy(parent_of_cell[np.clip(labels, 0, None)])
                                if parent_of_cell is not None else None)
        input_spec = InputSpec(height=cfg.image_height, width=cfg.image_width)
        # float 0..255 NCHW in
        self.forward = ddp_wrap(PreprocessWrapper(net, replace(input_spec, layout='NCHW')).to(device), device, dist)
        self.optimizer = torch.optim.AdamW(discriminative_param_groups(net, net.backbone, cfg.lr, cfg.backbone_lr_factor),
                                           lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = sharded_steps(used.size, cfg.batch_size, dist)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.val_record = val_record

    def begin_epoch(self, epoch: int) -> None:
        self.forward.train()

    def batches(self, epoch: int):
        order = shard(self.used[torch.randperm(self.used.size, generator=self.generator).numpy()], self.dist)
        batch = self.cfg.batch_size
        for step in range(self.steps_per_epoch):
            idx = np.sort(order[step * batch:(step + 1) * batch])
            if idx.size:
                yield idx

    def step(self, idx: np.ndarray, at: StepInfo) -> float:
        cfg, device = self.cfg, self.device
        x = augment_batch(to_unit(self.images_NHW3[idx], device), cfg.augment, self.generator) * 255.0
        if cfg.hflip:
            mirror = (torch.rand(len(idx), generator=self.generator) < 0.5).to(device)
            x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(3), x)
        logits, parent_logits = self.forward(x)
        loss = F.cross_entropy(logits, self.labels_t[idx].to(device), label_smoothing=cfg.label_smoothing)
        if parent_logits is not None and self.parent_labels_t is not None:
            loss = loss + cfg.parent_weight * F.cross_entropy(
                parent_logits, self.parent_labels_t[idx].to(device), label_smoothing=cfg.label_smoothing)
        return self.update(loss)

    def validate(self) -> Validation | None:
        record = self.val_record()
        if not record:
            return None  # the last epoch is kept
        return Validation(record, (record['val_within_25km_pct'], record['val_cell_accuracy']))

    def resume(self, payload: Mapping[str, Any]) -> None:
        if payload.get('cells') != self.cells:
            raise TrainConfigError(f'{payload["path"]}: checkpoint was trained on another cell partition')


def _train(args: TrainArgs, cfg: S2Config, device: torch.device, dist) -> Path:
    height, width = cfg.image_height, cfg.image_width
    data: GPSData = load_gps_data(args.data, width=width, height=height, max_per_split=cfg.max_per_split or None)
    train_split = data.splits['train']
    partition = adaptive_partition(train_split.lla_N3[:, 0], train_split.lla_N3[:, 1], t_max=cfg.t_max,
                                   t_min=cfg.t_min, max_level=cfg.max_level)
    contract = S2ClassifierContract(
        cell_position=cfg.cell_position, parent_levels_up=cfg.parent_levels_up, t_max=cfg.t_max, t_min=cfg.t_min,
        max_level=cfg.max_level, top_k=cfg.top_k, neighbourhood_km=cfg.neighbourhood_km, region_km=cfg.region_km,
        tta_flip=cfg.tta_flip, backbone=cfg.backbone,
        partition=partition)
    parent_tokens, parent_of_cell = contract.parents()
    labels = partition.assign(train_split.lla_N3[:, 0], train_split.lla_N3[:, 1])
    used = np.flatnonzero(labels >= 0)
    if used.size == 0:
        raise ValueError(f'{args.data}: no training image lies in a kept cell (t_min={cfg.t_min})')
    positions = partition.positions_N3(contract.cell_position)
    extent_var = partition.extent_var_m2()
    logger.info('s2_classifier: %d cells%s, %d of %d training images in kept cells', len(partition),
                f' ({len(parent_tokens)} parents)' if parent_tokens else '', used.size, len(train_split))

    net = S2ClassifierNet(cfg.backbone, len(partition), len(parent_tokens), dropout=cfg.dropout,
                          init_weights=args.init_weights, pretrained=cfg.pretrained).to(device)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = cfg.bn_momentum
    input_spec = InputSpec(height=height, width=width)
    export_graph = S2ClassifierExport(net, tta_flip=cfg.tta_flip)
    graph = PreprocessWrapper(export_graph, input_spec).to(device)
    val = data.splits['val']

    def val_record() -> dict[str, float]:
        if not len(val):
            return {}
        probs = predict_probs(graph, val.images_NHW3)
        errors = fix_errors_m(probs, positions, extent_var, val.lla_N3[:, 0], val.lla_N3[:, 1],
                              top_k=contract.top_k, neighbourhood_km=contract.neighbourhood_km,
                              region_km=contract.region_km)
        truth = partition.assign(val.lla_N3[:, 0], val.lla_N3[:, 1])
        table = km_table(errors)
        return {'val_within_25km_pct': table['within_25km_pct'], 'val_median_km': table['median_km'],
                'val_cell_accuracy': float(np.mean(np.argmax(probs, axis=1) == truth))}

    task = _S2Task(net, cfg, train_split.images_NHW3, used, labels, parent_of_cell if parent_tokens else None,
                   list(partition.tokens), val_record, device, dist, args.seed)
    checkpoints = CheckpointManager(work_dir(args.out) / 'checkpoints', describe={
        'type': LOCALIZER_TYPE, 'preset': args.preset, 'args': args.to_dict(), 'config': cfg.to_dict(),
        'cells': task.cells})
    logger.info('s2_classifier: %s at %dx%d, %d epochs x %d steps, batch %d, time budget %s, device %s',
                cfg.backbone, width, height, cfg.epochs, task.steps_per_epoch, cfg.batch_size,
                f'{cfg.time_budget_s:.0f} s' if cfg.time_budget_s > 0 and not dist.enabled else 'none', device)
    result = fit(task, epochs=cfg.epochs, schedule=Schedule.over_epochs(
        cfg.epochs, task.steps_per_epoch, warmup_epochs=cfg.warmup_epochs, budget_s=cfg.time_budget_s),
        checkpoints=checkpoints, resume=args.resume, dist=dist, count_validation=False, map_location=device)
    history, train_s = result.history, result.train_s

    if not is_main_process():
        return args.out
    net.cpu().eval()  # the best epoch's weights (fit loaded them)
    graph.cpu().eval()
    metrics: dict[str, Any] = {
        'cells': len(partition), 'parent_cells': len(parent_tokens),
        'cell_levels': {'min': min(partition.levels), 'max': max(partition.levels)},
        'train_images_used': int(used.size), 'train_images': len(train_split),
        'train_s': train_s, 'epochs_run': len(history), 'torch_threads': torch.get_num_threads(),
        'params': count_params(net),
        'flops': count_flops(export_graph, (1, 3, height, width)),
        'val': {k.removeprefix('val_'): v for k, v in val_record().items()},
    }
    test = data.splits['test']
    if len(test):
        probs = predict_probs(graph, test.images_NHW3)
        lat, lon = test.lla_N3[:, 0], test.lla_N3[:, 1]
        metrics['test'] = {
            'fix': km_table(fix_errors_m(probs, positions, extent_var, lat, lon, top_k=contract.top_k,
                                         neighbourhood_km=contract.neighbourhood_km, region_km=contract.region_km)),
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
        preset=args.preset, config=cfg.to_dict(), args=args.to_dict(), history=history,
        outputs={OUTPUT_PROBS: 'N x C softmax over the cells of cells.csv (file order)',
                 **({OUTPUT_PARENT_PROBS: f'N x P softmax over the ancestors {contract.parent_levels_up} levels up '
                     '(S2 id order)'} if parent_tokens else {})})
    check = test if len(test) else train_split
    with tempfile.TemporaryDirectory(prefix='vizloc-s2-') as tmp:
        extra_files = contract.write_files(Path(tmp))
        bundle_dir = export_and_bundle(
            export_graph, args.out, localizer_type=LOCALIZER_TYPE, input_spec=input_spec,
            output_names=contract.output_names, metadata=metadata, metrics=metrics,
            parity_input=check.images_NHW3[:8], extra_files=extra_files, latency_runs=cfg.latency_runs)
    logger.info('s2_classifier bundle written to %s', bundle_dir)
    return bundle_dir
