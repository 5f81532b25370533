"""Training-loop helpers shared by the trainers: seeding, devices, checkpoints, progress, DDP.

Checkpoints are self-describing dicts saved with ``torch.save``::

    {'format': 'vizloc-checkpoint', 'version': 1, 'type': 'room_classifier', 'preset': 'demo',
     'args': {...TrainArgs.to_dict()...}, 'config': {...resolved preset...}, 'epoch': 3,
     'model': state_dict, 'optimizer': state_dict, 'extra': {...}, 'saved_utc': '...'}

``CheckpointManager.save`` writes atomically (temporary file + rename) so an interrupted run leaves
the previous checkpoint intact; ``load_latest`` returns the newest one for ``--resume``.

Multi-GPU: launch with ``torchrun --nproc_per_node N vizloc-train ...``. torchrun sets
``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; :func:`ddp_setup` then initialises the process group
(NCCL on CUDA, gloo on CPU) and trainers wrap their model in DistributedDataParallel and use a
DistributedSampler. Only the main process writes checkpoints, bundles and logs.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import pickle
import math
import os
import platform
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, TypeVar

import numpy as np
import torch

__all__ = [
    'work_dir', 'set_seed', 'set_threads', 'busy_cpus', 'select_device', 'CheckpointManager', 'CheckpointError',
    'progress', 'lr_factor', 'schedule_progress',
    'DistributedInfo', 'ddp_setup', 'ddp_cleanup', 'distributed', 'is_main_process', 'world_size',
]

logger = logging.getLogger(__name__)

T = TypeVar('T')
CHECKPOINT_FORMAT = 'vizloc-checkpoint'
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this run."""


def work_dir(out: Path) -> Path:
    """Run directory next to the bundle, ``OUT.work/`` (checkpoints, logs): write_bundle replaces OUT itself."""
    out = Path(out)
    return out.with_name(out.name + '.work')


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    """``threads`` > 0: that many torch intra-op threads. 0 (auto): torch's default, but 1 when the
    machine is oversubscribed (other processes' running threads, :func:`busy_cpus`, >= CPU count): OpenMP
    threads that spin-wait for each other on busy cores make a 2-thread step many times slower than a
    1-thread step (measured: 4.6 vs 75 images/s for mobilenet_v3_small at 64x48 on a 2-core machine with
    load 7.5)."""
    if threads > 0:
        torch.set_num_threads(threads)
        return
    cpus = os.cpu_count() or 1
    load = busy_cpus()
    if cpus > 1 and load >= cpus:
        logger.info('%.1f threads of other processes running on %d CPUs: training with 1 thread '
                    '(set threads=N to override)', load, cpus)
        torch.set_num_threads(1)


def busy_cpus(samples: int = 5, interval_s: float = 0.02) -> float:
    """Threads of other processes running now: the mean of ``/proc/loadavg``'s running count (less the
    reader) over ``samples`` reads ``interval_s`` apart; the 1-minute load average where there is no
    ``/proc`` or its count leaves out the reader (a sandbox's made-up file). The 1-minute average still
    counts a job that ended seconds ago: a training started right after another on the idle 2-core
    machine read 2.0 and ran on one thread, its frozen features 246 s instead of 123 s
    (docs/localizers/gps_regressor.md, "Training time")."""
    counts = []
    for i in range(samples):
        if i:
            time.sleep(interval_s)
        try:
            running = int(Path('/proc/loadavg').read_text().split()[3].split('/')[0])
        except (OSError, IndexError, ValueError):
            running = 0
        if running < 1:
            return os.getloadavg()[0] if hasattr(os, 'getloadavg') else 0.0
        counts.append(running - 1)
    return sum(counts) / samples


# x86 core names that faiss-cpu's OpenBLAS 0.3.15 can be told (OPENBLAS_CORETYPE), from those a newer OpenBLAS
# names: one it does not know would fall back to its generic kernels with a warning.
_FAISS_OPENBLAS_CORES = {'Sandybridge': 'Sandybridge', 'Haswell': 'Haswell', 'Zen': 'Zen', 'SkylakeX': 'SkylakeX',
                         'Cooperlake': 'Cooperlake', 'SapphireRapids': 'SkylakeX'}


def faiss_openblas_core(libraries: list[dict[str, Any]]) -> str | None:
    """The ``OPENBLAS_CORETYPE`` to load FAISS's own OpenBLAS with: the architecture an OpenBLAS already loaded
    (numpy's, newer than FAISS's) detected on this CPU, as FAISS's knows it; None when none is loaded or it names no
    core in ``_FAISS_OPENBLAS_CORES``. ``libraries``: threadpoolctl's ``threadpool_info()`` before FAISS is loaded."""
    known = sorted({str(lib.get('architecture')) for lib in libraries if lib.get('internal_api') == 'openblas'})
    cores = [_FAISS_OPENBLAS_CORES[name] for name in known if name in _FAISS_OPENBLAS_CORES]
    return cores[0] if len(set(cores)) == 1 else None


def import_faiss() -> None:
    """Import FAISS with its own OpenBLAS told the CPU (:func:`faiss_openblas_core`), where it is not loaded yet and
    the environment does not set ``OPENBLAS_CORETYPE``: on CPUs newer than faiss-cpu's OpenBLAS 0.3.15 it runs generic
    SSE3 kernels otherwise (a Sapphire Rapids Xeon: the vote index's k-means 73 s instead of 19 s;
    docs/localizers/gps_regressor.md, "A faster vote index"). The variable is set around the import alone, so no
    OpenBLAS loaded later and no child process sees it. Logs the kernels FAISS's OpenBLAS runs, and
    :func:`faiss_blas_hint`'s warning where it still runs generic ones (FAISS loaded before this was called)."""
    from threadpoolctl import threadpool_info

    core = None
    if ('faiss' not in sys.modules and platform.machine().lower() in ('x86_64', 'amd64')
            and 'OPENBLAS_CORETYPE' not in os.environ):
        core = faiss_openblas_core(threadpool_info())
    if core is not None:
        os.environ['OPENBLAS_CORETYPE'] = core
    try:
        import faiss  # noqa: F401 - loads its OpenBLAS, which reads OPENBLAS_CORETYPE once
    finally:
        if core is not None:
            del os.environ['OPENBLAS_CORETYPE']
    libraries = threadpool_info()
    for lib in _faiss_openblas(libraries):
        logger.info("FAISS's OpenBLAS %s: %s kernels%s", lib.get('version'), lib.get('architecture'),
                    f' (told {core}, as a newer OpenBLAS detected this CPU)' if core else '')
    if (hint := faiss_blas_hint(libraries)) is not None:
        logger.warning('%s', hint)


def _faiss_openblas(libraries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The OpenBLAS that faiss-cpu brings, among threadpoolctl's records (none where FAISS links another BLAS)."""
    return [lib for lib in libraries
            if lib.get('internal_api') == 'openblas' and 'faiss' in str(lib.get('filepath', ''))]


def faiss_blas_hint(libraries: list[dict[str, Any]]) -> str | None:
    """Advice when FAISS's own OpenBLAS runs its generic SSE3 kernels (``Prescott``) on a CPU that another OpenBLAS
    in the process (numpy's, newer) knows, else None: the ``OPENBLAS_CORETYPE`` :func:`faiss_openblas_core` would
    have set, for a process that loaded FAISS before :func:`import_faiss` could. ``libraries``: threadpoolctl's
    ``threadpool_info()`` after FAISS is loaded."""
    in_faiss = _faiss_openblas(libraries)
    if not in_faiss or in_faiss[0].get('architecture') != 'Prescott':
        return None
    core = faiss_openblas_core([lib for lib in libraries if lib not in in_faiss])
    if core is None:
        return None
    return (f"FAISS's OpenBLAS {in_faiss[0].get('version')} runs generic SSE3 kernels on this CPU (a newer OpenBLAS "
            f"knows it as {core}): OPENBLAS_CORETYPE={core} in the environment builds the keyframe vote index 3-4x "
            "faster")


def select_device(name: str) -> torch.device:
    """``'cpu'``, ``'cuda'`` or ``'cuda:N'``; under DDP ``'cuda'`` means this process's LOCAL_RANK GPU.

    Raises RuntimeError with a clear message when CUDA is requested but not available.
    """
    if name == 'cpu':
        return torch.device('cpu')
    if not name.startswith('cuda'):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {name!r}")
    if not torch.cuda.is_available():
        raise RuntimeError(f'device {name!r} requested but CUDA is not available here; use --device cpu')
    if name == 'cuda' and 'LOCAL_RANK' in os.environ:
        return torch.device('cuda', int(os.environ['LOCAL_RANK']))
    return torch.device(name)


class CheckpointManager:
    """Self-describing checkpoints in ``directory`` (``epoch_0003.pt`` ...), keeping the last ``keep``."""

    _PATTERN = re.compile(r'^epoch_(\d+)\.pt$')

    def __init__(self, directory: Path, *, keep: int = 2, describe: Mapping[str, Any] | None = None) -> None:
        if keep < 1:
            raise ValueError(f'keep must be >= 1, got {keep}')
        self.directory = Path(directory)
        self.keep = keep
        #: Stored in every checkpoint: ``type``, ``preset``, ``args``, ``config``.
        self.describe = dict(describe or {})

    def paths(self) -> list[Path]:
        """Existing checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = self._PATTERN.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return [p for _, p in sorted(found)]

    def save(self, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
             extra: Mapping[str, Any] | None = None) -> Path:
        """Save after ``epoch`` (1-based count of completed epochs). Only the main process writes."""
        path = self.directory / f'epoch_{epoch:04d}.pt'
        if not is_main_process():
            return path
        self.directory.mkdir(parents=True, exist_ok=True)
        module = model.module if hasattr(model, 'module') else model
        payload = {
            'format': CHECKPOINT_FORMAT,
            'version': CHECKPOINT_VERSION,
            **self.describe,
            'epoch': int(epoch),
            'model': module.state_dict(),
            'optimizer': optimizer.state_dict() if optimizer is not None else None,
            'extra': dict(extra or {}),
            'saved_utc': _dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
        }
        tmp = path.with_name(f'.{path.name}.tmp')
        torch.save(payload, tmp)
        os.replace(tmp, path)
        for old in self.paths()[:-self.keep]:
            old.unlink(missing_ok=True)
        logger.info('saved checkpoint %s', path)
        return path

    def load_latest(self, map_location: str | torch.device = 'cpu') -> dict[str, Any] | None:
        """The newest checkpoint as a dict, or None when there is none.

        Raises :class:`CheckpointError` if it is not a vizloc checkpoint or was written for another
        localizer type than ``describe['type']``.
        """
        paths = self.paths()
        if not paths:
            return None
        path = paths[-1]
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # weights_only refuses pickled objects
            raise CheckpointError(f'{path}: cannot read checkpoint: {exc}') from exc
        if not isinstance(payload, dict) or payload.get('format') != CHECKPOINT_FORMAT:
            raise CheckpointError(f'{path}: not a vizloc checkpoint')
        want = self.describe.get('type')
        if want is not None and payload.get('type') != want:
            raise CheckpointError(f'{path}: checkpoint is for {payload.get("type")!r}, this run trains {want!r}')
        logger.info('loaded checkpoint %s (epoch %s)', path, payload['epoch'])
        payload['path'] = str(path)
        return payload


def progress(iterable: Iterable[T], desc: str = '', total: int | None = None,
             log_every_s: float = 30.0) -> Iterator[T]:
    """tqdm progress bar on a TTY of the main process. Elsewhere (a log file, CI, a subprocess) an INFO
    line ``desc: i/total (pct), elapsed, ETA`` at most every ``log_every_s`` seconds, so long work still
    shows progress; nothing with VIZLOC_NO_PROGRESS=1 or on other ranks."""
    if os.environ.get('VIZLOC_NO_PROGRESS', '') == '1' or not is_main_process():
        return iter(iterable)
    if sys.stderr.isatty():
        from tqdm import tqdm

        return iter(tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True))
    return _logged_progress(iterable, desc, total, log_every_s)


def _logged_progress(iterable: Iterable[T], desc: str, total: int | None, log_every_s: float) -> Iterator[T]:
    if total is None and hasattr(iterable, '__len__'):
        total = len(iterable)  # type: ignore[arg-type]
    started = last = time.monotonic()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= log_every_s:
            last = now
            elapsed = now - started
            if total:
                eta = elapsed / done * (total - done)
                logger.info('%s: %d/%d (%.0f %%), %.0f s, ETA %.0f s', desc or 'progress', done, total,
                            100.0 * done / total, elapsed, eta)
            else:
                logger.info('%s: %d, %.0f s', desc or 'progress', done, elapsed)


@dataclass(frozen=True)
class DistributedInfo:
    """This process's place in a (possibly single-process) run."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def world_size() -> int:
    return int(os.environ.get('WORLD_SIZE', '1'))


def is_main_process() -> bool:
    """True for rank 0 (and for plain single-process runs)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get('RANK', '0')) == 0


def ddp_setup(device: torch.device | None = None) -> DistributedInfo:
    """Initialise the process group when started by torchrun (WORLD_SIZE > 1); no-op otherwise."""
    info = DistributedInfo(world_size=world_size(), rank=int(os.environ.get('RANK', '0')),
                           local_rank=int(os.environ.get('LOCAL_RANK', '0')))
    if not info.enabled:
        return info
    if not torch.distributed.is_available():
        raise RuntimeError('WORLD_SIZE > 1 but this torch build has no torch.distributed')
    if not torch.distributed.is_initialized():
        backend = 'nccl' if device is not None and device.type == 'cuda' else 'gloo'
        if device is not None and device.type == 'cuda':
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=backend)
        logger.info('DDP: rank %d/%d (local %d), backend %s', info.rank, info.world_size, info.local_rank, backend)
    return info


def ddp_cleanup() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def distributed(device: torch.device | None = None) -> Iterator[DistributedInfo]:
    """``with distributed(device) as dist:``: :func:`ddp_setup` on entry, :func:`ddp_cleanup` on exit."""
    info = ddp_setup(device)
    try:
        yield info
    finally:
        ddp_cleanup()


def discriminative_param_groups(model: torch.nn.Module, backbone: torch.nn.Module, lr: float,
                                backbone_lr_factor: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: ``backbone``'s parameters at ``lr * backbone_lr_factor``, the rest at ``lr``.

    Each group keeps its ``base_lr`` so that a schedule scales every group by the same factor
    (:func:`set_lr`). Fine-tuning a pretrained backbone wants a smaller rate than its new head.
    """
    if backbone_lr_factor <= 0:
        raise ValueError(f'backbone_lr_factor must be > 0, got {backbone_lr_factor}')
    backbone_ids = {id(p) for p in backbone.parameters()}
    rest = [p for p in model.parameters() if id(p) not in backbone_ids]
    groups = [{'params': [p for p in backbone.parameters()], 'lr': lr * backbone_lr_factor,
               'base_lr': lr * backbone_lr_factor, 'name': 'backbone'},
              {'params': rest, 'lr': lr, 'base_lr': lr, 'name': 'head'}]
    return [g for g in groups if g['params']]


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group's learning rate = its ``base_lr`` (or the optimizer's default ``lr``) x ``factor``."""
    for group in optimizer.param_groups:
        group['lr'] = group.get('base_lr', optimizer.defaults['lr']) * factor


def schedule_progress(step: int, total_steps: int, elapsed_s: float, budget_s: float = 0.0) -> float:
    """Fraction of a training run done, in [0, 1]: steps done, or wall time used of ``budget_s`` (> 0),
    whichever is further (the clock that the learning rate and curricula follow)."""
    done = step / max(1, total_steps)
    if budget_s > 0:
        done = max(done, elapsed_s / budget_s)
    return min(1.0, done)


def lr_factor(step: int, elapsed_s: float, *, warmup_steps: int, total_steps: int, budget_s: float = 0.0,
              floor: float = 0.0) -> float:
    """Linear warm-up over the first ``warmup_steps / total_steps`` of the run, then cosine decay to
    ``floor`` (default 0) over the rest. The run's progress is its steps or its share of the wall-time
    ``budget_s``, whichever is further, for the warm-up too: a budget that allows fewer steps than the
    warm-up (e.g. 3600 steps of a 200-epoch schedule with 6000 warm-up steps) still reaches the full
    rate and decays, instead of ending while the rate is still rising."""
    done = schedule_progress(step, total_steps, elapsed_s, budget_s)
    warmup = min(1.0, warmup_steps / max(1, total_steps)) if warmup_steps > 0 else 0.0
    if done < warmup:
        return min(1.0, max((step + 1) / warmup_steps, done / warmup))
    decay = (done - warmup) / (1.0 - warmup) if warmup < 1.0 else 1.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * decay))
