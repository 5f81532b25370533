"""``vizloc-synth multisite``: places on several continents, each with its own look, in the GPS format.

The world for the ``s2_classifier`` localizer (seed 002): km-scale metrics (1 / 25 / 200 / 750 /
2500 km) need places far apart. Each **site** (:data:`SITES`: Paris, Reykjavik, Cairo, Nairobi,
Tokyo, Sydney, Chicago, São Paulo) has ``districts`` small campus areas a few km from the site
centre, built and walked by the campus world's code (:mod:`.campus`: buildings, trees, poles,
ground, smooth routes with varied headings; :mod:`.boxworld` renders, :mod:`.photometric` varies
exposure/colour/blur/noise). What makes a site look like itself:

* **architecture**: facade textures mixed towards the site's facade colour (limestone, red brick,
  white render, sandstone, concrete...), roofs/paving towards its ground colour;
* **vegetation**: grass and foliage towards the site's vegetation colour (lush, dry, mossy);
* **sky**: the site's sky colours (haze);
* **sun**: per frame a random season (declination) and daytime hour angle; the sun elevation
  and azimuth follow from the site's latitude (low sun in Reykjavik, high in Nairobi).

Output (``DIR``)::

    DIR/images/<split>_<k>.jpg     JPEG with EXIF GPS (lat, lon, alt)
    DIR/gt.csv                     image,lat,lon,alt,split  (vizloc_training.datasets.gps)
    DIR/sites.csv                  image,site,district (which place each image shows)
    DIR/world.yaml                 generator, version, seed, sites and districts, camera, textures
    DIR/eval_bag/                  rosbag2 evaluation bag of the test split (fix ground truth only)

``--frames N``: N training frames in all (val and test get 15/70 of it each), spread evenly over
the sites' districts. Altitudes are WGS84 ellipsoidal heights of the district origin + camera height.
"""
from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import yaml

from vizloc_ros.eval_bag import EVAL_BAG_NAME
from vizloc_ros.bundle import yaml_plain

from ..datasets.exif import encode_jpeg_with_gps
from .boxworld import Lighting, decode_image
from .campus import CampusWorldConfig, build_campus, route, training_walks
from .photometric import PhotometricConfig, apply_photometric
from .textures import TextureSource

__all__ = ['GENERATOR', 'GENERATOR_VERSION', 'EVAL_BAG', 'Site', 'SITES', 'MultisiteConfig', 'MultisiteWorldError',
           'sun_direction', 'generate']

_LOG = logging.getLogger(__name__)

GENERATOR = 'vizloc_training.synth.multisite'
GENERATOR_VERSION = 1
#: Name of the evaluation bag in the world directory (the same as the other worlds write).
EVAL_BAG = EVAL_BAG_NAME  # DIR/eval_bag (vizloc_ros.bags: rosbags' AnyReader takes '*.bag' for ROS 1)
SPLITS = ('train', 'val', 'test')
_SPLIT_ID = {'train': 0, 'val': 1, 'test': 2}
_BAG_START_NS = 1_700_000_000 * 10**9
_BAG_PERIOD_NS = 100_000_000
_MIN_SUN_ELEVATION_DEG = 6.0


class MultisiteWorldError(ValueError):
    """A multi-site world configuration or output directory that cannot be used."""


@dataclass(frozen=True)
class Site:
    """One place: where it is and how it looks (colours RGB 0..255)."""

    name: str
    continent: str
    lat_deg: float
    lon_deg: float
    alt_m: float
    facade_rgb: tuple[int, int, int]
    facade_mix: float  # 0 = photo colours, 1 = only the site colour (texture kept as luminance)
    vegetation_rgb: tuple[int, int, int]
    ground_rgb: tuple[int, int, int]
    sky_zenith_rgb: tuple[int, int, int]
    sky_horizon_rgb: tuple[int, int, int]


SITES: tuple[Site, ...] = (
    Site('paris', 'Europe', 48.8566, 2.3522, 80.0, (205, 190, 155), 0.7, (70, 120, 50), (175, 165, 150),
         (80, 125, 195), (195, 210, 225)),
    Site('reykjavik', 'Europe', 64.1466, -21.9426, 60.0, (225, 225, 230), 0.55, (120, 125, 95), (85, 85, 90),
         (95, 125, 170), (200, 210, 220)),
    Site('cairo', 'Africa', 30.0444, 31.2357, 40.0, (210, 180, 130), 0.75, (195, 175, 120), (205, 185, 145),
         (120, 150, 190), (225, 215, 190)),
    Site('nairobi', 'Africa', -1.2864, 36.8172, 1700.0, (200, 145, 105), 0.65, (150, 140, 60), (165, 95, 65),
         (60, 110, 210), (180, 205, 235)),
    Site('tokyo', 'Asia', 35.6812, 139.7671, 40.0, (185, 192, 205), 0.7, (55, 125, 75), (120, 120, 125),
         (85, 130, 200), (205, 215, 230)),
    Site('sydney', 'Oceania', -33.8688, 151.2093, 30.0, (215, 190, 150), 0.6, (110, 130, 100), (190, 175, 150),
         (50, 115, 220), (175, 205, 240)),
    Site('chicago', 'North America', 41.8781, -87.6298, 180.0, (150, 80, 65), 0.7, (85, 110, 45), (95, 95, 95),
         (75, 115, 185), (190, 200, 215)),
    Site('sao_paulo', 'South America', -23.5505, -46.6333, 760.0, (225, 222, 212), 0.6, (30, 135, 40),
         (150, 150, 140), (90, 130, 190), (215, 215, 210)),
)


@dataclass(frozen=True)
class MultisiteConfig:
    """Everything that shapes the multi-site world (recorded in world.yaml)."""

    size: tuple[int, int] = (160, 120)  # image (W, H) px
    hfov_deg: float = 70.0
    sites: tuple[str, ...] = tuple(s.name for s in SITES)
    districts: int = 2  # campus areas per site
    district_offset_km: tuple[float, float] = (3.0, 12.0)  # distance of a district from the site centre
    area_m: float = 100.0  # side of each district's square area
    buildings: int = 14
    trees: int = 14
    poles: int = 6
    frames_train: int = 3000  # in all, spread evenly over the districts
    frames_val: int = 643
    frames_test: int = 643
    photometric_strength: float = 1.0
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        known = {s.name for s in SITES}
        unknown = sorted(set(self.sites) - known)
        if unknown or not self.sites:
            raise MultisiteWorldError(f'unknown site(s) {unknown}; known: {sorted(known)}')
        if self.districts < 1:
            raise MultisiteWorldError(f'districts must be >= 1, got {self.districts}')
        for name in ('frames_train', 'frames_val', 'frames_test'):
            if getattr(self, name) < 1:
                raise MultisiteWorldError(f'{name} must be >= 1, got {getattr(self, name)}')
        lo, hi = self.district_offset_km
        if not 0.0 <= lo <= hi:
            raise MultisiteWorldError(f'district_offset_km must be 0 <= lo <= hi, got {self.district_offset_km}')

    def with_train_frames(self, frames: int) -> 'MultisiteConfig':
        """``--frames N``: N training frames; val and test get 15/70 of it each (a 70/15/15 split)."""
        other = max(2, round(frames * 15 / 70))
        return replace(self, frames_train=int(frames), frames_val=other, frames_test=other)

    def campus_config(self, origin: tuple[float, float, float], frames: dict[str, int]) -> CampusWorldConfig:
        return CampusWorldConfig(size=self.size, hfov_deg=self.hfov_deg, area_m=self.area_m, buildings=self.buildings,
                                 trees=self.trees, poles=self.poles, frames_train=max(1, frames['train']),
                                 frames_val=max(1, frames['val']), frames_test=max(1, frames['test']),
                                 walk_frames_train=max(1, min(20, frames['train'])), spin_m_train=12.0,
                                 photometric_strength=self.photometric_strength, origin=origin,
                                 jpeg_quality=self.jpeg_quality, write_refdb=False)


class _SiteTextures:
    """A :class:`TextureSource` whose textures take on a site's colours (same draws, so same geometry)."""

    _TINTS = {'facade': 'facade', 'grass': 'vegetation', 'foliage': 'vegetation', 'path': 'ground'}

    def __init__(self, source: TextureSource, site: Site) -> None:
        self.source = source
        self.site = site

    def make(self, rng: np.random.Generator, kind: str, size_px: int | None = None) -> np.ndarray:
        rgb = self.source.make(rng, kind, size_px=size_px)
        which = self._TINTS.get(kind)
        if which is None:
            return rgb
        colour = np.asarray(getattr(self.site, f'{which}_rgb'), np.float32)
        amount = self.site.facade_mix if which == 'facade' else 0.75
        grey = rgb.astype(np.float32).mean(axis=2, keepdims=True) / 128.0
        return np.clip((1 - amount) * rgb.astype(np.float32) + amount * grey * colour, 0, 255).astype(np.uint8)


def sun_direction(lat_deg: float, declination_deg: float, hour_angle_deg: float) -> tuple[float, float]:
    """Sun (elevation, azimuth clockwise from north) in degrees for a latitude, solar declination and hour angle."""
    phi, dec, h = (math.radians(v) for v in (lat_deg, declination_deg, hour_angle_deg))
    sin_el = math.sin(phi) * math.sin(dec) + math.cos(phi) * math.cos(dec) * math.cos(h)
    el = math.asin(max(-1.0, min(1.0, sin_el)))
    az = math.atan2(-math.sin(h) * math.cos(dec),
                    math.cos(phi) * math.sin(dec) - math.sin(phi) * math.cos(dec) * math.cos(h))
    return math.degrees(el), math.degrees(az) % 360.0


def _lighting(site: Site, rng: np.random.Generator) -> tuple[Lighting, float]:
    el_deg, az_deg = sun_direction(site.lat_deg, rng.uniform(-23.44, 23.44), rng.uniform(-75.0, 75.0))
    el = math.radians(max(el_deg, _MIN_SUN_ELEVATION_DEG))
    az_enu = math.radians(90.0 - az_deg)  # counter-clockwise from east
    zenith = np.asarray(site.sky_zenith_rgb, np.float64) * rng.uniform(0.85, 1.1)
    horizon = np.asarray(site.sky_horizon_rgb, np.float64) * rng.uniform(0.9, 1.05)
    light = Lighting(light_dir=(math.cos(el) * math.cos(az_enu), math.cos(el) * math.sin(az_enu), math.sin(el)),
                     ambient=float(rng.uniform(0.4, 0.6)), diffuse=float(0.35 + 0.35 * math.sin(el) + rng.uniform(0, 0.1)),
                     fog_m=600.0, sky_zenith_rgb=tuple(float(c) for c in zenith),
                     sky_horizon_rgb=tuple(float(c) for c in horizon))
    return light, math.degrees(el)


def _district_origins(site: Site, cfg: MultisiteConfig, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    from vizloc_ros.geodesy import LocalENU

    enu = LocalENU(site.lat_deg, site.lon_deg, site.alt_m)
    origins = []
    for d in range(cfg.districts):
        dist_m = 1e3 * float(rng.uniform(*cfg.district_offset_km)) if d else 0.0  # district 0 at the site centre
        bearing = float(rng.uniform(0, 2 * math.pi))
        lat, lon, _ = enu.to_geodetic(dist_m * math.sin(bearing), dist_m * math.cos(bearing), 0.0)
        origins.append((float(lat), float(lon), site.alt_m))
    return origins


def _split_counts(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def generate(out: str | Path, *, seed: int = 0, frames: int | None = None, size: tuple[int, int] | None = None,
             config: MultisiteConfig | None = None, photo_dir: str | Path | None = None,
             write_bag: bool = True) -> Path:
    """Generate the multi-site world into ``out`` (created; must be absent or empty). Returns ``out``."""
    from vizloc_ros.geodesy import LocalENU
    from vizloc_ros.types import CameraIntrinsics

    t_start = time.perf_counter()
    cfg = config or MultisiteConfig()
    if size is not None:
        cfg = replace(cfg, size=(int(size[0]), int(size[1])))
    if frames is not None:
        cfg = cfg.with_train_frames(int(frames))
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise MultisiteWorldError(f'{out}: output directory exists and is not empty')
    sites = [s for s in SITES if s.name in cfg.sites]
    n_districts = len(sites) * cfg.districts
    per_district = {split: _split_counts(getattr(cfg, f'frames_{split}'), n_districts) for split in SPLITS}
    source = TextureSource.load(photo_dir)
    camera = CameraIntrinsics.from_fov(cfg.hfov_deg, *cfg.size)
    photometric = PhotometricConfig()
    out.mkdir(parents=True, exist_ok=True)
    (out / 'images').mkdir()
    rows: list[dict[str, Any]] = []
    site_rows: list[list[Any]] = []
    test_frames: list[tuple[np.ndarray, tuple[float, float, float]]] = []
    counters = {split: 0 for split in SPLITS}
    districts_yaml: list[dict[str, Any]] = []
    sun_elevations: dict[str, list[float]] = {s.name: [] for s in sites}
    d_index = 0
    for s_index, site in enumerate(sites):
        origins = _district_origins(site, cfg, np.random.default_rng([seed, 40, s_index]))
        for d, origin in enumerate(origins):
            counts = {split: per_district[split][d_index] for split in SPLITS}
            ccfg = cfg.campus_config(origin, counts)
            campus = build_campus(ccfg, np.random.default_rng([seed, 41, s_index, d]), _SiteTextures(source, site))
            enu = LocalENU(*origin)
            districts_yaml.append({'site': site.name, 'district': d, 'origin': list(origin),
                                   'frames': dict(counts)})
            for split in SPLITS:
                if not counts[split]:  # fewer frames than districts: the last districts get none
                    continue
                rng = np.random.default_rng([seed, 42, s_index, d, _SPLIT_ID[split]])
                if split == 'train':
                    poses = [T for walk in training_walks(campus, counts[split], rng, ccfg) for T in walk]
                else:
                    poses = route(campus, counts[split], rng, ccfg)
                xyz = np.array([T[:3, 3] for T in poses]).reshape(-1, 3)
                lat, lon, alt = enu.to_geodetic(xyz[:, 0], xyz[:, 1], xyz[:, 2])
                for k, T in enumerate(poses):
                    frame_rng = np.random.default_rng([seed, 43, s_index, d, _SPLIT_ID[split], k])
                    light, el = _lighting(site, frame_rng)
                    sun_elevations[site.name].append(el)
                    res = campus.world.render(camera, T, lighting=light)
                    rgb = apply_photometric(res.rgb_HW3, frame_rng, cfg.photometric_strength, photometric)
                    name = f'{split}_{counters[split]:05d}.jpg'
                    counters[split] += 1
                    fix = (float(lat[k]), float(lon[k]), float(alt[k]))
                    jpeg = encode_jpeg_with_gps(rgb, *fix, quality=cfg.jpeg_quality)
                    (out / 'images' / name).write_bytes(jpeg)
                    rows.append({'image': name, 'lat': f'{fix[0]:.9f}', 'lon': f'{fix[1]:.9f}',
                                 'alt': f'{fix[2]:.4f}', 'split': split})
                    site_rows.append([name, site.name, d])
                    if split == 'test' and write_bag:
                        test_frames.append((decode_image(jpeg), fix))
            d_index += 1
        _LOG.info('multisite: %s (%s) done, %d districts', site.name, site.continent, cfg.districts)
    with open(out / 'gt.csv', 'w', newline='') as fh:
        writer = csv.DictWriter(fh, fieldnames=['image', 'lat', 'lon', 'alt', 'split'])
        writer.writeheader()
        writer.writerows(rows)
    with open(out / 'sites.csv', 'w', newline='') as fh:
        writer = csv.writer(fh)
        writer.writerow(['image', 'site', 'district'])
        writer.writerows(site_rows)
    world = {
        'generator': GENERATOR,
        'version': GENERATOR_VERSION,
        'seed': int(seed),
        'camera': {'width': camera.width, 'height': camera.height, 'focal_px': float(camera.K[0, 0]),
                   'hfov_deg': cfg.hfov_deg},
        'textures': source.describe(),
        'sites': [{**asdict(s), 'sun_elevation_deg_median': round(float(np.median(sun_elevations[s.name])), 1)}
                  for s in sites],
        'districts': districts_yaml,
        'layout': {'images': 'images/<split>_<k>.jpg, EXIF GPS = gt.csv row', 'gt': 'gt.csv: image,lat,lon,alt,split',
                   'sites': 'sites.csv: image,site,district'},
        'config': asdict(cfg),
        'photometric': {'strength': cfg.photometric_strength, 'config': photometric.to_mapping(),
                        'sun': 'per frame: declination U(-23.44, 23.44) deg, hour angle U(-75, 75) deg at the site '
                               f'latitude; elevation at least {_MIN_SUN_ELEVATION_DEG:g} deg'},
        'splits': {split: counters[split] for split in SPLITS},
        'eval_bag': f'{EVAL_BAG} (test split)' if write_bag else None,
    }
    (out / 'world.yaml').write_text(yaml.safe_dump(yaml_plain(world), sort_keys=False))
    if write_bag:
        _write_bag(out / EVAL_BAG, test_frames, camera)
    _LOG.info('multisite world (%d sites, %d districts) written to %s in %.1f s', len(sites), n_districts, out,
              time.perf_counter() - t_start)
    return out


def _write_bag(path: Path, frames: Sequence[tuple[np.ndarray, tuple[float, float, float]]], camera) -> Path:
    """The test split as an evaluation bag: no common map frame across continents, so fix ground truth only."""
    from vizloc_ros.eval_bag import EvalSample, write_evaluation_bag

    def samples() -> Iterator[EvalSample]:
        for k, (rgb, fix) in enumerate(frames):
            yield EvalSample(stamp_ns=_BAG_START_NS + k * _BAG_PERIOD_NS, rgb_HW3=rgb, camera=camera,
                             frame_id='camera', fix_lla=fix, T_map_camera=None, room=None)

    return write_evaluation_bag(path, samples())
