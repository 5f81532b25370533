"""The ``vizloc`` lifecycle node: camera images in, NavSatFix / PoseWithCovarianceStamped / room label out.

Lifecycle (rclpy ``LifecycleNode``, the ros2/demos lifecycle_py pattern):

* ``on_configure``: load plugins (``blocked_plugins``), declare ``<name>.*`` parameters, build each
  localizer listed in ``localizers`` (a misconfigured one is logged, shown in /diagnostics and
  skipped; the others run), create the (lifecycle) publishers.
* ``on_activate``: subscribe to ``image`` (or ``image/compressed``) and ``camera_info``; start one
  worker thread per localizer; start the /diagnostics timer.
* ``on_deactivate``: unsubscribe, stop the workers, ``Localizer.reset()``.
* ``on_cleanup`` / ``on_shutdown``: ``Localizer.close()``, destroy publishers.

Threading: the subscription callback only stores the message in each localizer's latest-frame slot
(overwriting an unprocessed frame counts as dropped) and returns; each localizer's worker thread
converts the message (once per message, shared), runs ``localize`` and publishes. Nothing queues
without bound. See docs/node.md.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import rclpy
from rclpy.clock import Clock, ClockType
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Path as PathMsg
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, NavSatFix
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from . import params as vparams
from .conversions import (frame_from_msg, image_msg_from_rgb, intrinsics_from_camera_info, navsatfix_from_result,
                          pose_msg_from_matrix, room_msg_from_estimate, stamp_to_ns)
from .frames import CameraExtrinsic, base_pose_from_camera_pose, intrinsics_for_input
from .diagnostics import ErrorThrottle, FrameTiming, InputMonitor, LocalizerStats, input_level, timing_status
from .localizer import ConfigError, LocalizeFault, Localizer, LocalizerContext, run_localizer
from .markers import LocalizerPaths, delete_markers, markers_for_result
from .plugin_manager import load_registry
from .types import CameraIntrinsics, Frame, InvalidInputError, InvalidOutputError, LocalizationResult, ResultStatus

__all__ = ['VizlocNode', 'main', 'BRIDGED_LOGGERS']

#: Python loggers forwarded to the node's rclpy logger (plus the top-level packages of loaded plugins).
BRIDGED_LOGGERS = ('vizloc_ros', 'vizloc_plugins')
OUTPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
RELIABLE_INPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
IMAGE_OUTPUT_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
#: sys.setswitchinterval() of the vizloc_node process (main() only; embedding applications choose their own).
GIL_SWITCH_INTERVAL_S = 0.001
#: Output names of each localizer that LocalizationResult.images names must not take.
RESERVED_OUTPUTS = frozenset({'fix', 'pose', 'room'})


def _checked_rgb(rgb: Any, image_name: str) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InvalidOutputError(f'result image {image_name!r} must be uint8 HxWx3 RGB, got '
                                f'{getattr(rgb, "dtype", type(rgb).__name__)} {getattr(rgb, "shape", None)}')
    return rgb


class RclpyLogHandler(logging.Handler):
    """Forwards Python ``logging`` records to an rclpy logger (so they reach /rosout and the console)."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__()
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f'[{record.name}] {self.format(record)}'
            if record.levelno >= logging.ERROR:
                self.ros_logger.error(text)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(text)
            elif record.levelno >= logging.INFO:
                self.ros_logger.info(text)
            else:
                self.ros_logger.debug(text)
        except Exception:  # noqa: BLE001 - logging must never raise (logging.Handler contract)
            self.handleError(record)


class _FrameConverter:
    """Converts each message once, however many localizers take it; remembers the newest CameraInfo."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._msg: Any = None
        self._result: Frame | InvalidInputError | None = None
        self.camera: CameraIntrinsics | None = None
        #: Node parameter max_image_pixels (set on configure).
        self.max_pixels = vparams.NodeParams.max_image_pixels

    def frame(self, msg: Any) -> Frame:
        """The frame of ``msg``; raises InvalidInputError for unusable messages (_FirstFailure the first time)."""
        with self._lock:
            if self._msg is msg and self._result is not None:
                if isinstance(self._result, InvalidInputError):
                    raise self._result
                return self._result
            try:
                result: Frame | InvalidInputError = frame_from_msg(msg, self.camera, self.max_pixels)
            except InvalidInputError as exc:
                result = exc
            self._msg, self._result = msg, result
        if isinstance(result, InvalidInputError):
            raise _FirstFailure(str(result))
        return result


class _FirstFailure(InvalidInputError):
    """The first localizer to see a bad message gets this (the node counts the bad input once)."""


class _LocalizerWorker:
    """One localizer instance: its latest-frame slot, worker thread, publishers and statistics.

    There is never more than one thread inside a localizer. Each activation and deactivation bumps
    ``_generation``; a frame is processed under the generation it was taken in, and its result is
    published only if that generation is still the active one. A thread still busy in ``localize()``
    when the node deactivates (past ``worker_join_timeout_s``) is not replaced on re-activation: it
    discards its stale result and serves the new activation.
    """

    def __init__(self, node: 'VizlocNode', name: str, localizer: Localizer, stats: LocalizerStats,
                 max_rate_hz: float = 0.0) -> None:
        self.node = node
        #: <name>.max_rate_hz (runtime parameter: the node's parameter callback updates it)
        self.max_rate_hz = float(max_rate_hz)
        self.name = name
        self.localizer = localizer
        self.stats = stats
        self._cond = threading.Condition()
        self._slot: tuple[Any, int] | None = None
        self._active = False
        self._generation = 0
        self._thread: threading.Thread | None = None
        self._last_accepted_ns = 0
        qos = OUTPUT_QOS
        self.pub_fix = node.create_lifecycle_publisher(NavSatFix, f'~/{name}/fix', qos)
        self.pub_pose = node.create_lifecycle_publisher(PoseWithCovarianceStamped, f'~/{name}/pose', qos)
        self.pub_room = node.create_lifecycle_publisher(String, f'~/{name}/room', qos)
        #: ~/<name>/<image name> for LocalizationResult.images, created on first use.
        self.pub_images: dict[str, Any] = {}

    # -- called from the subscription callback: never blocks on the model ----------------------------
    def offer(self, msg: Any, received_ns: int) -> None:
        max_rate_hz = self.max_rate_hz
        if max_rate_hz > 0.0 and received_ns - self._last_accepted_ns < 1e9 / max_rate_hz:
            self.stats.throttled()
            return
        self._last_accepted_ns = received_ns
        with self._cond:
            dropped = self._slot is not None
            self._slot = (msg, received_ns)
            self._cond.notify()
        self.stats.offered(dropped_previous=dropped)

    # -- worker thread --------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            self._generation += 1
            self._active = True
            self._slot = None
            if self._thread is None:  # else: the thread of an earlier activation is still busy; it serves this one
                self._thread = threading.Thread(target=self._run, name=f'vizloc-{self.name}', daemon=True)
                self._thread.start()
            self._cond.notify()

    def stop(self, timeout_s: float) -> None:
        with self._cond:
            self._generation += 1
            self._active = False
            self._slot = None
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=timeout_s)
            if thread.is_alive():
                self.node.get_logger().warning(
                    f'localizer {self.name}: still inside localize() after {timeout_s} s; its result will be '
                    'discarded, and no second worker is started for this localizer')

    @property
    def thread_alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _current(self, generation: int) -> bool:
        with self._cond:
            return self._active and generation == self._generation

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and self._active:
                    self._cond.wait()
                if not self._active:
                    self._thread = None  # under the lock: start() then creates a new thread
                    return
                msg, received_ns = self._slot  # type: ignore[misc]
                self._slot = None
                generation = self._generation
            try:
                self._process(msg, received_ns, generation)
            except BaseException as exc:  # noqa: BLE001 - the worker must outlive any single frame, SystemExit too
                self._error('internal_error', f'{type(exc).__name__}: {exc}', exc_info=exc)

    def _process(self, msg: Any, received_ns: int, generation: int) -> None:
        node = self.node
        try:
            frame = node.converter.frame(msg)
        except _FirstFailure as exc:
            node.count_bad_input(str(exc))
            self._error('bad_input', str(exc))
            return
        except InvalidInputError as exc:
            self._error('bad_input', str(exc))
            return
        if self.localizer.requires_camera_info and frame.camera is None:
            self.stats.waiting_camera_info()
            node.log_throttled(f'{self.name}:camera_info', 'warning',
                               f'localizer {self.name} needs camera intrinsics: waiting for camera_info')
            return
        try:  # localize(), timed, checked and stamped (stamp, frame id, name, latency) by the host
            result, model_start_ns, model_end_ns = run_localizer(self.localizer, frame, self.name)
        except LocalizeFault as fault:
            self._error(fault.kind, f'{self.name}: {fault.message}',
                        exc_info=fault.cause if fault.kind == 'plugin_error' else None)
            return
        if not self._current(generation):  # deactivated (and maybe re-activated) while the model ran
            self.stats.error('stale_result', 'result of an earlier activation discarded')
            return
        try:
            self._publish(msg, frame, result)
        except InvalidOutputError as exc:  # e.g. a result image that is not RGB
            self._error('invalid_output', str(exc))
            return
        except (ValueError, TypeError) as exc:  # a message that cannot be built, e.g. a NaN quaternion
            self._error('publish_error', f'{type(exc).__name__}: {exc}')
            return
        timing = FrameTiming(stamp_ns=frame.stamp_ns, received_ns=received_ns, model_start_ns=model_start_ns,
                             model_end_ns=model_end_ns, published_ns=time.time_ns())
        self.stats.processed(timing, no_fix=result.status == ResultStatus.NO_FIX)
        if node.runtime['publish_timing']:
            node.publish_timing(self.name, timing)

    def _publish(self, msg: Any, frame: Frame, result: LocalizationResult) -> None:
        stamp = msg.header.stamp  # every output carries the source image's stamp
        camera_frame = msg.header.frame_id
        fix = navsatfix_from_result(result, stamp, camera_frame)
        if result.status == ResultStatus.NO_FIX:
            self.pub_fix.publish(fix)
            if self.node.runtime['publish_markers']:
                self.node.publish_no_fix_markers(self.name, stamp)
            return
        pose_msg = None
        if result.pose is not None:
            # the robot's pose (base_frame), not the camera's: what fusion stacks take a pose measurement for
            T_map_base, cov_6x6 = base_pose_from_camera_pose(result.pose, self.node.extrinsic)
            pose_msg = pose_msg_from_matrix(T_map_base, cov_6x6, stamp, self.node.node_params.map_frame)
        if fix is not None:
            self.pub_fix.publish(fix)
        if pose_msg is not None:
            self.pub_pose.publish(pose_msg)
        if result.room is not None:
            self.pub_room.publish(room_msg_from_estimate(result.room))
        for image_name, rgb in result.images.items():
            self._publish_image(image_name, rgb, msg.header.stamp, camera_frame)
        if self.node.runtime['publish_markers']:
            try:
                self.node.publish_markers(result, stamp, camera_frame, frame.camera, pose_msg)
            except Exception as exc:  # noqa: BLE001 - visualisation only: the estimates above are already out
                self._error('markers_error', f'{type(exc).__name__}: {exc}', exc_info=exc)

    def _publish_image(self, image_name: str, rgb: Any, stamp: Any, camera_frame: str) -> None:
        """A visualisation of the result (e.g. 'heatmap') on ~/<name>/<image_name> as rgb8 sensor_msgs/Image."""
        if image_name in RESERVED_OUTPUTS or not image_name.replace('_', '').isalnum() or not image_name[:1].isalpha():
            raise InvalidOutputError(f'result image name {image_name!r} is not usable as a topic name '
                                    f'(letters, digits, _; not one of {sorted(RESERVED_OUTPUTS)})')
        image_msg = image_msg_from_rgb(_checked_rgb(rgb, image_name), 0, camera_frame)
        image_msg.header.stamp = stamp
        pub = self.pub_images.get(image_name)
        if pub is None:
            pub = self.node.create_lifecycle_publisher(Image, f'~/{self.name}/{image_name}', IMAGE_OUTPUT_QOS)
            pub.on_activate(None)  # created while active: enable it now
            self.pub_images[image_name] = pub
        pub.publish(image_msg)

    def _error(self, kind: str, message: str, exc_info: BaseException | None = None) -> None:
        self.stats.error(kind, message)
        self.node.log_throttled(f'{self.name}:{kind}', 'error', f'localizer {self.name}: {kind}: {message}',
                                exc_info=exc_info)

    def destroy(self) -> None:
        for pub in (self.pub_fix, self.pub_pose, self.pub_room, *self.pub_images.values()):
            self.node.destroy_lifecycle_publisher(pub)
        self.pub_images = {}


class VizlocNode(LifecycleNode):
    """The localization node. ``extra_plugins`` (in-process use and tests) go to ``load_registry``."""

    def __init__(self, node_name: str = 'vizloc', *, extra_plugins: Sequence[object] = (), **kwargs: Any) -> None:
        #: The parameters given to this node (params files, ``-p``, ``parameter_overrides``), by name:
        #: rclpy hands them to :meth:`declare_parameters` during construction when
        #: ``automatically_declare_parameters_from_overrides`` is set; the node takes them there instead of
        #: declaring them untyped (each is declared later with its typed descriptor, and the ones no
        #: parameter takes are reported by name on configure).
        self.parameter_overrides: dict[str, Any] = {}
        self._taking_overrides = True
        super().__init__(node_name, automatically_declare_parameters_from_overrides=True, **kwargs)
        if self._taking_overrides:
            raise RuntimeError('rclpy did not declare the parameter overrides through Node.declare_parameters; '
                               'VizlocNode cannot tell which parameters were given')
        #: The lifecycle state's label, kept by the transition callbacks below (see :meth:`state_label`).
        self._lifecycle_state = 'unconfigured'
        self._extra_plugins = tuple(extra_plugins)
        self._log_handler = RclpyLogHandler(self.get_logger())
        self._bridged: list[tuple[logging.Logger, int, bool]] = []  # (logger, level, propagate) to restore
        self._bridge_loggers(BRIDGED_LOGGERS)
        self.node_params = vparams.NodeParams()
        #: Static camera extrinsic (node parameters T_base_camera_xyz / _rpy, read on configure).
        self.extrinsic = CameraExtrinsic()
        self.workers: dict[str, _LocalizerWorker] = {}
        self._lock = threading.Lock()
        self.parameter_errors = 0
        self._throttle = ErrorThrottle(5.0)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        #: Runtime-changeable node parameters (vizloc_ros.params.RUNTIME_PARAMETERS): read here, not per
        #: frame; the parameter callback updates them when a change is accepted.
        self.runtime: dict[str, Any] = {name: vparams.NODE_PARAMETERS[name].default
                                        for name in vparams.RUNTIME_PARAMETERS}
        self._param_errors = vparams.declare_node_parameters(self)
        for error in self._param_errors:
            self.get_logger().error(f'parameter error: {error}')
        self.converter = _FrameConverter()
        self.config_errors: dict[str, str] = {}
        self.plugin_report: Any = None
        self.frames_received = 0
        self.bad_inputs = 0
        self.camera_info_errors = 0
        #: Input stamps that are zero, negative, or older than the previous frame's (counted, still used).
        self.stamp_counts = {'zero_stamps': 0, 'negative_stamps': 0, 'backwards_stamps': 0}
        self._last_stamp_ns: int | None = None
        self._subs: list[Any] = []
        self._node_pubs: dict[str, Any] = {}
        # /diagnostics flows in every lifecycle state (a failed configure says why), on the steady clock
        # (it keeps flowing with use_sim_time and no /clock): a plain publisher, not a lifecycle one.
        self.input_monitor = InputMonitor()
        self.configure_error = ''
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', OUTPUT_QOS)
        self._diag_timer = self.create_timer(float(self._param_or('diagnostics_period_s', 1.0)), self.publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._path: LocalizerPaths | None = None  # ~/<name>/path, one per localizer

    def declare_parameters(self, namespace: str, parameters: Any, ignore_override: bool = False) -> list[Any]:
        """rclpy's ``Node.declare_parameters``; the first call, made by ``Node.__init__`` with the
        parameter overrides (``automatically_declare_parameters_from_overrides``), only records them
        in :attr:`parameter_overrides`."""
        if getattr(self, '_taking_overrides', False) and not namespace and ignore_override:
            self._taking_overrides = False
            self.parameter_overrides = {item[0]: item[1] for item in parameters}
            return []
        return super().declare_parameters(namespace, parameters, ignore_override)

    # -- helpers --------------------------------------------------------------------------------------
    def _param_or(self, name: str, default: Any) -> Any:
        return self.get_parameter(name).value if self.has_parameter(name) else default

    def _bridge_loggers(self, names: Iterable[str]) -> None:
        for name in names:
            py_logger = logging.getLogger(name)
            if any(bridged is py_logger for bridged, _, _ in self._bridged):
                continue
            self._bridged.append((py_logger, py_logger.level, py_logger.propagate))
            py_logger.addHandler(self._log_handler)
            if py_logger.level == logging.NOTSET:
                py_logger.setLevel(logging.INFO)
            py_logger.propagate = False  # the rclpy logger prints it; avoid a second copy on stderr

    def _unbridge_loggers(self) -> None:
        for py_logger, level, propagate in self._bridged:
            py_logger.removeHandler(self._log_handler)
            py_logger.setLevel(level)
            py_logger.propagate = propagate
        self._bridged.clear()

    def log_throttled(self, key: str, level: str, message: str, exc_info: BaseException | None = None) -> None:
        self._throttle.period_s = self.runtime['error_log_throttle_s']
        ok, suppressed = self._throttle.should_log(key)
        if not ok:
            return
        if suppressed:
            message += f' ({suppressed} similar message(s) suppressed)'
        if exc_info is not None and exc_info.__traceback__ is not None:
            import traceback

            tb = traceback.extract_tb(exc_info.__traceback__)[-1]
            message += f' [at {Path(tb.filename).name}:{tb.lineno}]'
        # One call site per severity: rclpy refuses a call site whose severity changes between calls.
        ros_logger = self.get_logger()
        if level == 'error':
            ros_logger.error(message)
        elif level == 'warning':
            ros_logger.warning(message)
        else:
            ros_logger.info(message)

    def count_bad_input(self, message: str) -> None:
        with self._lock:
            self.bad_inputs += 1
        self.input_monitor.bad()

    def state_label(self) -> str:
        """The lifecycle state ('unconfigured', 'inactive', 'active', 'finalized', or a transition state
        such as 'configuring' while its callback runs), as the transition callbacks left it."""
        return self._lifecycle_state

    def _entered(self, ret: TransitionCallbackReturn, success: str, failure: str) -> TransitionCallbackReturn:
        """Record the state a transition ends in (ERROR: ``on_error`` runs next and records its own)."""
        if ret == TransitionCallbackReturn.SUCCESS:
            self._lifecycle_state = success
        elif ret == TransitionCallbackReturn.FAILURE:
            self._lifecycle_state = failure
        else:
            self._lifecycle_state = 'errorprocessing'
        return ret

    # -- parameters -----------------------------------------------------------------------------------
    def _on_set_parameters(self, parameters: list[Any]) -> SetParametersResult:
        state = self.state_label()
        configured = state not in ('unconfigured', 'configuring', 'finalized')
        names = list(self.workers)
        for p in parameters:
            reason = vparams.check_parameter_change(p.name, p.value, declared=self.has_parameter(p.name),
                                                    configured=configured, localizer_names=names)
            if reason is not None:
                with self._lock:
                    self.parameter_errors += 1
                self.log_throttled(f'parameter:{p.name}', 'warning', f'parameter change refused: {reason}')
                return SetParametersResult(successful=False, reason=reason)
        for p in parameters:  # accepted: runtime values take effect now
            base, _, key = p.name.partition('.')
            if p.name in self.runtime:
                self.runtime[p.name] = p.value
            elif key == 'max_rate_hz' and base in self.workers:
                self.workers[base].max_rate_hz = float(p.value)
        return SetParametersResult(successful=True)

    # -- lifecycle ------------------------------------------------------------------------------------
    def autostart(self) -> bool:
        """configure + activate when the ``autostart`` parameter is true; returns True when active."""
        if not self._param_or('autostart', True):
            self.get_logger().info('autostart is false: waiting for lifecycle transitions (configure, activate)')
            return False
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error('autostart: configure failed; the node stays unconfigured')
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    # The transition callbacks record the state they leave the node in (state_label); the work is in
    # the _configure / _activate / ... methods.
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._lifecycle_state = 'configuring'
        return self._entered(self._configure(), 'inactive', 'unconfigured')

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._lifecycle_state = 'activating'
        return self._entered(self._activate(state), 'active', 'inactive')

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._lifecycle_state = 'deactivating'
        return self._entered(self._deactivate(state), 'inactive', 'active')

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._lifecycle_state = 'cleaningup'
        self._release()
        return self._entered(TransitionCallbackReturn.SUCCESS, 'unconfigured', 'inactive')

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._lifecycle_state = 'shuttingdown'
        self._stop_io()
        self._release()
        return self._entered(TransitionCallbackReturn.SUCCESS, 'finalized', 'finalized')

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._lifecycle_state = 'errorprocessing'
        self._stop_io()
        self._release()
        return self._entered(TransitionCallbackReturn.SUCCESS, 'unconfigured', 'finalized')

    def _configure(self) -> TransitionCallbackReturn:
        self.configure_error = ''
        try:
            self.node_params = vparams.read_node_params(self)
        except ConfigError as exc:
            self.configure_error = str(exc)
            self.get_logger().error(f'configure failed: {exc}')
            return TransitionCallbackReturn.FAILURE
        p = self.node_params
        unknown, notes = vparams.unknown_node_overrides(self, p.localizers)
        for note in notes:
            self.get_logger().warning(note)
        if unknown:
            for error in unknown:
                self.get_logger().error(f'configure failed: {error}')
            self.configure_error = '; '.join(unknown)
            return TransitionCallbackReturn.FAILURE
        self.converter.max_pixels = p.max_image_pixels
        self.extrinsic = CameraExtrinsic(p.T_base_camera_xyz, p.T_base_camera_rpy)
        try:
            self.plugin_report = load_registry(blocked=p.blocked_plugins, extra_plugins=self._extra_plugins)
        except ConfigError as exc:
            self.configure_error = str(exc)
            self.get_logger().error(f'configure failed: {exc}')
            return TransitionCallbackReturn.FAILURE
        registry = self.plugin_report.registry
        self._bridge_loggers({t.factory.__module__.split('.')[0] for t in registry.types.values()
                              if getattr(t.factory, '__module__', None)})
        cache_dir = Path(p.cache_dir or os.environ.get('VIZLOC_CACHE_DIR') or Path.home() / '.cache' / 'vizloc_ros').expanduser()
        context = LocalizerContext(cache_dir=cache_dir, map_frame=p.map_frame)
        self.config_errors = {}
        for name in p.localizers:
            try:
                lp = vparams.declare_localizer_parameters(self, name, registry)
                localizer = registry.create(lp.config, lp.options, context)
            except ConfigError as exc:
                self._skip_localizer(name, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - a factory that raises (missing file, bad model...) skips that localizer only
                self._skip_localizer(name, f'{type(exc).__name__}: {exc}')
                continue
            stats = LocalizerStats(name, lp.config.type, backend=str(getattr(localizer, 'backend_name', '') or ''))
            self.workers[name] = _LocalizerWorker(self, name, localizer, stats, max_rate_hz=lp.config.max_rate_hz)
            self.get_logger().info(f'localizer {name}: type {lp.config.type}, backend {stats.backend or "?"}'
                                   f'{", max " + str(lp.config.max_rate_hz) + " Hz" if lp.config.max_rate_hz else ""}')
        if not self.workers:
            self.get_logger().error('no localizer is configured (parameter localizers: '
                                    f'{list(p.localizers)}); the node runs but publishes nothing but /diagnostics')
        self._node_pubs = {
            'markers': self.create_lifecycle_publisher(MarkerArray, '~/markers', OUTPUT_QOS),
            'timing': self.create_lifecycle_publisher(DiagnosticStatus, '~/timing', QoSProfile(depth=100)),
        }
        self._path = LocalizerPaths(p.map_frame, p.path_max_length)
        self.get_logger().info(f'configured: {len(self.workers)} localizer(s) {sorted(self.workers)}'
                               f'{"; skipped " + str(sorted(self.config_errors)) if self.config_errors else ""}')
        return TransitionCallbackReturn.SUCCESS

    def _skip_localizer(self, name: str, reason: str) -> None:
        self.config_errors[name] = reason
        self.get_logger().error(f'localizer {name} skipped (misconfigured): {reason}')

    def _activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.node_params
        qos = qos_profile_sensor_data if p.input_qos == 'sensor_data' else RELIABLE_INPUT_QOS
        if p.image_transport == 'compressed':
            self._subs.append(self.create_subscription(CompressedImage, 'image/compressed', self._on_image, qos))
        else:
            self._subs.append(self.create_subscription(Image, 'image', self._on_image, qos))
        self._subs.append(self.create_subscription(CameraInfo, 'camera_info', self._on_camera_info, qos))
        for worker in self.workers.values():
            worker.start()
        self.get_logger().info(f'active: listening on {self._subs[0].topic_name} ({p.input_qos} QoS)')
        return super().on_activate(state)

    def _deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_io()
        for name, worker in self.workers.items():
            try:
                worker.localizer.reset()
            except Exception as exc:  # noqa: BLE001 - keep deactivating the others
                self.get_logger().error(f'localizer {name}: reset() raised {exc!r}')
        return super().on_deactivate(state)

    def _stop_io(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        for worker in self.workers.values():
            worker.stop(self.node_params.worker_join_timeout_s)

    def _release(self) -> None:
        for name, worker in self.workers.items():
            try:
                worker.localizer.close()
            except Exception as exc:  # noqa: BLE001 - free the others anyway
                self.get_logger().error(f'localizer {name}: close() raised {exc!r}')
            worker.destroy()
        self.workers = {}
        for pub in self._node_pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._node_pubs = {}
        self._path = None
        self.converter = _FrameConverter()
        self.converter.max_pixels = self.node_params.max_image_pixels

    def destroy_node(self) -> None:
        self._stop_io()
        self._release()
        self._unbridge_loggers()
        super().destroy_node()

    # -- callbacks (never block) ----------------------------------------------------------------------
    def _on_image(self, msg: Any) -> None:
        received_ns = time.time_ns()
        stamp_ns = stamp_to_ns(msg.header.stamp)
        self.input_monitor.received()
        with self._lock:
            self.frames_received += 1
            if stamp_ns == 0:
                self.stamp_counts['zero_stamps'] += 1
            elif stamp_ns < 0:
                self.stamp_counts['negative_stamps'] += 1
            elif self._last_stamp_ns is not None and stamp_ns < self._last_stamp_ns:
                self.stamp_counts['backwards_stamps'] += 1
            self._last_stamp_ns = stamp_ns
        for worker in self.workers.values():
            worker.offer(msg, received_ns)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self.converter.camera = intrinsics_for_input(intrinsics_from_camera_info(msg), msg.p,
                                                         rectified=self.node_params.rectified)
        except InvalidInputError as exc:
            with self._lock:
                self.camera_info_errors += 1
            self.log_throttled('camera_info', 'error', f'camera_info ignored: {exc}')

    # -- outputs --------------------------------------------------------------------------------------
    def publish_markers(self, result: LocalizationResult, stamp: Any, camera_frame: str,
                        camera: CameraIntrinsics | None, pose_msg: Any) -> None:
        pubs = self._node_pubs
        if not pubs:
            return
        markers = markers_for_result(result, stamp, camera_frame, self.node_params.map_frame, camera)
        if markers.markers:
            pubs['markers'].publish(markers)
        if pose_msg is not None and self._path is not None:
            path = self._path.add(result.localizer, pose_msg, time.monotonic(), self.runtime['path_max_length'])
            if path is not None:
                self._path_publisher(result.localizer).publish(path)

    def _path_publisher(self, localizer: str) -> Any:
        """~/<localizer>/path, created on first use (while active) and destroyed with the other node publishers."""
        key = f'path:{localizer}'
        with self._lock:
            pub = self._node_pubs.get(key)
            if pub is None:
                pub = self.create_lifecycle_publisher(PathMsg, f'~/{localizer}/path', OUTPUT_QOS)
                pub.on_activate(None)
                self._node_pubs[key] = pub
        return pub

    def publish_no_fix_markers(self, localizer: str, stamp: Any) -> None:
        """A NO_FIX removes the localizer's markers (its last answer is no longer valid)."""
        if self._node_pubs:
            self._node_pubs['markers'].publish(delete_markers(localizer, stamp, self.node_params.map_frame))

    def publish_timing(self, name: str, timing: FrameTiming) -> None:
        if self._node_pubs:
            self._node_pubs['timing'].publish(timing_status(name, timing))

    def diagnostics_array(self) -> DiagnosticArray:
        node_name = self.get_fully_qualified_name()
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        with self._lock:
            received, bad, cam_bad = self.frames_received, self.bad_inputs, self.camera_info_errors
            param_errors = self.parameter_errors + len(self._param_errors)
            stamps = dict(self.stamp_counts)
        p = self.node_params
        state = self.input_monitor.state()
        level, message = input_level(state, active=self.state_label() == 'active', stale_after_s=p.input_timeout_s,
                                     expected_rate_hz=p.expected_rate_hz, rate_tolerance=p.rate_tolerance)
        node_status = DiagnosticStatus(name=f'{node_name}: input', hardware_id='camera')
        node_status.level = bytes([level])
        node_status.message = f'{message}; {received} frames, {bad} bad, {cam_bad} bad camera_info'
        node_status.values = [KeyValue(key='frames_received', value=str(received)),
                              KeyValue(key='input_rate_hz', value=f'{state["rate_hz"]:.2f}'),
                              KeyValue(key='since_last_frame_s', value=f'{state["since_last_s"]:.2f}'),
                              KeyValue(key='bad_inputs', value=str(bad)),
                              KeyValue(key='camera_info_errors', value=str(cam_bad)),
                              KeyValue(key='parameter_errors', value=str(param_errors)),
                              *(KeyValue(key=k, value=str(v)) for k, v in stamps.items()),
                              KeyValue(key='camera_info', value='yes' if self.converter.camera is not None else 'no'),
                              KeyValue(key='plugins_loaded', value=','.join(getattr(self.plugin_report, 'loaded', []))),
                              KeyValue(key='plugins_blocked', value=','.join(getattr(self.plugin_report, 'blocked', []))),
                              KeyValue(key='plugins_failed', value=','.join(getattr(self.plugin_report, 'failed', {})))]
        array.status.append(node_status)
        if self.configure_error:
            array.status.append(DiagnosticStatus(level=DiagnosticStatus.ERROR, name=f'{node_name}: configure',
                                                 message=f'configure failed: {self.configure_error}'[:250]))
        for worker in list(self.workers.values()):
            array.status.append(worker.stats.to_status(node_name, p.diagnostics_window_s))
        for name, reason in sorted(self.config_errors.items()):
            array.status.append(DiagnosticStatus(level=DiagnosticStatus.ERROR, name=f'{node_name}: localizer {name}',
                                                 message=f'not configured: {reason}'[:250],
                                                 values=[KeyValue(key='configured', value='false')]))
        return array

    def publish_diagnostics(self) -> None:
        if self._diag_pub is not None:
            self._diag_pub.publish(self.diagnostics_array())


USAGE = """usage: vizloc_node [--ros-args --params-file config/localize.yaml [-p name:=value ...] [-r from:=to ...]]

The vizloc_ros localization node (lifecycle node 'vizloc'). It subscribes to 'image' (or
'image/compressed') and 'camera_info', runs the localizers named by the 'localizers' parameter and
publishes ~/<name>/fix (NavSatFix), ~/<name>/pose (PoseWithCovarianceStamped), ~/<name>/room (String),
~/markers, ~/<name>/path and /diagnostics. Every parameter is documented in config/localize.yaml and
docs/node.md. Set FASTDDS_DEFAULT_PROFILES_FILE=config/fastdds_shm.xml for 640x480 images across processes.
Usually started with: ros2 launch vizloc_ros localize.launch.py  (or ros2 run vizloc_ros vizloc_node)."""


def main(args: Sequence[str] | None = None) -> int:
    """``vizloc_node`` / ``ros2 run vizloc_ros vizloc_node``: spin the node until Ctrl-C."""
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    # The executor thread and the workers share the GIL; with Python's default 5 ms switch interval a
    # woken worker often waits for it (measured: node overhead p50 4.0 -> 1.5 ms at 640x480, 30 Hz).
    argv = list(args) if args is not None else sys.argv
    ros_start = argv.index('--ros-args') if '--ros-args' in argv else len(argv)
    if {'-h', '--help'} & set(argv[1:ros_start]):
        print(USAGE)
        return 0
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    rclpy.init(args=argv)
    node = VizlocNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        node.autostart()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # Ctrl-C shuts the context down from rclpy's signal handler; a timer callback already running then fails
        # to publish ('publisher's context is invalid') before the executor sees the shutdown: a clean stop
        if node.context.ok():
            raise
    finally:
        node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
