"""The training skeleton: the one epoch/step loop every trainer runs, :func:`fit`.

``fit(task, epochs=..., schedule=..., checkpoints=..., resume=..., dist=...)`` owns what the trainers
share:

* **epochs of steps** over the batches the task draws (``task.batches(epoch)``), behind a progress bar
  (:func:`.loop.progress`);
* **the learning rate**: before every step each parameter group is set to its base rate times
  :meth:`Schedule.factor` (linear warm-up, then cosine to ``floor`` over the steps or the time budget,
  whichever ends first: :func:`.loop.lr_factor`);
* **the time budget** (``Schedule.budget_s`` > 0): checked before every epoch, before every step but an
  epoch's first, and after every epoch
  against the loop's clock (the epochs' wall time, validation included unless ``count_validation`` is
  false, the time of a resumed run's checkpoint included); training stops when it is used up, but a
  run from scratch always makes at least one step, and an epoch that starts makes one, so the run ends on an
  epoch checkpointed with ``budget_used``. Under DDP the budget is ignored with a warning
  (ranks must run the same number of steps);
* **validation and the best state**: every ``validate_every`` epochs and after the last one, on the
  main process, ``task.validate()`` adds its metrics to the epoch's record; with ``select_best`` its
  score (a number or a tuple, higher is better, a tie goes to the later epoch; no validation data:
  the epoch number, so the last epoch is kept) decides whether ``task.snapshot()`` is copied: a copy
  is made only when the score improves, and ``task.restore(best)`` loads it back at the end;
* **checkpoints** after every epoch through :class:`.loop.CheckpointManager` (model, optimizer and, in
  ``extra``: ``global_step``, ``train_s``, ``train_cpu_s``, ``history``, ``best_score``,
  ``best_state``, ``budget_used`` and the task's :meth:`TrainingTask.checkpoint_extra`), and **resume**
  from one (``resume=True``: the newest checkpoint, a warning and a fresh start when there is none; or
  a checkpoint payload the trainer already loaded): the task checks and restores its own state first
  (:meth:`TrainingTask.resume`), then the loop restores model, optimizer, clock, history and best state
  and continues with the next epoch;
* **DDP**: validation, best-state copies and checkpoint writing on the main process only;
  :func:`ddp_wrap`, :func:`shard` and :func:`sharded_steps` for the task (process groups:
  :func:`.loop.distributed`);
* **the history**: one record per epoch, ``epoch``, ``loss`` (mean of the steps' losses), the task's
  :meth:`TrainingTask.train_record`, ``lr`` (first parameter group), the validation metrics,
  ``elapsed_s`` (the clock), and a log line per epoch.

A trainer supplies a :class:`TrainingTask` (its model, optimizer, batches and step, and optionally
validation, what the best state is and its own checkpoint state) and its typed config
(:class:`.config.TrainConfig`); see docs/training.md, "Writing a trainer".
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence, TypeVar

import numpy as np
import torch

from .loop import CheckpointManager, DistributedInfo, is_main_process, lr_factor, progress, schedule_progress, set_lr

__all__ = ['Schedule', 'StepInfo', 'Validation', 'TrainingTask', 'FitResult', 'fit', 'ddp_wrap', 'shard',
           'sharded_steps']

logger = logging.getLogger(__name__)

T = TypeVar('T')
Score = float | tuple[float, ...]


@dataclass(frozen=True)
class Schedule:
    """Learning-rate schedule and time budget of one :func:`fit`: linear warm-up over ``warmup_steps``
    (or the same share of ``budget_s``), then cosine decay to ``floor`` (a fraction of the base rate)
    over ``total_steps`` or ``budget_s`` seconds (> 0), whichever runs out first (:func:`lr_factor`);
    training stops when the budget is used up."""

    warmup_steps: int = 0
    total_steps: int = 1
    budget_s: float = 0.0
    floor: float = 0.0

    @classmethod
    def over_epochs(cls, epochs: int, steps_per_epoch: int, *, warmup_epochs: int = 0, budget_s: float = 0.0,
                    floor: float = 0.0) -> 'Schedule':
        """The usual schedule: warm-up and decay counted in epochs of ``steps_per_epoch`` steps."""
        return cls(warmup_steps=warmup_epochs * steps_per_epoch, total_steps=epochs * steps_per_epoch,
                   budget_s=budget_s, floor=floor)

    def factor(self, step: int, elapsed_s: float) -> float:
        """Multiplier of every parameter group's base rate at ``step`` (0-based) after ``elapsed_s``."""
        return lr_factor(step, elapsed_s, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                         budget_s=self.budget_s, floor=self.floor)

    def progress(self, step: int, elapsed_s: float) -> float:
        """Fraction of the run done, in [0, 1]: steps or budget, whichever is further (for curricula)."""
        return schedule_progress(step, self.total_steps, elapsed_s, self.budget_s)

    def out_of_time(self, elapsed_s: float, step: int) -> bool:
        """The budget is used up (never before the first step of a run)."""
        return self.budget_s > 0 and elapsed_s >= self.budget_s and step > 0


@dataclass(frozen=True)
class StepInfo:
    """Where a step stands: its ``epoch`` (0-based), global ``step`` (0-based, before this one), the
    loop's clock ``elapsed_s`` and the schedule's ``progress`` in [0, 1]."""

    epoch: int
    step: int
    elapsed_s: float
    progress: float


@dataclass(frozen=True)
class Validation:
    """What :meth:`TrainingTask.validate` returns: ``metrics`` for the epoch's record and the ``score``
    the best state is chosen on (higher is better; tuples compare in order)."""

    metrics: Mapping[str, float]
    score: Score


class TrainingTask:
    """What a trainer supplies to :func:`fit`. Set ``model`` (the module that is checkpointed: not a
    DDP wrapper), ``optimizer`` (None: the loop sets no learning rate) and ``steps_per_epoch`` (for
    the progress bar; None if unknown), and implement :meth:`batches` and :meth:`step`; the other
    methods have defaults."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None = None
    steps_per_epoch: int | None = None

    def begin_epoch(self, epoch: int) -> None:
        """Called before the epoch's first batch is drawn (default: ``model.train()``)."""
        self.model.train()

    def batches(self, epoch: int) -> Iterable[Any]:
        """The epoch's batches, drawn lazily (the loop may stop before the last)."""
        raise NotImplementedError

    def step(self, batch: Any, at: StepInfo) -> float | None:
        """One optimisation step on ``batch`` (the learning rate is already set; usually the loss, then
        ``return self.update(loss)``); returns its loss, or None for a batch that was skipped (it still
        counts as a step)."""
        raise NotImplementedError

    def update(self, loss: torch.Tensor, clip_norm: float = 0.0) -> float:
        """Zero the gradients, back-propagate ``loss``, clip the gradient norm of ``model``'s parameters
        to ``clip_norm`` (> 0), step the optimizer; returns the loss as a float."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip_norm)
        self.optimizer.step()
        return float(loss.detach())

    def train_record(self) -> dict[str, float]:
        """Training metrics of the epoch that just ended, besides the mean loss (e.g. accuracy)."""
        return {}

    def validate(self) -> Validation | None:
        """Validation of the current weights (None: nothing to validate on)."""
        return None

    def snapshot(self) -> Any:
        """A copy of what the best state is (default: the model's state_dict)."""
        return copy.deepcopy(self.model.state_dict())

    def restore(self, state: Any) -> None:
        """Load a :meth:`snapshot` back (at the end of :func:`fit`, the best one)."""
        self.model.load_state_dict(state)

    def checkpoint_extra(self) -> dict[str, Any]:
        """The task's own state for the checkpoint's ``extra`` (tensors, numbers, strings, lists, dicts)."""
        return {}

    def resume(self, payload: Mapping[str, Any]) -> None:
        """Check that ``payload`` (a checkpoint) belongs to this run and restore the task's own state
        (raise :class:`.loop.CheckpointError` if it does not); called before the loop loads model and
        optimizer."""


@dataclass
class FitResult:
    """What :func:`fit` returns. ``history`` includes a resumed checkpoint's records; ``epochs_run`` and
    ``last_loss`` (mean loss of the last epoch; nan if none) count this call only."""

    history: list[dict[str, Any]] = field(default_factory=list)
    train_s: float = 0.0
    train_cpu_s: float = 0.0
    global_step: int = 0
    epochs_run: int = 0
    out_of_time: bool = False
    best_score: Score | None = None
    last_loss: float = math.nan


def fit(task: TrainingTask, *, epochs: int, schedule: Schedule = Schedule(), checkpoints: CheckpointManager | None = None,
        resume: bool | Mapping[str, Any] | None = False, dist: DistributedInfo | None = None, select_best: bool = True,
        validate_every: int = 1, count_validation: bool = True, name: str = 'epoch',
        map_location: str | torch.device = 'cpu') -> FitResult:
    """Train ``task`` for ``epochs`` epochs (fewer if the budget runs out); see the module docstring.

    ``checkpoints``: None writes none. ``resume``: True loads the newest of ``checkpoints``, a mapping
    is a checkpoint payload. ``dist``: this process's place under DDP (default: single process).
    ``select_best``: keep the best validated state (else the last weights stay). ``count_validation``:
    whether validation time counts against the budget. ``name`` prefixes the progress bar and log.
    """
    dist = dist if dist is not None else DistributedInfo()
    if schedule.budget_s > 0 and dist.enabled:
        logger.warning('time_budget_s is ignored under DDP (ranks must run the same number of steps)')
        schedule = dataclasses.replace(schedule, budget_s=0.0)
    if validate_every < 1:
        raise ValueError(f'validate_every must be >= 1, got {validate_every}')
    main = is_main_process()
    result = FitResult()
    best_state: Any = None
    start_epoch = 0
    payload = _resume_payload(checkpoints, resume, map_location)
    if payload is not None:
        start_epoch, best_state = _restore(task, payload, result)
        logger.info('resumed from %s at %s %d of %d', payload.get('path', 'a checkpoint'), name, start_epoch, epochs)

    for epoch in range(start_epoch, epochs):
        if schedule.out_of_time(result.train_s, result.global_step):
            result.out_of_time = True
            break
        started, started_cpu = time.perf_counter(), time.process_time()
        task.begin_epoch(epoch)
        losses: list[float] = []
        steps_before = result.global_step
        for batch in progress(task.batches(epoch), desc=f'{name} {epoch + 1}/{epochs}', total=task.steps_per_epoch):
            elapsed = result.train_s + time.perf_counter() - started
            # an epoch the boundary check let start takes at least one step, so that the budget's end is always
            # an epoch recorded and checkpointed as such ('budget_used'), whatever the time spent between epochs
            if result.global_step > steps_before and schedule.out_of_time(elapsed, result.global_step):
                result.out_of_time = True
                break
            if task.optimizer is not None:
                set_lr(task.optimizer, schedule.factor(result.global_step, elapsed))
            loss = task.step(batch, StepInfo(epoch, result.global_step, elapsed,
                                             schedule.progress(result.global_step, elapsed)))
            result.global_step += 1
            if loss is not None:
                losses.append(float(loss))
        result.epochs_run += 1
        record: dict[str, Any] = {'epoch': epoch + 1, 'loss': float(np.mean(losses)) if losses else math.nan,
                                  **task.train_record()}
        if task.optimizer is not None:
            record['lr'] = task.optimizer.param_groups[0]['lr']
        if not count_validation:
            result.train_s += time.perf_counter() - started
        validated = main and ((epoch + 1) % validate_every == 0 or epoch + 1 == epochs or result.out_of_time)
        if validated:
            best_state = _validate(task, epoch, record, result, select_best, best_state)
        if count_validation:
            result.train_s += time.perf_counter() - started
        result.train_cpu_s += time.process_time() - started_cpu
        result.out_of_time = result.out_of_time or schedule.out_of_time(result.train_s, result.global_step)
        if main and result.out_of_time and not validated:  # the budget ends the run after this epoch: the last one
            best_state = _validate(task, epoch, record, result, select_best, best_state)
        record['elapsed_s'] = result.train_s
        result.history.append(record)
        result.last_loss = record['loss']
        logger.info('%s %d/%d: %s', name, epoch + 1, epochs, ', '.join(
            f'{k}={v:.4g}' for k, v in record.items() if k != 'epoch' and isinstance(v, (int, float))))
        if checkpoints is not None:
            checkpoints.save(epoch + 1, task.model, task.optimizer, extra={
                'global_step': result.global_step, 'train_s': result.train_s, 'train_cpu_s': result.train_cpu_s,
                'history': result.history, 'best_score': _plain(result.best_score), 'best_state': best_state,
                'budget_used': result.out_of_time, **task.checkpoint_extra()})
        if result.out_of_time:
            logger.info('time budget of %.0f s used up in %s %d of %d (%d steps)', schedule.budget_s, name, epoch + 1,
                        epochs, result.global_step)
            break
    if main and best_state is not None:
        task.restore(best_state)
    return result


def _validate(task: TrainingTask, epoch: int, record: dict[str, Any], result: FitResult, select_best: bool,
              best_state: Any) -> Any:
    """Validate into ``record``; with ``select_best`` a snapshot when the score improves (no validation data:
    the epoch number is the score). Returns the best state so far."""
    validation = task.validate()
    if validation is not None:
        record.update(validation.metrics)
    if select_best:
        score = validation.score if validation is not None else float(epoch)
        if result.best_score is None or score >= result.best_score:
            result.best_score = score
            return task.snapshot()
    return best_state


def _resume_payload(checkpoints: CheckpointManager | None, resume: bool | Mapping[str, Any] | None,
                    map_location: str | torch.device) -> Mapping[str, Any] | None:
    if resume is None or resume is False:
        return None
    if resume is not True:
        return resume
    if checkpoints is None:
        raise ValueError('resume=True needs a CheckpointManager')
    payload = checkpoints.load_latest(map_location=map_location)
    if payload is None:
        logger.warning('--resume: no checkpoint in %s; starting from scratch', checkpoints.directory)
    return payload


def _restore(task: TrainingTask, payload: Mapping[str, Any], result: FitResult) -> tuple[int, Any]:
    """Restore task, model, optimizer and the loop's state from a checkpoint; (next epoch, best state)."""
    task.resume(payload)
    task.model.load_state_dict(payload['model'])
    if task.optimizer is not None and payload.get('optimizer'):
        task.optimizer.load_state_dict(payload['optimizer'])
    extra = payload.get('extra') or {}
    epoch = int(payload['epoch'])
    result.global_step = int(extra.get('global_step', epoch * (task.steps_per_epoch or 0)))
    result.train_s = float(extra.get('train_s', 0.0))
    result.train_cpu_s = float(extra.get('train_cpu_s', 0.0))
    result.history = list(extra.get('history', []))
    score = extra.get('best_score')
    result.best_score = tuple(score) if isinstance(score, list) else score
    return epoch, extra.get('best_state')


def _plain(score: Score | None) -> float | list[float] | None:
    return list(score) if isinstance(score, tuple) else score


# -- DDP helpers -----------------------------------------------------------------------------------------

def ddp_wrap(module: torch.nn.Module, device: torch.device, dist: DistributedInfo) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when ``dist`` is enabled (this process's GPU on CUDA), else itself."""
    if not dist.enabled:
        return module
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == 'cuda'
                                                     else None)


def shard(order: Sequence[T], dist: DistributedInfo) -> Sequence[T]:
    """This rank's share of an epoch's order: every ``world_size``-th item from ``rank``."""
    return order[dist.rank::dist.world_size]


def sharded_steps(items: int, batch_size: int, dist: DistributedInfo) -> int:
    """Steps per epoch when every rank takes its :func:`shard` of ``items`` in batches of ``batch_size``."""
    return max(1, math.ceil(math.ceil(items / dist.world_size) / batch_size))
