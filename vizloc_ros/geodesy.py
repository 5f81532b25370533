"""Geodesy for vizloc_ros: WGS84 <-> ECEF <-> local ENU <-> projected CRS, and geo-referenced scenes.

All conversions go through pyproj (PROJ); rotations and quaternions through transforms3d. Arrays
are accepted wherever a scalar is (numpy broadcasting), results are numpy arrays (0-d for scalars).
Angles are degrees, heights are WGS84 ellipsoidal heights in metres, ENU is East-North-Up in
metres. See docs/geodesy.md.

* :class:`LocalENU` -- a local tangent plane at ``(lat0, lon0, alt0)``.
* :class:`GeoReference` -- the geo-reference of a local scene frame (``geo.yaml`` of a scene
  coordinate dataset or bundle): ``{crs: 'EPSG:<code>', offset: [x, y, z]}`` or
  ``{enu_origin: [lat, lon, alt]}``. :meth:`GeoReference.scene_to_wgs84_fix` is *the* scene-frame
  -> WGS84 conversion of an estimate: position plus covariance rotated into ENU (:class:`WGS84Fix`);
  :meth:`GeoReference.wgs84_fix_to_scene` its inverse.
* :func:`rotate_covariance`, :func:`quaternion_xyzw_from_matrix`, :func:`matrix_from_quaternion_xyzw`
  (ROS order x, y, z, w), :func:`geodetic_to_ecef`, :func:`ecef_to_geodetic`,
  :func:`geodesic_distance_m`.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyproj
import transforms3d.quaternions as tq
import yaml

__all__ = [
    'GeodesyError',
    'LocalENU',
    'GeoReference',
    'WGS84Fix',
    'rotate_covariance',
    'quaternion_xyzw_from_matrix',
    'matrix_from_quaternion_xyzw',
    'geodetic_to_ecef',
    'ecef_to_geodetic',
    'geodesic_distance_m',
    'project',
    'unproject',
]

logger = logging.getLogger(__name__)

WGS84_GEODETIC_3D = 'EPSG:4979'  # lat, lon, ellipsoidal height
WGS84_ECEF = 'EPSG:4978'
_GEOD = pyproj.Geod(ellps='WGS84')


class GeodesyError(ValueError):
    """A geo-reference or coordinate that cannot be used (bad CRS, impossible latitude...)."""


def _check_latlon(lat: np.ndarray, lon: np.ndarray) -> None:
    if np.any(~np.isfinite(lat)) or np.any(~np.isfinite(lon)):
        raise GeodesyError('latitude/longitude must be finite')
    if np.any(np.abs(lat) > 90.0) or np.any(np.abs(lon) > 180.0):
        raise GeodesyError(f'impossible WGS84 coordinates: lat in [{np.min(lat)}, {np.max(lat)}], '
                           f'lon in [{np.min(lon)}, {np.max(lon)}]')


def _arrays(*values: Any) -> list[np.ndarray]:
    """float64 arrays broadcast to one shape (copies: PROJ may write into its inputs)."""
    return [np.array(v, dtype=np.float64) for v in np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in values))]


@functools.lru_cache(maxsize=64)
def _transformer(src: str, dst: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(src, dst, always_xy=True)


def geodetic_to_ecef(lat_deg: Any, lon_deg: Any, alt_m: Any = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WGS84 latitude, longitude (deg), ellipsoidal height (m) -> ECEF x, y, z (m)."""
    lat, lon, alt = _arrays(lat_deg, lon_deg, alt_m)
    _check_latlon(lat, lon)
    x, y, z = _transformer(WGS84_GEODETIC_3D, WGS84_ECEF).transform(lon, lat, alt)
    return np.asarray(x), np.asarray(y), np.asarray(z)


def ecef_to_geodetic(x_m: Any, y_m: Any, z_m: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ECEF x, y, z (m) -> WGS84 latitude, longitude (deg), ellipsoidal height (m)."""
    x, y, z = _arrays(x_m, y_m, z_m)
    lon, lat, alt = _transformer(WGS84_ECEF, WGS84_GEODETIC_3D).transform(x, y, z)
    return np.asarray(lat), np.asarray(lon), np.asarray(alt)


def project(lat_deg: Any, lon_deg: Any, crs: str) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 latitude, longitude (deg) -> easting, northing (m) in projected ``crs`` (e.g. ``EPSG:32632``)."""
    lat, lon = _arrays(lat_deg, lon_deg)
    _check_latlon(lat, lon)
    x, y = _transformer('EPSG:4326', _projected_crs(crs)).transform(lon, lat)
    return np.asarray(x), np.asarray(y)


def unproject(x_m: Any, y_m: Any, crs: str) -> tuple[np.ndarray, np.ndarray]:
    """Easting, northing (m) in projected ``crs`` -> WGS84 latitude, longitude (deg)."""
    lon, lat = _transformer(_projected_crs(crs), 'EPSG:4326').transform(*_arrays(x_m, y_m))
    return np.asarray(lat), np.asarray(lon)


@functools.lru_cache(maxsize=64)
def _projected_crs(crs: str) -> str:
    try:
        parsed = pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError as exc:
        raise GeodesyError(f'unknown CRS {crs!r}: {exc}') from exc
    if not parsed.is_projected:
        raise GeodesyError(f'CRS {crs!r} ({parsed.name}) is not a projected CRS (need metres east/north, '
                           f'e.g. EPSG:2056 or a UTM zone such as EPSG:32632)')
    return crs


def geodesic_distance_m(lat1_deg: Any, lon1_deg: Any, lat2_deg: Any, lon2_deg: Any) -> np.ndarray:
    """Geodesic distance on the WGS84 ellipsoid in metres (Karney's algorithm via pyproj.Geod)."""
    lat1, lon1, lat2, lon2 = _arrays(lat1_deg, lon1_deg, lat2_deg, lon2_deg)
    _check_latlon(lat1, lon1)
    _check_latlon(lat2, lon2)
    _, _, dist = _GEOD.inv(lon1, lat1, lon2, lat2)
    return np.asarray(dist)


class LocalENU:
    """East-North-Up tangent plane at ``(lat0_deg, lon0_deg, alt0_m)`` (PROJ ``topocentric``)."""

    def __init__(self, lat0_deg: float, lon0_deg: float, alt0_m: float = 0.0) -> None:
        _check_latlon(np.asarray(lat0_deg, dtype=float), np.asarray(lon0_deg, dtype=float))
        if not np.isfinite(alt0_m):
            raise GeodesyError(f'ENU origin altitude must be finite, got {alt0_m}')
        self.lat0_deg, self.lon0_deg, self.alt0_m = float(lat0_deg), float(lon0_deg), float(alt0_m)
        # geodetic (deg) -> ECEF -> topocentric ENU, all in PROJ
        self._pipeline = pyproj.Transformer.from_pipeline(
            '+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad '
            '+step +proj=cart +ellps=WGS84 '
            f'+step +proj=topocentric +ellps=WGS84 +lat_0={self.lat0_deg!r} +lon_0={self.lon0_deg!r} +h_0={self.alt0_m!r}')
        self._ecef_to_enu = pyproj.Transformer.from_pipeline(
            f'+proj=topocentric +ellps=WGS84 +lat_0={self.lat0_deg!r} +lon_0={self.lon0_deg!r} +h_0={self.alt0_m!r}')

    def __repr__(self) -> str:
        return f'LocalENU({self.lat0_deg!r}, {self.lon0_deg!r}, {self.alt0_m!r})'

    @property
    def origin(self) -> tuple[float, float, float]:
        return self.lat0_deg, self.lon0_deg, self.alt0_m

    def to_enu(self, lat_deg: Any, lon_deg: Any, alt_m: Any = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """WGS84 (deg, deg, m) -> east, north, up (m)."""
        lat, lon, alt = _arrays(lat_deg, lon_deg, alt_m)
        _check_latlon(lat, lon)
        e, n, u = self._pipeline.transform(lon, lat, alt)
        return np.asarray(e), np.asarray(n), np.asarray(u)

    def to_geodetic(self, e_m: Any, n_m: Any, u_m: Any = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """East, north, up (m) -> WGS84 latitude, longitude (deg), ellipsoidal height (m)."""
        e, n, u = _arrays(e_m, n_m, u_m)
        lon, lat, alt = self._pipeline.transform(e, n, u, direction=pyproj.enums.TransformDirection.INVERSE)
        return np.asarray(lat), np.asarray(lon), np.asarray(alt)

    def ecef_to_enu(self, x_m: Any, y_m: Any, z_m: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        e, n, u = self._ecef_to_enu.transform(*_arrays(x_m, y_m, z_m))
        return np.asarray(e), np.asarray(n), np.asarray(u)

    def enu_to_ecef(self, e_m: Any, n_m: Any, u_m: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y, z = self._ecef_to_enu.transform(*_arrays(e_m, n_m, u_m),
                                              direction=pyproj.enums.TransformDirection.INVERSE)
        return np.asarray(x), np.asarray(y), np.asarray(z)


def _as_points(xyz: Any, what: str) -> np.ndarray:
    points = np.asarray(xyz, dtype=np.float64)
    if points.shape[-1:] != (3,):
        raise GeodesyError(f'{what} must have shape (3,) or (N, 3), got {points.shape}')
    if not np.all(np.isfinite(points)):
        raise GeodesyError(f'{what} contains non-finite values')
    return points


def _triple(value: Any, key: str) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value):
        raise GeodesyError(f'geo reference: {key} must be a list of 3 finite numbers, got {value!r}')
    return float(value[0]), float(value[1]), float(value[2])


@dataclass(frozen=True, eq=False)
class WGS84Fix:
    """A WGS84 position (degrees, ellipsoidal height in metres) and its 3x3 covariance in local
    East-North-Up at that position (m², symmetric): what ``GeoEstimate`` takes."""

    lat_deg: float
    lon_deg: float
    alt_m: float
    cov_enu_m2: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class GeoReference:
    """Geo-reference of a local scene frame (metres), in one of two forms:

    * projected: ``crs='EPSG:<code>'``, ``offset=(x, y, z)``: scene = (easting, northing, height) -
      offset, with the height a WGS84 ellipsoidal height in metres (passed through unchanged);
    * local tangent plane: ``enu_origin=(lat, lon, alt)``: the scene frame is ENU at that point.
    """

    crs: str | None = None
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    enu_origin: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if (self.crs is None) == (self.enu_origin is None):
            raise GeodesyError('geo reference needs exactly one of crs (+ offset) or enu_origin')
        if self.crs is not None:
            _projected_crs(self.crs)
        else:
            lat, lon, alt = self.enu_origin  # type: ignore[misc]
            _check_latlon(np.asarray(lat), np.asarray(lon))

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> 'GeoReference':
        """From a geo.yaml mapping; unknown keys and mixed forms are errors."""
        if not isinstance(d, Mapping):
            raise GeodesyError(f'geo reference must be a mapping, got {type(d).__name__}')
        keys = set(d)
        if 'enu_origin' in keys:
            if keys != {'enu_origin'}:
                raise GeodesyError(f'geo reference with enu_origin takes no other keys, got {sorted(keys)}')
            return cls(enu_origin=_triple(d['enu_origin'], 'enu_origin'))
        unknown = sorted(keys - {'crs', 'offset'})
        if unknown:
            raise GeodesyError(f'geo reference: unknown keys {unknown}; use {{crs, offset}} or {{enu_origin}}')
        if 'crs' not in keys:
            raise GeodesyError('geo reference needs crs (e.g. EPSG:2056) or enu_origin')
        if not isinstance(d['crs'], str):
            raise GeodesyError(f'geo reference: crs must be a string like "EPSG:2056", got {d["crs"]!r}')
        offset = _triple(d.get('offset', [0.0, 0.0, 0.0]), 'offset')
        return cls(crs=d['crs'], offset=offset)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> 'GeoReference':
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise GeodesyError(f'cannot read geo reference {path}: {exc}') from exc
        try:
            return cls.from_mapping(data)
        except GeodesyError as exc:
            raise GeodesyError(f'{path}: {exc}') from exc

    def to_mapping(self) -> dict[str, Any]:
        if self.crs is not None:
            return {'crs': self.crs, 'offset': [float(v) for v in self.offset]}
        return {'enu_origin': [float(v) for v in self.enu_origin]}  # type: ignore[union-attr]

    def write_yaml(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_mapping(), sort_keys=False))
        return path

    @functools.cached_property
    def _enu(self) -> LocalENU | None:
        return LocalENU(*self.enu_origin) if self.enu_origin is not None else None

    # -- conversions --------------------------------------------------------------------------------
    def scene_to_wgs84(self, xyz_N3: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scene points (3,) or (N, 3) in metres -> latitude, longitude (deg), ellipsoidal height (m)."""
        points = _as_points(xyz_N3, 'xyz_N3')
        if self._enu is not None:
            return self._enu.to_geodetic(points[..., 0], points[..., 1], points[..., 2])
        world = points + np.asarray(self.offset)
        lat, lon = unproject(world[..., 0], world[..., 1], self.crs)  # type: ignore[arg-type]
        return lat, lon, np.asarray(world[..., 2])

    def wgs84_to_scene(self, lat_deg: Any, lon_deg: Any, alt_m: Any = 0.0) -> np.ndarray:
        """Latitude, longitude (deg), ellipsoidal height (m) -> scene points (..., 3) in metres."""
        lat, lon, alt = _arrays(lat_deg, lon_deg, alt_m)
        if self._enu is not None:
            e, n, u = self._enu.to_enu(lat, lon, alt)
            return np.stack([e, n, u], axis=-1)
        x, y = project(lat, lon, self.crs)  # type: ignore[arg-type]
        return np.stack([x, y, alt], axis=-1) - np.asarray(self.offset)

    def R_enu_scene(self, xyz_3: Any, step_m: float = 1.0) -> np.ndarray:
        """3x3 rotation taking scene-axis vectors at scene point ``xyz_3`` to local ENU axes there.

        The nearest rotation (SVD) to the numerical Jacobian of scene -> ENU; for a projected CRS
        this is the meridian convergence about Up, for ``enu_origin`` the tilt of the tangent plane.
        """
        point = _as_points(xyz_3, 'xyz_3')
        if point.shape != (3,):
            raise GeodesyError(f'R_enu_scene takes one point of shape (3,), got {point.shape}')
        lat, lon, alt = self.scene_to_wgs84(point)
        local = LocalENU(float(lat), float(lon), float(alt))
        probes = np.concatenate([point + step_m * np.eye(3), point - step_m * np.eye(3)])
        plat, plon, palt = self.scene_to_wgs84(probes)
        enu = np.stack(local.to_enu(plat, plon, palt), axis=-1)
        jacobian = (enu[:3] - enu[3:]).T / (2.0 * step_m)  # column k = d(ENU)/d(scene_k)
        u, _, vt = np.linalg.svd(jacobian)
        rotation = u @ vt
        if np.linalg.det(rotation) < 0:
            raise GeodesyError('scene frame is left-handed with respect to ENU; check the geo reference')
        return rotation

    def scene_to_wgs84_fix(self, xyz_3: Any, cov_scene_m2: Any) -> WGS84Fix:
        """One scene point (3,) in metres with its 3x3 covariance in scene axes -> :class:`WGS84Fix`.

        The position goes through :meth:`scene_to_wgs84`; the covariance is rotated into ENU at the
        point (``R_enu_scene(xyz) @ cov @ R_enu_scene(xyz).T``) and symmetrised. Every localizer that
        estimates in a scene frame (pose, regressed position) publishes its fix through this.
        """
        point = _as_points(xyz_3, 'xyz_3')
        if point.shape != (3,):
            raise GeodesyError(f'scene_to_wgs84_fix takes one point of shape (3,), got {point.shape}')
        cov = np.asarray(cov_scene_m2, dtype=np.float64)
        if cov.shape != (3, 3):
            raise GeodesyError(f'cov_scene_m2 must be 3x3, got {cov.shape}')
        lat, lon, alt = (float(np.ravel(v)[0]) for v in self.scene_to_wgs84(point))
        cov_enu = rotate_covariance(cov, self.R_enu_scene(point))
        return WGS84Fix(lat_deg=lat, lon_deg=lon, alt_m=alt, cov_enu_m2=0.5 * (cov_enu + cov_enu.T))

    def wgs84_fix_to_scene(self, fix: WGS84Fix) -> tuple[np.ndarray, np.ndarray]:
        """The inverse of :meth:`scene_to_wgs84_fix`: a :class:`WGS84Fix` -> (scene point (3,) in
        metres, its 3x3 covariance in scene axes). The position goes through :meth:`wgs84_to_scene`,
        the ENU covariance is rotated into scene axes at the point (``R_enu_scene(xyz).T``). Chained
        with another reference's :meth:`scene_to_wgs84_fix`, it moves an estimate between scene frames.
        """
        if not np.isfinite(fix.alt_m):
            raise GeodesyError('wgs84_fix_to_scene needs a finite altitude')
        point = np.asarray(self.wgs84_to_scene(fix.lat_deg, fix.lon_deg, fix.alt_m), dtype=np.float64).reshape(3)
        cov = np.asarray(fix.cov_enu_m2, dtype=np.float64)
        if cov.shape != (3, 3):
            raise GeodesyError(f'cov_enu_m2 must be 3x3, got {cov.shape}')
        cov_scene = rotate_covariance(cov, self.R_enu_scene(point).T)
        return point, 0.5 * (cov_scene + cov_scene.T)


def rotate_covariance(cov: Any, R: Any) -> np.ndarray:
    """``R @ cov @ R.T``: a covariance expressed in the frame R rotates into (cov 3x3 or 6x6 with R 3x3 per block)."""
    cov = np.asarray(cov, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        raise GeodesyError(f'R must be 3x3, got {R.shape}')
    if cov.shape == (3, 3):
        return R @ cov @ R.T
    if cov.shape == (6, 6):  # (position, rotation) blocks, e.g. geometry_msgs/PoseWithCovariance
        big = np.zeros((6, 6))
        big[:3, :3] = R
        big[3:, 3:] = R
        return big @ cov @ big.T
    raise GeodesyError(f'covariance must be 3x3 or 6x6, got {cov.shape}')


def quaternion_xyzw_from_matrix(R: Any) -> np.ndarray:
    """Unit quaternion in ROS order (x, y, z, w), w >= 0, from a 3x3 rotation (or 4x4 transform)."""
    m = np.asarray(R, dtype=np.float64)
    if m.shape == (4, 4):
        m = m[:3, :3]
    if m.shape != (3, 3):
        raise GeodesyError(f'rotation must be 3x3 (or 4x4), got {m.shape}')
    if not np.allclose(m @ m.T, np.eye(3), atol=1e-5) or np.linalg.det(m) <= 0:
        raise GeodesyError('matrix is not a rotation (not orthonormal with determinant +1)')
    wxyz = tq.mat2quat(m)
    if wxyz[0] < 0:
        wxyz = -wxyz
    return np.array([wxyz[1], wxyz[2], wxyz[3], wxyz[0]])


def matrix_from_quaternion_xyzw(q: Any) -> np.ndarray:
    """3x3 rotation from a quaternion in ROS order (x, y, z, w); normalised first."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-12:
        raise GeodesyError(f'quaternion must be 4 finite numbers (x, y, z, w), not all zero; got {q}')
    return tq.quat2mat([q[3], q[0], q[1], q[2]])
