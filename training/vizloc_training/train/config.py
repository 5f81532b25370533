"""Arguments of ``vizloc-train``, typed trainer configurations and preset resolution, shared by every trainer.

A trainer module exposes ``PRESETS`` (at least ``demo``, ``tiny`` and ``full``) and ``train(args:
TrainArgs) -> Path``. A preset is an instance of the trainer's typed, frozen config dataclass (a
:class:`TrainConfig` subclass; the presets are ``dataclasses.replace(BASE, ...)`` of one ``BASE``
instance), or, for trainers not ported yet, a plain ``dict``. :func:`resolve_preset` applies the
explicit command-line values to the chosen preset: an explicit value always wins, a preset value fills
the rest, and a key the preset does not have is an error (so a typo never silently does nothing).
``--set key=value`` text is parsed by the runtime's one typed coercer
(:func:`vizloc_ros.localizer.coerce_text`, the field's type; for a dict preset the type of its value).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

from vizloc_ros.localizer import ConfigError, coerce, coerce_text, option_fields

__all__ = ['TrainArgs', 'TrainConfig', 'TrainConfigError', 'resolve_preset', 'config_dict', 'COMMON_KEYS']

PresetT = TypeVar('PresetT')


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


@dataclass(frozen=True)
class TrainConfig:
    """Base of the trainers' typed, frozen configurations (one field per preset key).

    Field types are the option types of :mod:`vizloc_ros.localizer` (``bool``, ``int``, ``float``,
    ``str``, ``list[...]``) and every field has a default, so ``BASE = MyConfig()`` and presets are
    ``dataclasses.replace(BASE, ...)``. Subclasses name their trainer in ``TYPE`` and list the fields
    that must be positive (``POSITIVE``) and the fields with a closed set of values (``CHOICES``); other
    checks go in their own ``__post_init__`` (calling ``super().__post_init__()``), raising
    :class:`TrainConfigError`. :meth:`to_dict` is what checkpoints and bundles record (``config``).
    """

    TYPE: ClassVar[str] = ''
    POSITIVE: ClassVar[tuple[str, ...]] = ()
    CHOICES: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    def __post_init__(self) -> None:
        for name in self.POSITIVE:
            value = getattr(self, name)
            if not value > 0:
                raise TrainConfigError(f'{self.TYPE}: {name} must be positive, got {value!r}')
        for name, allowed in self.CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise TrainConfigError(f'{self.TYPE}: {name} must be one of {tuple(allowed)}, got {value!r}')

    def to_dict(self) -> dict[str, Any]:
        """Plain form (field order), as recorded in checkpoints and bundle metadata."""
        return dataclasses.asdict(self)


def config_dict(config: Any) -> dict[str, Any]:
    """A resolved preset as a plain dict: ``dataclasses.asdict`` of a config dataclass, a copy of a dict."""
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def _value_type(value: Any) -> Any:
    """The option type of a dict preset's value (None: unknown, the value is taken as given)."""
    if isinstance(value, (bool, int, float, str)):
        return type(value)
    if isinstance(value, (list, tuple)):
        return list[type(value[0])] if value else list[str]
    return None


def _preset_types(preset: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(preset):
        return {name: tp for name, tp, _, _ in option_fields(type(preset))}
    return {key: _value_type(value) for key, value in preset.items()}


def resolve_preset(presets: Mapping[str, PresetT], args: TrainArgs) -> PresetT:
    """The preset named by ``args.preset`` with explicit arguments applied on top.

    Returns the same kind as the preset: a config dataclass (``dataclasses.replace``, so its checks
    run again) or a dict. Raises :class:`TrainConfigError` for an unknown preset, for an explicit
    argument the preset has no key for, for ``extra`` keys that are not preset keys, and for values of
    the wrong type: text (``--set image_size=160``) is parsed by
    :func:`vizloc_ros.localizer.coerce_text` as the key's type, other values are checked by
    :func:`vizloc_ros.localizer.coerce` (an int for a float is accepted).
    """
    if args.preset not in presets:
        raise TrainConfigError(f'{args.type}: unknown preset {args.preset!r}; known: {sorted(presets)}')
    preset = presets[args.preset]
    types = _preset_types(preset)
    changes: dict[str, Any] = {}
    for key in COMMON_KEYS:
        value = getattr(args, key)
        if value is None:
            continue
        if key not in types:
            raise TrainConfigError(f'{args.type}: preset {args.preset!r} has no {key!r}; it cannot be set')
        changes[key] = _coerced(types[key], value, key)
    for key, value in args.extra.items():
        if key not in types:
            raise TrainConfigError(
                f'{args.type}: unknown setting {key!r} for preset {args.preset!r}; known: {sorted(types)}')
        changes[key] = _coerced(types[key], value, key)
    if not dataclasses.is_dataclass(preset):
        return {**preset, **changes}  # type: ignore[return-value]
    try:
        return dataclasses.replace(preset, **changes)
    except TrainConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise TrainConfigError(f'{args.type}: {exc}') from exc


def _coerced(tp: Any, value: Any, key: str) -> Any:
    if tp is None:
        return value
    try:
        return coerce_text(value, tp, key) if isinstance(value, str) else coerce(value, tp, key)
    except ConfigError as exc:
        name = getattr(typing.get_origin(tp) or tp, '__name__', str(tp))
        raise TrainConfigError(f'setting {key}={value!r}: expected a {name} ({exc})') from exc
