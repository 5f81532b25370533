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
4. Evaluate on the test split (seed 001's table) and on its corrupted variants (robustness table).
5. Export ONNX (preprocessing baked in, outputs ``mean_en_m`` and ``cov_en_m2`` in metres) and write
   the bundle with the metrics.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vizloc_plugins.gps_regressor_contract import LOCALIZER_TYPE, OUTPUT_COV, OUTPUT_MEAN, GPSRegressorContract
from vizloc_ros.bundle import InputSpec
from vizloc_ros.geodesy import GeoReference

from ..metrics import geo as geo_metrics
from ..train.config import TrainArgs, TrainConfigError, resolve_preset
from ..train.export import IMAGENET_MEAN, IMAGENET_STD, export_and_bundle
from ..train.loop import (CheckpointManager, ddp_cleanup, ddp_setup, discriminative_param_groups, is_main_process,
                          progress, select_device, set_lr, set_seed)
from .data import GPSData, load_gps_data
from .evaluate import evaluate_arrays, nearest_train_distance, robustness_table
from .losses import LOSSES, GPSLoss
from .model import BACKBONE_CHOICES, HEADS, POOLING, GPSRegressorNet, MetricHead, grid_anchors

__all__ = ['PRESETS', 'LOCALIZER_TYPE', 'train', 'augment_batch', 'predict']

logger = logging.getLogger(__name__)
CALIBRATION_MODES = ('auto', 'always', 'never')
#: Target band of the validation 95 %-ellipse coverage for ``calibration: auto``.
COVERAGE_BAND_PCT = (90.0, 98.0)
AUGMENT_LEVELS = ('none', 'light', 'strong')

_BASE: dict[str, Any] = {
    'backbone': 'efficientnet_lite0',
    'pretrained': True,          # start from the packaged ImageNet weights
    'backbone_lr_factor': 0.3,   # fine-tuning: the backbone learns at lr x this, the head at lr
    'image_height': 96,
    'image_width': 128,
    'epochs': 30,
    'batch_size': 32,
    'lr': 2e-3,
    'weight_decay': 1e-4,
    'warmup_epochs': 1,
    'loss': 'gaussian_nll',
    'nll_beta': 0.5,
    'correlation': True,
    'pool': 'avg',
    'head': 'gaussian',
    'bin_size_m': 10.0,
    'bin_ce_weight': 1.0,
    'dropout': 0.1,
    'augment': 'strong',
    'calibration': 'auto',
    'robustness': True,
    'max_per_split': 0,
    'eval_every': 1,
    'time_budget_s': 0.0,
    'threads': 0,
}

#: Named presets. ``demo``: CPU-friendly default, <= 10 min on 2 shared cores: the ImageNet-pretrained
#: EfficientNet-Lite0 fine-tuned at 128x96 (see docs/localizers/gps_regressor.md for the measured
#: numbers); ``tiny``: seconds, for tests; ``full``: the seed's resolution (224) on a GPU.
PRESETS: dict[str, dict[str, Any]] = {
    # haversine trains the mean faster than the NLL in a short budget (measured; the covariance head
    # is still trained by the NLL on the detached mean).
    # bins: a place distribution over 10 m cells, better than direct regression at equal CPU time (measured).
    # spatial pooling keeps where things are in the view (which says where the camera is).
    'demo': {**_BASE, 'pool': 'spatial', 'image_height': 96, 'image_width': 128, 'lr': 1e-3,
             'epochs': 400, 'time_budget_s': 540.0, 'loss': 'haversine', 'head': 'bins'},
    'tiny': {**_BASE, 'image_height': 32, 'image_width': 40, 'epochs': 2,
             'batch_size': 8, 'lr': 3e-3, 'backbone_lr_factor': 1.0, 'warmup_epochs': 0, 'augment': 'light'},
    'full': {**_BASE, 'image_height': 224, 'image_width': 224, 'epochs': 120, 'batch_size': 32, 'lr': 4e-4,
             'weight_decay': 1e-3, 'warmup_epochs': 3},
}


def _check_config(config: dict[str, Any]) -> None:
    if config['backbone'] not in BACKBONE_CHOICES:
        raise TrainConfigError(f'gps_regressor: backbone must be one of {BACKBONE_CHOICES}, got {config["backbone"]!r}')
    if config['loss'] not in LOSSES:
        raise TrainConfigError(f'gps_regressor: loss must be one of {LOSSES}, got {config["loss"]!r}')
    if config['calibration'] not in CALIBRATION_MODES:
        raise TrainConfigError(f'gps_regressor: calibration must be one of {CALIBRATION_MODES}')
    if config['pool'] not in POOLING:
        raise TrainConfigError(f'gps_regressor: pool must be one of {POOLING}')
    if config['head'] not in HEADS:
        raise TrainConfigError(f'gps_regressor: head must be one of {HEADS}, got {config["head"]!r}')
    if float(config['bin_size_m']) <= 0.0 or float(config['bin_ce_weight']) < 0.0:
        raise TrainConfigError('gps_regressor: bin_size_m must be positive and bin_ce_weight non-negative')
    if config['augment'] not in AUGMENT_LEVELS:
        raise TrainConfigError(f'gps_regressor: augment must be one of {AUGMENT_LEVELS}')
    for key in ('image_height', 'image_width', 'epochs', 'batch_size', 'eval_every'):
        if int(config[key]) <= 0:
            raise TrainConfigError(f'gps_regressor: {key} must be positive, got {config[key]}')


def _set_threads(threads: int) -> None:
    """``threads`` > 0: that many intra-op threads. 0 (auto): torch's default, but 1 when the machine is
    oversubscribed (1-minute load average >= CPU count): OpenMP threads that spin-wait for each other
    on busy cores make a 2-thread step many times slower than a 1-thread step (measured: 4.6 vs
    75 images/s for mobilenet_v3_small at 64x48 on a 2-core machine with load 7.5)."""
    if threads > 0:
        torch.set_num_threads(threads)
        return
    cpus = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else 0.0
    if cpus > 1 and load >= cpus:
        logger.info('load average %.1f >= %d CPUs: training with 1 thread (set threads=N to override)', load, cpus)
        torch.set_num_threads(1)


# -- augmentation ------------------------------------------------------------------------------------
def augment_batch(x_N3HW: torch.Tensor, level: str, generator: torch.Generator) -> torch.Tensor:
    """Random augmentation of a float batch in [0, 1] (per-sample parameters; same size out).

    ``light``: brightness/contrast/saturation jitter. ``strong``: also a small affine jitter
    (scale 0.9-1.1, rotation +-3 deg, shift +-4 %, reflection padding), Gaussian blur (p 0.2),
    Gaussian noise (sigma <= 0.04) and a grey occluding rectangle (p 0.3, 5-25 % of the area).
    No flips: mirroring a view changes where it was taken.
    """
    if level == 'none':
        return x_N3HW
    n, _, h, w = x_N3HW.shape
    dev = x_N3HW.device

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return (torch.rand(shape or (n,), generator=generator) * (hi - lo) + lo).to(dev)

    x = x_N3HW * u(0.6, 1.4).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.7, 1.3).view(n, 1, 1, 1) + mean
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * u(0.6, 1.4).view(n, 1, 1, 1) + gray
    if level == 'strong':
        angle = torch.deg2rad(u(-3.0, 3.0))
        scale = u(0.9, 1.1)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, u(-0.08, 0.08)], 1),
                             torch.stack([sin, cos, u(-0.08, 0.08)], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=False)
        blur = (torch.rand(n, generator=generator) < 0.2).to(dev)
        if bool(blur.any()):
            k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=dev)
            k = (k[:, None] * k[None, :]) / 256.0
            blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode='replicate'), k.expand(3, 1, 5, 5).contiguous(), groups=3)
            x = torch.where(blur.view(n, 1, 1, 1), blurred, x)
        x = x + torch.randn(x.shape, generator=generator).to(dev) * u(0.0, 0.04).view(n, 1, 1, 1)
        occlude = (torch.rand(n, generator=generator) < 0.3).tolist()
        area = u(0.05, 0.25).tolist()
        aspect = u(0.5, 2.0).tolist()
        fx, fy = torch.rand(n, generator=generator).tolist(), torch.rand(n, generator=generator).tolist()
        for i in range(n):
            if not occlude[i]:
                continue
            oh = max(1, min(h, int(round(math.sqrt(area[i] * h * w / aspect[i])))))
            ow = max(1, min(w, int(round(math.sqrt(area[i] * h * w * aspect[i])))))
            y0, x0 = int(fy[i] * (h - oh + 1)), int(fx[i] * (w - ow + 1))
            x[i, :, y0:y0 + oh, x0:x0 + ow] = 0.5
    return x.clamp(0.0, 1.0)


_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _to_unit(images_NHW3: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(images_NHW3).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def _normalise(x_N3HW: torch.Tensor) -> torch.Tensor:
    return (x_N3HW - _MEAN.to(x_N3HW.device)) / _STD.to(x_N3HW.device)


@torch.no_grad()
def predict(head: MetricHead, images_NHW3: np.ndarray, device: torch.device,
            batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``mean_en_m`` (N, 2) and ``cov_en_m2`` (N, 2, 2) of uint8 images (same preprocessing as the ONNX graph)."""
    was_training = head.training
    head.eval()
    means, covs = [], []
    try:
        for start in range(0, len(images_NHW3), batch_size):
            x = _normalise(_to_unit(images_NHW3[start:start + batch_size], device))
            mean, cov = head(x)
            means.append(mean.double().cpu().numpy())
            covs.append(cov.double().cpu().numpy())
    finally:
        head.train(was_training)
    if not means:
        return np.zeros((0, 2)), np.zeros((0, 2, 2))
    return np.concatenate(means), np.concatenate(covs)


def _split_metrics(head: MetricHead, data: GPSData, split: str, device: torch.device,
                   variance_scale: float = 1.0) -> tuple[dict[str, float], np.ndarray]:
    arrays = data.splits[split]
    mean, cov = predict(head, arrays.images_NHW3, device)
    return evaluate_arrays(mean, cov, arrays.lla_N3, data.frame.to_lat_lon, data.frame.to_en_m(arrays.lla_N3),
                           variance_scale=variance_scale)


# -- training ------------------------------------------------------------------------------------------
def train(args: TrainArgs) -> Path:
    """Train, calibrate, evaluate, export; returns the bundle directory ``args.out``."""
    config = resolve_preset(PRESETS, args)
    _check_config(config)
    set_seed(args.seed)
    _set_threads(int(config['threads']))
    device = select_device(args.device)
    dist = ddp_setup(device)
    started = time.perf_counter()

    height, width = int(config['image_height']), int(config['image_width'])
    data = load_gps_data(args.data, width=width, height=height,
                         max_per_split=int(config['max_per_split']) or None)
    for split in ('val', 'test'):
        if len(data.splits[split]) == 0:
            raise ValueError(f'{args.data}: the {split} split is empty; gps_regressor needs train, val and test')
    frame = data.frame
    train_images = data.splits['train'].images_NHW3
    train_z = torch.from_numpy(data.targets_z('train'))

    mean_t = torch.tensor(frame.mean_en_m, dtype=torch.float32)
    std_t = torch.tensor(frame.std_en_m, dtype=torch.float32)
    anchors_z = bin_var_z = None
    bin_size_m = float(config['bin_size_m'])
    if config['head'] == 'bins':
        anchors_m, bin_size_m = grid_anchors(frame.to_en_m(data.splits['train'].lla_N3), bin_size_m)
        anchors_z = (torch.from_numpy(anchors_m).float() - mean_t) / std_t
        bin_var_z = (bin_size_m ** 2 / 12.0) / std_t ** 2
        logger.info('bins head: %d anchors of %.1f m', len(anchors_m), bin_size_m)
    net = GPSRegressorNet(config['backbone'], dropout=float(config['dropout']), correlation=bool(config['correlation']),
                          init_weights=args.init_weights, pool=config['pool'], image_hw=(height, width),
                          anchors_z_K2=anchors_z, bin_var_z_2=bin_var_z, pretrained=bool(config['pretrained'])).to(device)
    std_dev = std_t.to(device)
    head = MetricHead(net, mean_t, std_t).to(device)
    model: torch.nn.Module = net
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == 'cuda' else None)
    loss_fn = GPSLoss(config['loss'], mean_en_m=mean_t, std_en_m=std_t, origin_lat_deg=frame.origin_lat_deg,
                      origin_lon_deg=frame.origin_lon_deg, nll_beta=float(config['nll_beta']))
    optimizer = torch.optim.AdamW(discriminative_param_groups(net, net.backbone, float(config['lr']),
                                                              float(config['backbone_lr_factor'])),
                                  lr=float(config['lr']), weight_decay=float(config['weight_decay']))
    batch_size = int(config['batch_size'])
    n_train = len(train_images)
    # Each rank takes every world_size-th sample of the epoch's permutation.
    steps_per_epoch = max(1, math.ceil(math.ceil(n_train / dist.world_size) / batch_size))
    epochs = int(config['epochs'])
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(config['warmup_epochs']) * steps_per_epoch

    budget_s = float(config['time_budget_s'])
    if budget_s > 0 and dist.enabled:
        logger.warning('time_budget_s is ignored under DDP (ranks must run the same number of steps)')
        budget_s = 0.0

    def lr_at(step: int, elapsed_s: float) -> float:
        """Linear warm-up, then cosine to 2 % over the steps or the time budget, whichever runs out first."""
        base = float(config['lr'])
        if step < warmup_steps:
            return base * (step + 1) / warmup_steps
        done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if budget_s > 0:
            done = max(done, elapsed_s / budget_s)
        return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done))))

    work_dir = args.out.parent / f'{args.out.name}.work'
    checkpoints = CheckpointManager(work_dir / 'checkpoints', describe={
        'type': LOCALIZER_TYPE, 'preset': args.preset, 'args': args.to_dict(), 'config': config})
    start_epoch, best_val, best_state, history, global_step, elapsed_before = 0, math.inf, None, [], 0, 0.0
    if args.resume:
        payload = checkpoints.load_latest(map_location=device)
        if payload is not None:
            net.load_state_dict(payload['model'])
            if payload.get('optimizer'):
                optimizer.load_state_dict(payload['optimizer'])
            extra = payload.get('extra', {})
            start_epoch = int(payload['epoch'])
            global_step = int(extra.get('global_step', start_epoch * steps_per_epoch))
            elapsed_before = float(extra.get('train_s', 0.0))
            best_val = float(extra.get('best_val', math.inf))
            best_state = extra.get('best_state')
            history = list(extra.get('history', []))
            logger.info('resuming gps_regressor training after epoch %d', start_epoch)

    generator = torch.Generator().manual_seed(args.seed + 1)
    logger.info('gps_regressor: %s/%s pooling %dx%d, loss %s, %d train images, %d epochs x %d steps, batch %d, '
                'time budget %s, device %s', config['backbone'], config['pool'], width, height, config['loss'],
                n_train, epochs, steps_per_epoch, batch_size, f'{budget_s:.0f} s' if budget_s > 0 else 'none', device)
    train_started = time.perf_counter() - elapsed_before
    out_of_time = False
    first_step = global_step
    for epoch in range(start_epoch, epochs):
        model.train()
        order = torch.randperm(n_train, generator=generator)[dist.rank::dist.world_size]
        loss_sum, loss_count = 0.0, 0
        for step in progress(range(steps_per_epoch), desc=f'epoch {epoch + 1}/{epochs}'):
            elapsed = time.perf_counter() - train_started
            if budget_s > 0 and elapsed >= budget_s and global_step > first_step:
                out_of_time = True
                break
            idx = order[step * batch_size:(step + 1) * batch_size]
            if len(idx) == 0:
                continue
            set_lr(optimizer, lr_at(global_step, elapsed) / float(config['lr']))
            idx_np = np.sort(idx.numpy())
            x = augment_batch(_to_unit(train_images[idx_np], device), config['augment'], generator)
            target = train_z[idx_np].to(device)
            if net.head_kind == 'bins':
                mu, log_var, rho, logits = model(_normalise(x), return_logits=True)
                soft = net.soft_labels(target, std_dev, bin_size_m)
                ce = -(soft * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
            else:
                mu, log_var, rho = model(_normalise(x))
                ce = None
            terms = loss_fn(mu, log_var, rho, target)
            total = terms.total if ce is None else terms.total + float(config['bin_ce_weight']) * ce
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            if not torch.isfinite(total):
                logger.warning('epoch %d step %d: non-finite loss, batch skipped', epoch + 1, step)
                continue
            total.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=1.0)
            optimizer.step()
            loss_sum += float(total.detach())
            loss_count += 1
        record: dict[str, float] = {'epoch': epoch + 1, 'loss': loss_sum / max(1, loss_count),
                                    'lr': optimizer.param_groups[0]['lr'], 'time_s': time.perf_counter() - train_started}
        last = epoch + 1 == epochs or out_of_time
        if is_main_process() and ((epoch + 1) % int(config['eval_every']) == 0 or last):
            val_stats, _ = _split_metrics(head, data, 'val', device)
            record.update({'val_mean_m': val_stats['mean_m'], 'val_median_m': val_stats['median_m']})
            if val_stats['mean_m'] < best_val:
                best_val = val_stats['mean_m']
                best_state = copy.deepcopy(net.state_dict())
        history.append(record)
        logger.info('epoch %d/%d: %s', epoch + 1, epochs,
                    ', '.join(f'{k} {v:.4g}' for k, v in record.items() if k != 'epoch'))
        checkpoints.save(epoch + 1, net, optimizer, extra={
            'global_step': global_step, 'train_s': time.perf_counter() - train_started, 'best_val': best_val,
            'best_state': best_state, 'history': history})
        if out_of_time:
            logger.info('time budget of %.0f s used up after %d epoch(s)', budget_s, epoch + 1)
            break
    train_s = time.perf_counter() - train_started
    if dist.enabled:
        ddp_cleanup()
    if not is_main_process():
        return args.out
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()

    # Calibration on the validation split.
    val_stats, _ = _split_metrics(head, data, 'val', device)
    val_mean, val_cov = predict(head, data.splits['val'].images_NHW3, device)
    val_err = val_mean - frame.to_en_m(data.splits['val'].lla_N3)
    coverage_raw = val_stats['ellipse95_coverage_pct']
    mode = config['calibration']
    fit = mode == 'always' or (mode == 'auto' and not COVERAGE_BAND_PCT[0] <= coverage_raw <= COVERAGE_BAND_PCT[1])
    variance_scale = geo_metrics.fit_variance_scale(val_err, val_cov, 0.95) if fit else 1.0
    logger.info('validation 95%% ellipse coverage %.1f %%; variance scale %.3g (%s)', coverage_raw, variance_scale,
                'fitted' if fit else 'not needed')

    test_stats, test_errors = _split_metrics(head, data, 'test', device, variance_scale=variance_scale)
    val_stats_cal, _ = _split_metrics(head, data, 'val', device, variance_scale=variance_scale)
    metrics: dict[str, Any] = {
        'test': test_stats,
        'val': {'mean_m': val_stats_cal['mean_m'], 'median_m': val_stats_cal['median_m'],
                'ellipse95_coverage_uncalibrated_pct': coverage_raw,
                'ellipse95_coverage_pct': val_stats_cal['ellipse95_coverage_pct']},
        'test_to_nearest_train': nearest_train_distance(frame.to_en_m(data.splits['test'].lla_N3),
                                                        frame.to_en_m(data.splits['train'].lla_N3)),
        'variance_scale': variance_scale,
        'train_s': train_s,
        'epochs_run': len(history),
        'threads': torch.get_num_threads(),
    }
    if config['robustness']:
        test = data.splits['test']

        def predict_errors(images: np.ndarray) -> np.ndarray:
            mean, _cov = predict(head, images, device)
            lat, lon = frame.to_lat_lon(mean)
            return geo_metrics.haversine_m(lat, lon, test.lla_N3[:, 0], test.lla_N3[:, 1])

        metrics['robustness'] = robustness_table(predict_errors, test.images_NHW3, test_errors, seed=args.seed)

    contract = GPSRegressorContract(
        geo=GeoReference.from_mapping(frame.geo_mapping()), variance_scale=variance_scale,
        altitude_known=frame.altitude_known, alt_std_m=frame.alt_std_m if frame.altitude_known else None,
        resize='stretch', backbone=config['backbone'], backbone_weights=net.backbone.weights_source)
    metadata = contract.to_metadata(
        target_frame=frame.to_mapping(),
        loss=config['loss'],
        head=config['head'],
        anchors=({'count': int(anchors_z.shape[0]), 'bin_size_m': bin_size_m} if anchors_z is not None else None),
        preset=args.preset,
        config=config,
        train_args=args.to_dict(),
        dataset={'root': str(args.data), 'sizes': {s: len(a) for s, a in data.splits.items()},
                 'skipped': data.skipped},
        outputs={OUTPUT_MEAN: 'predicted east/north (m) in the scene frame metadata.geo',
                 OUTPUT_COV: 'predicted 2x2 covariance (m^2) in the scene frame; multiply by variance_scale'},
        history=history)
    # Outputs are in metres / square metres: float32 rounding scales with the frame's spread.
    parity_tol = 1e-3 + 1e-5 * max(frame.std_en_m) ** 2

    bundle = export_and_bundle(head.cpu(), args.out, localizer_type=LOCALIZER_TYPE,
                               input_spec=InputSpec(height=height, width=width), output_names=list(contract.OUTPUTS),
                               metadata=metadata, metrics=metrics, parity_tol=parity_tol)
    logger.info('gps_regressor bundle %s written in %.0f s (test median %.2f m, within 10 m %.1f %%)', bundle,
                time.perf_counter() - started, test_stats['median_m'], test_stats['within_10m_pct'])
    return bundle
