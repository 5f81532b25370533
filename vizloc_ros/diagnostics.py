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

__all__ = ['FrameTiming', 'LocalizerStats', 'ErrorThrottle', 'percentile_ms', 'timing_status']

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

    def to_status(self, node_name: str) -> Any:
        """diagnostic_msgs/DiagnosticStatus: OK, WARN when frames are dropped or nothing comes out, ERROR on errors."""
        from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

        s = self.summary()
        status = DiagnosticStatus(name=f'{node_name}: localizer {self.name}', hardware_id=s['backend'] or 'unknown')
        recent_errors = s['errors'] > 0 and s['frames_processed'] == 0
        if recent_errors:
            status.level, status.message = DiagnosticStatus.ERROR, s['last_error'][:200]
        elif s['errors']:
            status.level, status.message = DiagnosticStatus.WARN, f'{s["errors"]} error(s); last: {s["last_error"][:160]}'
        elif s['frames_offered'] and s['frames_processed'] == 0:
            status.level, status.message = DiagnosticStatus.WARN, 'frames received but nothing localized yet'
        else:
            status.level, status.message = DiagnosticStatus.OK, f'{s["rate_hz"]:.1f} Hz'
        values = dict(s)
        values.pop('errors_by_kind')
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
