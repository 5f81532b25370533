"""Trainer of the ``gps_regressor`` localizer: ``vizloc-train gps_regressor --data DIR --out BUNDLE``.

Pipeline (seed 001, adapted):

1. Read the GPS dataset, decode images at the preset's input size, fit the regression frame and
   target normalisation on the **training split only** (:mod:`.data`).
2. Train :class:`.model.GPSRegressorNet` (backbone + heteroscedastic Gaussian head) with AdamW,
   linear warm-up + cosine learning rate, gradient clipping (max norm 1) and on-the-fly
   augmentation (photometric, small affine, blur, noise, occlusion); ``loss`` is ``gaussian_nll``
   (default), ``haversine`` (the seed's) or ``mse`` (:mod:`.losses`). The best epoch on the
   validation split (mean error) is kept. A checkpoint is written after every epoch to
   ``OUT.work/checkpoints`` (``--resume`` continues from it).
3. Calibrate: coverage of the predicted 95 % ellipse on the validation split; if it is outside
   [90 %, 98 %] (``calibration: auto``) fit one variance scale there (temperature scaling) and
   store it in the bundle (``metadata.variance_scale``).
4. Keyframe map (``keyframes``, default on): the training images' SIFT keypoints with their positions
   (:func:`vizloc_plugins.keyframes.build_place_map`); its covariance factor is calibrated on the
   validation split like the network's, on the places the plugin's
   :class:`vizloc_plugins.keyframes.PlaceTracker` gives with the split replayed as runs at the camera
   rates of :data:`CALIBRATION_RUNS` (10 Hz, 1 Hz, every 5th image at 2 Hz), pooled.
5. Evaluate on the test split (seed 001's table): ``test`` is what the node publishes on the split
   replayed as a 10 Hz run (keyframe positions, else the network's), ``test_network`` the network alone;
   and the network on corrupted variants (robustness table).
6. Export ONNX (preprocessing baked in, outputs ``mean_en_m`` and ``cov_en_m2`` in metres) and write
   the bundle with the metrics.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import cv2
import numpy as np
import torch

from vizloc_plugins.gps_regressor_contract import (LOCALIZER_TYPE, OUTPUT_COV, OUTPUT_MEAN, GPSKeyframes,
                                                   GPSRegressorContract)
from vizloc_plugins.gps_regressor import GPSRegressorOptions
from vizloc_plugins.keyframes import (KEYFRAMES_INDEX, KEYFRAMES_NPZ, KeyframeError, Overlap, PlaceMap, PlaceTracker,
                                     TrackedPlace, build_place_map)
from vizloc_ros.bundle import InputSpec
from vizloc_ros.geodesy import GeoReference

from ..metrics import geo as geo_metrics
from ..models.frozen import FrozenFeatures
from ..train.config import TrainArgs, TrainConfig, TrainConfigError, resolve_preset
from ..train.export import export_and_bundle
from ..train.images import AUGMENT_LEVELS, augment_batch, imagenet_normalise, to_unit
from ..train.loop import (CheckpointManager, discriminative_param_groups, distributed, import_faiss, is_main_process,
                          progress, select_device, set_seed, set_threads)
from ..train.skeleton import Schedule, StepInfo, TrainingTask, Validation, ddp_wrap, fit, shard, sharded_steps
from .data import GPSData, load_gps_data
from .evaluate import evaluate_arrays, nearest_train_distance, robustness_table
from .losses import LOSSES, GPSLoss
from .model import BACKBONE_CHOICES, HEADS, POOLING, GPSRegressorNet, MetricHead, grid_anchors

__all__ = ['PRESETS', 'BASE', 'GPSConfig', 'LOCALIZER_TYPE', 'train', 'predict',
           'cached_feature_maps']

logger = logging.getLogger(__name__)
CALIBRATION_MODES = ('auto', 'always', 'never')
#: Target band of the validation 95 %-ellipse coverage for ``calibration: auto``.
COVERAGE_BAND_PCT = (90.0, 98.0)
_KEYFRAMES = GPSKeyframes()  # the contract owns the keyframe map's defaults
#: Fewest verified validation images to fit the keyframe map's covariance factor from (else 1.0).
_MIN_CALIBRATION_SAMPLES = 10

@dataclass(frozen=True)
class GPSConfig(TrainConfig):
    """Settings of a GPS regressor run (``--set key=value`` for any field); the presets are
    ``replace(BASE, ...)``. Bundles record them as ``metadata.config``."""

    TYPE: ClassVar[str] = LOCALIZER_TYPE
    POSITIVE: ClassVar[tuple[str, ...]] = ('image_height', 'image_width', 'epochs', 'batch_size', 'lr', 'eval_every',
                                           'bin_size_m', 'feature_views', 'spatial_channels', 'keyframe_max_points')
    CHOICES: ClassVar[Mapping[str, tuple[str, ...]]] = {
        'backbone': BACKBONE_CHOICES, 'loss': LOSSES, 'calibration': CALIBRATION_MODES, 'pool': POOLING,
        'head': HEADS, 'augment': AUGMENT_LEVELS}

    backbone: str = 'efficientnet_lite0'
    pretrained: bool = True          # start from the packaged ImageNet weights
    backbone_lr_factor: float = 0.3  # fine-tuning: the backbone learns at lr x this, the head at lr
    image_height: int = 96
    image_width: int = 128
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    loss: str = 'gaussian_nll'
    nll_beta: float = 0.5
    correlation: bool = True
    pool: str = 'avg'                # avg: global average; spatial: 1x1 conv to spatial_channels + flatten
    spatial_channels: int = 32
    head: str = 'gaussian'           # gaussian: direct regression; bins: place distribution over grid anchors
    bin_size_m: float = 10.0
    bin_ce_weight: float = 1.0
    mode_radius_bins: float = 3.0    # bins: publish the mean of the anchors within this many cells of the most
                                     # probable one (the main mode), not the mixture mean; 0 = mixture mean
    dropout: float = 0.1
    augment: str = 'strong'
    freeze_backbone: bool = False    # True: frozen-feature mode: the backbone's feature maps of feature_views
                                     # copies of every training image (the first un-augmented) computed once,
                                     # then only pooling + head train on the cache
    feature_views: int = 3
    calibration: str = 'auto'
    # keyframe map (vizloc_plugins.keyframes.PlaceMap): the training images' SIFT keypoints with their
    # positions; a query that verifiably overlaps training images gets their position
    keyframes: bool = True
    keyframe_features: int = _KEYFRAMES.n_features
    keyframe_min_inliers: int = _KEYFRAMES.min_inliers
    keyframe_max_points: int = 2_000_000  # SIFT keypoints per image lowered so that the map stays below this
    keyframe_rays: bool = True       # orient the map images (headings, focal length) so that a verified image
                                     # also says in which direction the query's camera stands from it
    robustness: bool = True
    max_per_split: int = 0
    eval_every: int = 1
    time_budget_s: float = 0.0
    threads: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bin_ce_weight < 0.0:
            raise TrainConfigError(f'{self.TYPE}: bin_ce_weight must be non-negative, got {self.bin_ce_weight}')
        if self.mode_radius_bins < 0.0:
            raise TrainConfigError(f'{self.TYPE}: mode_radius_bins must be non-negative, got {self.mode_radius_bins}')
        try:
            self.keyframe_settings()
        except ValueError as exc:
            raise TrainConfigError(f'{self.TYPE}: {exc}') from exc

    def keyframe_settings(self, **measured: Any) -> GPSKeyframes:
        """The bundle's keyframe settings (``measured``: n_features, covariance_scale, frames, points)."""
        return GPSKeyframes(**{'n_features': self.keyframe_features, 'min_inliers': self.keyframe_min_inliers,
                               **measured})

    def keyframe_features_for(self, n_images: int) -> int:
        """SIFT keypoints per image for a map of ``n_images``: ``keyframe_features``, lowered (to at least 100)
        so that the map holds at most ``keyframe_max_points`` (~256 MB of descriptors at 2 M)."""
        return min(self.keyframe_features, max(100, self.keyframe_max_points // max(n_images, 1)))


BASE = GPSConfig()

#: Named presets. ``demo`` (the default): frozen-feature mode: the ImageNet-pretrained
#: EfficientNet-Lite0's stride-32 maps of 6 views of every training image at 224x168 cached once, a
#: spatial place-distribution head (bins) trained on them (measured against fine-tuning at the same
#: budget in docs/localizers/gps_regressor.md); its cost is the features, not a time budget.
#: ``finetune``: the whole network fine-tuned at 128x96 with discriminative LRs, capped at 540 s;
#: ``tiny``: seconds, for tests; ``full``: the seed's resolution (224) fine-tuned on a GPU. Every preset
#: also builds the keyframe map of the training images (``keyframes``).
PRESETS: dict[str, GPSConfig] = {
    'demo': replace(BASE, pool='spatial', head='bins', loss='haversine', image_height=168, image_width=224,
                    freeze_backbone=True, feature_views=6, spatial_channels=32, epochs=20, batch_size=64, lr=3e-3,
                    warmup_epochs=0),
    # haversine trains the mean faster than the NLL in a short budget (measured; the covariance head
    # is still trained by the NLL on the detached mean). bins: a place distribution over 10 m cells,
    # better than direct regression at equal CPU time (measured). spatial pooling keeps where things
    # are in the view (which says where the camera is).
    'finetune': replace(BASE, pool='spatial', head='bins', loss='haversine', lr=1e-3, epochs=400,
                        time_budget_s=540.0),
    'tiny': replace(BASE, image_height=32, image_width=40, epochs=2, batch_size=8, lr=3e-3, backbone_lr_factor=1.0,
                    warmup_epochs=0, augment='light'),
    'full': replace(BASE, image_height=224, image_width=224, epochs=120, batch_size=32, lr=4e-4, weight_decay=1e-3,
                    warmup_epochs=3),
}


@torch.no_grad()
def predict(head: MetricHead, images_NHW3: np.ndarray, device: torch.device, batch_size: int = 64, *,
            frozen: FrozenFeatures | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``mean_en_m`` (N, 2) and ``cov_en_m2`` (N, 2, 2) of uint8 images (same preprocessing as the ONNX graph).
    ``frozen``: the frozen backbone's feature maps come from it (ONNX Runtime on the CPU, ~5x faster there than
    torch's backbone), the rest of the network from ``head``."""
    was_training = head.training
    head.eval()
    means, covs = [], []
    try:
        for start in range(0, len(images_NHW3), batch_size):
            x = imagenet_normalise(to_unit(images_NHW3[start:start + batch_size], device))
            mean, cov = head(x) if frozen is None else head.from_maps(frozen(x).to(device))
            means.append(mean.double().cpu().numpy())
            covs.append(cov.double().cpu().numpy())
    finally:
        head.train(was_training)
    if not means:
        return np.zeros((0, 2)), np.zeros((0, 2, 2))
    return np.concatenate(means), np.concatenate(covs)


def _split_metrics(data: GPSData, split: str, prediction: tuple[np.ndarray, np.ndarray],
                   variance_scale: float = 1.0) -> tuple[dict[str, float], np.ndarray]:
    """Metrics and errors of ``prediction`` (means, uncalibrated covariances from :func:`predict`) on ``split``."""
    arrays = data.splits[split]
    return evaluate_arrays(*prediction, arrays.lla_N3, data.frame.to_lat_lon, data.frame.to_en_m(arrays.lla_N3),
                           variance_scale=variance_scale)


# -- training ------------------------------------------------------------------------------------------
class _Problem:
    """What both training modes share: the net, its export wrapper, the loss and the normalised targets."""

    def __init__(self, net: GPSRegressorNet, head: MetricHead, loss_fn: GPSLoss, train_z: torch.Tensor,
                 std_en_m: torch.Tensor, bin_size_m: float, cfg: GPSConfig, device: torch.device) -> None:
        self.net, self.head, self.loss_fn, self.train_z, self.cfg, self.device = net, head, loss_fn, train_z, cfg, device
        self.std_dev = std_en_m.to(device)
        self.bin_size_m = bin_size_m

    def loss(self, outputs: tuple[torch.Tensor, ...], target_z: torch.Tensor) -> torch.Tensor:
        """The configured loss on the mean (+ covariance), plus the soft-label cross-entropy of the bins head."""
        mu, log_var, rho = outputs[:3]
        total = self.loss_fn(mu, log_var, rho, target_z).total
        if self.net.head_kind == 'bins':
            soft = self.net.soft_labels(target_z, self.std_dev, self.bin_size_m)
            total = total + self.cfg.bin_ce_weight * -(soft * torch.log_softmax(outputs[3], dim=1)).sum(dim=1).mean()
        return total


def _optimise(optimizer: torch.optim.Optimizer, parameters, total: torch.Tensor, where: StepInfo) -> float | None:
    """Backward + clipped step (max norm 1); a non-finite loss skips the batch (None)."""
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(total):
        logger.warning('epoch %d step %d: non-finite loss, batch skipped', where.epoch + 1, where.step)
        return None
    total.backward()
    torch.nn.utils.clip_grad_norm_(parameters, max_norm=1.0)
    optimizer.step()
    return float(total.detach())


class _FineTuneTask(TrainingTask):
    """Fine-tuning: augmented image batches through backbone and head (discriminative LRs); validation
    mean error in metres (the best epoch is kept)."""

    def __init__(self, problem: _Problem, images_NHW3: np.ndarray, validate_m: Callable[[], dict[str, float]],
                 dist, seed: int) -> None:
        cfg, net = problem.cfg, problem.net
        self.problem, self.images_NHW3, self.validate_m, self.dist = problem, images_NHW3, validate_m, dist
        self.model = net
        self.forward = ddp_wrap(net, problem.device, dist)
        self.optimizer = torch.optim.AdamW(discriminative_param_groups(net, net.backbone, cfg.lr, cfg.backbone_lr_factor),
                                           lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = sharded_steps(len(images_NHW3), cfg.batch_size, dist)
        self.generator = torch.Generator().manual_seed(seed + 1)

    def batches(self, epoch: int):
        order = shard(torch.randperm(len(self.images_NHW3), generator=self.generator), self.dist)
        batch = self.problem.cfg.batch_size
        for step in range(self.steps_per_epoch):
            idx = order[step * batch:(step + 1) * batch]
            if len(idx):
                yield np.sort(idx.numpy())

    def step(self, idx: np.ndarray, at: StepInfo) -> float | None:
        p = self.problem
        x = imagenet_normalise(augment_batch(to_unit(self.images_NHW3[idx], p.device), p.cfg.augment, self.generator))
        bins = p.net.head_kind == 'bins'
        outputs = self.forward(x, return_logits=True) if bins else self.forward(x)
        return _optimise(self.optimizer, p.net.parameters(), p.loss(outputs, p.train_z[idx].to(p.device)), at)

    def validate(self) -> Validation:
        record = self.validate_m()
        return Validation(record, -record['val_mean_m'])


@torch.no_grad()
def cached_feature_maps(frozen: FrozenFeatures, images_NHW3: np.ndarray, device: torch.device, *, augment: str,
                        generator: torch.Generator, batch_size: int = 64, desc: str = 'features') -> torch.Tensor:
    """The frozen backbone's feature maps (N, C, h, w) of uint8 images, as float16 on the CPU (``frozen``:
    :class:`vizloc_training.models.frozen.FrozenFeatures`, ONNX Runtime on CPU; ``augment`` as in
    fine-tuning, drawn from ``generator``; 'none' for the un-augmented view)."""
    maps = []
    for start in progress(range(0, len(images_NHW3), batch_size), desc=desc,
                          total=math.ceil(len(images_NHW3) / batch_size)):
        x = augment_batch(to_unit(images_NHW3[start:start + batch_size], device), augment, generator)
        maps.append(frozen(imagenet_normalise(x)).to('cpu', torch.float16))
    return torch.cat(maps)


class _CachedHeadTask(TrainingTask):
    """Frozen-feature mode: steps of pooling + head on cached feature maps (``views`` copies of the
    training split); validation mean error on the cached val maps; the best state is pooling + head."""

    def __init__(self, problem: _Problem, maps_NChw: torch.Tensor, views: int, val_maps: torch.Tensor,
                 val_score_m: Callable[[np.ndarray, np.ndarray], dict[str, float]], seed: int) -> None:
        cfg, net = problem.cfg, problem.net
        self.problem, self.maps, self.val_maps, self.val_score_m = problem, maps_NChw, val_maps, val_score_m
        self.targets_z = problem.train_z.repeat(views, 1)
        self.model = net
        self.trained = torch.nn.ModuleList([m for m in (net.reduce, net.head) if m is not None])
        self.optimizer = torch.optim.AdamW(self.trained.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = max(1, math.ceil(len(maps_NChw) / cfg.batch_size))
        self.generator = torch.Generator().manual_seed(seed + 2)

    def begin_epoch(self, epoch: int) -> None:
        self.model.eval()  # the backbone's BatchNorm statistics stay as they are
        self.trained.train()

    def batches(self, epoch: int):
        order = torch.randperm(len(self.maps), generator=self.generator)
        batch = self.problem.cfg.batch_size
        for start in range(0, len(order), batch):
            yield order[start:start + batch]

    def step(self, idx: torch.Tensor, at: StepInfo) -> float | None:
        p = self.problem
        outputs = p.net.from_maps(self.maps[idx].to(p.device, torch.float32), return_logits=p.net.head_kind == 'bins')
        return _optimise(self.optimizer, self.trained.parameters(), p.loss(outputs, self.targets_z[idx].to(p.device)), at)

    @torch.no_grad()
    def validate(self) -> Validation:
        self.trained.eval()
        means, covs = [], []
        for start in range(0, len(self.val_maps), 256):
            mean, cov = self.problem.head.from_maps(self.val_maps[start:start + 256].to(self.problem.device,
                                                                                     torch.float32))
            means.append(mean.double().cpu().numpy())
            covs.append(cov.double().cpu().numpy())
        record = self.val_score_m(np.concatenate(means), np.concatenate(covs))
        return Validation(record, -record['val_mean_m'])

    def snapshot(self) -> dict[str, torch.Tensor]:
        return copy.deepcopy(self.trained.state_dict())

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        self.trained.load_state_dict(state)


def train(args: TrainArgs) -> Path:
    """Train, calibrate, evaluate, export; returns the bundle directory ``args.out``."""
    cfg = resolve_preset(PRESETS, args)
    if cfg.freeze_backbone and not (cfg.pretrained or args.init_weights):
        raise TrainConfigError('gps_regressor: freeze_backbone needs pretrained weights (pretrained=true or '
                               '--init-weights)')
    set_seed(args.seed)
    set_threads(cfg.threads)
    device = select_device(args.device)
    with distributed(device) as dist, contextlib.ExitStack() as resources:
        if cfg.freeze_backbone and dist.enabled:
            raise TrainConfigError('gps_regressor: freeze_backbone trains a small head on one process; run it '
                                   'without torchrun')
        return _train(args, cfg, device, dist, resources)


def _train(args: TrainArgs, cfg: GPSConfig, device: torch.device, dist, resources: contextlib.ExitStack) -> Path:
    """``resources``: open until the bundle is written (the frozen backbone's session, which evaluation uses too)."""
    started = time.perf_counter()
    height, width = cfg.image_height, cfg.image_width
    data = load_gps_data(args.data, width=width, height=height, max_per_split=cfg.max_per_split or None)
    for split in ('val', 'test'):
        if len(data.splits[split]) == 0:
            raise ValueError(f'{args.data}: the {split} split is empty; gps_regressor needs train, val and test')
    frame = data.frame
    train_images = data.splits['train'].images_NHW3
    mean_t = torch.tensor(frame.mean_en_m, dtype=torch.float32)
    std_t = torch.tensor(frame.std_en_m, dtype=torch.float32)
    anchors_z = bin_var_z = None
    bin_size_m = cfg.bin_size_m
    if cfg.head == 'bins':
        anchors_m, bin_size_m = grid_anchors(frame.to_en_m(data.splits['train'].lla_N3), bin_size_m)
        anchors_z = (torch.from_numpy(anchors_m).float() - mean_t) / std_t
        bin_var_z = (bin_size_m ** 2 / 12.0) / std_t ** 2
        logger.info('bins head: %d anchors of %.1f m', len(anchors_m), bin_size_m)
    net = GPSRegressorNet(cfg.backbone, dropout=cfg.dropout, correlation=cfg.correlation,
                          init_weights=args.init_weights, pool=cfg.pool, image_hw=(height, width),
                          spatial_channels=cfg.spatial_channels, anchors_z_K2=anchors_z, bin_var_z_2=bin_var_z,
                          pretrained=cfg.pretrained).to(device)
    head = MetricHead(net, mean_t, std_t).to(device)
    loss_fn = GPSLoss(cfg.loss, mean_en_m=mean_t, std_en_m=std_t, origin_lat_deg=frame.origin_lat_deg,
                      origin_lon_deg=frame.origin_lon_deg, nll_beta=cfg.nll_beta)
    problem = _Problem(net, head, loss_fn, torch.from_numpy(data.targets_z('train')), std_t, bin_size_m, cfg, device)
    val = data.splits['val']
    val_en_m = frame.to_en_m(val.lla_N3)

    def val_score_m(mean: np.ndarray, cov: np.ndarray) -> dict[str, float]:
        stats, _ = evaluate_arrays(mean, cov, val.lla_N3, frame.to_lat_lon, val_en_m)
        return {'val_mean_m': stats['mean_m'], 'val_median_m': stats['median_m']}

    work_dir = args.out.parent / f'{args.out.name}.work'
    checkpoints = CheckpointManager(work_dir / 'checkpoints', describe={
        'type': LOCALIZER_TYPE, 'preset': args.preset, 'args': args.to_dict(), 'config': cfg.to_dict()})
    features_s = 0.0
    frozen = None
    if cfg.freeze_backbone:
        features_started = time.perf_counter()
        net.backbone.requires_grad_(False)
        generator = torch.Generator().manual_seed(args.seed + 1)
        frozen = resources.enter_context(FrozenFeatures(net.backbone, device))
        views = [cached_feature_maps(frozen, train_images, device, generator=generator,
                                     augment='none' if v == 0 else cfg.augment,
                                     desc=f'features {v + 1}/{cfg.feature_views}')
                 for v in range(cfg.feature_views)]
        maps = torch.cat(views)
        del views
        val_maps = cached_feature_maps(frozen, val.images_NHW3, device, augment='none', generator=generator,
                                       desc='features val')
        features_s = time.perf_counter() - features_started
        logger.info('frozen backbone: %d cached feature maps %s (%d views, %.0f MB), %.0f s', len(maps),
                    tuple(maps.shape[1:]), cfg.feature_views, maps.numel() * 2 / 1e6, features_s)
        task: TrainingTask = _CachedHeadTask(problem, maps, cfg.feature_views, val_maps, val_score_m, args.seed)
        warmup_epochs = cfg.warmup_epochs
    else:
        def validate_m() -> dict[str, float]:
            return val_score_m(*predict(head, val.images_NHW3, device))

        task = _FineTuneTask(problem, train_images, validate_m, dist, args.seed)
        warmup_epochs = cfg.warmup_epochs
    schedule = Schedule.over_epochs(cfg.epochs, task.steps_per_epoch, warmup_epochs=warmup_epochs,
                                    budget_s=cfg.time_budget_s, floor=0.02)
    logger.info('gps_regressor: %s/%s pooling %dx%d, head %s, loss %s, %s, %d train images, %d epochs x %d steps, '
                'batch %d, time budget %s, device %s', cfg.backbone, cfg.pool, width, height, cfg.head, cfg.loss,
                'frozen backbone' if cfg.freeze_backbone else 'fine-tuning', len(train_images), cfg.epochs,
                task.steps_per_epoch, cfg.batch_size, f'{cfg.time_budget_s:.0f} s' if cfg.time_budget_s > 0 else 'none',
                device)
    result = fit(task, epochs=cfg.epochs, schedule=schedule, checkpoints=checkpoints, resume=args.resume, dist=dist,
                 validate_every=cfg.eval_every, map_location=device)
    if cfg.freeze_backbone:
        net.backbone.requires_grad_(True)
        del task
    if not is_main_process():
        return args.out
    net.eval()
    if net.head_kind == 'bins' and cfg.mode_radius_bins > 0:
        net.publish_mode(cfg.mode_radius_bins * bin_size_m, frame.std_en_m)
        logger.info('bins head: publishing the main mode (anchors within %.1f m of the most probable one)',
                    cfg.mode_radius_bins * bin_size_m)
    train_s = result.train_s + features_s
    return _evaluate_and_export(args, cfg, data, net, head, problem, anchors_z, bin_size_m, started, train_s,
                                len(result.history), result.history, features_s, frozen)


def _evaluate_and_export(args: TrainArgs, cfg: GPSConfig, data: GPSData, net: GPSRegressorNet, head: MetricHead,
                         problem: _Problem, anchors_z: torch.Tensor | None, bin_size_m: float, started: float,
                         train_s: float, epochs_run: int, history: list[dict[str, Any]], features_s: float,
                         frozen: FrozenFeatures | None) -> Path:
    """Calibration on val, test metrics (+ robustness), ONNX export and the bundle; the network's backbone through
    ``frozen`` when it was frozen."""
    frame, device = data.frame, problem.device
    val_mean, val_cov = val_pred = predict(head, data.splits['val'].images_NHW3, device, frozen=frozen)  # once
    test_mean, test_cov = test_pred = predict(head, data.splits['test'].images_NHW3, device, frozen=frozen)
    val_stats, _ = _split_metrics(data, 'val', val_pred)
    val_err = val_mean - frame.to_en_m(data.splits['val'].lla_N3)
    coverage_raw = val_stats['ellipse95_coverage_pct']
    mode = cfg.calibration
    fit_scale = mode == 'always' or (mode == 'auto' and not COVERAGE_BAND_PCT[0] <= coverage_raw <= COVERAGE_BAND_PCT[1])
    variance_scale = geo_metrics.fit_variance_scale(val_err, val_cov, 0.95) if fit_scale else 1.0
    logger.info('validation 95%% ellipse coverage %.1f %%; variance scale %.3g (%s)', coverage_raw, variance_scale,
                'fitted' if fit_scale else 'not needed')

    test_network, test_errors = _split_metrics(data, 'test', test_pred, variance_scale=variance_scale)
    val_stats_cal, _ = _split_metrics(data, 'val', val_pred, variance_scale=variance_scale)
    metrics: dict[str, Any] = {}
    places, extra_files = _place_map(args, cfg, data, (val_mean, val_cov * variance_scale), metrics)
    test_stats = test_network
    if places is not None:
        with places:  # its verification threads stop here
            test_stats = _published_metrics(places, data, 'test', (test_mean, test_cov * variance_scale), metrics)
        metrics['test_network'] = test_network
    metrics.update({
        'test': test_stats,
        'val': {'mean_m': val_stats_cal['mean_m'], 'median_m': val_stats_cal['median_m'],
                'ellipse95_coverage_uncalibrated_pct': coverage_raw,
                'ellipse95_coverage_pct': val_stats_cal['ellipse95_coverage_pct']},
        'test_to_nearest_train': nearest_train_distance(frame.to_en_m(data.splits['test'].lla_N3),
                                                        frame.to_en_m(data.splits['train'].lla_N3)),
        'variance_scale': variance_scale,
        'train_s': train_s,
        'features_s': features_s,
        'epochs_run': epochs_run,
        'threads': torch.get_num_threads(),
    })
    if cfg.robustness:
        test = data.splits['test']

        def predict_errors(images: np.ndarray) -> np.ndarray:
            mean, _cov = predict(head, images, device, frozen=frozen)
            lat, lon = frame.to_lat_lon(mean)
            return geo_metrics.haversine_m(lat, lon, test.lla_N3[:, 0], test.lla_N3[:, 1])

        metrics['robustness'] = robustness_table(predict_errors, test.images_NHW3, test_errors, seed=args.seed)

    contract = GPSRegressorContract(
        geo=GeoReference.from_mapping(frame.geo_mapping()), variance_scale=variance_scale,
        altitude_known=frame.altitude_known, alt_std_m=frame.alt_std_m if frame.altitude_known else None,
        resize='stretch', backbone=cfg.backbone, backbone_weights=net.backbone.weights_source,
        keyframes=places.settings if places is not None else None)
    metadata = contract.to_metadata(
        target_frame=frame.to_mapping(),
        loss=cfg.loss,
        head=cfg.head,
        anchors=({'count': int(anchors_z.shape[0]), 'bin_size_m': bin_size_m,
                  'published': 'mixture_mean' if net.mode_radius_z is None else 'main_mode',
                  'mode_radius_m': cfg.mode_radius_bins * bin_size_m if net.mode_radius_z is not None else 0.0}
                 if anchors_z is not None else None),
        preset=args.preset,
        config=cfg.to_dict(),
        train_args=args.to_dict(),
        dataset={'root': str(args.data), 'sizes': {s: len(a) for s, a in data.splits.items()},
                 'skipped': data.skipped},
        outputs={OUTPUT_MEAN: 'predicted east/north (m) in the scene frame metadata.geo',
                 OUTPUT_COV: 'predicted 2x2 covariance (m^2) in the scene frame; multiply by variance_scale'},
        history=history)
    # Outputs are in metres / square metres: float32 rounding scales with the frame's spread.
    parity_tol = 1e-3 + 1e-5 * max(frame.std_en_m) ** 2
    height, width = cfg.image_height, cfg.image_width
    bundle = export_and_bundle(head.cpu(), args.out, localizer_type=LOCALIZER_TYPE,
                               input_spec=InputSpec(height=height, width=width), output_names=list(contract.OUTPUTS),
                               metadata=metadata, metrics=metrics, parity_tol=parity_tol, extra_files=extra_files)
    logger.info('gps_regressor bundle %s written in %.0f s (test median %.2f m, within 10 m %.1f %%)', bundle,
                time.perf_counter() - started, test_stats['median_m'], test_stats['within_10m_pct'])
    return bundle


def _place_map(args: TrainArgs, cfg: GPSConfig, data: GPSData, val_network: tuple[np.ndarray, np.ndarray],
               metrics: dict[str, Any]) -> tuple[PlaceMap | None, dict[str, Path]]:
    """Build the keyframe map of the training images into ``OUT.work/keyframes`` (``cfg.keyframes``) and
    calibrate its covariance factor on the validation split (``val_network``: the network's means and
    calibrated covariances there, the prior the plugin gives the map): the loaded map (with its settings;
    the caller closes it) and the bundle files; (None, {}) when disabled or no image has keypoints (logged)."""
    if not cfg.keyframes:
        return None, {}
    frame, train = data.frame, data.splits['train']
    out_dir = args.out.parent / f'{args.out.name}.work' / 'keyframes'
    started = time.perf_counter()
    images = ((name, _gray(path), en) for name, path, en in zip(train.names, train.paths, frame.to_en_m(train.lla_N3)))
    n_features = cfg.keyframe_features_for(len(train))
    import_faiss()
    if n_features < cfg.keyframe_features:
        logger.info('keyframe map: %d SIFT keypoints per image (not %d) to stay below %d keypoints for %d images',
                    n_features, cfg.keyframe_features, cfg.keyframe_max_points, len(train))
    try:
        built = build_place_map(progress(images, 'keyframe map', total=len(train)), out_dir, n_features=n_features,
                                max_side_px=_KEYFRAMES.max_side_px, orient=cfg.keyframe_rays, ratio=_KEYFRAMES.ratio)
    except KeyframeError as exc:
        logger.warning('no keyframe map: %s', exc)
        return None, {}
    metrics['keyframe_map_s'] = time.perf_counter() - started
    if 'headings' in built:
        metrics['keyframe_headings'] = {'images': built['headings'], 'hfov_deg': built['hfov_deg'],
                                        'depths': built['depths']}
    files = {name: out_dir / name for name in (KEYFRAMES_NPZ, KEYFRAMES_INDEX)}
    places = PlaceMap(files[KEYFRAMES_NPZ], files[KEYFRAMES_INDEX],
                      cfg.keyframe_settings(n_features=n_features, frames=built['frames'], points=built['points']))
    val = data.splits['val']
    # the places the map gives along the validation split replayed as the node runs (track and recent frames),
    # at every camera rate of CALIBRATION_RUNS; the factor scales their covariances (a chained frame's is a
    # recent place's, grown, so chained frames are left out)
    described = _describe_split(places, val, 'val')
    located = [m for period_s, stride in CALIBRATION_RUNS
               for m in _replay(places, described, val_network, period_s=period_s, stride=stride)]
    ok = np.array([m.chained is None and m.place.position_m is not None for m in located], bool)
    if not ok.any():
        logger.warning('no keyframe map: none of the %d validation images overlaps a training image verifiably, '
                       'so its covariance cannot be calibrated (the network alone answers)', len(val))
        places.close()
        return None, {}
    truth = frame.to_en_m(val.lla_N3)
    truth = np.concatenate([truth[::stride] for _, stride in CALIBRATION_RUNS])
    err = np.stack([m.place.position_m for m, k in zip(located, ok) if k]) - truth[ok]
    # the places' own covariances at factor 1 (the map's settings here): the factor is fitted on them alone;
    # the spread of the hypotheses competing for a frame is added on top at run time, unscaled (fitted
    # together, the factor shrank and the test walks' ellipses held less: docs/localizers/gps_regressor.md)
    covs = np.stack([m.place.cov_m2 - (m.place.spread_m2 if m.place.spread_m2 is not None else 0.0)
                     for m, k in zip(located, ok) if k])
    if ok.sum() >= _MIN_CALIBRATION_SAMPLES:
        try:
            scale = geo_metrics.fit_variance_scale(err, covs, 0.95)
        except ValueError:  # every error zero (val images duplicated in train): nothing to scale by
            scale = 1.0
    else:  # too few for a 95 % quantile: the largest error sets the scale, never below 1 (conservative)
        scale = max(1.0, float(geo_metrics.mahalanobis_sq_2d(err, covs).max() / geo_metrics.chi2_2dof_quantile(0.95)))
        logger.warning('keyframe map: only %d verified validation images; covariance factor from the largest '
                       'error', int(ok.sum()))
    places.settings = replace(places.settings, covariance_scale=scale)
    verified = np.array([bool(v) for _, _, v in described], bool)
    metrics['val_keyframes'] = {'verified_pct': 100.0 * float(verified.mean()) if len(verified) else 0.0,
                                'covariance_scale': scale, 'calibration_places': int(ok.sum())}
    logger.info('keyframe map: %d images, %d keypoints in %.0f s; %.1f %% of validation images verified, '
                'covariance factor %.3g', built['frames'], built['points'], metrics['keyframe_map_s'],
                metrics['val_keyframes']['verified_pct'], scale)
    return places, files


def _gray(path: Path) -> np.ndarray:
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise ValueError(f'cannot decode image {path}')
    return gray


#: The frame period at which the trainer replays the test split (in file order) through the plugin's
#: :class:`PlaceTracker` for its ``test`` metrics, as the node replays a 10 Hz bag of a walk. A split that is not a
#: walk (a random 70/15/15 split) gets per-frame answers: consecutive images lie beyond the track's reach and rarely
#: overlap.
SPLIT_FRAME_PERIOD_S = 0.1

#: The runs of the validation split the keyframe covariance is calibrated on, pooled: (seconds between images,
#: every n-th image). The track's reach grows with the time between frames and the recent frames overlap less
#: when the camera moved farther, so a factor fitted at 10 Hz alone held only 86-90 % of the errors in its 95 %
#: ellipses at 1 Hz (docs/localizers/gps_regressor.md): the camera's rate is the user's, not the dataset's.
CALIBRATION_RUNS: tuple[tuple[float, int], ...] = ((SPLIT_FRAME_PERIOD_S, 1), (1.0, 1), (0.5, 5))


def _describe_split(places: PlaceMap, split: Any, name: str
                    ) -> list[tuple[np.ndarray, np.ndarray, list[Overlap]]]:
    """SIFT keypoints, descriptors and verified map images of every image of a split (at its file's own
    resolution, like the node's frames): :meth:`PlaceMap.describe` and :meth:`PlaceMap.verify_features`."""
    described = []
    for path in progress(split.paths, f'keyframe matching {name}', total=len(split.paths)):
        gray = _gray(path)
        px, descs = places.describe(gray)
        described.append((px, descs, places.verify_features(px, descs, places.described_shape(gray))))
    return described


def _replay(places: PlaceMap, described: list[tuple[np.ndarray, np.ndarray, list[Overlap]]],
            network: tuple[np.ndarray, np.ndarray], *, period_s: float = SPLIT_FRAME_PERIOD_S,
            stride: int = 1) -> list[TrackedPlace]:
    """Every ``stride``-th described image (:func:`_describe_split`) in file order through the plugin's
    :class:`PlaceTracker` with its default options, one image every ``period_s``, with the network's estimates
    (means, calibrated covariances) as priors, as the plugin does."""
    options = GPSRegressorOptions()
    tracker = PlaceTracker(places, track_sigma_m=options.track_sigma_m, track_speed_mps=options.track_speed_mps,
                           chain_frames=options.chain_frames, hypotheses=options.track_hypotheses)
    rows = list(zip(described, *network))[::stride]
    return [tracker.choose(px, descs, verified, round(i * period_s * 1e9), mean, cov)
            for i, ((px, descs, verified), mean, cov) in enumerate(rows)]


def _published_metrics(places: PlaceMap, data: GPSData, split: str, network: tuple[np.ndarray, np.ndarray],
                       metrics: dict[str, Any]) -> dict[str, float]:
    """Metrics of what the node publishes on ``split`` replayed as a 10 Hz run (:func:`_replay`): the keyframe
    map's position where a training image is verified or a recent frame places the image, else the last place held
    or the network's (``network``: its means and calibrated covariances); ``metrics[f'{split}_keyframe_share']``
    gets the share of frames the map or a recent frame placed."""
    arrays = data.splits[split]
    mean, cov = network[0].copy(), network[1].copy()
    located = _replay(places, _describe_split(places, arrays, split), network)
    for i, m in enumerate(located):
        if m.position_m is not None:
            mean[i], cov[i] = m.position_m, m.cov_m2
    placed = [m.held is None and m.position_m is not None for m in located]
    metrics[f'{split}_keyframe_share'] = float(np.mean(placed))
    stats, _ = evaluate_arrays(mean, cov, arrays.lla_N3, data.frame.to_lat_lon, data.frame.to_en_m(arrays.lla_N3))
    return stats
