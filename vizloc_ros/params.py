"""ROS parameters of the ``vizloc`` node: declaration (descriptions, ranges), validation, per-localizer options.

Every parameter is a dataclass field: its type and default are the field's, its descriptor
(description, range, choices, runtime, read-only) the field's metadata. Node-level parameters are
the fields of :class:`NodeParams` (:data:`NODE_PARAMETERS`), declared in the constructor
(:func:`declare_node_parameters`) and read into a frozen :class:`NodeParams` on configure.
Per-localizer parameters are the fields of :class:`vizloc_ros.localizer.LocalizerConfig` but its name
(:data:`LOCALIZER_PARAMETERS`: ``<name>.type``, ``<name>.bundle``, ``<name>.backend``,
``<name>.max_rate_hz``) and one ``<name>.<option>`` per field of the type's options dataclass
(:func:`vizloc_ros.localizer.option_fields`), declared on configure, once the plugins are loaded
(:func:`declare_localizer_parameters`). A parameter given for a localizer that its type does not know
is an error (that localizer is skipped).

Runtime changes go through :func:`check_parameter_change`, used by the node's
on-set-parameters callback: values are validated, and parameters that shape the graph (topics,
localizers, bundles) can only change while the node is unconfigured. The node keeps the runtime
values in members that the callback updates (``VizlocNode.runtime``, each worker's ``max_rate_hz``);
nothing reads a parameter per frame.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

from .localizer import ConfigError, LocalizerConfig, LocalizerRegistry, option_fields

__all__ = [
    'NodeParams',
    'LocalizerParams',
    'NODE_PARAMETERS',
    'IMAGE_TRANSPORTS',
    'INPUT_QOS',
    'BACKENDS',
    'RUNTIME_PARAMETERS',
    'declare_node_parameters',
    'read_node_params',
    'declare_localizer_parameters',
    'check_parameter_change',
    'unknown_localizer_overrides',
    'unknown_node_overrides',
]

IMAGE_TRANSPORTS = ('raw', 'compressed')
INPUT_QOS = ('sensor_data', 'reliable')

_PTYPE = {
    tuple[str, ...]: ParameterType.PARAMETER_STRING_ARRAY,
    tuple[float, ...]: ParameterType.PARAMETER_DOUBLE_ARRAY,
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    list[str]: ParameterType.PARAMETER_STRING_ARRAY,
    list[float]: ParameterType.PARAMETER_DOUBLE_ARRAY,
    list[int]: ParameterType.PARAMETER_INTEGER_ARRAY,
}
_PTYPE_NAME = {
    ParameterType.PARAMETER_BOOL: 'a bool', ParameterType.PARAMETER_INTEGER: 'an integer',
    ParameterType.PARAMETER_DOUBLE: 'a float (write 5.0, not 5)', ParameterType.PARAMETER_STRING: 'a string',
    ParameterType.PARAMETER_STRING_ARRAY: 'a list of strings',
    ParameterType.PARAMETER_DOUBLE_ARRAY: 'a list of floats', ParameterType.PARAMETER_INTEGER_ARRAY: 'a list of integers',
}


@dataclass(frozen=True)
class _Spec:
    """One ROS parameter: what its descriptor is built from (taken from a dataclass field, see _field_spec)."""

    default: Any
    ptype: int
    description: str
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    choices: tuple[str, ...] = ()
    #: True: may change while configured/active (takes effect at once).
    runtime: bool = False
    read_only: bool = False


def _param(default: Any, description: str, *, range: tuple[float, float] | None = None,
           choices: tuple[str, ...] = (), runtime: bool = False, read_only: bool = False) -> Any:
    """A :class:`NodeParams` field: its default and what its ROS parameter descriptor says
    (``range``: inclusive bounds for a number; ``choices``: allowed strings; ``runtime``: may change
    while configured; ``read_only``: start-up only)."""
    metadata = {'description': description, 'range': range, 'choices': choices, 'runtime': runtime,
                'read_only': read_only}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class NodeParams:
    """Node-level parameters, validated. Each field is the ROS parameter of the same name; its
    default, type and descriptor (description, range, choices) are declared from the field
    (:data:`NODE_PARAMETERS`)."""

    autostart: bool = _param(True, 'Walk the lifecycle to active at start-up (configure + activate), so `ros2 run` '
                                   'just works.', read_only=True)
    localizers: tuple[str, ...] = _param((), 'Names of the localizer instances to run; each is configured by '
                                             '<name>.* parameters.')
    blocked_plugins: tuple[str, ...] = _param((), 'Plugin (entry point) names of group vizloc_ros.localizers that '
                                                  'must not load.')
    image_transport: str = _param('raw', "'raw': subscribe to `image` (sensor_msgs/Image); 'compressed': to "
                                         "`image/compressed`.", choices=IMAGE_TRANSPORTS)
    input_qos: str = _param('sensor_data', "QoS of the image and camera_info subscriptions: 'sensor_data' (best "
                                           "effort, depth 5) or 'reliable' (depth 5). Outputs are always reliable.",
                            choices=INPUT_QOS)
    map_frame: str = _param('map', 'frame_id of ~/<name>/pose, ~/<name>/path and pose markers.')
    base_frame: str = _param('base_link', 'The robot frame whose pose ~/<name>/pose carries (its child frame; what '
                                          'robot_localization calls base_link_frame). The camera is mounted on it by '
                                          'T_base_camera_xyz / _rpy.')
    T_base_camera_xyz: tuple[float, ...] = _param((0.0, 0.0, 0.0), 'Position (m) of the camera optical frame in '
                                                                   'base_frame.')
    T_base_camera_rpy: tuple[float, ...] = _param(
        (0.0, 0.0, 0.0), 'Orientation (roll, pitch, yaw in rad, fixed axes as static_transform_publisher) of the '
                         'camera optical frame in base_frame. All zero (the default): ~/pose is the optical '
                         "frame's pose; a forward-looking camera is [-1.5708, 0.0, -1.5708].")
    rectified: bool = _param(False, 'Images are rectified: use CameraInfo P, not K + D (also done when D is all zero).')
    cache_dir: str = _param('', 'Writable cache for TensorRT engines etc.; empty = $VIZLOC_CACHE_DIR or '
                                '~/.cache/vizloc_ros.')
    publish_markers: bool = _param(True, 'Publish ~/markers (MarkerArray) and ~/<name>/path (Path).', runtime=True)
    publish_timing: bool = _param(False, 'Publish per-frame timestamps (callback, model start/end, published) on '
                                         '~/timing (diagnostic_msgs/DiagnosticStatus); used by scripts/bench_node.py.',
                                  runtime=True)
    path_max_length: int = _param(1000, 'Poses kept in each ~/<name>/path (oldest dropped).', range=(1, 100000),
                                  runtime=True)
    diagnostics_period_s: float = _param(1.0, 'Period of /diagnostics messages in seconds.', range=(0.1, 60.0))
    diagnostics_window_s: float = _param(10.0, 'Errors and rates are judged over this many recent seconds: an old '
                                               'error no longer holds a localizer at WARN.', range=(1.0, 3600.0))
    input_timeout_s: float = _param(2.0, 'While active, the camera input is STALE in /diagnostics after this many '
                                         'seconds without a frame.', range=(0.1, 3600.0))
    expected_rate_hz: float = _param(0.0, 'Expected camera rate; /diagnostics warns when the measured input rate '
                                          'leaves expected_rate_hz x (1 +- rate_tolerance). 0 = no frequency check.',
                                     range=(0.0, 1000.0))
    rate_tolerance: float = _param(0.1, 'Relative tolerance of the frequency check (diagnostic_updater default 0.1).',
                                   range=(0.0, 1.0))
    max_image_pixels: int = _param(4096 * 4096, 'Largest image (width x height) accepted; a compressed image is '
                                                'checked from its header before decoding, a raw image from its claimed '
                                                'size. Larger ones are refused and counted.', range=(1, 1 << 31))
    worker_join_timeout_s: float = _param(10.0, 'On deactivate, how long to wait for a localizer busy in localize(). '
                                                'A worker that outlives it is never duplicated: its late result is '
                                                'discarded and it serves the next activation.', range=(0.01, 600.0))
    error_log_throttle_s: float = _param(5.0, 'At most one log line per error kind and localizer in this many '
                                              'seconds (every error is still counted in /diagnostics).',
                                         range=(0.0, 3600.0), runtime=True)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get('choices')
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f'{f.name} must be one of {choices}, got {getattr(self, f.name)!r}')
        if not self.map_frame or not self.base_frame:
            raise ConfigError('map_frame and base_frame must not be empty')
        if len(self.T_base_camera_xyz) != 3 or len(self.T_base_camera_rpy) != 3 or not all(
                math.isfinite(v) for v in (*self.T_base_camera_xyz, *self.T_base_camera_rpy)):
            raise ConfigError(f'T_base_camera_xyz and T_base_camera_rpy need 3 finite numbers each, got '
                              f'{list(self.T_base_camera_xyz)} and {list(self.T_base_camera_rpy)}')
        if len(set(self.localizers)) != len(self.localizers):
            raise ConfigError(f'localizers has duplicate names: {list(self.localizers)}')


def _field_spec(owner: type, f: dataclasses.Field, description: str = '') -> _Spec:
    """The parameter of dataclass field ``f`` of ``owner``: type and default from the field, descriptor
    from its metadata (``description``, ``range``, ``choices``, ``runtime``, ``read_only``)."""
    tp = typing.get_type_hints(owner)[f.name]
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
    elif tp is str:  # a required string (LocalizerConfig.type): the parameter is '' until set
        default = ''
    else:
        raise TypeError(f'{owner.__name__}.{f.name}: a parameter needs a default')
    md = f.metadata
    bounds = md.get('range')
    return _Spec(list(default) if isinstance(default, (tuple, list)) else default, _PTYPE[tp],
                 str(md.get('description') or description),
                 float_range=tuple(map(float, bounds)) if bounds is not None and tp is float else None,
                 int_range=tuple(map(int, bounds)) if bounds is not None and tp is int else None,
                 choices=tuple(md.get('choices') or ()), runtime=bool(md.get('runtime')),
                 read_only=bool(md.get('read_only')))


#: The node-level parameters, one per field of NodeParams.
NODE_PARAMETERS: dict[str, _Spec] = {f.name: _field_spec(NodeParams, f) for f in dataclasses.fields(NodeParams)}

#: The parameters every localizer instance has (``<name>.<key>``), one per field of LocalizerConfig but its name.
LOCALIZER_PARAMETERS: dict[str, _Spec] = {f.name: _field_spec(LocalizerConfig, f)
                                          for f in dataclasses.fields(LocalizerConfig) if f.name != 'name'}
LOCALIZER_COMMON = tuple(LOCALIZER_PARAMETERS)
BACKENDS = LOCALIZER_PARAMETERS['backend'].choices

#: Node-level parameter names that may change while configured or active.
RUNTIME_PARAMETERS = frozenset(name for name, spec in NODE_PARAMETERS.items() if spec.runtime)


@dataclass(frozen=True)
class LocalizerParams:
    """One localizer instance's parameters: common config plus raw option values."""

    config: LocalizerConfig
    options: dict[str, Any]


def _descriptor(name: str, spec: _Spec) -> ParameterDescriptor:
    d = ParameterDescriptor(name=name, type=spec.ptype, description=spec.description, read_only=spec.read_only)
    if spec.choices:
        d.additional_constraints = 'one of: ' + ', '.join(spec.choices)
    if spec.float_range is not None:
        d.floating_point_range = [FloatingPointRange(from_value=spec.float_range[0], to_value=spec.float_range[1], step=0.0)]
    if spec.int_range is not None:
        d.integer_range = [IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=0)]
    return d


def _declare(node: Any, name: str, spec: _Spec) -> Any:
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    if node.has_parameter(name):
        return _value(node, name, spec)
    value: Any = spec.default
    if isinstance(value, list) and not value:
        # rclpy cannot infer an array type from []: declare the type only (a value given in a params
        # file or on the command line still applies; none, or an empty list, is read back as []).
        from rclpy.parameter import Parameter

        value = Parameter.Type(spec.ptype)
    try:
        node.declare_parameter(name, value, _descriptor(name, spec))
        return _value(node, name, spec)
    except InvalidParameterTypeException as exc:
        raise ConfigError(f'parameter {name} must be {_PTYPE_NAME.get(spec.ptype, spec.ptype)}: {exc}') from exc
    except InvalidParameterValueException as exc:
        raise ConfigError(f'parameter {name}: invalid value: {exc}') from exc


def _value(node: Any, name: str, spec: _Spec) -> Any:
    from rclpy.exceptions import ParameterUninitializedException

    try:
        value = node.get_parameter(name).value
    except ParameterUninitializedException:  # an array declared by type only (see _declare)
        return list(spec.default)
    if value is None and isinstance(spec.default, list):
        return []
    if hasattr(value, 'tolist'):  # array.array / numpy arrays from rclpy
        return value.tolist()
    return list(value) if isinstance(value, tuple) else value


def declare_node_parameters(node: Any) -> list[str]:
    """Declare the node-level parameters; returns errors (e.g. a wrong type in the params file) instead of raising."""
    errors = []
    for name, spec in NODE_PARAMETERS.items():
        try:
            _declare(node, name, spec)
        except ConfigError as exc:
            errors.append(str(exc))
    return errors


def read_node_params(node: Any) -> NodeParams:
    """Current node-level parameter values as a validated NodeParams (raises ConfigError)."""
    missing = [n for n in NODE_PARAMETERS if not node.has_parameter(n)]
    if missing:
        raise ConfigError(f'parameters {missing} could not be declared (see the errors logged at start-up)')
    v = {name: _value(node, name, spec) for name, spec in NODE_PARAMETERS.items()}
    for name, spec in NODE_PARAMETERS.items():  # arrays are tuples in the frozen NodeParams
        if spec.ptype == ParameterType.PARAMETER_DOUBLE_ARRAY:
            v[name] = tuple(float(x) for x in v[name] or ())
        elif isinstance(spec.default, list):
            v[name] = tuple(v[name] or ())
    return NodeParams(**v)


def declare_localizer_parameters(node: Any, name: str, registry: LocalizerRegistry) -> LocalizerParams:
    """Declare ``<name>.*`` and return its config; raises ConfigError when misconfigured."""
    values = {key: _declare(node, f'{name}.{key}', spec) for key, spec in LOCALIZER_PARAMETERS.items()}
    if not values['type']:
        raise ConfigError(f'{name}.type is not set; registered types: {sorted(registry.types) or "none"}')
    if values['backend'] not in BACKENDS:
        raise ConfigError(f'{name}.backend must be one of {BACKENDS}, got {values["backend"]!r}')
    config = LocalizerConfig(name=name, **values)
    localizer_type = registry.get(config.type)
    options = {}
    for field_name, tp, default, description in option_fields(localizer_type.options_type):
        if field_name in LOCALIZER_COMMON:
            raise ConfigError(f'{config.type}: option {field_name!r} clashes with the common parameter {name}.{field_name}')
        spec = _Spec(list(default) if isinstance(default, list) else default, _PTYPE[tp],
                     description or f'{config.type} option {field_name} ({_type_name(tp)})')
        options[field_name] = _declare(node, f'{name}.{field_name}', spec)
    unknown = unknown_localizer_overrides(node, name, list(LOCALIZER_COMMON) + list(options))
    if unknown:
        raise ConfigError(f'{name}: unknown parameter(s) {unknown} for localizer type {config.type!r}; '
                          f'known: {sorted(list(LOCALIZER_COMMON) + list(options))}')
    return LocalizerParams(config=config, options=options)


def unknown_localizer_overrides(node: Any, name: str, known: Iterable[str]) -> list[str]:
    """Parameters given (params file / command line) as ``<name>.<key>`` whose key is not in ``known``.

    ``node.parameter_overrides`` holds the given parameters by name (:class:`vizloc_ros.node.VizlocNode`).
    """
    overrides = node.parameter_overrides
    prefix = f'{name}.'
    known = set(known)
    return sorted(k for k in overrides if k.startswith(prefix) and k[len(prefix):] not in known)


#: Parameters rclpy itself declares or reads, never reported as unknown.
_RCLPY_PARAMETERS = frozenset({'use_sim_time', 'start_type_description_service'})
_RCLPY_PREFIXES = ('qos_overrides.',)


def unknown_node_overrides(node: Any, localizers: Iterable[str]) -> tuple[list[str], list[str]]:
    """(errors, notes) for overrides that no declared parameter or listed localizer takes.

    An error names the parameter and the closest known name (``diagnostic_period_s``: did you mean
    ``diagnostics_period_s``?). A ``<name>.*`` group with a ``<name>.type`` for a name not listed in
    ``localizers`` is a localizer defined but not enabled: a note, not an error (a params file may
    define several localizers and a launch argument pick some).
    """
    import difflib

    overrides = node.parameter_overrides  # the parameters given, by name (VizlocNode)
    listed = set(localizers)
    known = sorted(set(NODE_PARAMETERS) | _RCLPY_PARAMETERS | {f'{n}.{k}' for n in listed for k in LOCALIZER_COMMON})
    defined = {k.split('.', 1)[0] for k in overrides if k.endswith('.type') and k.count('.') == 1}
    errors, notes = [], []
    for name in sorted(overrides):
        head = name.split('.', 1)[0]
        if name in known or node.has_parameter(name) or name.startswith(_RCLPY_PREFIXES) or head in listed:
            continue  # localizer keys are checked against their type when the localizer is configured
        if '.' in name and head in defined:
            if name == f'{head}.type':
                notes.append(f'localizer {head!r} is defined but not listed in localizers {sorted(listed)}; it is not run')
            continue
        close = difflib.get_close_matches(name, known + [f'{n}.' for n in listed], n=1, cutoff=0.6)
        hint = f'; did you mean {close[0]!r}?' if close else f'; known node parameters: {sorted(NODE_PARAMETERS)}'
        errors.append(f'unknown parameter {name!r}{hint}')
    return errors, notes


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return f'list[{typing.get_args(tp)[0].__name__}]'
    return tp.__name__


def check_parameter_change(name: str, value: Any, *, declared: bool, configured: bool,
                           localizer_names: Iterable[str]) -> str | None:
    """Why a runtime change of ``name`` to ``value`` is refused, or None if it is fine.

    Ranges and types are enforced by rclpy from the descriptors; this adds choices and the rule that
    graph-shaping parameters change only while unconfigured (deactivate + cleanup, set, configure).
    """
    base, _, key = name.partition('.')
    spec = NODE_PARAMETERS.get(name)
    if spec is None and key in LOCALIZER_PARAMETERS:
        spec = LOCALIZER_PARAMETERS[key]
    if spec is not None and spec.choices and value not in spec.choices:
        return f'{name} must be one of {list(spec.choices)}, got {value!r}'
    if not declared:  # being declared (start-up / configure): only the value is checked
        return None
    if spec is not None and spec.read_only and name in NODE_PARAMETERS:
        return f'{name} is read-only; it only applies at start-up'
    if not configured:
        return None
    if name in RUNTIME_PARAMETERS or (key in LOCALIZER_PARAMETERS and LOCALIZER_PARAMETERS[key].runtime
                                      and base in set(localizer_names)):
        return None
    if name in NODE_PARAMETERS or key:
        return (f'{name} cannot change while the node is configured; deactivate and clean up the node '
                '(ros2 lifecycle set <node> deactivate / cleanup), set it, then configure again')
    return None
