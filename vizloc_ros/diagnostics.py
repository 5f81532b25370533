"""Per-localizer statistics for /diagnostics: rate, latency p50/p95, node overhead, dropped frames, errors, backend.

:class:`LocalizerStats` is updated by the subscription callback (frames offered, dropped,
throttled) and by the localizer's worker thread (one :class:`FrameTiming` per processed frame,
errors by kind); the diagnostics timer turns it into a ``diagnostic_msgs/DiagnosticStatus``.
All methods are thread-safe. Times are ``time.time_ns()`` nanoseconds (wall clock, so that the
per-frame timestamps on ``~/timing`` compare with other processes' clocks on the same machine).
"""
from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ['FrameTiming', 'LocalizerStats', 'ErrorThrottle', 'InputMonitor', 'input_level', 'percentile_ms',
           'timing_status']

#: Frame timings kept for the latency percentiles and the rate.
WINDOW = 200


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
        #: monotonic times of recent errors / processed frames (the status is judged over a window)
        self._error_times: collections.deque[int] = collections.deque(maxlen=10_000)
        self._processed_times: collections.deque[int] = collections.deque(maxlen=10_000)
        self._offered_times: collections.deque[int] = collections.deque(maxlen=10_000)

    def offered(self, *, dropped_previous: bool) -> None:
        with self._lock:
            self.frames_offered += 1
            self._offered_times.append(time.monotonic_ns())
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
            self._processed_times.append(time.monotonic_ns())
            self.no_fix += int(no_fix)
            self._timings.append(timing)

    def error(self, kind: str, message: str) -> None:
        with self._lock:
            self.errors[kind] += 1
            self.last_error = f'{kind}: {message}'
            self._error_times.append(time.monotonic_ns())

    def recent(self, window_s: float, now_ns: int | None = None) -> dict[str, int]:
        """Frames offered and processed, and errors, in the last ``window_s`` seconds."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        since = now_ns - int(window_s * 1e9)
        with self._lock:
            return {name: sum(1 for t in times if t >= since) for name, times in
                    (('offered', self._offered_times), ('processed', self._processed_times),
                     ('errors', self._error_times))}

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

    def to_status(self, node_name: str, window_s: float = 10.0) -> Any:
        """diagnostic_msgs/DiagnosticStatus judged over the last ``window_s`` seconds (diagnostic_updater style).

        ERROR: errors in the window and nothing localized in it; WARN: some errors in the window, or
        frames offered in it but none localized; OK otherwise (old errors stay in the counters, they
        no longer hold the level down).
        """
        from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

        s = self.summary()
        recent = self.recent(window_s)
        status = DiagnosticStatus(name=f'{node_name}: localizer {self.name}', hardware_id=s['backend'] or 'unknown')
        if recent['errors'] and not recent['processed']:
            status.level, status.message = DiagnosticStatus.ERROR, s['last_error'][:200]
        elif recent['errors']:
            status.level, status.message = (DiagnosticStatus.WARN, f'{recent["errors"]} error(s) in the last '
                                            f'{window_s:g} s; last: {s["last_error"][:150]}')
        elif recent['offered'] and not recent['processed']:
            status.level, status.message = DiagnosticStatus.WARN, 'frames received but nothing localized'
        else:
            status.level, status.message = DiagnosticStatus.OK, f'{s["rate_hz"]:.1f} Hz'
        values = dict(s)
        values.update({f'recent_{k}': v for k, v in recent.items()})
        values.pop('errors_by_kind')
        for kind, count in sorted(s['errors_by_kind'].items()):
            values[f'errors.{kind}'] = count
        status.values = [KeyValue(key=k, value=_fmt(v)) for k, v in values.items()]
        return status


class InputMonitor:
    """Arrival times of input frames: rate over a window and time since the last one (for STALE/frequency)."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._times: collections.deque[int] = collections.deque(maxlen=10_000)
        self._bad: collections.deque[int] = collections.deque(maxlen=10_000)

    def received(self, now_ns: int | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic_ns() if now_ns is None else now_ns)

    def bad(self, now_ns: int | None = None) -> None:
        with self._lock:
            self._bad.append(time.monotonic_ns() if now_ns is None else now_ns)

    def state(self, now_ns: int | None = None) -> dict[str, float]:
        """``rate_hz`` over the window, ``since_last_s`` (inf before the first frame), ``recent_bad`` count."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        since = now_ns - int(self.window_s * 1e9)
        with self._lock:
            times = [t for t in self._times if t >= since]
            bad = sum(1 for t in self._bad if t >= since)
            last = self._times[-1] if self._times else None
        rate = (len(times) - 1) / ((times[-1] - times[0]) / 1e9) if len(times) >= 2 and times[-1] > times[0] else 0.0
        return {'rate_hz': rate, 'since_last_s': math.inf if last is None else (now_ns - last) / 1e9,
                'recent_bad': float(bad)}


def input_level(state: dict[str, float], *, active: bool, stale_after_s: float, expected_rate_hz: float,
                rate_tolerance: float) -> tuple[int, str]:
    """(level, message) of the camera input, following diagnostic_updater's FrequencyStatus/TimeStamp checks.

    STALE: active, and no frame for ``stale_after_s`` (or none yet); WARN: the rate is outside
    ``expected_rate_hz`` x (1 -/+ ``rate_tolerance``) (when an expected rate is set), or bad frames in
    the window; OK otherwise. Inactive (unconfigured / inactive): OK, 'not active'.
    """
    if not active:
        return 0, 'not active (no subscriptions)'
    if state['since_last_s'] > stale_after_s:
        last = 'no frame yet' if math.isinf(state['since_last_s']) else f'last frame {state["since_last_s"]:.1f} s ago'
        return 3, f'camera stale: {last}'
    if expected_rate_hz > 0:
        low, high = expected_rate_hz * (1 - rate_tolerance), expected_rate_hz * (1 + rate_tolerance)
        if not low <= state['rate_hz'] <= high:
            return 1, f'input rate {state["rate_hz"]:.1f} Hz outside {low:.1f}..{high:.1f} Hz'
    if state['recent_bad']:
        return 1, f'{int(state["recent_bad"])} bad frame(s) recently'
    return 0, f'{state["rate_hz"]:.1f} Hz'


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
