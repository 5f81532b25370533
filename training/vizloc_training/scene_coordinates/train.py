"""``vizloc-train scene_coordinates``: encoder pretraining, ACE-style mapping, evaluation, export.

Stages (``train(args)``):

1. **Encoder.** By default the ImageNet-pretrained EfficientNet-Lite0 (``encoder``), fine-tuned
   end-to-end with a head on the training split for ``epochs`` or ``encoder_time_budget_s``
   (``finetune_encoder=true``; ``false`` maps with it frozen, ACE's recipe). With ``--init-weights
   ENCODER`` (an ``encoder.pt`` or a bundle directory holding one) that encoder is loaded instead and
   fine-tuned the same way (synthetic-to-real) or used frozen. ``encoder=cnn`` trains a small CNN
   from scratch end-to-end (the encoder pretraining; ``--set pretrain_encoder=true`` stops after it,
   which is how a scene-agnostic encoder is pretrained on synthetic data).
2. **Mapping** (ACE): the frozen encoder's features of all training images fill a buffer of
   ``buffer_size`` cells (with their targets); a fresh head is trained on shuffled buffer batches
   for ``head_iterations`` (one-cycle LR). Minutes on a CPU.
3. **Evaluation** on the ``test`` split through the runtime pose solver
   (:func:`vizloc_plugins.scene_coordinates.estimate_pose`): CrossLoc's pose metrics, mean
   scene-coordinate error, inlier ratio, covariance calibration (a factor fitted on the ``val``
   split so that 95 % of position errors fall in the 95 % ellipsoid, stored in the bundle).
4. **Export**: encoder + head as one ONNX graph (outputs ``coords``, ``log_scale``), bundle with
   the scene normalisation, geo-reference (dataset ``geo.yaml``), RANSAC defaults, metrics and the
   encoder checkpoint ``encoder.pt`` (reusable with ``--init-weights``).

Supervision is chosen automatically (``supervision=auto``): scene coordinates (``init/``) or depth
when every training image has them (CrossLoc MLE loss), the ACE reprojection loss otherwise.

Both training phases run in the training skeleton (:func:`vizloc_training.train.skeleton.fit`): the
end-to-end stage as epochs over the training images (:class:`_EndToEndTask`: checkpoints, resume, its
own time budget ``encoder_time_budget_s``), and the head's mapping as one "epoch" of ``head_iterations``
steps over the reshuffled feature buffer (:class:`_HeadTask`: budget ``head_time_budget_s``; no
checkpoints inside it, the mapped network is saved after it). Neither selects a best state (there is no
validation during training; the val split calibrates the covariance afterwards). Filling the buffer is
feature extraction, not a training loop, and stays its own loop (:func:`_build_buffer`). The settings are
the typed :class:`SceneConfig`; its RANSAC defaults are the bundle contract's (:class:`SceneRansac`).
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from vizloc_plugins.keyframes import KEYFRAMES_INDEX, KEYFRAMES_NPZ, KeyframeError, KeyframeMap, build_keyframe_map
from vizloc_plugins.scene_coordinates_contract import (LOCALIZER_TYPE, SceneCoordinatesContract,
                                                      SceneKeyframes, SceneRansac)
from vizloc_ros.bundle import InputSpec
from vizloc_ros.contract import geo_reference

from ..train import skeleton
from ..train.config import TrainArgs, TrainConfig, TrainConfigError, resolve_preset
from ..train.export import export_and_bundle
from ..train.images import imagenet_normalise, to_unit
from ..train.loop import CheckpointManager, import_faiss, progress, select_device, set_seed, work_dir
from .data import PreparedImage, augment_view, open_split, prepare_split, scene_normalisation
from .evaluate import calibrate_covariance_scale, evaluate_images
from .losses import ReprojectionLossConfig, coordinate_nll, reprojection_loss
from .model import (ENCODER_KINDS, OUTPUT_STRIDE, Encoder, EncoderConfig, Head, HeadConfig, SceneCoordinateNet, load_encoder,
                    save_encoder)

__all__ = ['PRESETS', 'BASE', 'SceneConfig', 'train', 'TrainedScene', 'fit']

logger = logging.getLogger(__name__)

_RANSAC = SceneRansac()  # the contract owns the RANSAC and keyframe defaults
_KEYFRAMES = SceneKeyframes()


@dataclass(frozen=True)
class SceneConfig(TrainConfig):
    """Scene-coordinate settings (a :class:`TrainConfig`); the RANSAC fields become the bundle's
    ``metadata.ransac`` (:attr:`ransac`)."""

    TYPE: ClassVar[str] = LOCALIZER_TYPE
    POSITIVE: ClassVar[tuple[str, ...]] = ('epochs', 'batch_size', 'buffer_size', 'head_iterations', 'head_batch_size')
    CHOICES: ClassVar[Mapping[str, tuple[str, ...]]] = {
        'supervision': ('auto', 'coords', 'reprojection'), 'uncertainty': ('laplace', 'gaussian', 'none'),
        'encoder': ENCODER_KINDS, 'encoder_norm': ('none', 'group'), 'thresholds': ('auto', 'aerial', 'indoor')}

    # network input (0 = the dataset's native image size)
    input_width: int = 0
    input_height: int = 0
    # encoder: an ImageNet-pretrained EfficientNet-Lite ('efficientnet_lite0/1/2') with its
    # stride-8/16(/32) maps, fine-tuned end-to-end on the scene first (finetune_encoder) or frozen
    # (ACE's recipe, mapping only); or 'cnn', trained here from scratch end-to-end first
    encoder: str = 'efficientnet_lite0'
    encoder_levels: list[int] = field(default_factory=lambda: [8, 16])
    encoder_width: int = 24
    encoder_blocks: int = 4
    feature_dim: int = 128
    encoder_norm: str = 'group'
    context_dim: int = 0
    head_width: int = 256
    head_layers: int = 2
    # encoder pretraining / end-to-end (epochs over the training images)
    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-3
    pretrain_encoder: bool = False
    finetune_encoder: bool = True    # a pretrained or --init-weights encoder: end-to-end on the scene first
    # > 0: the end-to-end (encoder) stage stops after this many seconds; its schedule runs over
    # whichever ends first, epochs or time
    encoder_time_budget_s: float = 0.0
    # geometric augmentation (coords supervision only; exact: roll about the principal point + focal
    # change, targets re-sampled, see data.augment_view): uniform angle in +-aug_rotation_deg, scale
    # log-uniform in [1/aug_scale, aug_scale]; 0 / 1 = off
    aug_rotation_deg: float = 0.0
    aug_scale: float = 1.0
    # mapping (head from the feature buffer)
    buffer_size: int = 300_000
    head_iterations: int = 3000
    head_batch_size: int = 4096
    head_lr: float = 3e-3
    # > 0: head training stops after this many seconds (the cosine schedule runs over whichever ends
    # first, iterations or time), so mapping keeps its time on a slow or shared machine
    head_time_budget_s: float = 0.0
    init_head_from_pretraining: bool = True
    # losses
    supervision: str = 'auto'
    uncertainty: str = 'laplace'
    tau_max_px: float = 50.0
    tau_min_px: float = 1.0
    target_depth_m: float = 10.0
    # evaluation / runtime defaults (RANSAC: the contract's defaults)
    hypotheses: int = _RANSAC.hypotheses
    inlier_threshold_px: float = _RANSAC.inlier_threshold_px
    min_inliers: int = _RANSAC.min_inliers
    min_inlier_ratio: float = _RANSAC.min_inlier_ratio
    eval_limit: int = 0
    thresholds: str = 'auto'
    # keyframe map (vizloc_plugins.keyframes): the training frames' SIFT keypoints lifted to 3D by their
    # depth/scene coordinates, matched at run time beside the network (SceneKeyframes in the bundle)
    keyframes: bool = True
    keyframe_features: int = _KEYFRAMES.n_features
    keyframe_min_inliers: int = _KEYFRAMES.min_inliers

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.aug_rotation_deg <= 180.0 or self.aug_scale < 1.0:
            raise TrainConfigError(f'{self.TYPE}: aug_rotation_deg must be in [0, 180] and aug_scale >= 1, got '
                                   f'{self.aug_rotation_deg} / {self.aug_scale}')
        if not 0 <= self.context_dim < self.feature_dim:
            raise TrainConfigError(f'{self.TYPE}: context_dim must be in [0, feature_dim), got {self.context_dim}')
        for name in ('input_width', 'input_height'):
            if getattr(self, name) % OUTPUT_STRIDE:
                raise TrainConfigError(f'{self.TYPE}: {name} must be a multiple of {OUTPUT_STRIDE}, '
                                       f'got {getattr(self, name)}')
        try:
            self.ransac
            self.keyframe_settings()
        except ValueError as exc:  # ContractError
            raise TrainConfigError(f'{self.TYPE}: {exc}') from exc

    @property
    def ransac(self) -> SceneRansac:
        """The RANSAC PnP settings: evaluated with here, and the bundle's defaults."""
        return SceneRansac(hypotheses=self.hypotheses, inlier_threshold_px=self.inlier_threshold_px,
                           min_inliers=self.min_inliers, min_inlier_ratio=self.min_inlier_ratio)


    def keyframe_settings(self, **measured: Any) -> SceneKeyframes:
        """The bundle's keyframe settings (``measured``: covariance_scale, frames, points)."""
        return SceneKeyframes(n_features=self.keyframe_features, min_inliers=self.keyframe_min_inliers, **measured)


BASE = SceneConfig()

PRESETS: dict[str, SceneConfig] = {
    'tiny': replace(BASE, encoder='cnn', finetune_encoder=False, encoder_width=8, encoder_blocks=1, feature_dim=16,
                    head_width=32, head_layers=1, epochs=2, batch_size=2, buffer_size=4000, head_iterations=20,
                    head_batch_size=512, hypotheses=32, min_inliers=8, eval_limit=3),
    # The pretrained Lite0 is fine-tuned on the scene for 15 min or 200 epochs, whichever ends first
    # (indoor: 95 % of the test frames posed against 28 % with the frozen encoder and 70 % with the
    # CNN trained from scratch in the same time, docs/localizers/scene_coordinates.md); mapping
    # (buffer + head + keyframe map) within 5 min on 2 CPU cores: the head gets at most 220 s (the
    # keyframe map of 1200 indoor frames takes ~35 s).
    'demo': replace(BASE, epochs=200, encoder_time_budget_s=900.0, head_time_budget_s=220.0),
    'full': replace(BASE, encoder_width=32, encoder_blocks=6, feature_dim=256, head_width=512, head_layers=3, epochs=60,
                    batch_size=8, buffer_size=2_000_000, head_iterations=20000, head_batch_size=5120,
                    aug_rotation_deg=15.0, aug_scale=1.5),
}


class TrainedScene:
    """Result of :func:`fit`: the joined network and everything the bundle needs."""

    def __init__(self, net: SceneCoordinateNet, input_size: tuple[int, int], supervision: str,
                 timings_s: dict[str, float], encoder_info: dict[str, Any], head_iterations_run: int = 0) -> None:
        self.net = net
        self.input_size = input_size
        self.supervision = supervision
        self.timings_s = timings_s
        self.head_iterations_run = head_iterations_run
        self.encoder_info = encoder_info


# -- tensors -----------------------------------------------------------------------------------------

def _normalise_batch(images: list[PreparedImage], device: torch.device, jitter: bool,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    x = to_unit(np.stack([im.rgb_HW3 for im in images]), device)
    if jitter:  # photometric augmentation: brightness / contrast per image
        n = x.shape[0]
        gain = 1.0 + 0.2 * (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1).to(device)
        bias = 0.08 * (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1).to(device)
        x = (x * gain + bias).clamp(0.0, 1.0)
    return imagenet_normalise(x)


def _augment(images: list[PreparedImage], config: SceneConfig, supervision: str,
             rng: np.random.Generator) -> list[PreparedImage]:
    """Random exact roll/scale views (see :func:`.data.augment_view`) when enabled and supervised by coords."""
    rotation = math.radians(config.aug_rotation_deg)
    log_scale = math.log(max(config.aug_scale, 1.0))
    if supervision != 'coords' or (rotation == 0.0 and log_scale == 0.0):
        return images
    return [augment_view(im, float(rng.uniform(-rotation, rotation)), math.exp(float(rng.uniform(-log_scale, log_scale))))
            for im in images]


def _cell_tensors(images: list[PreparedImage], h: int, w: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Per-cell targets of a batch, flattened to (B*h*w, ...)."""
    u = torch.arange(w, dtype=torch.float32) * OUTPUT_STRIDE + OUTPUT_STRIDE // 2
    v = torch.arange(h, dtype=torch.float32) * OUTPUT_STRIDE + OUTPUT_STRIDE // 2
    vv, uu = torch.meshgrid(v, u, indexing='ij')
    pixels = torch.stack([uu, vv], dim=-1).reshape(1, h * w, 2).expand(len(images), -1, -1).reshape(-1, 2)
    out = {'pixels': pixels.to(device)}
    if all(im.coords_3hw is not None for im in images):
        coords = torch.from_numpy(np.stack([im.coords_3hw for im in images])).permute(0, 2, 3, 1).reshape(-1, 3)
        valid = torch.from_numpy(np.stack([im.valid_hw for im in images])).reshape(-1)
        out.update(coords=coords.to(device), valid=valid.to(device))
    T_cw = torch.from_numpy(np.stack([im.T_camera_world[:3] for im in images])).float()
    K = torch.from_numpy(np.stack([im.K for im in images])).float()
    out['T_camera_world'] = T_cw[:, None].expand(-1, h * w, -1, -1).reshape(-1, 3, 4).to(device)
    out['K'] = K[:, None].expand(-1, h * w, -1, -1).reshape(-1, 3, 3).to(device)
    return out


def _loss(coords_n_B3: torch.Tensor, log_scale_B: torch.Tensor, cells: dict[str, torch.Tensor], supervision: str,
          mean_m: torch.Tensor, scale_m: float, progress: float, config: SceneConfig
          ) -> tuple[torch.Tensor, dict[str, float]]:
    if supervision == 'coords':
        valid = cells['valid']
        if not valid.any():
            return coords_n_B3.sum() * 0.0, {'valid_ratio': 0.0}
        gt_n = (cells['coords'][valid] - mean_m) / scale_m
        nll = coordinate_nll(coords_n_B3[valid], gt_n, log_scale_B[valid], config.uncertainty)
        return nll.mean(), {'valid_ratio': float(valid.float().mean())}
    rep = ReprojectionLossConfig(tau_max_px=config.tau_max_px, tau_min_px=config.tau_min_px,
                                 target_depth_m=config.target_depth_m, uncertainty=config.uncertainty)
    coords_m = coords_n_B3 * scale_m + mean_m
    return reprojection_loss(coords_m, log_scale_B, cells['pixels'], cells['T_camera_world'], cells['K'], progress,
                             scale_m, rep)


# -- stages ------------------------------------------------------------------------------------------

class _EndToEndTask(skeleton.TrainingTask):
    """Encoder + head end-to-end: batches of the epoch's shuffled training images (exact roll/scale views,
    photometric jitter), the coordinate or reprojection loss (its curriculum follows the schedule's
    progress), gradient clipping at norm 5. Separate random streams for shuffling (replayed on resume, so a
    resumed run shuffles as an uninterrupted one), views and jitter."""

    def __init__(self, net: SceneCoordinateNet, images: list[PreparedImage], config: SceneConfig, supervision: str,
                 device: torch.device, seed: int) -> None:
        self.model, self.images, self.config, self.supervision, self.device = net, images, config, supervision, device
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
        self.steps_per_epoch = max(1, math.ceil(len(images) / config.batch_size))
        self.rng = np.random.default_rng(seed)
        self.aug_rng = np.random.default_rng(seed + 3)  # separate stream: the resumed shuffling replay stays exact
        self.generator = torch.Generator().manual_seed(seed)
        self.mean_m = net.scene_mean_m.view(1, 3)
        self.scale_m = float(net.scene_scale_m)

    def batches(self, epoch: int):
        order = self.rng.permutation(len(self.images))
        batch = self.config.batch_size
        for start in range(0, len(self.images), batch):
            yield [self.images[i] for i in order[start:start + batch]]

    def step(self, chunk: list[PreparedImage], at: skeleton.StepInfo) -> float:
        chunk = _augment(chunk, self.config, self.supervision, self.aug_rng)
        x = _normalise_batch(chunk, self.device, jitter=True, generator=self.generator)
        coords_n, log_scale_n = self.model.forward_normalised(x)
        h, w = coords_n.shape[2:]
        cells = _cell_tensors(chunk, h, w, self.device)
        loss, _ = _loss(coords_n.permute(0, 2, 3, 1).reshape(-1, 3), log_scale_n.reshape(-1), cells, self.supervision,
                        self.mean_m, self.scale_m, at.progress, self.config)
        return self.update(loss, clip_norm=5.0)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {'stage': 'end_to_end'}

    def resume(self, payload: Mapping[str, Any]) -> None:
        for _ in range(int(payload['epoch'])):  # same shuffling as an uninterrupted run
            self.rng.permutation(len(self.images))


def _train_end_to_end(net: SceneCoordinateNet, images: list[PreparedImage], config: SceneConfig, supervision: str,
                      device: torch.device, seed: int, checkpoints: CheckpointManager | None = None,
                      resume: Mapping[str, Any] | None = None) -> float:
    """Encoder + head end-to-end (:class:`_EndToEndTask` in the skeleton); checkpoint after every epoch,
    resumable. Returns the mean loss of the last epoch run (nan if none ran: a resumed run whose
    budget was used up goes on to mapping).

    Runs ``epochs`` epochs or until ``encoder_time_budget_s`` (> 0) is used up, whichever comes
    first. The learning rate (warm-up over the first 10 % of the run, then cosine) and the
    reprojection curriculum (the schedule's progress) follow steps or time, whichever is further, so a
    run cut by the budget still ends with a decayed learning rate and the final threshold.
    """
    task = _EndToEndTask(net, images, config, supervision, device, seed)
    total = config.epochs * task.steps_per_epoch
    schedule = skeleton.Schedule(warmup_steps=max(1, int(round(0.1 * total))), total_steps=total,
                                 budget_s=config.encoder_time_budget_s)
    result = skeleton.fit(task, epochs=config.epochs, schedule=schedule, checkpoints=checkpoints, resume=resume,
                          select_best=False, name='end-to-end epoch')
    if resume is not None and not result.epochs_run:
        logger.info('end-to-end training had used its time budget: going on to mapping')
    return result.last_loss


@torch.no_grad()
def _build_buffer(encoder: Encoder, images: list[PreparedImage], config: SceneConfig, supervision: str,
                  device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """ACE's training buffer: encoder features of randomly chosen (valid) cells with their targets."""
    encoder.eval()
    rng = np.random.default_rng(seed + 1)
    generator = torch.Generator().manual_seed(seed + 1)
    per_image = max(1, config.buffer_size // max(len(images), 1))
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), 8):
        chunk = _augment(images[start:start + 8], config, supervision, rng)
        feats = encoder(_normalise_batch(chunk, device, jitter=True, generator=generator))
        n, c, h, w = feats.shape
        feats = feats.permute(0, 2, 3, 1).reshape(n, h * w, c)
        cells = _cell_tensors(chunk, h, w, device)
        for k in range(n):
            sl = slice(k * h * w, (k + 1) * h * w)
            candidates = np.arange(h * w)
            if supervision == 'coords':
                candidates = candidates[cells['valid'][sl].cpu().numpy()]
            if candidates.size == 0:
                continue
            pick = torch.from_numpy(rng.choice(candidates, size=min(per_image, candidates.size), replace=False))
            parts.setdefault('features', []).append(feats[k, pick].half().cpu())
            for key in ('pixels', 'T_camera_world', 'K', 'coords', 'valid'):
                if key in cells:
                    parts.setdefault(key, []).append(cells[key][sl][pick].cpu())
    if not parts:
        raise TrainConfigError('the feature buffer is empty: no training cell has a valid target')
    return {key: torch.cat(value) for key, value in parts.items()}


class _HeadTask(skeleton.TrainingTask):
    """ACE's head training: batches of the shuffled feature buffer (reshuffled when it runs out), the
    loss's curriculum over the iterations."""

    def __init__(self, head: Head, buffer: dict[str, torch.Tensor], config: SceneConfig, supervision: str,
                 mean_m: torch.Tensor, scale_m: float, device: torch.device, seed: int) -> None:
        self.model, self.buffer, self.config, self.supervision, self.device = head, buffer, config, supervision, device
        self.mean_m, self.scale_m = mean_m.to(device), scale_m
        self.optimizer = torch.optim.AdamW(head.parameters(), lr=config.head_lr, weight_decay=1e-4)
        self.iterations = self.steps_per_epoch = config.head_iterations
        self.size = buffer['features'].shape[0]
        self.batch = min(config.head_batch_size, self.size)
        self.generator = torch.Generator().manual_seed(seed + 2)
        self.losses: list[float] = []

    def batches(self, epoch: int):
        order = torch.randperm(self.size, generator=self.generator)
        cursor = 0
        for _ in range(self.iterations):
            if cursor + self.batch > self.size:
                order = torch.randperm(self.size, generator=self.generator)
                cursor = 0
            yield order[cursor:cursor + self.batch]
            cursor += self.batch

    def step(self, idx: torch.Tensor, at: skeleton.StepInfo) -> float:
        feats = self.buffer['features'][idx].to(self.device).float()[:, :, None, None]
        cells = {key: value[idx].to(self.device) for key, value in self.buffer.items() if key != 'features'}
        coords_n, log_scale_n = self.model(feats)
        loss, _ = _loss(coords_n.reshape(-1, 3), log_scale_n.reshape(-1), cells, self.supervision, self.mean_m,
                        self.scale_m, at.step / max(self.iterations - 1, 1), self.config)
        self.losses.append(self.update(loss))
        run = at.step + 1
        if run % max(1, self.iterations // 10) == 0:
            logger.info('head iteration %d/%d: loss %.4f', run, self.iterations, float(np.mean(self.losses[-50:])))
        return self.losses[-1]


def _train_head(head: Head, buffer: dict[str, torch.Tensor], config: SceneConfig, supervision: str,
                mean_m: torch.Tensor, scale_m: float, device: torch.device, seed: int) -> tuple[float, int]:
    """ACE's head training on buffer batches (:class:`_HeadTask`, one skeleton epoch of ``head_iterations``
    steps); returns the final loss (mean of the last 50) and the iterations run.

    Warm-up over 5 % of the iterations, then cosine decay over ``head_iterations`` or
    ``head_time_budget_s`` (> 0), whichever runs out first; training stops when either does.
    """
    task = _HeadTask(head, buffer, config, supervision, mean_m, scale_m, device, seed)
    iterations = config.head_iterations
    schedule = skeleton.Schedule(warmup_steps=max(1, int(round(0.05 * iterations))), total_steps=iterations,
                                 budget_s=config.head_time_budget_s)
    result = skeleton.fit(task, epochs=1, schedule=schedule, select_best=False, name='head')
    return (float(np.mean(task.losses[-50:])) if task.losses else math.nan), result.global_step


def fit(train_images: list[PreparedImage], config: SceneConfig, *, init_weights: Path | None = None,
        device: torch.device = torch.device('cpu'), seed: int = 0, checkpoints: CheckpointManager | None = None,
        resume: bool = False) -> TrainedScene:
    """Encoder (load or train end-to-end) + ACE mapping on prepared images.

    With ``checkpoints`` every end-to-end epoch and the mapped network are saved; ``resume``
    continues from the latest checkpoint (a mapped one skips training altogether).
    """
    if not train_images:
        raise TrainConfigError('no training images')
    in_h, in_w = train_images[0].rgb_HW3.shape[:2]
    timings: dict[str, float] = {}
    mean, scale, auto_supervision = scene_normalisation(train_images, config.target_depth_m)
    supervision = auto_supervision if config.supervision == 'auto' else config.supervision
    if supervision == 'coords' and auto_supervision != 'coords':
        raise TrainConfigError('supervision=coords needs scene coordinates (init/) or depth for every training image')
    logger.info('scene normalisation: mean %s m, scale %.3f m; supervision %s', np.round(mean, 3), scale, supervision)
    if init_weights is not None:
        encoder, encoder_info = load_encoder(init_weights)
        logger.info('encoder from %s (%s)', encoder_info['path'], encoder_info.get('config'))
    else:
        try:
            encoder_config = EncoderConfig(width=config.encoder_width, blocks=config.encoder_blocks,
                                           feature_dim=config.feature_dim, norm=config.encoder_norm,
                                           context_dim=config.context_dim, kind=config.encoder,
                                           levels=tuple(config.encoder_levels))
        except ValueError as exc:
            raise TrainConfigError(f'bad encoder settings: {exc}') from exc
        encoder = Encoder(encoder_config, pretrained=encoder_config.kind != 'cnn')
        encoder_info = {'path': None, 'config': None, 'weights_source': encoder.weights_source}
        if encoder_config.kind != 'cnn':
            logger.info('encoder: ImageNet-pretrained %s, stride-%s maps (%d channels), %s', encoder_config.kind,
                        '/'.join(map(str, encoder_config.levels)), encoder.feature_dim,
                        'fine-tuned on the scene first' if config.finetune_encoder else 'frozen (mapping only)')
    head_config = HeadConfig(width=config.head_width, layers=config.head_layers)
    net = SceneCoordinateNet(encoder, Head(encoder.feature_dim, head_config), tuple(mean), scale).to(device)
    payload = checkpoints.load_latest(map_location=device) if (resume and checkpoints is not None) else None
    stage = (payload or {}).get('extra', {}).get('stage')
    if stage == 'mapped':
        net.load_state_dict(payload['model'])
        logger.info('resumed a mapped network from %s: skipping training', payload['path'])
        net.eval()
        return TrainedScene(net, (in_w, in_h), supervision, dict(payload['extra'].get('timings_s', {})), encoder_info,
                            int(payload['extra'].get('head_iterations_run', 0)))
    trains_encoder = init_weights is None and encoder.config.kind == 'cnn'
    if trains_encoder or config.finetune_encoder or config.pretrain_encoder:
        started = time.perf_counter()
        _train_end_to_end(net, train_images, config, supervision, device, seed, checkpoints,
                          payload if stage == 'end_to_end' else None)
        timings['encoder_training_s'] = time.perf_counter() - started
    iterations_run = 0
    if not config.pretrain_encoder:
        started = time.perf_counter()
        encoder.requires_grad_(False)
        buffer = _build_buffer(encoder, train_images, config, supervision, device, seed)
        timings['buffer_s'] = time.perf_counter() - started
        logger.info('feature buffer: %d cells from %d images (%.1f s)', buffer['features'].shape[0],
                    len(train_images), timings['buffer_s'])
        head = net.head if ('encoder_training_s' in timings and config.init_head_from_pretraining) \
            else Head(encoder.feature_dim, head_config).to(device)
        started = time.perf_counter()
        _loss_value, iterations_run = _train_head(head, buffer, config, supervision, net.scene_mean_m.view(1, 3),
                                                  scale, device, seed)
        timings['head_training_s'] = time.perf_counter() - started
        net.head = head
        encoder.requires_grad_(True)
    timings['mapping_s'] = timings.get('buffer_s', 0.0) + timings.get('head_training_s', 0.0)
    if checkpoints is not None:
        checkpoints.save(config.epochs + 1, net, None, extra={'stage': 'mapped', 'timings_s': timings,
                                                                  'head_iterations_run': iterations_run})
    net.eval()
    return TrainedScene(net, (in_w, in_h), supervision, timings, encoder_info, iterations_run)


# -- entry point -------------------------------------------------------------------------------------

def _input_size(dataset: Any, config: SceneConfig) -> tuple[int, int]:
    if config.input_width and config.input_height:
        return config.input_width, config.input_height
    first = next(iter(dataset))
    h, w = np.asarray(first.rgb_HW3).shape[:2]
    w8, h8 = (w // OUTPUT_STRIDE) * OUTPUT_STRIDE, (h // OUTPUT_STRIDE) * OUTPUT_STRIDE
    return max(w8, OUTPUT_STRIDE), max(h8, OUTPUT_STRIDE)


def _split_or_none(root: Path, split: str) -> Any:
    try:
        return open_split(root, split)
    except (FileNotFoundError, ValueError) as exc:
        logger.info('no %s split in %s (%s)', split, root, exc)
        return None


def _keyframe_map(data: Path, out_dir: Path, config: SceneConfig, metrics: dict[str, Any]
                  ) -> tuple[KeyframeMap | None, dict[str, Path]]:
    """Build the keyframe map of the training split into ``out_dir`` (``config.keyframes``): the loaded map
    (with its settings) and the bundle files; (None, {}) when disabled or the split has no depth or scene
    coordinates to lift keypoints with (logged)."""
    if not config.keyframes:
        return None, {}
    split = open_split(data, 'train')
    import_faiss()
    started = time.perf_counter()
    try:
        built = build_keyframe_map(progress(split, 'keyframe map', total=len(split)), out_dir,
                                   n_features=config.keyframe_features)
    except KeyframeError as exc:
        logger.warning('no keyframe map: %s', exc)
        return None, {}
    metrics['keyframe_map_s'] = time.perf_counter() - started
    files = {name: out_dir / name for name in (KEYFRAMES_NPZ, KEYFRAMES_INDEX)}
    keyframes = KeyframeMap(files[KEYFRAMES_NPZ], files[KEYFRAMES_INDEX],
                            config.keyframe_settings(frames=built['frames'], points=built['points']))
    return keyframes, files


def train(args: TrainArgs) -> Path:
    """Train (encoder if needed, then mapping), evaluate on the test split, and write the bundle."""
    config = resolve_preset(PRESETS, args)
    set_seed(args.seed)
    device = select_device(args.device)
    train_split = open_split(args.data, 'train')
    in_w, in_h = _input_size(train_split, config)
    started = time.perf_counter()
    train_images = prepare_split(train_split, in_w, in_h)
    load_s = time.perf_counter() - started
    logger.info('%d training images at %dx%d (%.1f s to load)', len(train_images), in_w, in_h, load_s)
    checkpoints = CheckpointManager(work_dir(args.out) / 'checkpoints', describe={
        'type': LOCALIZER_TYPE, 'preset': args.preset, 'args': args.to_dict(), 'config': config.to_dict()})
    trained = fit(train_images, config, init_weights=args.init_weights, device=device, seed=args.seed,
                  checkpoints=checkpoints, resume=args.resume)

    geo_mapping = None
    geo = getattr(train_split, 'geo', None)
    if geo is not None:
        geo_mapping = geo.to_mapping() if hasattr(geo, 'to_mapping') else dict(geo)
    thresholds = config.thresholds
    if thresholds == 'auto':
        thresholds = 'indoor' if float(trained.net.scene_scale_m) < 20.0 else 'aerial'
    metrics: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix='vizloc-scene-') as tmp_name:
        tmp = Path(tmp_name)
        keyframes, extra_files = _keyframe_map(args.data, tmp, config, metrics)
        covariance_scale = _evaluate(trained.net, args.data, (in_w, in_h), config, thresholds, keyframes, metrics)
        bundle = _write_bundle(args, config, trained, train_images, (in_w, in_h), geo_mapping, covariance_scale,
                               keyframes.settings if keyframes is not None else None, metrics,
                               {'encoder.pt': tmp / 'encoder.pt', **extra_files})
    logger.info('wrote %s', bundle)
    return bundle


def _evaluate(net: SceneCoordinateNet, data: Path, input_size: tuple[int, int], config: SceneConfig, thresholds: str,
              keyframes: KeyframeMap | None, metrics: dict[str, Any]) -> float:
    """Calibrate the covariance factors on ``val`` (the network's, returned; the keyframe poses' into
    ``keyframes.settings``) and put the ``test`` metrics into ``metrics`` (``test_*`` what the node
    publishes; ``test_network_*`` the network alone when there is a keyframe map)."""
    limit = config.eval_limit or None
    covariance_scale = 1.0
    val_split = _split_or_none(data, 'val')
    val_images = prepare_split(val_split, *input_size, limit) if val_split is not None else []
    if val_images:
        val_eval = evaluate_images(net, val_images, config.ransac, thresholds=thresholds, keyframes=keyframes)
        covariance_scale = calibrate_covariance_scale(val_eval.network or val_eval)
        if keyframes is not None:
            keyframes.settings = replace(keyframes.settings,
                                         covariance_scale=calibrate_covariance_scale(val_eval, source='keyframes'))
    test_split = _split_or_none(data, 'test')
    test_images = prepare_split(test_split, *input_size, limit) if test_split is not None else []
    if test_images:
        result = evaluate_images(net, test_images, config.ransac, thresholds=thresholds,
                                 covariance_scale=covariance_scale, keyframes=keyframes)
        if result.network is not None:
            metrics.update({f'test_network_{k}': v for k, v in result.network.metrics.items()})
        metrics.update({f'test_{k}': v for k, v in result.metrics.items()})
    return covariance_scale


def _write_bundle(args: TrainArgs, config: SceneConfig, trained: TrainedScene, train_images: list[PreparedImage],
                  input_size: tuple[int, int], geo_mapping: dict[str, Any] | None, covariance_scale: float,
                  keyframe_settings: SceneKeyframes | None, metrics: dict[str, Any],
                  files: dict[str, Path]) -> Path:
    """Export the network and write the bundle with its metadata, ``metrics`` and ``files`` (``encoder.pt``
    is saved to its path here)."""
    in_w, in_h = input_size
    metrics.update({f'{k}': float(v) for k, v in trained.timings_s.items()})
    if 'keyframe_map_s' in metrics and 'mapping_s' in metrics:  # what mapping a scene costs in all
        metrics['mapping_with_keyframes_s'] = metrics['mapping_s'] + metrics['keyframe_map_s']
    metrics['head_iterations_run'] = trained.head_iterations_run
    metrics['covariance_scale'] = covariance_scale

    contract = SceneCoordinatesContract(
        output_stride=OUTPUT_STRIDE, resize='stretch', covariance_scale=covariance_scale, geo=geo_reference(geo_mapping),
        ransac=config.ransac, keyframes=keyframe_settings)
    metadata = contract.to_metadata(
        cell_centre='8*j+4 (input pixels; pixel k centred at k; DSAC* convention)',
        scene_mean_m=trained.net.scene_mean_m.view(3).tolist(),
        scene_scale_m=float(trained.net.scene_scale_m),
        supervision=trained.supervision,
        uncertainty=config.uncertainty,
        encoder={'kind': trained.net.encoder.config.kind, 'levels': list(trained.net.encoder.config.levels),
                 'weights_source': dict(trained.net.encoder.weights_source),
                 'width': trained.net.encoder.config.width, 'blocks': trained.net.encoder.config.blocks,
                 'feature_dim': trained.net.encoder.feature_dim,
                 'dilations': list(trained.net.encoder.config.dilations),
                 'norm': trained.net.encoder.config.norm, 'context_dim': trained.net.encoder.config.context_dim,
                 'init_weights': str(args.init_weights) if args.init_weights else None},
        head={'width': config.head_width, 'layers': config.head_layers},
        dataset=str(args.data),
        train_images=len(train_images),
        args=args.to_dict(),
        preset=args.preset,
        config=config.to_dict())
    save_encoder(trained.net.encoder, files['encoder.pt'],
                 trained_on={'dataset': str(args.data), 'supervision': trained.supervision, 'preset': args.preset,
                             'init_weights': metadata['encoder']['init_weights']})
    return export_and_bundle(
        trained.net, args.out, localizer_type=LOCALIZER_TYPE,
        input_spec=InputSpec(name='image', height=in_h, width=in_w), output_names=list(contract.OUTPUTS),
        metadata=metadata, metrics=metrics, extra_files=files, latency_runs=10)

