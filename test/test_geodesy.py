"""Geodesy against published reference values (GeographicLib, Wikipedia/UTM, swisstopo), not only round trips."""
from __future__ import annotations

import math

import numpy as np
import pyproj
import pytest

from vizloc_ros.geodesy import (GeodesyError, GeoReference, LocalENU, ecef_to_geodetic, geodesic_distance_m,
                                geodetic_to_ecef, matrix_from_quaternion_xyzw, project, quaternion_xyzw_from_matrix,
                                rotate_covariance, unproject, WGS84Fix)


def dms(d: float, m: float, s: float) -> float:
    return d + m / 60.0 + s / 3600.0


# -- WGS84 <-> ECEF ---------------------------------------------------------------------------------

def test_ecef_matches_geographiclib_cartconvert_example():
    # GeographicLib CartConvert documentation: "33.3 44.4 6000" -> "3816209.60 3737108.55 3485109.57"
    x, y, z = geodetic_to_ecef(33.3, 44.4, 6000.0)
    np.testing.assert_allclose([x, y, z], [3816209.60, 3737108.55, 3485109.57], atol=0.01)
    lat, lon, alt = ecef_to_geodetic(3816209.60, 3737108.55, 3485109.57)
    np.testing.assert_allclose([lat, lon], [33.3, 44.4], atol=1e-8)
    assert alt == pytest.approx(6000.0, abs=0.01)


def test_ecef_of_defining_points_of_wgs84():
    a, b = 6378137.0, 6356752.314245  # WGS84 semi-axes
    np.testing.assert_allclose(np.stack(geodetic_to_ecef([0.0, 0.0, 90.0], [0.0, 90.0, 0.0], 0.0), axis=1),
                               [[a, 0, 0], [0, a, 0], [0, 0, b]], atol=1e-3)


# -- ENU ----------------------------------------------------------------------------------------------

def test_point_1km_north_is_1km_north_and_8cm_below_the_tangent_plane():
    enu = LocalENU(46.95, 7.44, 0.0)
    lon, lat, _ = pyproj.Geod(ellps='WGS84').fwd(7.44, 46.95, 0.0, 1000.0)  # 1 km along the meridian
    e, n, u = enu.to_enu(lat, lon, 0.0)
    assert e == pytest.approx(0.0, abs=1e-6)
    assert n == pytest.approx(1000.0, abs=0.01)
    assert u == pytest.approx(-1000.0 ** 2 / (2 * 6.38e6), abs=0.003)  # earth curvature: ~ -0.078 m


def test_enu_east_and_up_and_round_trip():
    enu = LocalENU(-33.8568, 151.2153, 20.0)  # Sydney Opera House, southern/eastern hemisphere
    lat, lon, alt = enu.to_geodetic([0.0, 250.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 30.0])
    np.testing.assert_allclose([lat[0], lon[0], alt[0]], [-33.8568, 151.2153, 20.0], atol=1e-9)
    assert lon[1] > 151.2153 and lat[1] == pytest.approx(-33.8568, abs=1e-4)
    assert alt[2] == pytest.approx(50.0, abs=1e-6)
    e, n, u = enu.to_enu(lat, lon, alt)
    np.testing.assert_allclose(np.stack([e, n, u], 1), [[0, 0, 0], [250, 0, 0], [0, 0, 30]], atol=1e-6)
    x, y, z = geodetic_to_ecef(lat, lon, alt)
    np.testing.assert_allclose(np.stack(enu.ecef_to_enu(x, y, z), 1), np.stack([e, n, u], 1), atol=1e-6)
    np.testing.assert_allclose(np.stack(enu.enu_to_ecef(e, n, u), 1), np.stack([x, y, z], 1), atol=1e-6)


def test_impossible_coordinates_are_refused():
    with pytest.raises(GeodesyError, match='impossible'):
        LocalENU(91.0, 0.0)
    with pytest.raises(GeodesyError, match='finite'):
        geodetic_to_ecef(float('nan'), 0.0)


# -- projected CRS --------------------------------------------------------------------------------------

def test_utm_of_the_cn_tower_matches_the_published_grid_position():
    # Wikipedia, "Universal Transverse Mercator coordinate system": the CN Tower at 43°38'33.24"N
    # 79°23'13.7"W is in UTM zone 17 at 630084 m east, 4833438 m north.
    x, y = project(dms(43, 38, 33.24), -dms(79, 23, 13.7), 'EPSG:32617')
    assert x == pytest.approx(630084.0, abs=1.0)
    assert y == pytest.approx(4833438.0, abs=1.0)


def test_swiss_lv95_matches_swisstopo_published_values():
    # swisstopo "Approximate formulas for the transformation between Swiss projection coordinates
    # and WGS84": phi = 46°2'38.87", lambda = 8°43'49.79" -> y = 699 999.76, x = 99 999.97 (LV03),
    # i.e. E = 2 699 999.76, N = 1 099 999.97 in LV95; the formulas are good to ~1 m.
    e, n = project(dms(46, 2, 38.87), dms(8, 43, 49.79), 'EPSG:2056')
    assert e == pytest.approx(2699999.76, abs=1.0)
    assert n == pytest.approx(1099999.97, abs=1.0)
    # LV95 origin (old Bern observatory) E 2 600 000 / N 1 200 000 is at 46.95108 N, 7.43864 E in WGS84
    # (swisstopo constants: phi' = 169028.66", lambda' = 26782.5" on the Bessel ellipsoid ~ 46°57'03.9", 7°26'19.1").
    lat, lon = unproject(2600000.0, 1200000.0, 'EPSG:2056')
    assert geodesic_distance_m(lat, lon, dms(46, 57, 3.9), dms(7, 26, 19.1)) < 3.0


def test_non_projected_crs_is_refused():
    with pytest.raises(GeodesyError, match='not a projected CRS'):
        project(46.0, 7.0, 'EPSG:4326')
    with pytest.raises(GeodesyError, match='unknown CRS'):
        project(46.0, 7.0, 'EPSG:999999')


def test_geodesic_distance_of_one_degree_of_meridian_at_the_equator():
    # meridian arc from 0° to 1° latitude on WGS84: 110 574.389 m (standard table value)
    assert geodesic_distance_m(0.0, 0.0, 1.0, 0.0) == pytest.approx(110574.389, abs=0.01)


# -- GeoReference ---------------------------------------------------------------------------------------

def test_georeference_crs_offset_maps_scene_to_wgs84_and_back(tmp_path):
    offset = [2600000.0, 1200000.0, 500.0]
    geo = GeoReference.from_mapping({'crs': 'EPSG:2056', 'offset': offset})
    lat, lon, alt = geo.scene_to_wgs84(np.zeros(3))
    expected_lat, expected_lon = unproject(offset[0], offset[1], 'EPSG:2056')
    assert (float(lat), float(lon), float(alt)) == pytest.approx((float(expected_lat), float(expected_lon), 500.0))
    points = np.array([[0.0, 0.0, 0.0], [120.0, -40.0, 12.5], [-3000.0, 2000.0, -100.0]])
    lat, lon, alt = geo.scene_to_wgs84(points)
    assert lat.shape == (3,)
    # PROJ's CH1903+ -> WGS84 Helmert is applied in 2D (h = 0), so there and back agree to a few mm
    np.testing.assert_allclose(geo.wgs84_to_scene(lat, lon, alt), points, atol=5e-3)
    utm = GeoReference.from_mapping({'crs': 'EPSG:32632', 'offset': [465000.0, 5247000.0, 400.0]})
    np.testing.assert_allclose(utm.wgs84_to_scene(*utm.scene_to_wgs84(points)), points, atol=1e-6)  # same datum
    # 120 m of scene x is ~120 m on the ground (LV95 scale error is < 2e-4 around Bern)
    assert geodesic_distance_m(lat[0], lon[0], lat[1], lon[1]) == pytest.approx(math.hypot(120, 40), rel=2e-4)
    path = geo.write_yaml(tmp_path / 'geo.yaml')
    assert GeoReference.from_yaml(path) == geo
    assert geo.to_mapping() == {'crs': 'EPSG:2056', 'offset': offset}


def test_georeference_enu_origin():
    geo = GeoReference.from_mapping({'enu_origin': [47.3769, 8.5417, 408.0]})
    lat, lon, alt = geo.scene_to_wgs84([0.0, 0.0, 0.0])
    assert (float(lat), float(lon), float(alt)) == pytest.approx((47.3769, 8.5417, 408.0))
    np.testing.assert_allclose(geo.R_enu_scene([0.0, 0.0, 0.0]), np.eye(3), atol=1e-9)
    # 10 km east the local vertical has turned by 10 km / R ~ 0.09 deg about north
    R = geo.R_enu_scene([10000.0, 0.0, 0.0])
    tilt_deg = math.degrees(math.acos(R[2, 2]))
    assert tilt_deg == pytest.approx(math.degrees(10000.0 / 6.37e6), rel=0.01)


def test_R_enu_scene_is_the_meridian_convergence_for_utm():
    geo = GeoReference.from_mapping({'crs': 'EPSG:32632', 'offset': [500000.0, 5200000.0, 0.0]})
    point = np.array([150000.0, 0.0, 0.0])  # 150 km east of the central meridian (9°E)
    R = geo.R_enu_scene(point)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
    lat, lon, _ = geo.scene_to_wgs84(point)
    convergence = pyproj.Proj('EPSG:32632').get_factors(float(lon), float(lat)).meridian_convergence
    grid_north_in_enu = R @ [0.0, 1.0, 0.0]
    assert math.degrees(math.atan2(grid_north_in_enu[0], grid_north_in_enu[1])) == pytest.approx(convergence, abs=1e-5)
    assert 1.0 < convergence < 2.0
    np.testing.assert_allclose(R @ [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], atol=1e-8)


def test_scene_to_wgs84_fix_rotates_the_covariance_by_the_meridian_convergence():
    """Position and ENU covariance of a scene estimate against pyproj: UTM 32N 150 km east of the central
    meridian, where grid north is ~1.4 deg east of true north (a non-trivial scene -> ENU rotation)."""
    offset = (500000.0, 5200000.0, 400.0)
    geo = GeoReference.from_mapping({'crs': 'EPSG:32632', 'offset': list(offset)})
    point = np.array([150000.0, 2500.0, 12.0])
    cov_scene = np.array([[100.0, 20.0, 0.0], [20.0, 5.0, 0.5], [0.0, 0.5, 9.0]])  # long along grid east
    fix = geo.scene_to_wgs84_fix(point, cov_scene)
    lon, lat = pyproj.Transformer.from_crs('EPSG:32632', 'EPSG:4326', always_xy=True).transform(
        point[0] + offset[0], point[1] + offset[1])
    assert (fix.lat_deg, fix.lon_deg) == pytest.approx((lat, lon), abs=1e-9)
    assert fix.alt_m == pytest.approx(point[2] + offset[2])
    gamma = math.radians(pyproj.Proj('EPSG:32632').get_factors(lon, lat).meridian_convergence)
    assert math.degrees(gamma) > 1.0
    # grid north has azimuth +gamma: scene axes are ENU turned by -gamma about Up
    R = np.array([[math.cos(gamma), math.sin(gamma), 0.0], [-math.sin(gamma), math.cos(gamma), 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(fix.cov_enu_m2, R @ cov_scene @ R.T, atol=1e-5)
    np.testing.assert_allclose(fix.cov_enu_m2, fix.cov_enu_m2.T)
    assert not np.allclose(fix.cov_enu_m2, cov_scene, atol=0.5)  # the rotation matters at this size
    with pytest.raises(GeodesyError, match='3x3'):
        geo.scene_to_wgs84_fix(point, np.eye(2))
    with pytest.raises(GeodesyError, match='one point'):
        geo.scene_to_wgs84_fix(point[None], cov_scene)


def test_scene_to_wgs84_fix_in_a_tangent_plane_frame_matches_local_enu_at_the_fix():
    """enu_origin frame, 10 km east of the origin: the fix is the tangent-plane point, the covariance turns
    by the tilt of the local vertical (checked against a LocalENU at the fix, built by PROJ)."""
    geo = GeoReference.from_mapping({'enu_origin': [47.3769, 8.5417, 408.0]})
    point = np.array([10000.0, 0.0, 0.0])
    cov_scene = np.diag([1.0, 1.0, 400.0])  # a poorly known height along the origin's vertical
    fix = geo.scene_to_wgs84_fix(point, cov_scene)
    lat, lon, alt = LocalENU(47.3769, 8.5417, 408.0).to_geodetic(*point)
    assert (fix.lat_deg, fix.lon_deg, fix.alt_m) == pytest.approx((float(lat), float(lon), float(alt)), abs=1e-9)
    # the origin's Up axis seen in ENU at the fix: from ECEF differences through PROJ, not R_enu_scene
    local = LocalENU(fix.lat_deg, fix.lon_deg, fix.alt_m)
    top = np.array(LocalENU(47.3769, 8.5417, 408.0).to_geodetic(*(point + [0.0, 0.0, 1.0])), dtype=float)
    up_origin = np.array(local.to_enu(*top), dtype=float)
    np.testing.assert_allclose(fix.cov_enu_m2, 399.0 * np.outer(up_origin, up_origin) + np.eye(3), atol=1e-3)
    assert fix.cov_enu_m2[0, 2] < -0.5  # the origin's vertical leans west at the fix


def test_wgs84_fix_to_scene_inverts_scene_to_wgs84_fix_and_moves_estimates_between_frames():
    """The inverse conversion round-trips, and chaining one reference's scene_to_wgs84_fix with another's
    wgs84_fix_to_scene moves an estimate between scene frames (UTM scene -> tangent-plane scene): the
    covariance turns by the meridian convergence, checked against pyproj."""
    utm = GeoReference.from_mapping({'crs': 'EPSG:32632', 'offset': [500000.0, 5200000.0, 400.0]})
    point = np.array([150000.0, 2500.0, 12.0])
    cov_scene = np.array([[100.0, 20.0, 0.0], [20.0, 5.0, 0.5], [0.0, 0.5, 9.0]])
    back, cov_back = utm.wgs84_fix_to_scene(utm.scene_to_wgs84_fix(point, cov_scene))
    np.testing.assert_allclose(back, point, atol=1e-6)
    np.testing.assert_allclose(cov_back, cov_scene, atol=1e-6)
    fix = utm.scene_to_wgs84_fix(point, cov_scene)
    enu = GeoReference.from_mapping({'enu_origin': [fix.lat_deg, fix.lon_deg, fix.alt_m]})
    xyz, cov_enu_frame = enu.wgs84_fix_to_scene(fix)
    np.testing.assert_allclose(xyz, 0.0, atol=1e-6)  # the fix is that frame's origin, where scene = ENU
    gamma = math.radians(pyproj.Proj('EPSG:32632').get_factors(fix.lon_deg, fix.lat_deg).meridian_convergence)
    R = np.array([[math.cos(gamma), math.sin(gamma), 0.0], [-math.sin(gamma), math.cos(gamma), 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(cov_enu_frame, R @ cov_scene @ R.T, atol=1e-5)
    with pytest.raises(GeodesyError, match='finite altitude'):
        utm.wgs84_fix_to_scene(WGS84Fix(fix.lat_deg, fix.lon_deg, math.nan, fix.cov_enu_m2))


@pytest.mark.parametrize('mapping, match', [
    ({'crs': 'EPSG:2056', 'offset': [1, 2]}, 'offset must be a list of 3 finite numbers'),
    ({'crs': 'EPSG:2056', 'ofset': [1, 2, 3]}, r"unknown keys \['ofset'\]"),
    ({'enu_origin': [47.0, 8.0, 0.0], 'crs': 'EPSG:2056'}, 'takes no other keys'),
    ({'offset': [0, 0, 0]}, 'needs crs'),
    ({'crs': 'EPSG:4326'}, 'not a projected CRS'),
    ({'crs': 2056}, 'must be a string'),
    ({'enu_origin': [95.0, 8.0, 0.0]}, 'impossible'),
    ({'enu_origin': ['47', 8.0, 0.0]}, 'list of 3 finite numbers'),
    ({'crs': 'EPSG:2056', 'offset': [0.0, float('nan'), 0.0]}, 'finite'),
])
def test_georeference_refuses_bad_mappings(mapping, match):
    with pytest.raises(GeodesyError, match=match):
        GeoReference.from_mapping(mapping)


def test_georeference_from_yaml_names_the_file(tmp_path):
    path = tmp_path / 'geo.yaml'
    path.write_text('crs: EPSG:2056\nofset: [1, 2, 3]\n')
    with pytest.raises(GeodesyError, match='geo.yaml'):
        GeoReference.from_yaml(path)


# -- covariance and quaternions ------------------------------------------------------------------------

def test_rotate_covariance_by_90_degrees_swaps_axes():
    R = matrix_from_quaternion_xyzw([0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)])  # +90° about z
    cov = np.diag([4.0, 1.0, 9.0])
    np.testing.assert_allclose(rotate_covariance(cov, R), np.diag([1.0, 4.0, 9.0]), atol=1e-12)
    cov6 = np.diag([4.0, 1.0, 9.0, 0.1, 0.2, 0.3])
    np.testing.assert_allclose(np.diag(rotate_covariance(cov6, R)), [1.0, 4.0, 9.0, 0.2, 0.1, 0.3], atol=1e-12)
    full = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 3.0]])
    out = rotate_covariance(full, R)
    assert out[0, 1] == pytest.approx(-0.5) and np.trace(out) == pytest.approx(6.0)
    with pytest.raises(GeodesyError):
        rotate_covariance(np.eye(2), R)


def test_quaternion_helpers_use_ros_xyzw_order():
    R_z90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(quaternion_xyzw_from_matrix(R_z90), [0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)])
    R_x180 = np.diag([1.0, -1.0, -1.0])
    np.testing.assert_allclose(quaternion_xyzw_from_matrix(R_x180), [1.0, 0.0, 0.0, 0.0], atol=1e-12)
    T = np.eye(4)
    T[:3, :3] = R_z90
    np.testing.assert_allclose(quaternion_xyzw_from_matrix(T), quaternion_xyzw_from_matrix(R_z90))
    rng = np.random.default_rng(0)
    for _ in range(5):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q *= np.sign(q[3])
        np.testing.assert_allclose(quaternion_xyzw_from_matrix(matrix_from_quaternion_xyzw(q)), q, atol=1e-12)
    np.testing.assert_allclose(matrix_from_quaternion_xyzw([0, 0, 0, 2.0]), np.eye(3))  # normalised
    with pytest.raises(GeodesyError, match='not a rotation'):
        quaternion_xyzw_from_matrix(np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(GeodesyError):
        matrix_from_quaternion_xyzw([0, 0, 0, 0])
