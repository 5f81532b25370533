"""``example_color``: a real but deliberately simple localizer.

The bundle's ONNX model computes the mean colour of the image (``mean_rgb`` in [0, 1]); the
localizer maps it to

* a room: the nearest of the named colours in ``rooms`` (probabilities: softmax of -distance / temperature);
  a colour's RGB is the bundle's ``metadata.palette`` entry (measured on a dataset by
  ``vizloc-train example_color``, :mod:`.train`), :data:`PALETTE` where the bundle has none,
* a position in a local ENU frame at ``origin``: ``t_enu_m = (mean_rgb - 0.5) * metres_per_unit``,
  published as a WGS84 fix (``GeoEstimate``, covariance ``position_sigma_m``\u00b2 in ENU) and as a pose
  in the map frame (``T_map_camera`` with that translation and identity rotation, 6x6 covariance).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from vizloc_ros.geodesy import LocalENU
from vizloc_ros.localizer import ConfigError, LocalizerConfig, LocalizerContext
from vizloc_ros.runner import BundleModel
from vizloc_ros.types import Frame, GeoEstimate, LocalizationResult, PoseEstimate, RoomEstimate

__all__ = ['LOCALIZER_TYPE', 'PALETTE', 'ExampleColorOptions', 'ExampleColorLocalizer']

logger = logging.getLogger(__name__)

LOCALIZER_TYPE = 'example_color'

#: Named colours (RGB in [0, 1]) that ``rooms`` may choose from.
PALETTE: dict[str, tuple[float, float, float]] = {
    'red': (1.0, 0.0, 0.0), 'green': (0.0, 1.0, 0.0), 'blue': (0.0, 0.0, 1.0),
    'yellow': (1.0, 1.0, 0.0), 'cyan': (0.0, 1.0, 1.0), 'magenta': (1.0, 0.0, 1.0),
    'white': (1.0, 1.0, 1.0), 'black': (0.0, 0.0, 0.0), 'gray': (0.5, 0.5, 0.5),
}


@dataclass(frozen=True)
class ExampleColorOptions:
    """Type-specific options; the node declares each as the ROS parameter ``<localizer name>.<field>``."""

    origin_lat_deg: float = field(default=47.3769, metadata={'description': 'WGS84 latitude of the ENU origin (deg)'})
    origin_lon_deg: float = field(default=8.5417, metadata={'description': 'WGS84 longitude of the ENU origin (deg)'})
    origin_alt_m: float = field(default=408.0, metadata={'description': 'ellipsoidal height of the ENU origin (m)'})
    metres_per_unit: float = field(default=100.0, metadata={'description': 'metres of ENU offset per unit of mean colour'})
    position_sigma_m: float = field(default=5.0, metadata={'description': 'standard deviation of each position axis (m)'})
    rotation_sigma_rad: float = field(default=0.5, metadata={'description': 'standard deviation of each rotation axis (rad)'})
    rooms: list[str] = field(default_factory=lambda: ['red', 'green', 'blue', 'white', 'black'],
                             metadata={'description': f'room labels, each a colour name of {sorted(PALETTE)}'})
    temperature: float = field(default=0.1, metadata={'description': 'softmax temperature of the room probabilities'})

    def __post_init__(self) -> None:
        if not -90.0 <= self.origin_lat_deg <= 90.0 or not -180.0 <= self.origin_lon_deg <= 180.0:
            raise ValueError(f'origin ({self.origin_lat_deg}, {self.origin_lon_deg}) is not a WGS84 position')
        for name in ('metres_per_unit', 'position_sigma_m', 'rotation_sigma_rad', 'temperature'):
            if not getattr(self, name) > 0.0:
                raise ValueError(f'{name} must be > 0, got {getattr(self, name)}')
        unknown = sorted(set(self.rooms) - set(PALETTE))
        if not self.rooms or unknown:
            raise ValueError(f'rooms must be non-empty colour names from {sorted(PALETTE)}; unknown: {unknown}')


class ExampleColorLocalizer:
    """Implements the :class:`vizloc_ros.localizer.Localizer` protocol."""

    requires_camera_info = False

    def __init__(self, name: str, options: ExampleColorOptions, model: BundleModel) -> None:
        self.name = name
        self.options = options
        self._model = model
        self._enu = LocalENU(options.origin_lat_deg, options.origin_lon_deg, options.origin_alt_m)
        palette = model.bundle.metadata.get('palette') or PALETTE
        missing = sorted(set(options.rooms) - set(palette))
        if missing:
            raise ConfigError(f'{name}: rooms {missing} are not in the bundle\'s palette {sorted(palette)}')
        self._room_rgb = np.array([palette[r] for r in options.rooms], dtype=np.float64)
        self.frames_seen = 0
        self.backend_name = model.backend_name

    @classmethod
    def create(cls, config: LocalizerConfig, options: ExampleColorOptions,
               context: LocalizerContext) -> 'ExampleColorLocalizer':
        """The factory registered with the type: the model runner verifies the bundle and loads the backend."""
        model = BundleModel(config.bundle, backend=config.backend, expected_type=LOCALIZER_TYPE,
                            cache_dir=context.cache_dir)
        logger.info('%s: example_color on %s', config.name, model.backend_name)
        try:
            return cls(config.name, options, model)
        except ConfigError:
            model.close()
            raise

    def localize(self, frame: Frame) -> LocalizationResult:
        # the runner resizes the frame to the bundle's input size and converts layout/colour
        mean_rgb = self._model.run(frame, ['mean_rgb'])['mean_rgb'][0].astype(np.float64)
        self.frames_seen += 1

        distance = np.linalg.norm(self._room_rgb - mean_rgb, axis=1)
        logits = -distance / self.options.temperature
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = int(np.argmax(probs))

        t_enu_m = (mean_rgb - 0.5) * self.options.metres_per_unit
        lat, lon, alt = self._enu.to_geodetic(*t_enu_m)
        sigma2 = self.options.position_sigma_m ** 2
        T_map_camera = np.eye(4)
        T_map_camera[:3, 3] = t_enu_m
        cov_6x6 = np.diag([sigma2] * 3 + [self.options.rotation_sigma_rad ** 2] * 3)
        # just the estimates: the node stamps the result (stamp, frame id, name) and measures the latency
        return LocalizationResult(
            room=RoomEstimate(label=self.options.rooms[best], confidence=float(probs[best]),
                              probabilities={r: float(p) for r, p in zip(self.options.rooms, probs)}),
            geo=GeoEstimate(lat_deg=float(lat), lon_deg=float(lon), alt_m=float(alt),
                            cov_enu_m2=np.diag([sigma2, sigma2, sigma2])),
            pose=PoseEstimate(T_map_camera=T_map_camera, cov_6x6=cov_6x6),
            diagnostics={'mean_rgb': ' '.join(f'{v:.4f}' for v in mean_rgb), 'frames_seen': str(self.frames_seen)},
        )

    def reset(self) -> None:
        self.frames_seen = 0

    def close(self) -> None:
        self._model.close()
