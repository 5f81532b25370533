"""S2 cells of the s2_classifier (torch-free): PlaNet's adaptive partition on hand-checked cases, the
bundle contract, the probability-weighted fix on the sphere, and the km metrics against hand-computed
distances."""
from __future__ import annotations

import math

import numpy as np
import pytest
import s2geometry as s2

from vizloc_plugins.s2_cells import (EARTH_RADIUS_M, CellPartition, S2CellError, adaptive_partition, latlon_to_unit,
                                     unit_to_latlon)
from vizloc_plugins.s2_classifier import S2ClassifierContract, estimate_fix
from vizloc_ros.localizer import ConfigError

PARIS = (48.8566, 2.3522)
BERLIN = (52.52, 13.405)
SYDNEY = (-33.8688, 151.2093)
#: Face tokens: face f is the id (2f + 1) << 60, i.e. tokens '1', '3', '5', '7', '9', 'b'.
FACE_TOKEN = {0: '1', 1: '3', 2: '5', 3: '7', 4: '9', 5: 'b'}
KM_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0 / 1e3  # 111.195 km: one degree of a great circle


def _points(*places_counts):
    lat, lon = [], []
    for (la, lo), n in places_counts:
        lat += [la + 1e-4 * k for k in range(n)]
        lon += [lo] * n
    return np.array(lat), np.array(lon)


def test_few_images_stay_in_their_face_cells():
    # Paris (0.66, 0.03, 0.75): largest |z| -> face 2 (+z); Sydney (-0.73, 0.40, -0.56): largest |x|, x < 0 -> face 3.
    lat, lon = _points((PARIS, 3), (SYDNEY, 3))
    part = adaptive_partition(lat, lon, t_max=5, t_min=1)
    assert part.tokens == (FACE_TOKEN[2], FACE_TOKEN[3])
    assert part.levels == (0, 0) and part.train_images == (3, 3)
    assert list(part.assign(lat, lon)) == [0, 0, 0, 1, 1, 1]


def test_cells_below_t_min_are_dropped_and_their_images_unassigned():
    lat, lon = _points((PARIS, 5), (SYDNEY, 1))
    part = adaptive_partition(lat, lon, t_max=10, t_min=2)
    assert part.tokens == (FACE_TOKEN[2],) and part.train_images == (5,)
    assert list(part.assign(lat, lon)) == [0] * 5 + [-1]
    with pytest.raises(S2CellError, match='t_min'):
        adaptive_partition(lat, lon, t_max=10, t_min=20)
    with pytest.raises(S2CellError, match='t_min <= t_max'):
        adaptive_partition(lat, lon, t_max=2, t_min=3)


def test_a_full_cell_is_split_until_the_two_cities_part():
    """Paris and Berlin (3 images each, both on face 2) with t_max = 4: the face is split down to the
    first level at which the two cities fall into different cells, and no further (3 <= t_max)."""
    lat, lon = _points((PARIS, 3), (BERLIN, 3))
    part = adaptive_partition(lat, lon, t_max=4, t_min=1)
    paris = s2.S2CellId(s2.S2LatLng.FromDegrees(*PARIS))
    berlin = s2.S2CellId(s2.S2LatLng.FromDegrees(*BERLIN))
    level = next(L for L in range(31) if paris.parent(L) != berlin.parent(L))
    assert 1 <= level <= 8  # ~900 km apart: they part at a coarse level
    assert set(part.tokens) == {paris.parent(level).ToToken(), berlin.parent(level).ToToken()}
    assert part.levels == (level, level) and part.train_images == (3, 3)


def test_max_level_stops_splitting():
    lat, lon = np.full(5, PARIS[0]), np.full(5, PARIS[1])
    part = adaptive_partition(lat, lon, t_max=2, t_min=1, max_level=3)
    expected = s2.S2CellId(s2.S2LatLng.FromDegrees(*PARIS)).parent(3).ToToken()
    assert part.tokens == (expected,) and part.levels == (3,) and part.train_images == (5,)


def test_partition_geometry_csv_round_trip_and_parents():
    lat, lon = _points((PARIS, 3), (SYDNEY, 3))
    part = adaptive_partition(lat, lon, t_max=5, t_min=1)
    # A face is a sixth of the sphere: area 4 pi R^2 / 6, uniform variance per axis area / 12.
    assert np.allclose(part.area_m2(), 4 * math.pi * EARTH_RADIUS_M ** 2 / 6, rtol=1e-9)
    assert np.allclose(part.extent_var_m2(), part.area_m2() / 12)
    # The training centroid of a cell is (on the sphere) where its images are.
    c_lat, c_lon = unit_to_latlon(part.positions_N3('train_mean'))
    assert abs(c_lat[0] - (PARIS[0] + 1e-4)) < 1e-6 and abs(c_lon[0] - PARIS[1]) < 1e-6
    again = CellPartition.from_csv(part.to_csv())
    assert again.tokens == part.tokens and again.train_images == part.train_images
    assert np.allclose(again.train_mean_N3, part.train_mean_N3, atol=1e-9)
    fine = adaptive_partition(*_points((PARIS, 3), (BERLIN, 3)), t_max=4, t_min=1)
    parents, index = fine.parents(fine.levels[0])  # up to level 0: both in face 2
    assert parents == (FACE_TOKEN[2],) and list(index) == [0, 0]
    with pytest.raises(S2CellError):
        CellPartition.from_csv('token,level\n5,0\n')


def test_contract_round_trip_and_unknown_keys():
    contract = S2ClassifierContract(parent_levels_up=2, t_max=60, t_min=8, top_k=4, neighbourhood_km=10.0)
    assert contract.output_names == ['probs', 'parent_probs']
    meta = contract.to_metadata()
    assert S2ClassifierContract.from_metadata(meta) == contract
    with pytest.raises(ConfigError, match='unknown keys'):
        S2ClassifierContract.from_metadata({'s2_classifier': {**meta['s2_classifier'], 'topk': 3}})
    with pytest.raises(ConfigError, match='no'):
        S2ClassifierContract.from_metadata({})
    with pytest.raises(ConfigError, match='cell_position'):
        S2ClassifierContract(cell_position='degrees')


def test_fix_is_the_weighted_mean_on_the_sphere_with_mixture_covariance():
    # Two cells on the equator at longitude -1 and +1 deg, equal probability: the mean is (0, 0) and
    # the east variance is the spread (1 deg of arc, squared) plus the extent variance.
    positions = latlon_to_unit([0.0, 0.0, SYDNEY[0]], [-1.0, 1.0, SYDNEY[1]])
    extent = np.array([4e6, 4e6, 4e6])
    fix = estimate_fix(np.array([0.3, 0.3, 0.4]), positions, extent, top_k=3, neighbourhood_km=500.0)
    # The best cell is Sydney; the equator cells are outside its neighbourhood: the fix is Sydney.
    assert fix.best_cell == 2 and fix.cells_used == 1 and fix.mass_used == pytest.approx(0.4)
    assert fix.lat_deg == pytest.approx(SYDNEY[0]) and fix.lon_deg == pytest.approx(SYDNEY[1])
    fix = estimate_fix(np.array([0.35, 0.35, 0.3]), positions, extent, top_k=3, neighbourhood_km=500.0)
    assert abs(fix.lat_deg) < 1e-9 and abs(fix.lon_deg) < 1e-9
    assert fix.cells_used == 2 and fix.mass_used == pytest.approx(0.7)  # Sydney is outside the neighbourhood
    arc_m = 1e3 * KM_PER_DEG
    # ENU (WGS84 ellipsoid) vs the S2 sphere: the east spread differs by the ratio of the radii (< 0.2 %).
    assert fix.cov_en_m2[0, 0] == pytest.approx(arc_m ** 2 + 4e6, rel=5e-3)
    assert fix.cov_en_m2[1, 1] == pytest.approx(4e6, rel=1e-3)
    assert abs(fix.cov_en_m2[0, 1]) < 1e-3 * fix.cov_en_m2[0, 0]
    # Degrees would average longitudes 179 and -179 to 0; on the sphere the mean is at 180.
    across = latlon_to_unit([0.0, 0.0], [179.0, -179.0])
    fix = estimate_fix(np.array([0.5, 0.5]), across, np.zeros(2) + 1.0, top_k=2, neighbourhood_km=500.0)
    assert abs(abs(fix.lon_deg) - 180.0) < 1e-9
    # top_k = 1: exactly the best cell's position.
    fix = estimate_fix(np.array([0.2, 0.8]), positions[:2], extent[:2], top_k=1, neighbourhood_km=500.0)
    assert fix.lon_deg == pytest.approx(1.0) and fix.cells_used == 1


def test_region_rule_picks_the_circle_with_the_most_mass_then_its_best_cell():
    # Sydney alone holds 0.4; two cells 2 deg apart on the equator (222 km) hold 0.3 each.
    positions = latlon_to_unit([0.0, 0.0, SYDNEY[0]], [-1.0, 1.0, SYDNEY[1]])
    extent = np.array([4e6, 4e6, 4e6])
    probs = np.array([0.3, 0.3, 0.4])
    # Without the rule, or with circles too small to join the two: Sydney, the most probable cell.
    for region_km in (0.0, 100.0):
        fix = estimate_fix(probs, positions, extent, top_k=1, neighbourhood_km=1.0, region_km=region_km)
        assert fix.best_cell == 2 and fix.lat_deg == pytest.approx(SYDNEY[0])
    assert fix.region_mass == pytest.approx(0.4)
    # A 250 km circle around either equator cell holds 0.6 > 0.4: the fix is in that region, at its
    # best cell (the first on ties), and the weighted mean of both when the neighbourhood takes both.
    fix = estimate_fix(probs, positions, extent, top_k=1, neighbourhood_km=1.0, region_km=250.0)
    assert fix.best_cell == 0 and fix.lon_deg == pytest.approx(-1.0) and fix.region_mass == pytest.approx(0.6)
    fix = estimate_fix(probs, positions, extent, top_k=3, neighbourhood_km=500.0, region_km=250.0)
    assert abs(fix.lat_deg) < 1e-9 and abs(fix.lon_deg) < 1e-9
    assert fix.cells_used == 2 and fix.mass_used == pytest.approx(0.6)
    # top_k counts cells inside the region only: Sydney is never averaged in, whatever the neighbourhood.
    fix = estimate_fix(probs, positions, extent, top_k=3, neighbourhood_km=20000.0, region_km=250.0)
    assert fix.cells_used == 2 and abs(fix.lon_deg) < 1e-9


def test_km_metrics_against_hand_computed_distances():
    pytest.importorskip('torch')
    from vizloc_training.s2_classifier.evaluate import km_table, oracle_errors_m, top1_errors_m

    errors_m = np.array([0.5, 24.0, KM_PER_DEG, 700.0, 3000.0]) * 1e3
    table = km_table(errors_m)
    assert table == pytest.approx({'within_1km_pct': 20.0, 'within_25km_pct': 40.0, 'within_200km_pct': 60.0,
                                   'within_750km_pct': 80.0, 'within_2500km_pct': 80.0,
                                   'median_km': KM_PER_DEG, 'mean_km': float(np.mean(errors_m)) / 1e3,
                                   'count': 5.0})
    # Cells at longitude 0 and 2 on the equator; truth at 0.5 -> nearest cell 0.5 deg away; at 1.6 -> 0.4 deg.
    cells = latlon_to_unit([0.0, 0.0], [0.0, 2.0])
    oracle = oracle_errors_m(cells, [0.0, 0.0], [0.5, 1.6])
    assert oracle / 1e3 == pytest.approx([0.5 * KM_PER_DEG, 0.4 * KM_PER_DEG], rel=1e-9)
    # The model puts its mass on the wrong cell for the first image: 1.5 deg error; right for the second.
    top1 = top1_errors_m(np.array([[0.1, 0.9], [0.2, 0.8]]), cells, [0.0, 0.0], [0.5, 1.6])
    assert top1 / 1e3 == pytest.approx([1.5 * KM_PER_DEG, 0.4 * KM_PER_DEG], rel=1e-9)


def test_contract_reads_the_metadata_bundles_were_written_with():
    # bundle.yaml metadata as the trainer wrote it before the contract moved onto BundleContract (tiny preset).
    written = {'localizer_type': 's2_classifier', 'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225],
               's2_classifier': {'cells_file': 'cells.csv', 'cell_position': 'train_mean', 'parent_levels_up': 2,
                                 't_max': 12, 't_min': 2, 'max_level': 20, 'top_k': 3, 'neighbourhood_km': 2.5},
               'resize': 'stretch', 'backbone': 'resnet18', 'backbone_weights': {'source': 'scratch'},
               'preset': 'tiny', 'config': {}, 'args': {}, 'history': [], 'outputs': {}}
    contract = S2ClassifierContract.from_metadata(written)
    assert (contract.parent_levels_up, contract.t_max, contract.backbone) == (2, 12, 'resnet18')
    # Written before the region rule: region_km takes its default 0 (the best cell decides, as then).
    assert contract.region_km == 0.0
    rewritten = {k: v for k, v in written.items() if k not in ('localizer_type', 'mean', 'std')}
    rewritten['tta_flip'] = False
    rewritten['s2_classifier'] = {**written['s2_classifier'], 'region_km': 0.0}
    assert contract.to_metadata(preset='tiny', config={}, args={}, history=[], outputs={}) == rewritten
    with pytest.raises(ConfigError, match='unknown'):  # a nested key is not accepted at the top level
        S2ClassifierContract.from_metadata({**written, 'top_k': 3})
