"""Per-localizer statistics for /diagnostics: rate, latency p50/p95, node overhead, dropped frames, errors, backend.

:class:`LocalizerStats` is updated by the subscription callback (frames offered, dropped,
throttled) and by the localizer's worker thread (one :class:`FrameTiming` per processed frame,
errors by kind); the diagnostics timer turns it into a ``diagnostic_msgs/DiagnosticStatus``.
All methods are thread-safe. Times are ``time.time_ns()`` nanoseconds (wall clock, so that the
per-frame timestamps on ``~/timing`` compare with other processes' clocks on the same machine).
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ['FrameTiming', 'LocalizerStats', 'ErrorThrottle', 'FrequencyStatus', 'InputMonitor', 'percentile_ms',
           'timing_status', 'configure_failed_status', 'ERROR_WINDOW_S']

#: Frame timings kept for the latency percentiles and the rate.
WINDOW = 200
#: Errors (and bad inputs) count against a status only while they are this recent: a localizer that
#: failed once and works again returns to OK after this many seconds.
ERROR_WINDOW_S = 10.0
_OK, _WARN, _ERROR, _STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels


class FrequencyStatus:
    """diagnostic_updater's FrequencyStatus: events over a sliding window against [min, max] Hz.

    Levels as in diagnostic_updater: ERROR "No events recorded." when the window has none, WARN
    "Frequency too low." / "Frequency too high." outside ``[min (1 - tolerance), max (1 + tolerance)]``,
    else OK "Desired frequency met". The window is the last ``window_s`` seconds. Thread-safe.
    """

    def __init__(self, min_hz: float, max_hz: float = float('inf'), tolerance: float = 0.1, window_s: float = 5.0) -> None:
        self.min_hz, self.max_hz, self.tolerance, self.window_s = min_hz, max_hz, tolerance, window_s
        self._events: collections.deque[int] = collections.deque()
        self._lock = threading.Lock()

    def tick(self, now_ns: int | None = None) -> None:
        with self._lock:
            self._events.append(time.monotonic_ns() if now_ns is None else now_ns)

    def frequency_hz(self, now_ns: int | None = None) -> tuple[int, float]:
        """(events in the window, their rate in Hz)."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        start = now_ns - int(self.window_s * 1e9)
        with self._lock:
            while self._events and self._events[0] < start:
                self._events.popleft()
            n = len(self._events)
        return n, n / self.window_s

    def level(self, now_ns: int | None = None) -> tuple[int, str, float]:
        n, hz = self.frequency_hz(now_ns)
        if n == 0:
            return _ERROR, 'No events recorded.', hz
        if hz < self.min_hz * (1.0 - self.tolerance):
            return _WARN, 'Frequency too low.', hz
        if hz > self.max_hz * (1.0 + self.tolerance):
            return _WARN, 'Frequency too high.', hz
        return _OK, 'Desired frequency met', hz


class InputMonitor:
    """The camera input as /diagnostics judges it: frames arriving, the camera stopping, recent bad input.

    * no frame since activation for ``stale_after_s``: ERROR "no frames received" (wrong topic, QoS mismatch)
    * frames arrived, but none for ``stale_after_s``: STALE "camera stopped: last frame N s ago"
    * ``expected_rate_hz`` > 0: the frame rate over the last ``window_s`` against it (FrequencyStatus, 10 %)
    * bad images / camera_info within ERROR_WINDOW_S: WARN (older ones no longer count)
    Times are monotonic nanoseconds.
    """

    def __init__(self, expected_rate_hz: float = 0.0, stale_after_s: float = 2.0, window_s: float = 5.0) -> None:
        self.expected_rate_hz = expected_rate_hz
        self.stale_after_s = stale_after_s
        self.frequency = FrequencyStatus(expected_rate_hz, expected_rate_hz, 0.1, window_s) if expected_rate_hz > 0 else None
        self.started_ns = time.monotonic_ns()
        self.last_frame_ns: int | None = None
        self._bad: collections.deque[int] = collections.deque(maxlen=10000)
        self._lock = threading.Lock()

    def frame(self, now_ns: int | None = None) -> None:
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        with self._lock:
            self.last_frame_ns = now_ns
        if self.frequency is not None:
            self.frequency.tick(now_ns)

    def bad(self, now_ns: int | None = None) -> None:
        with self._lock:
            self._bad.append(time.monotonic_ns() if now_ns is None else now_ns)

    def recent_bad(self, now_ns: int | None = None) -> int:
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        with self._lock:
            return sum(1 for t in self._bad if now_ns - t <= ERROR_WINDOW_S * 1e9)

    def level(self, now_ns: int | None = None) -> tuple[int, str, dict[str, str]]:
        """(level, message, extra key/values)."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        with self._lock:
            last = self.last_frame_ns
        values: dict[str, str] = {'seconds_since_last_frame': 'never' if last is None else f'{(now_ns - last) / 1e9:.3f}'}
        bad = self.recent_bad(now_ns)
        values['bad_inputs_recent'] = str(bad)
        if last is None:
            if (now_ns - self.started_ns) / 1e9 >= self.stale_after_s:
                return _ERROR, 'no frames received (check the image topic remapping and QoS)', values
            return _OK, 'waiting for the first frame', values
        if (now_ns - last) / 1e9 >= self.stale_after_s:
            return _STALE, f'camera stopped: last frame {(now_ns - last) / 1e9:.1f} s ago', values
        level, message = _OK, 'receiving frames'
        if self.frequency is not None:
            f_level, f_message, hz = self.frequency.level(now_ns)
            values['input_rate_hz'] = f'{hz:.2f}'
            values['expected_rate_hz'] = f'{self.expected_rate_hz:.2f}'
            if f_level != _OK:
                level, message = f_level, f'input rate {hz:.1f} Hz, expected {self.expected_rate_hz:.1f} Hz: {f_message}'
        if bad and level == _OK:
            level, message = _WARN, f'{bad} bad input(s) in the last {ERROR_WINDOW_S:.0f} s'
        return level, message, values


def configure_failed_status(node_name: str, reason: str) -> Any:
    """ERROR status published while the node could not configure (it stays unconfigured)."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    return DiagnosticStatus(level=DiagnosticStatus.ERROR, name=f'{node_name}: node', hardware_id='vizloc',
                            message=f'configure failed: {reason}'[:250],
                            values=[KeyValue(key='state', value='unconfigured'), KeyValue(key='configured', value='false')])


@dataclass(frozen=True)
class FrameTiming:
    """Wall-clock nanosecond timestamps of one processed frame (``stamp_ns`` = image header stamp)."""

    stamp_ns: int
    received_ns: int
    model_start_ns: int
    model_end_ns: int
    published_ns: int

    @property
    def model_ms(self) -> float:
        return (self.model_end_ns - self.model_start_ns) / 1e6

    @property
    def overhead_ms(self) -> float:
        """Callback received -> outputs published, minus the model's time (queueing, conversion, publishing)."""
        return (self.published_ns - self.received_ns) / 1e6 - self.model_ms


def percentile_ms(values: Any, q: float) -> float:
    values = list(values)
    return float(np.percentile(values, q)) if values else float('nan')


class ErrorThrottle:
    """At most one log line per key every ``period_s`` seconds; says how many were suppressed."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def should_log(self, key: str) -> tuple[bool, int]:
        """(log now?, number of messages suppressed since the last one logged)."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._suppressed[key] += 1
                return False, 0
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
            return True, suppressed


class LocalizerStats:
    """Counters and a sliding window of frame timings for one localizer instance."""

    def __init__(self, name: str, localizer_type: str, backend: str = '') -> None:
        self.name = name
        self.localizer_type = localizer_type
        self.backend = backend
        self._lock = threading.Lock()
        self._timings: collections.deque[FrameTiming] = collections.deque(maxlen=WINDOW)
        self.frames_offered = 0
        self.frames_processed = 0
        self.frames_dropped = 0
        self.frames_throttled = 0
        self.frames_waiting_camera_info = 0
        self.no_fix = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.last_error = ''
        self._error_times: collections.deque[int] = collections.deque(maxlen=10000)  # time.time_ns() of each error

    def offered(self, *, dropped_previous: bool) -> None:
        with self._lock:
            self.frames_offered += 1
            if dropped_previous:
                self.frames_dropped += 1

    def throttled(self) -> None:
        with self._lock:
            self.frames_throttled += 1

    def waiting_camera_info(self) -> None:
        with self._lock:
            self.frames_waiting_camera_info += 1

    def processed(self, timing: FrameTiming, *, no_fix: bool = False) -> None:
        with self._lock:
            self.frames_processed += 1
            self.no_fix += int(no_fix)
            self._timings.append(timing)

    def error(self, kind: str, message: str) -> None:
        with self._lock:
            self.errors[kind] += 1
            self.last_error = f'{kind}: {message}'
            self._error_times.append(time.time_ns())

    def timings(self) -> list[FrameTiming]:
        with self._lock:
            return list(self._timings)

    def rate_hz(self, now_ns: int | None = None) -> float:
        """Output rate over the window (0 when nothing was published in the last 5 s)."""
        timings = self.timings()
        now_ns = time.time_ns() if now_ns is None else now_ns
        if not timings or now_ns - timings[-1].published_ns > 5e9:
            return 0.0
        if len(timings) < 2:
            return 0.0
        span_s = (timings[-1].published_ns - timings[0].published_ns) / 1e9
        return (len(timings) - 1) / span_s if span_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        timings = self.timings()
        with self._lock:
            out = {
                'type': self.localizer_type,
                'backend': self.backend,
                'frames_offered': self.frames_offered,
                'frames_processed': self.frames_processed,
                'frames_dropped': self.frames_dropped,
                'frames_throttled': self.frames_throttled,
                'frames_waiting_camera_info': self.frames_waiting_camera_info,
                'no_fix': self.no_fix,
                'errors': sum(self.errors.values()),
                'errors_by_kind': dict(self.errors),
                'last_error': self.last_error,
            }
        model = [t.model_ms for t in timings]
        overhead = [t.overhead_ms for t in timings]
        out.update(
            rate_hz=self.rate_hz(),
            latency_p50_ms=percentile_ms(model, 50), latency_p95_ms=percentile_ms(model, 95),
            overhead_p50_ms=percentile_ms(overhead, 50), overhead_p95_ms=percentile_ms(overhead, 95),
        )
        return out

    def recent(self, now_ns: int | None = None, window_s: float = ERROR_WINDOW_S) -> tuple[int, int]:
        """(errors, frames processed) within the last ``window_s`` seconds."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        start = now_ns - int(window_s * 1e9)
        with self._lock:
            errors = sum(1 for t in self._error_times if t >= start)
            processed = sum(1 for t in self._timings if t.published_ns >= start)
        return errors, processed

    def to_status(self, node_name: str, now_ns: int | None = None) -> Any:
        """diagnostic_msgs/DiagnosticStatus, judged over the last ERROR_WINDOW_S seconds.

        ERROR: errors in the window and no frame localized in it; WARN: errors in the window
        beside localized frames, or frames received but nothing localized yet; else OK. Errors
        older than the window no longer count (their totals stay in the values).
        """
        from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

        s = self.summary()
        recent_errors, recent_processed = self.recent(now_ns)
        status = DiagnosticStatus(name=f'{node_name}: localizer {self.name}', hardware_id=s['backend'] or 'unknown')
        if recent_errors and not recent_processed:
            status.level, status.message = DiagnosticStatus.ERROR, s['last_error'][:200]
        elif recent_errors:
            status.level, status.message = (DiagnosticStatus.WARN, f'{recent_errors} error(s) in the last '
                                            f'{ERROR_WINDOW_S:.0f} s; last: {s["last_error"][:160]}')
        elif s['frames_offered'] and s['frames_processed'] == 0:
            status.level, status.message = DiagnosticStatus.WARN, 'frames received but nothing localized yet'
        else:
            status.level, status.message = DiagnosticStatus.OK, f'{s["rate_hz"]:.1f} Hz'
        values = dict(s)
        values.pop('errors_by_kind')
        values['errors_recent'] = recent_errors
        for kind, count in sorted(s['errors_by_kind'].items()):
            values[f'errors.{kind}'] = count
        status.values = [KeyValue(key=k, value=_fmt(v)) for k, v in values.items()]
        return status


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:.3f}'
    return str(value)


def timing_status(localizer: str, timing: FrameTiming) -> Any:
    """One frame's timestamps as a DiagnosticStatus for ``~/timing`` (keys are nanosecond integers)."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    return DiagnosticStatus(name=localizer, message='frame timing', values=[
        KeyValue(key='stamp_ns', value=str(timing.stamp_ns)),
        KeyValue(key='received_ns', value=str(timing.received_ns)),
        KeyValue(key='model_start_ns', value=str(timing.model_start_ns)),
        KeyValue(key='model_end_ns', value=str(timing.model_end_ns)),
        KeyValue(key='published_ns', value=str(timing.published_ns)),
    ])
