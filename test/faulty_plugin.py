"""A fault-injecting third-party plugin for the robustness tests (registered in-process as ``extra_plugins``).

``test_faulty`` localizers misbehave in one way each, chosen by the ``fault`` option:

* ``raise`` -- RuntimeError from localize(); ``system_exit`` -- ``raise SystemExit`` (a BaseException);
* ``nan_covariance`` / ``non_psd`` / ``bad_rotation`` / ``latitude_123`` -- an unusable estimate, built by the
  constructors (which refuse it) or forced past them with ``object.__setattr__`` (``forced_*``), so
  both the constructor checks and the node's check before publishing are exercised;
* ``sleep`` -- localize() takes ``sleep_s`` seconds (beyond the node's ``worker_join_timeout_s``);
  records the threads inside localize() at once in ``INSIDE``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vizloc_ros.hookspecs import hookimpl
from vizloc_ros.localizer import LocalizerType
from vizloc_ros.types import Frame, GeoEstimate, LocalizationResult, PoseEstimate

FAULTS = ('raise', 'system_exit', 'nan_covariance', 'non_psd', 'bad_rotation', 'latitude_123', 'forced_latitude_123',
          'forced_bad_rotation', 'sleep')
#: name -> number of threads inside that localizer's localize() right now, and the most seen at once.
INSIDE: dict[str, int] = {}
MAX_INSIDE: dict[str, int] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class FaultOptions:
    fault: str = field(default='raise', metadata={'description': f'one of {FAULTS}'})
    sleep_s: float = field(default=0.0, metadata={'description': "time localize() takes with fault 'sleep'"})


def _geo(lat: float = 46.5, cov: Any = None) -> GeoEstimate:
    return GeoEstimate(lat, 6.6, 400.0, np.eye(3) if cov is None else cov)


class FaultyLocalizer:
    backend_name = 'python'
    requires_camera_info = False

    def __init__(self, config: Any, options: FaultOptions, context: Any) -> None:
        if options.fault not in FAULTS:
            raise ValueError(f'fault must be one of {FAULTS}')
        self.name = config.name
        self.options = options

    def localize(self, frame: Frame) -> LocalizationResult:
        with _LOCK:
            INSIDE[self.name] = INSIDE.get(self.name, 0) + 1
            MAX_INSIDE[self.name] = max(MAX_INSIDE.get(self.name, 0), INSIDE[self.name])
        try:
            return self._localize(frame)
        finally:
            with _LOCK:
                INSIDE[self.name] -= 1

    def _localize(self, frame: Frame) -> LocalizationResult:
        fault = self.options.fault
        geo, pose = None, None
        if fault == 'raise':
            raise RuntimeError('injected failure')
        if fault == 'system_exit':
            raise SystemExit(3)
        if fault == 'sleep':
            time.sleep(self.options.sleep_s)
            geo = _geo()
        elif fault == 'nan_covariance':
            geo = _geo(cov=np.diag([1.0, np.nan, 1.0]))
        elif fault == 'non_psd':
            geo = _geo(cov=np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
        elif fault == 'bad_rotation':
            T = np.eye(4)
            T[:3, :3] = 0.0
            pose = PoseEstimate(T, np.eye(6))
        elif fault == 'latitude_123':
            geo = _geo(lat=123.0)
        elif fault == 'forced_latitude_123':
            geo = _geo()
            object.__setattr__(geo, 'lat_deg', 123.0)
        elif fault == 'forced_bad_rotation':
            pose = PoseEstimate(np.eye(4), np.eye(6))
            object.__setattr__(pose, 'T_map_camera', np.zeros((4, 4)))
        return LocalizationResult(geo=geo, pose=pose)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


class FaultyPlugin:
    __name__ = 'faulty_plugin'

    @hookimpl
    def vizloc_register_localizers(self, registry: Any) -> None:
        registry.register(LocalizerType('test_faulty', FaultyLocalizer, FaultOptions, needs_bundle=False))
