"""The GPS regressor's ensemble moves each member's estimate into the first member's scene frame with
core geodesy (GeoReference.scene_to_wgs84_fix, then wgs84_fix_to_scene): no model needed, stub members."""
from __future__ import annotations

import math

import numpy as np
import pyproj

from vizloc_plugins.gps_regressor import GPSRegressorLocalizer, combine_gaussians
from vizloc_ros.geodesy import GeoReference, LocalENU
from vizloc_ros.types import Frame


class _Member:
    def __init__(self, geo: GeoReference, mean: np.ndarray, cov: np.ndarray) -> None:
        self.geo, self.mean, self.cov = geo, mean, cov

    def predict(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        return self.mean, self.cov


def test_members_in_other_scene_frames_are_moved_into_the_first_ones() -> None:
    # reference: a tangent plane; second member: UTM 32N far from the central meridian (grid north turned)
    ref_geo = GeoReference.from_mapping({'enu_origin': [46.9, 10.3, 500.0]})
    utm = GeoReference.from_mapping({'crs': 'EPSG:32632', 'offset': [600000.0, 5190000.0, 500.0]})
    lat, lon, alt = (float(np.ravel(v)[0]) for v in ref_geo.scene_to_wgs84(np.array([[30.0, -40.0, 0.0]])))
    x, y = pyproj.Transformer.from_crs('EPSG:4326', 'EPSG:32632', always_xy=True).transform(lon, lat)
    second_mean = np.array([x - 600000.0, y - 5190000.0])  # the same place, in UTM scene coordinates
    second_cov = np.array([[400.0, 0.0], [0.0, 4.0]])  # long along grid east
    localizer = GPSRegressorLocalizer.__new__(GPSRegressorLocalizer)
    localizer.members = [_Member(ref_geo, np.array([10.0, -20.0]), np.eye(2) * 9.0),
                         _Member(utm, second_mean, second_cov)]
    mean, cov = localizer.estimate(Frame(rgb_HW3=np.zeros((2, 2, 3), np.uint8), stamp_ns=0, frame_id='c'))

    # the second member as the reference frame sees it: position through PROJ, covariance turned by the
    # meridian convergence (and the tangent plane's tilt, negligible 30 m from its origin)
    enu = LocalENU(46.9, 10.3, 500.0)
    moved = np.array([float(v) for v in enu.to_enu(lat, lon, alt)])[:2]
    gamma = math.radians(pyproj.Proj('EPSG:32632').get_factors(lon, lat).meridian_convergence)
    R = np.array([[math.cos(gamma), math.sin(gamma)], [-math.sin(gamma), math.cos(gamma)]])
    want_mean, want_cov = combine_gaussians(np.stack([[10.0, -20.0], moved]),
                                            np.stack([np.eye(2) * 9.0, R @ second_cov @ R.T]))
    assert math.degrees(gamma) > 0.5  # a rotation that matters for a 20:1 covariance
    np.testing.assert_allclose(mean, want_mean, atol=1e-3)
    np.testing.assert_allclose(cov, want_cov, atol=1e-2)
