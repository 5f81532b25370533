"""Trainer of the ``retrieval`` localizer: ``vizloc-train retrieval --data CAMPUS --out BUNDLE``.

Pipeline (seed 004, adapted):

1. Read the reference database ``DATA/refdb`` (verified against its manifest); entries need a pose
   (``E``): their positions and optical axes define the places.
2. Fine-tune :class:`.model.RetrievalNet` (backbone from ``make_backbone`` + GeM + linear + L2 norm) for
   place recognition: batches of anchors, each with a random positive (within ``positive_radius_m`` and
   optical axes within ``positive_max_angle_deg``: overlapping views); in-batch contrastive loss
   (``loss: infonce``, temperature ``temperature``) against the candidates farther than
   ``negative_radius_m``, or the batch-hard triplet loss on cosine similarity (``loss: triplet``, margin
   ``margin``; collapses from scratch: measured loss stuck at the margin). Hard negatives: at every
   epoch's start the current network describes every entry and each anchor's most similar negatives
   are mined (``hard_negative_pool``); ``hard_negative_share`` of each batch's anchors are such mined
   negatives of the others, so the in-batch loss sees the places the network confuses now (NetVLAD's
   hard-negative mining, in-batch). Off by default: at demo's CPU budget it lowered recall (measured,
   docs/localizers/retrieval.md).
   AdamW, warm-up + cosine learning rate over steps or ``time_budget_s``; light photometric augmentation
   (the GPS regressor's). Checkpoint per epoch in ``OUT.work/checkpoints`` (``--resume``). The epochs run
   in the training skeleton (:func:`vizloc_training.train.skeleton.fit`); this module supplies the steps
   (:class:`_RetrievalTask`; no validation: the last weights are exported) and :class:`RetrievalConfig`.
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import numpy as np
import torch

from vizloc_plugins.refdb import ReferenceDatabase, build_index
from vizloc_plugins.retrieval_contract import LOCALIZER_TYPE, OUTPUT_NAMES, RetrievalContract
from vizloc_ros.bundle import InputSpec

from ..train.images import AUGMENT_LEVELS, augment_batch, imagenet_normalise, to_unit
from ..train.config import TrainArgs, TrainConfig, TrainConfigError, resolve_preset
from ..train.evaluation_file import write_evaluation
from ..train.export import export_and_bundle
from ..train.loop import (CheckpointManager, discriminative_param_groups, select_device, set_seed, set_threads,
                          work_dir)
from ..train.skeleton import Schedule, StepInfo, TrainingTask, fit
from .data import load_reference_arrays, same_place
from .model import RetrievalNet

__all__ = ['PRESETS', 'BASE', 'RetrievalConfig', 'LOCALIZER_TYPE', 'LOSSES', 'train', 'triplet_loss', 'info_nce_loss',
           'mine_hard_negatives', 'fill_with_hard_negatives']

logger = logging.getLogger(__name__)

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


def mine_hard_negatives(desc_ND: np.ndarray, anchors: np.ndarray, negatives_NN: np.ndarray,
                        pool: int) -> dict[int, np.ndarray]:
    """Anchor -> up to ``pool`` entry indices: the other anchors that are its negatives (``negatives_NN``)
    with the most similar descriptors (dot product of ``desc_ND`` rows), most similar first."""
    d = np.asarray(desc_ND, dtype=np.float32)[anchors]
    similarity = d @ d.T
    allowed = negatives_NN[np.ix_(anchors, anchors)]
    similarity[~allowed] = -np.inf
    order = np.argsort(-similarity, axis=1, kind='stable')[:, :pool]
    return {int(a): anchors[row[allowed[i, row]]] for i, (a, row) in enumerate(zip(anchors, order))}


def fill_with_hard_negatives(seeds: np.ndarray, hard: Mapping[int, Sequence[int]], batch_size: int,
                             rng: np.random.Generator) -> np.ndarray:
    """The batch's anchors: ``seeds``, then for each seed in turn one random not-yet-chosen entry of
    ``hard[seed]`` (its mined hard negatives) until ``batch_size`` anchors are chosen."""
    chosen = [int(a) for a in seeds]
    taken = set(chosen)
    for a in list(chosen):
        if len(chosen) >= batch_size:
            break
        fresh = [int(n) for n in hard[a] if int(n) not in taken]
        if fresh:
            chosen.append(fresh[int(rng.integers(len(fresh)))])
            taken.add(chosen[-1])
    return np.asarray(chosen, dtype=np.int64)


LOSSES = ('infonce', 'triplet')


@dataclass(frozen=True)
class RetrievalConfig(TrainConfig):
    """Retrieval settings (a :class:`TrainConfig`)."""

    TYPE: ClassVar[str] = LOCALIZER_TYPE
    POSITIVE: ClassVar[tuple[str, ...]] = ('image_height', 'image_width', 'descriptor_dim', 'epochs', 'batch_size',
                                           'temperature')
    CHOICES: ClassVar[Mapping[str, tuple[str, ...]]] = {'loss': LOSSES, 'augment': AUGMENT_LEVELS}

    backbone: str = 'efficientnet_lite0'
    pretrained: bool = True          # start from the packaged ImageNet weights (seed 004 starts from pretrained networks)
    backbone_lr_factor: float = 0.3  # fine-tuning: the backbone learns at lr x this, GeM + projection at lr
    image_height: int = 96
    image_width: int = 128
    descriptor_dim: int = 256
    gem_p: float = 3.0
    epochs: int = 20
    batch_size: int = 24
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    loss: str = 'infonce'
    temperature: float = 0.1
    margin: float = 0.1
    positive_radius_m: float = 10.0
    positive_max_angle_deg: float = 60.0
    negative_radius_m: float = 25.0
    hard_negative_share: float = 0.0  # share (<= 0.5) of each batch's anchors that are mined hard negatives of the
                                     # others (0.5 measured on the campus at demo's budget: recall@5 90.3 -> 84.4 %)
    hard_negative_pool: int = 10     # mined per anchor at every epoch's start: its most similar negatives
    augment: str = 'light'
    time_budget_s: float = 0.0
    max_entries: int = 0
    eval_split: str = 'test'
    eval_queries: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.positive_radius_m < self.negative_radius_m:
            raise TrainConfigError(f'{self.TYPE}: need 0 < positive_radius_m < negative_radius_m')
        if not 0.0 <= self.hard_negative_share <= 0.5 or self.hard_negative_pool < 1:  # one hard negative per seed
            raise TrainConfigError(f'{self.TYPE}: need 0 <= hard_negative_share <= 0.5 and hard_negative_pool >= 1')


BASE = RetrievalConfig()

#: ``demo``: CPU, 128x96 (BASE), a 900 s training budget (13 epochs on 2 idle cores); ``tiny``: seconds,
#: for tests (with hard-negative mining, so that the tests run it); ``full``: GPU.
#: Backbone: the ImageNet-pretrained EfficientNet-Lite0 (``--set pretrained=false`` trains from scratch;
#: ``--set backbone=resnet18 --set pretrained=false`` is the scratch network that learnt best here).
PRESETS: dict[str, RetrievalConfig] = {
    'demo': replace(BASE, epochs=200, time_budget_s=900.0),
    'tiny': replace(BASE, backbone='resnet18', pretrained=False, image_height=48, image_width=64, descriptor_dim=32,
                    epochs=1, batch_size=8, warmup_steps=0, max_entries=48, eval_queries=6, hard_negative_share=0.5),
    'full': replace(BASE, image_height=240, image_width=320, epochs=60, batch_size=48, lr=3e-4),
}


class _RetrievalTask(TrainingTask):
    """Place-recognition steps: anchors of the epoch's shuffled order, each with a random positive, the loss
    against the in-batch candidates farther than ``negative_radius_m``, gradient clipping at norm 1."""

    def __init__(self, model: RetrievalNet, config: RetrievalConfig, images_NHW3: np.ndarray, anchors: np.ndarray,
                 positives: np.ndarray, negatives: np.ndarray, device: torch.device, seed: int) -> None:
        self.model, self.config, self.images_NHW3, self.device = model, config, images_NHW3, device
        self.anchors, self.positives, self.negatives = anchors, positives, negatives
        self.optimizer = torch.optim.AdamW(discriminative_param_groups(model, model.backbone, config.lr,
                                                                       config.backbone_lr_factor),
                                           weight_decay=config.weight_decay)
        self.steps_per_epoch = max(1, len(anchors) // config.batch_size)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.losses: list[float] = []
        self.hard: dict[int, np.ndarray] | None = None  # anchor -> its hard negatives, mined at each epoch's start

    def begin_epoch(self, epoch: int) -> None:
        self.hard = self._mine_hard_negatives() if self.config.hard_negative_share > 0 else None
        self.model.train()

    @torch.no_grad()
    def _mine_hard_negatives(self) -> dict[int, np.ndarray]:
        """:func:`mine_hard_negatives` with the current weights' descriptors of every entry."""
        self.model.eval()
        chunks = []
        for start in range(0, len(self.images_NHW3), 64):
            x = to_unit(self.images_NHW3[start:start + 64], self.device)
            chunks.append(self.model(imagenet_normalise(x)).cpu().numpy())
        return mine_hard_negatives(np.concatenate(chunks), self.anchors, self.negatives,
                                   self.config.hard_negative_pool)

    def batches(self, epoch: int):
        """Anchors of a shuffled order; with mined hard negatives, a share of each batch's anchors are
        hard negatives of the others (:func:`fill_with_hard_negatives`); every anchor gets a random positive."""
        order = self.rng.permutation(self.anchors)
        batch = self.config.batch_size
        seeds = batch if self.hard is None else max(1, round(batch * (1.0 - self.config.hard_negative_share)))
        for b in range(self.steps_per_epoch):
            a_idx = order[b * seeds:(b + 1) * seeds]
            if self.hard is not None:
                a_idx = fill_with_hard_negatives(a_idx, self.hard, batch, self.rng)
            p_idx = np.array([self.rng.choice(np.flatnonzero(self.positives[a])) for a in a_idx])
            yield a_idx, p_idx

    def step(self, batch: tuple[np.ndarray, np.ndarray], at: StepInfo) -> float:
        a_idx, p_idx = batch
        config, device = self.config, self.device
        idx = np.concatenate([a_idx, p_idx])
        x = augment_batch(to_unit(self.images_NHW3[idx], device), config.augment, self.generator)
        desc = self.model(imagenet_normalise(x))
        n = len(a_idx)
        mask = torch.from_numpy(self.negatives[np.ix_(a_idx, idx)]).to(device)
        if config.loss == 'infonce':
            loss = info_nce_loss(desc[:n], desc[n:], desc, mask, config.temperature)
        else:
            loss = triplet_loss(desc[:n], desc[n:], desc, mask, config.margin)
        self.losses.append(self.update(loss, clip_norm=1.0))
        return self.losses[-1]


def train(args: TrainArgs) -> Path:
    """Train, export, index the database, evaluate; returns the bundle directory ``args.out``."""
    config = resolve_preset(PRESETS, args)
    set_seed(args.seed)
    set_threads(config.threads)
    device = select_device(args.device)
    started = time.perf_counter()
    database = args.data / 'refdb'
    db = ReferenceDatabase(database, verify=True)
    height, width = config.image_height, config.image_width
    refs = load_reference_arrays(db, width, height, config.max_entries)
    positives = same_place(refs.position_N3, refs.axis_N3, refs.position_N3, refs.axis_N3,
                           config.positive_radius_m, config.positive_max_angle_deg)
    np.fill_diagonal(positives, False)
    distance = np.linalg.norm(refs.position_N3[:, None, :2] - refs.position_N3[None, :, :2], axis=2)
    negatives = distance > config.negative_radius_m
    anchors = np.flatnonzero(positives.any(axis=1))
    if len(anchors) < 2:
        raise ValueError(f'{database}: fewer than 2 entries have a positive within {config.positive_radius_m} m; '
                         f'cannot train place recognition')
    logger.info('retrieval: %d reference entries, %d with positives', len(refs.uids), len(anchors))

    model = RetrievalNet(config.backbone, config.descriptor_dim, config.gem_p, init_weights=args.init_weights,
                         pretrained=config.pretrained).to(device)
    task = _RetrievalTask(model, config, refs.images_NHW3, anchors, positives, negatives, device, args.seed)
    checkpoints = CheckpointManager(work_dir(args.out) / 'checkpoints',
                                    describe={'type': LOCALIZER_TYPE, 'preset': args.preset, 'config': config.to_dict()})
    result = fit(task, epochs=config.epochs, schedule=Schedule(
        warmup_steps=config.warmup_steps, total_steps=task.steps_per_epoch * config.epochs,
        budget_s=config.time_budget_s), checkpoints=checkpoints, resume=args.resume, select_best=False)

    contract = RetrievalContract(descriptor_dim=config.descriptor_dim, backbone=config.backbone,
                                 gem_p=float(model.pool.p.detach().clamp(min=1.0)),
                                 positive_radius_m=config.positive_radius_m,
                                 positive_max_angle_deg=config.positive_max_angle_deg,
                                 recall_radius_m=config.negative_radius_m,
                                 backbone_weights=dict(model.backbone.weights_source))
    losses = task.losses[-task.steps_per_epoch:]
    metrics = {'train_s': result.train_s, 'epochs_run': result.epochs_run, 'steps': result.global_step,
               'final_loss': float(np.mean(losses)) if losses else float('nan')}
    bundle = export_and_bundle(model.cpu(), args.out, localizer_type=LOCALIZER_TYPE,
                               input_spec=InputSpec(height=height, width=width), output_names=list(OUTPUT_NAMES),
                               metadata=contract.to_metadata(), metrics=metrics,
                               parity_input=refs.images_NHW3[:4], parity_tol=1e-3)
    _index_and_evaluate(bundle, args.data, database, config)
    logger.info('retrieval bundle %s written in %.0f s', bundle, time.perf_counter() - started)
    return bundle


def _index_and_evaluate(bundle: Path, data: Path, database: Path, config: RetrievalConfig) -> None:
    """Descriptors + index of the database for this bundle, then the test metrics into ``OUT.eval/<split>.yaml``."""
    from vizloc_plugins.retrieval import compute_descriptors

    from .evaluate import evaluate_bundle

    model_name, _ = compute_descriptors(database, bundle)
    build_index(database, model_name)
    if (data / 'poses.csv').is_file():
        metrics = evaluate_bundle(bundle, data, database=database, split=config.eval_split,
                                  max_queries=config.eval_queries)
        write_evaluation(bundle, config.eval_split, metrics)  # the bundle stays as written
    else:
        logger.warning('%s: no poses.csv; the bundle is not evaluated (run vizloc_training.retrieval.evaluate)', data)
