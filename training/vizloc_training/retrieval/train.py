"""Trainer of the ``retrieval`` localizer: ``vizloc-train retrieval --data CAMPUS --out BUNDLE``.

Pipeline (seed 004, adapted):

1. Read the reference database ``DATA/refdb`` (verified against its manifest); entries need a pose
   (``E``): their positions and optical axes define the places.
2. Fine-tune :class:`.model.RetrievalNet` (backbone from ``make_backbone`` + GeM + linear + L2 norm) for
   place recognition: batches of anchors, each with a random positive (within ``positive_radius_m`` and
   optical axes within ``positive_max_angle_deg``: overlapping views); in-batch contrastive loss
   (``loss: infonce``, temperature ``temperature``) against the candidates farther than
   ``negative_radius_m``, or the batch-hard triplet loss on cosine similarity (``loss: triplet``, margin
   ``margin``; collapses from scratch: measured loss stuck at the margin).
   AdamW, warm-up + cosine learning rate over steps or ``time_budget_s``; light photometric augmentation
   (the GPS regressor's). Checkpoint per epoch in ``OUT.work/checkpoints`` (``--resume``).
3. Export ONNX (``descriptor`` output, preprocessing baked in) and write the bundle with the
   :class:`vizloc_plugins.retrieval_contract.RetrievalContract` metadata.
4. Compute the database's descriptors with the exported bundle (``vizloc-db build``'s code), build the
   FAISS index, and evaluate the test queries through the runtime pipeline (:mod:`.evaluate`); the metrics
   go into their own file beside the (immutable) bundle, ``OUT.eval/<eval_split>.yaml``
   (:func:`vizloc_training.train.evaluation_file.write_evaluation`; ``vizloc-train`` prints them as
   ``test/recall_at_1_pct``, ...).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vizloc_plugins.refdb import ReferenceDatabase, build_index
from vizloc_plugins.retrieval_contract import LOCALIZER_TYPE, OUTPUT_NAMES, RetrievalContract
from vizloc_ros.bundle import InputSpec

from ..gps_regressor.train import _normalise, _set_threads, _to_unit, augment_batch
from ..train.config import TrainArgs, TrainConfigError, resolve_preset
from ..train.evaluation_file import write_evaluation
from ..train.export import export_and_bundle
from ..train.loop import (CheckpointManager, discriminative_param_groups, lr_factor, select_device, set_lr, set_seed,
                          work_dir)
from .data import load_reference_arrays, same_place
from .model import RetrievalNet

__all__ = ['PRESETS', 'LOCALIZER_TYPE', 'LOSSES', 'train', 'triplet_loss', 'info_nce_loss']

logger = logging.getLogger(__name__)

_BASE: dict[str, Any] = {
    'backbone': 'efficientnet_lite0',
    'pretrained': True,          # start from the packaged ImageNet weights (seed 004 starts from pretrained networks)
    'backbone_lr_factor': 0.3,   # fine-tuning: the backbone learns at lr x this, GeM + projection at lr
    'image_height': 96,
    'image_width': 128,
    'descriptor_dim': 256,
    'gem_p': 3.0,
    'epochs': 20,
    'batch_size': 24,
    'lr': 1e-3,
    'weight_decay': 1e-4,
    'warmup_steps': 20,
    'loss': 'infonce',
    'temperature': 0.1,
    'margin': 0.1,
    'positive_radius_m': 10.0,
    'positive_max_angle_deg': 60.0,
    'negative_radius_m': 25.0,
    'augment': 'light',
    'time_budget_s': 0.0,
    'max_entries': 0,
    'eval_split': 'test',
    'eval_queries': 0,
    'threads': 0,
}

#: ``demo``: CPU, about 10 min of training on 2 shared cores; ``tiny``: seconds, for tests; ``full``: GPU.
#: Backbone: the ImageNet-pretrained EfficientNet-Lite0 (``--set pretrained=false`` trains from scratch;
#: ``--set backbone=resnet18 --set pretrained=false`` is the scratch network that learnt best here).
PRESETS: dict[str, dict[str, Any]] = {
    'demo': {**_BASE, 'image_height': 72, 'image_width': 96, 'epochs': 200, 'time_budget_s': 900.0},
    'tiny': {**_BASE, 'backbone': 'resnet18', 'pretrained': False, 'image_height': 48, 'image_width': 64, 'descriptor_dim': 32, 'epochs': 1, 'batch_size': 8,
             'warmup_steps': 0, 'max_entries': 48, 'eval_queries': 6},
    'full': {**_BASE, 'image_height': 240, 'image_width': 320, 'epochs': 60, 'batch_size': 48, 'lr': 3e-4},
}


def triplet_loss(desc_a: torch.Tensor, desc_p: torch.Tensor, candidates: torch.Tensor, negative_mask: torch.Tensor,
                 margin: float) -> torch.Tensor:
    """Batch-hard triplet loss on cosine similarity: ``relu(margin - s(a, p) + max_n s(a, n))`` averaged over
    anchors that have a negative; ``negative_mask`` (A, C) marks which candidates are negatives of each anchor."""
    s_ap = (desc_a * desc_p).sum(dim=1)
    s_an = desc_a @ candidates.T
    s_an = s_an.masked_fill(~negative_mask, -2.0)
    hardest = s_an.max(dim=1).values
    valid = negative_mask.any(dim=1)
    if not bool(valid.any()):
        return desc_a.sum() * 0.0
    return torch.relu(margin - s_ap + hardest)[valid].mean()


def info_nce_loss(desc_a: torch.Tensor, desc_p: torch.Tensor, candidates: torch.Tensor, negative_mask: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """Contrastive (InfoNCE) loss: for anchor i, softmax over its positive (candidate ``A + i``, the
    candidates being ``cat(anchors, positives)``) and its negatives (``negative_mask``); other candidates
    (same place, itself) are left out. Stable from scratch, where batch-hard triplets collapse."""
    n = desc_a.shape[0]
    logits = desc_a @ candidates.T / temperature
    target = torch.arange(n, device=desc_a.device) + n
    allowed = negative_mask.clone()
    allowed[torch.arange(n), target] = True
    logits = logits.masked_fill(~allowed, float('-inf'))
    return torch.nn.functional.cross_entropy(logits, target)


LOSSES = ('infonce', 'triplet')


def _check(config: dict[str, Any]) -> None:
    for key in ('image_height', 'image_width', 'descriptor_dim', 'epochs', 'batch_size'):
        if int(config[key]) <= 0:
            raise TrainConfigError(f'retrieval: {key} must be positive, got {config[key]}')
    if not 0 < float(config['positive_radius_m']) < float(config['negative_radius_m']):
        raise TrainConfigError('retrieval: need 0 < positive_radius_m < negative_radius_m')
    if config['loss'] not in LOSSES or not float(config['temperature']) > 0:
        raise TrainConfigError(f'retrieval: loss must be one of {LOSSES} and temperature > 0')
    if config['augment'] not in ('none', 'light', 'strong'):
        raise TrainConfigError(f'retrieval: augment must be none, light or strong, got {config["augment"]!r}')


def train(args: TrainArgs) -> Path:
    """Train, export, index the database, evaluate; returns the bundle directory ``args.out``."""
    config = resolve_preset(PRESETS, args)
    _check(config)
    set_seed(args.seed)
    _set_threads(int(config['threads']))
    device = select_device(args.device)
    started = time.perf_counter()
    database = args.data / 'refdb'
    db = ReferenceDatabase(database, verify=True)
    height, width = int(config['image_height']), int(config['image_width'])
    refs = load_reference_arrays(db, width, height, int(config['max_entries']))
    positives = same_place(refs.position_N3, refs.axis_N3, refs.position_N3, refs.axis_N3,
                           float(config['positive_radius_m']), float(config['positive_max_angle_deg']))
    np.fill_diagonal(positives, False)
    distance = np.linalg.norm(refs.position_N3[:, None, :2] - refs.position_N3[None, :, :2], axis=2)
    negatives = distance > float(config['negative_radius_m'])
    anchors = np.flatnonzero(positives.any(axis=1))
    if len(anchors) < 2:
        raise ValueError(f'{database}: fewer than 2 entries have a positive within {config["positive_radius_m"]} m; '
                         f'cannot train place recognition')
    logger.info('retrieval: %d reference entries, %d with positives', len(refs.uids), len(anchors))

    model = RetrievalNet(config['backbone'], int(config['descriptor_dim']), float(config['gem_p']),
                         init_weights=args.init_weights, pretrained=bool(config['pretrained'])).to(device)
    optimizer = torch.optim.AdamW(discriminative_param_groups(model, model.backbone, float(config['lr']),
                                                              float(config['backbone_lr_factor'])),
                                  weight_decay=float(config['weight_decay']))
    checkpoints = CheckpointManager(work_dir(args.out) / 'checkpoints',
                                    describe={'type': LOCALIZER_TYPE, 'preset': args.preset, 'config': config})
    start_epoch, step = 0, 0
    if args.resume and (payload := checkpoints.load_latest()) is not None:
        model.load_state_dict(payload['model'])
        optimizer.load_state_dict(payload['optimizer'])
        start_epoch, step = int(payload['epoch']), int(payload['extra'].get('step', 0))
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    batch = int(config['batch_size'])
    steps_per_epoch = max(1, len(anchors) // batch)
    total_steps = steps_per_epoch * int(config['epochs'])
    budget = float(config['time_budget_s'])
    train_started = time.perf_counter()
    losses: list[float] = []
    epoch = start_epoch
    for epoch in range(start_epoch, int(config['epochs'])):
        model.train()
        order = rng.permutation(anchors)
        for b in range(steps_per_epoch):
            a_idx = order[b * batch:(b + 1) * batch]
            p_idx = np.array([rng.choice(np.flatnonzero(positives[a])) for a in a_idx])
            idx = np.concatenate([a_idx, p_idx])
            x = _to_unit(refs.images_NHW3[idx], device)
            x = augment_batch(x, config['augment'], generator)
            desc = model(_normalise(x))
            n = len(a_idx)
            mask = torch.from_numpy(negatives[np.ix_(a_idx, idx)]).to(device)
            if config['loss'] == 'infonce':
                loss = info_nce_loss(desc[:n], desc[n:], desc, mask, float(config['temperature']))
            else:
                loss = triplet_loss(desc[:n], desc[n:], desc, mask, float(config['margin']))
            set_lr(optimizer, lr_factor(step, time.perf_counter() - train_started,
                                        warmup_steps=int(config['warmup_steps']),
                                        total_steps=total_steps, budget_s=budget))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            if budget > 0 and time.perf_counter() - train_started >= budget:
                break
        logger.info('epoch %d: %s loss %.4f (%d steps, %.0f s)', epoch + 1, config['loss'], np.mean(losses[-steps_per_epoch:]),
                    step, time.perf_counter() - train_started)
        checkpoints.save(epoch + 1, model, optimizer, extra={'step': step})
        if budget > 0 and time.perf_counter() - train_started >= budget:
            logger.info('time budget %.0f s reached after epoch %d', budget, epoch + 1)
            break

    contract = RetrievalContract(descriptor_dim=int(config['descriptor_dim']), backbone=str(config['backbone']),
                                 gem_p=float(model.pool.p.detach().clamp(min=1.0)),
                                 positive_radius_m=float(config['positive_radius_m']),
                                 positive_max_angle_deg=float(config['positive_max_angle_deg']),
                                 recall_radius_m=float(config['negative_radius_m']),
                                 backbone_weights=dict(model.backbone.weights_source))
    metrics = {'train_s': time.perf_counter() - train_started, 'epochs_run': epoch + 1 - start_epoch, 'steps': step,
               'final_loss': float(np.mean(losses[-steps_per_epoch:])) if losses else float('nan')}
    bundle = export_and_bundle(model.cpu(), args.out, localizer_type=LOCALIZER_TYPE,
                               input_spec=InputSpec(height=height, width=width), output_names=list(OUTPUT_NAMES),
                               metadata=contract.to_metadata(), metrics=metrics,
                               parity_input=refs.images_NHW3[:4], parity_tol=1e-3)
    _index_and_evaluate(bundle, args.data, database, config)
    logger.info('retrieval bundle %s written in %.0f s', bundle, time.perf_counter() - started)
    return bundle


def _index_and_evaluate(bundle: Path, data: Path, database: Path, config: dict[str, Any]) -> None:
    """Descriptors + index of the database for this bundle, then the test metrics into ``OUT.eval/<split>.yaml``."""
    from vizloc_plugins.retrieval import compute_descriptors

    from .evaluate import evaluate_bundle

    model_name, _ = compute_descriptors(database, bundle)
    build_index(database, model_name)
    if (data / 'poses.csv').is_file():
        metrics = evaluate_bundle(bundle, data, database=database, split=str(config['eval_split']),
                                  max_queries=int(config['eval_queries']))
        write_evaluation(bundle, str(config['eval_split']), metrics)  # the bundle stays as written
    else:
        logger.warning('%s: no poses.csv; the bundle is not evaluated (run vizloc_training.retrieval.evaluate)', data)
