"""Arguments of ``vizloc-train`` and preset resolution, shared by every trainer.

A trainer module exposes ``PRESETS: dict[str, dict]`` (at least ``demo``, ``tiny`` and ``full``)
and ``train(args: TrainArgs) -> Path``. :func:`resolve_preset` merges the chosen preset with the
explicit command-line values: an explicit value always wins, a preset value fills the rest, and a
key the preset does not know is an error (so a typo never silently does nothing).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = ['TrainArgs', 'TrainConfigError', 'resolve_preset', 'COMMON_KEYS']


class TrainConfigError(ValueError):
    """Training arguments that cannot be used (unknown preset or key, bad value)."""


#: CLI arguments that map onto preset keys of the same name when given explicitly.
COMMON_KEYS = ('backbone', 'epochs', 'batch_size', 'lr')


@dataclass(frozen=True)
class TrainArgs:
    """Everything ``vizloc-train`` passes to a trainer's ``train(args)``.

    ``None`` for ``backbone``/``epochs``/``batch_size``/``lr`` means "take it from the preset".
    ``extra`` holds trainer-specific overrides (``--set key=value`` on the CLI); they must be keys
    of the preset.
    """

    type: str
    data: Path
    out: Path
    preset: str = 'demo'
    backbone: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    init_weights: Path | None = None
    device: str = 'cpu'
    resume: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'data', Path(self.data))
        object.__setattr__(self, 'out', Path(self.out))
        if self.init_weights is not None:
            object.__setattr__(self, 'init_weights', Path(self.init_weights))
        if self.epochs is not None and self.epochs <= 0:
            raise TrainConfigError(f'epochs must be positive, got {self.epochs}')
        if self.batch_size is not None and self.batch_size <= 0:
            raise TrainConfigError(f'batch_size must be positive, got {self.batch_size}')
        if self.lr is not None and not self.lr > 0.0:
            raise TrainConfigError(f'lr must be positive, got {self.lr}')
        if self.device != 'cpu' and not self.device.startswith('cuda'):
            raise TrainConfigError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain (YAML/JSON-able) form, stored in checkpoints and bundle metadata."""
        out = dataclasses.asdict(self)
        for key in ('data', 'out', 'init_weights'):
            if out[key] is not None:
                out[key] = str(out[key])
        out['extra'] = dict(self.extra)
        return out


def resolve_preset(presets: Mapping[str, Mapping[str, Any]], args: TrainArgs) -> dict[str, Any]:
    """The preset named by ``args.preset`` with explicit arguments applied on top.

    Raises :class:`TrainConfigError` for an unknown preset, for an explicit argument the preset has
    no key for, and for ``extra`` keys that are not preset keys. Types of ``extra`` values are
    coerced to the type of the preset's value (``--set image_size=160`` gives an int).
    """
    if args.preset not in presets:
        raise TrainConfigError(f'{args.type}: unknown preset {args.preset!r}; known: {sorted(presets)}')
    config = dict(presets[args.preset])
    for key in COMMON_KEYS:
        value = getattr(args, key)
        if value is None:
            continue
        if key not in config:
            raise TrainConfigError(f'{args.type}: preset {args.preset!r} has no {key!r}; it cannot be set')
        config[key] = value
    for key, value in args.extra.items():
        if key not in config:
            raise TrainConfigError(
                f'{args.type}: unknown setting {key!r} for preset {args.preset!r}; known: {sorted(config)}')
        config[key] = _coerce_like(config[key], value, key)
    return config


def _coerce_like(reference: Any, value: Any, key: str) -> Any:
    if not isinstance(value, str) or isinstance(reference, str) or reference is None:
        return value
    try:
        if isinstance(reference, bool):
            if value.lower() in ('1', 'true', 'yes', 'on'):
                return True
            if value.lower() in ('0', 'false', 'no', 'off'):
                return False
            raise ValueError(value)
        if isinstance(reference, int):
            return int(value)
        if isinstance(reference, float):
            return float(value)
        if isinstance(reference, (list, tuple)):
            items = [v.strip() for v in value.split(',') if v.strip()]
            if reference and not isinstance(reference[0], str):
                return type(reference)(type(reference[0])(v) for v in items)
            return type(reference)(items)
    except ValueError as exc:
        raise TrainConfigError(f'setting {key}={value!r}: expected a {type(reference).__name__}') from exc
    return value
