"""The localizer contract: what a plugin registers and what the node calls per frame.

A plugin registers :class:`LocalizerType` objects (a factory plus a typed options dataclass) into
a :class:`LocalizerRegistry` once, at start-up, through the ``vizloc_register_localizers`` hook
(see :mod:`vizloc_ros.hookspecs`). The node then builds :class:`Localizer` objects from ROS
parameters and calls ``localize(frame)`` directly, through :func:`run_localizer` (which times the
call, checks and stamps the result); no hook runs per frame.

Options dataclasses: every field must have a default and a type among ``bool``, ``int``,
``float``, ``str``, ``list[str]``, ``list[float]``, ``list[int]``; ``field(metadata={'description':
...})`` documents it. The node declares one ROS parameter ``<localizer name>.<field>`` per field.
Unknown keys are errors. :func:`coerce` checks a value against such a field type (strict: ``true``
for an ``int`` or ``"0.5"`` for a ``float`` are refused); :func:`coerce_text` parses a command-line
string into one (``vizloc-train --set key=value`` goes through it).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, Protocol, Sequence, TypeVar, runtime_checkable

from .types import Frame, InvalidOutputError, LocalizationResult, check_result, fault_kind

__all__ = [
    'Localizer',
    'LocalizeFault',
    'run_localizer',
    'LocalizerConfig',
    'LocalizerContext',
    'LocalizerType',
    'LocalizerRegistry',
    'PluginRegistrar',
    'ConfigError',
    'UnknownLocalizerTypeError',
    'NoOptions',
    'build_options',
    'option_fields',
    'coerce',
    'coerce_text',
    'parse_key_values',
    'options_from_text',
]

logger = logging.getLogger(__name__)

OPTION_TYPES = (bool, int, float, str, list[str], list[float], list[int])


class ConfigError(ValueError):
    """A localizer configuration that cannot be used (unknown key, wrong type, missing bundle...)."""


class UnknownLocalizerTypeError(ConfigError):
    """No plugin registered the requested localizer type."""


@runtime_checkable
class Localizer(Protocol):
    """A configured localizer instance. Created in the node's ``on_configure``, closed in ``on_cleanup``.

    ``localize`` is called from one worker thread at a time and may take as long as the model needs.
    It returns the estimates only: stamp, frame id, localizer name and latency are filled by the host
    (:func:`run_localizer`). It raises :class:`vizloc_ros.types.InvalidInputError` for frames it cannot
    use and :class:`vizloc_ros.types.InvalidOutputError` for model outputs it cannot use (both counted
    and logged by the node, which keeps running).
    """

    #: Backend actually in use (``onnxruntime:CPUExecutionProvider``, ``tensorrt``, ``python``...).
    backend_name: str
    #: True if the localizer needs camera intrinsics (frames are held back until CameraInfo arrives).
    requires_camera_info: bool

    def localize(self, frame: Frame) -> LocalizationResult:
        ...

    def reset(self) -> None:
        """Forget temporal state (called on deactivate)."""
        ...

    def close(self) -> None:
        """Free models and sessions."""
        ...


class LocalizeFault(Exception):
    """One frame that a localizer could not turn into a usable result (:func:`run_localizer`).

    ``kind`` is the ``/diagnostics`` heading (:func:`vizloc_ros.types.fault_kind`: ``bad_input``,
    ``invalid_output`` or ``plugin_error``), ``cause`` the exception raised.
    """

    def __init__(self, kind: str, message: str, cause: BaseException, latency_ms: float = math.nan) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.cause = cause
        #: How long localize() ran when it returned an unusable result (NaN when it raised).
        self.latency_ms = latency_ms


def run_localizer(localizer: Localizer, frame: Frame, name: str) -> tuple[LocalizationResult, int, int]:
    """The host side of one ``localize(frame)`` call, shared by the node's workers and ``vizloc-eval``.

    Times the call, checks the result as the node does before publishing
    (:func:`vizloc_ros.types.check_result`) and stamps it with the frame, ``name`` and the latency
    (:meth:`LocalizationResult.stamped`). Returns ``(result, start_ns, end_ns)`` (``time.time_ns``
    around the call; the latency is measured on the monotonic clock). Whatever goes wrong raises :class:`LocalizeFault`, a plugin's ``SystemExit``
    included (the caller's thread survives it); a ``KeyboardInterrupt`` still stops the host.
    """
    start_ns, started = time.time_ns(), time.perf_counter_ns()
    try:
        result = localizer.localize(frame)
    except (Exception, SystemExit) as exc:  # a plugin that raises (even SystemExit) must not take the host down
        kind = fault_kind(exc)
        text = f'{type(exc).__name__}: {exc}' if kind == 'plugin_error' else str(exc)
        raise LocalizeFault(kind, text, exc) from exc
    latency_ms = (time.perf_counter_ns() - started) / 1e6  # monotonic; start_ns / end_ns are wall clock
    end_ns = time.time_ns()
    try:
        check_result(result)
    except InvalidOutputError as exc:
        raise LocalizeFault('invalid_output', str(exc), exc, latency_ms) from exc
    return result.stamped(frame, name, latency_ms), start_ns, end_ns


@dataclass(frozen=True)
class NoOptions:
    """Options dataclass for localizer types that take no type-specific options."""


@dataclass(frozen=True)
class LocalizerConfig:
    """Options common to every localizer instance (ROS parameters ``<name>.type``, ``<name>.bundle``...)."""

    # Each field but ``name`` is the ROS parameter ``<name>.<field>``; the metadata is its descriptor
    # (vizloc_ros.params.LOCALIZER_PARAMETERS).
    name: str
    type: str = field(metadata={'description': 'Localizer type registered by a plugin (e.g. room_classifier).'})
    bundle: str = field(default='', metadata={'description': 'Model bundle directory (bundle.yaml + model.onnx).'})
    backend: str = field(default='auto', metadata={
        'description': "Inference backend: 'auto' (TensorRT > ONNX Runtime CUDA > CPU), 'onnxruntime', 'tensorrt', "
                       "'torch'.",
        'choices': ('auto', 'onnxruntime', 'tensorrt', 'torch')})
    max_rate_hz: float = field(default=0.0, metadata={
        'description': 'Maximum localization rate of this localizer in Hz; 0 = every frame it can keep up with.',
        'range': (0.0, 1000.0), 'runtime': True})

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace('_', '').isalnum() or not self.name[0].isalpha():
            raise ConfigError(f'localizer name {self.name!r} must start with a letter and contain only letters, digits and _')
        if self.max_rate_hz < 0.0:
            raise ConfigError(f'{self.name}.max_rate_hz must be >= 0 (0 = every frame), got {self.max_rate_hz}')


@dataclass(frozen=True)
class LocalizerContext:
    """What the host (node or evaluation script) provides to factories."""

    cache_dir: Path
    map_frame: str = 'map'


OptionsT = TypeVar('OptionsT')


@dataclass(frozen=True)
class LocalizerType(Generic[OptionsT]):
    """A registered localizer type: ``factory(config, options, context) -> Localizer``."""

    name: str
    factory: Callable[[LocalizerConfig, OptionsT, LocalizerContext], Localizer]
    options_type: type = NoOptions
    description: str = ''
    #: False for types that need no model bundle (e.g. test or geometry-only localizers).
    needs_bundle: bool = True
    #: Name of the plugin (entry point) that registered it; filled in by the registry.
    plugin: str = ''

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.options_type):
            raise TypeError(f'{self.name}: options_type must be a dataclass, got {self.options_type!r}')
        option_fields(self.options_type)  # validates field types and defaults


def option_fields(options_type: type) -> list[tuple[str, type, Any, str]]:
    """(name, type, default, description) of each field of an options dataclass, validated."""
    hints = typing.get_type_hints(options_type)
    out = []
    for f in dataclasses.fields(options_type):
        tp = hints[f.name]
        if tp not in OPTION_TYPES:
            raise TypeError(f'{options_type.__name__}.{f.name}: option type {tp!r} is not one of {OPTION_TYPES}')
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            raise TypeError(f'{options_type.__name__}.{f.name}: every option needs a default')
        out.append((f.name, tp, default, str(f.metadata.get('description', ''))))
    return out


def build_options(options_type: type[OptionsT], values: Mapping[str, Any], where: str = '') -> OptionsT:
    """Build an options dataclass from a mapping; unknown keys and wrong types raise ConfigError."""
    known = {name: (tp, default) for name, tp, default, _ in option_fields(options_type)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f'{where or options_type.__name__}: unknown option(s) {unknown}; known: {sorted(known)}')
    kwargs = {}
    for key, value in values.items():
        tp, _ = known[key]
        kwargs[key] = coerce(value, tp, f'{where}.{key}' if where else key)
    try:
        return options_type(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f'{where or options_type.__name__}: {exc}') from exc


def coerce(value: Any, tp: type, where: str = '') -> Any:
    """``value`` checked against option type ``tp`` (one of the option types), strictly: a ``bool`` is
    not an ``int``, a string is not a number; an integer is accepted for a ``float`` (and converted), a
    tuple for a list. Raises :class:`ConfigError` naming ``where``."""
    where = where or 'value'
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{where} must be a list of {item_tp.__name__}, got {value!r}')
        return [coerce(v, item_tp, where) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{where} must be true or false, got {value!r}')
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{where} must be an integer, got {value!r}')
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{where} must be a number, got {value!r}')
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f'{where} must be a string, got {value!r}')
    return value


_TRUE_WORDS = ('1', 'true', 'yes', 'on')
_FALSE_WORDS = ('0', 'false', 'no', 'off')


def coerce_text(text: str, tp: type, where: str = '') -> Any:
    """Command-line text parsed as option type ``tp``: ``bool`` from ``1/true/yes/on`` or
    ``0/false/no/off`` (any case), ``int``, ``float``, ``str`` as is, and lists comma-separated
    (``0.25,0.75``; blanks around items and empty items are dropped). The parsed value then goes
    through :func:`coerce`. Raises :class:`ConfigError` naming ``where``."""
    where = where or 'value'
    if not isinstance(text, str):
        raise ConfigError(f'{where}: expected text to parse, got {text!r}')
    if typing.get_origin(tp) is list:
        (item_tp,) = typing.get_args(tp)
        return [coerce_text(item, item_tp, where) for item in (v.strip() for v in text.split(',')) if item]
    value: Any = text
    if tp is bool:
        word = text.strip().lower()
        if word not in _TRUE_WORDS + _FALSE_WORDS:
            raise ConfigError(f'{where} must be true or false, got {text!r}')
        value = word in _TRUE_WORDS
    elif tp in (int, float):
        try:
            value = tp(text)
        except ValueError:
            raise ConfigError(f'{where} must be {"an integer" if tp is int else "a number"}, got {text!r}') from None
    return coerce(value, tp, where)


def parse_key_values(items: Sequence[str], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` command-line items (a repeatable ``flag`` such as ``--set``) -> ``{key: text}``; keys
    stripped, ``-`` read as ``_``. Raises :class:`ConfigError` for an item without ``=`` or key."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, text = item.partition('=')
        if not sep or not key.strip():
            raise ConfigError(f'{flag} expects KEY=VALUE, got {item!r}')
        out[key.strip().replace('-', '_')] = text
    return out


def options_from_text(options_type: type[OptionsT], texts: Mapping[str, str], where: str = '') -> OptionsT:
    """An options dataclass from command-line text: each value parsed as its field's type
    (:func:`coerce_text`), then :func:`build_options`. Unknown keys raise :class:`ConfigError`."""
    types = {name: tp for name, tp, _, _ in option_fields(options_type)}
    unknown = sorted(set(texts) - set(types))
    if unknown:
        raise ConfigError(f'{where or options_type.__name__}: unknown option(s) {unknown}; known: {sorted(types)}')
    return build_options(options_type, {k: coerce_text(v, types[k], f'{where}.{k}' if where else k)
                                        for k, v in texts.items()}, where)


@dataclass
class LocalizerRegistry:
    """Localizer types by name, filled by plugins through the ``vizloc_register_localizers`` hook."""

    types: dict[str, LocalizerType] = field(default_factory=dict)

    def register(self, localizer_type: LocalizerType, plugin: str = '') -> None:
        """Add a type; ``plugin`` (the registering plugin's name) is stamped on it unless it names one itself."""
        if localizer_type.name in self.types:
            other = self.types[localizer_type.name].plugin
            raise ConfigError(
                f'localizer type {localizer_type.name!r} registered twice (by {other!r} and {plugin or "?"!r})')
        if not localizer_type.plugin:
            localizer_type = dataclasses.replace(localizer_type, plugin=plugin)
        self.types[localizer_type.name] = localizer_type
        logger.debug('registered localizer type %s from plugin %s', localizer_type.name, localizer_type.plugin)

    def for_plugin(self, plugin: str) -> 'PluginRegistrar':
        """What the hook hands to plugin ``plugin``: registrations are stamped with its name."""
        return PluginRegistrar(self, plugin)

    def get(self, name: str) -> LocalizerType:
        try:
            return self.types[name]
        except KeyError:
            raise UnknownLocalizerTypeError(
                f'no plugin registered localizer type {name!r}; registered: {sorted(self.types) or "none"}. '
                f'Is the plugin package installed (entry-point group vizloc_ros.localizers) and not blocked?'
            ) from None

    def create(self, config: LocalizerConfig, options: Mapping[str, Any], context: LocalizerContext) -> Localizer:
        """Build a localizer instance; option values are validated against the type's dataclass."""
        localizer_type = self.get(config.type)
        opts = build_options(localizer_type.options_type, options, where=config.name)
        if not config.bundle and localizer_type.needs_bundle:
            raise ConfigError(f'{config.name}.bundle is required for localizer type {config.type!r}')
        if config.bundle and not Path(config.bundle).expanduser().exists():
            raise ConfigError(f'{config.name}.bundle: no such bundle directory {config.bundle!r}')
        return localizer_type.factory(config, opts, context)

    def __contains__(self, name: object) -> bool:
        return name in self.types

    def __len__(self) -> int:
        return len(self.types)


@dataclass(frozen=True)
class PluginRegistrar:
    """The ``registry`` argument of ``vizloc_register_localizers``: one plugin's view of the registry.

    ``register(LocalizerType(...))`` adds a type on behalf of ``plugin``; ``types`` shows what is
    registered so far (read-only use).
    """

    registry: LocalizerRegistry
    plugin: str

    def register(self, localizer_type: LocalizerType) -> None:
        self.registry.register(localizer_type, plugin=self.plugin)

    @property
    def types(self) -> Mapping[str, LocalizerType]:
        return dict(self.registry.types)
