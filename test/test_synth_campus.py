"""Synthetic campus world: GPS ground truth (gt.csv = EXIF = pose through the ENU origin),
routes outside buildings, training walks covering the area (test near training), reference
database, evaluation bag, determinism, CLI dispatch.
Tiny sizes (64x48, a handful of frames)."""
from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from transforms3d.quaternions import quat2mat

from vizloc_ros.eval_bag import read_evaluation_bag
from vizloc_ros.geodesy import LocalENU
from vizloc_training.datasets.exif import read_gps_exif
from vizloc_training.datasets.gps import read_gps_dataset
from vizloc_training.datasets.reference_db import ReferenceDatabase
from vizloc_training.synth import campus, cli
from vizloc_training.synth.textures import TextureSource

SIZE = (64, 48)
FRAMES = 14  # train; val/test get 3 each


@pytest.fixture(scope='module')
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return campus.generate(tmp_path_factory.mktemp('campus') / 'w', seed=2, frames=FRAMES, size=SIZE)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline='') as fh:
        return list(csv.DictReader(fh))


def _poses(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for r in _rows(root / 'poses.csv'):
        T = np.eye(4)
        T[:3, :3] = quat2mat([float(r['qw']), float(r['qx']), float(r['qy']), float(r['qz'])])
        T[:3, 3] = [float(r['x']), float(r['y']), float(r['z'])]
        out[r['image']] = T
    return out


def test_layout_and_self_description(world: Path) -> None:
    meta = yaml.safe_load((world / 'world.yaml').read_text())
    assert meta['generator'] == 'vizloc_training.synth.campus' and meta['seed'] == 2
    assert meta['origin'] == {'lat': 31.262, 'lon': 34.804, 'alt': 300.0}
    assert meta['textures']['source'] in ('photos', 'procedural')
    assert len(meta['buildings']) >= 20
    rows = _rows(world / 'gt.csv')
    assert list(rows[0]) == ['image', 'lat', 'lon', 'alt', 'split']
    counts = {s: sum(r['split'] == s for r in rows) for s in ('train', 'val', 'test')}
    assert counts == {'train': FRAMES, 'val': 3, 'test': 3}
    assert len(list((world / 'images').glob('*.jpg'))) == FRAMES + 6


def test_gt_csv_exif_and_pose_agree(world: Path) -> None:
    enu = LocalENU(31.262, 34.804, 300.0)
    poses = _poses(world)
    for r in _rows(world / 'gt.csv'):
        lat, lon, alt = float(r['lat']), float(r['lon']), float(r['alt'])
        fix = read_gps_exif(world / 'images' / r['image'])
        assert fix is not None
        assert abs(fix.lat_deg - lat) < 1e-6 and abs(fix.lon_deg - lon) < 1e-6 and abs(fix.alt_m - alt) < 2e-3
        e, n, u = enu.to_enu(lat, lon, alt)
        np.testing.assert_allclose([float(e), float(n), float(u)], poses[r['image']][:3, 3], atol=2e-3)


def test_routes_stay_outside_buildings_at_walking_height(world: Path) -> None:
    meta = yaml.safe_load((world / 'world.yaml').read_text())
    half = meta['config']['area_m'] / 2
    for name, T in _poses(world).items():
        x, y, z = T[:3, 3]
        assert 1.5 < z < 1.7 and abs(x) < half and abs(y) < half, name
        for b in meta['buildings']:
            inside = b['min_xy'][0] - 1.0 < x < b['max_xy'][0] + 1.0 and b['min_xy'][1] - 1.0 < y < b['max_xy'][1] + 1.0
            assert not inside, (name, b)


def test_routes_cover_the_area_with_varied_headings() -> None:
    cfg = campus.CampusWorldConfig(size=(32, 24))
    c = campus.build_campus(cfg, np.random.default_rng(0), TextureSource.load(allow_photos=False))
    poses = campus.route(c, 800, np.random.default_rng(1), cfg)
    xy = np.array([T[:2, 3] for T in poses])
    assert c.is_safe(xy[:, 0], xy[:, 1]).all()
    cells = {(int((x + 100) // 25), int((y + 100) // 25)) for x, y in xy}
    assert len(cells) >= 20  # of 64 25-m cells (some are all buildings): the walk explores, it does not circle
    quadrants = {(x > 0, y > 0) for x, y in xy}
    assert len(quadrants) == 4
    headings = np.degrees(np.arctan2(np.array([T[1, 2] for T in poses]), np.array([T[0, 2] for T in poses])))
    assert np.histogram(headings, bins=8, range=(-180, 180))[0].min() > 0
    steps = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    assert 0.5 < np.median(steps) < 2.0


def test_training_walks_cover_the_walkable_area_val_and_test_stay_near_them() -> None:
    """Training = many short walks covering the walkable area densely; a separate (long, single)
    test walk through the same area then never strays far from training positions."""
    cfg = campus.CampusWorldConfig(size=(32, 24), area_m=100.0, buildings=8, trees=8, poles=5, walk_frames_train=40)
    c = campus.build_campus(cfg, np.random.default_rng(0), TextureSource.load(allow_photos=False))
    walks = campus.training_walks(c, 600, np.random.default_rng(10), cfg)
    assert [len(w) for w in walks] == [40] * 15
    train_xy = np.array([T[:2, 3] for w in walks for T in w])
    assert c.is_safe(train_xy[:, 0], train_xy[:, 1]).all()
    for w in walks:  # every walk is a smooth ~1 m/s trajectory, looking all around (spin_m_train)
        steps = np.linalg.norm(np.diff(np.array([T[:2, 3] for T in w]), axis=0), axis=1)
        assert steps.max() < 2.0 and 0.8 < np.median(steps) < 1.4
        yaw = np.arctan2([T[1, 2] for T in w], [T[0, 2] for T in w])
        turn_deg = np.degrees(np.abs(np.angle(np.exp(1j * np.diff(yaw)))))
        assert turn_deg.max() < 75.0 and 10.0 < np.median(turn_deg) < 40.0
        assert np.histogram(yaw, bins=6, range=(-np.pi, np.pi))[0].min() > 0
    starts = np.array([w[0][:2, 3] for w in walks])
    assert np.linalg.norm(np.diff(starts, axis=0), axis=1).min() > 5.0  # each walk starts somewhere new
    # Dense, uniform: every walkable spot is close to a training position.
    free_xy = (np.argwhere(c.free_GW)[:, ::-1] + 0.5) - 50.0
    d_free = campus.nearest_distances_m(free_xy, train_xy)
    assert np.percentile(d_free, 95) < 10.0 and np.median(d_free) < 3.0  # one long walk: P95 30 m
    headings = np.degrees(np.arctan2([T[1, 2] for w in walks for T in w], [T[0, 2] for w in walks for T in w]))
    assert np.histogram(headings, bins=8, range=(-180, 180))[0].min() > 0
    test_xy = np.array([T[:2, 3] for T in campus.route(c, 150, np.random.default_rng(20), cfg)])
    d_test = campus.nearest_distances_m(test_xy, train_xy)
    assert np.median(d_test) < 3.0 and np.mean(d_test <= 10.0) >= 0.95


def test_nearest_distances_m() -> None:
    query, ref = np.array([[0.0, 0.0], [10.0, 1.0]]), np.array([[3.0, 4.0], [10.0, 0.0]])
    np.testing.assert_allclose(campus.nearest_distances_m(query, ref), [5.0, 1.0])
    # Same view only: the second reference looks the other way from the second query.
    d = campus.nearest_distances_m(query, ref, query_yaw_rad=np.array([3.0, 3.1]), ref_yaw_rad=np.array([-3.0, 0.0]),
                                   max_yaw_diff_deg=35.0)
    np.testing.assert_allclose(d, [5.0, math.hypot(7.0, 3.0)])
    d = campus.nearest_distances_m(query[:1], ref[1:], query_yaw_rad=np.array([0.0]), ref_yaw_rad=np.array([2.0]),
                                   max_yaw_diff_deg=35.0)
    assert np.isinf(d).all()


def test_world_yaml_records_coverage(world: Path) -> None:
    meta = yaml.safe_load((world / 'world.yaml').read_text())
    assert meta['version'] == 2 and meta['splits']['train']['walks'] == 1  # 14 frames < 40 per walk
    poses = _poses(world)
    split_xy = {s: np.array([T[:2, 3] for n, T in sorted(poses.items()) if n.startswith(s)])
                for s in ('train', 'test')}
    d = campus.nearest_distances_m(split_xy['test'], split_xy['train'])
    cov = meta['coverage']
    assert cov['test_to_train_nn_median_m'] == pytest.approx(np.median(d), abs=2e-3)
    assert cov['test_within_10m_pct'] == pytest.approx(np.mean(d <= 10.0) * 100, abs=0.01)
    assert {'val_to_train_nn_median_m', 'test_to_train_nn_p95_m', 'val_within_10m_pct'} <= set(cov)
    assert cov['test_to_train_same_view_nn_median_m'] >= cov['test_to_train_nn_median_m']


def test_gps_reader_reads_csv_and_exif_variants(world: Path, tmp_path: Path) -> None:
    ds = read_gps_dataset(world)
    assert ds.source == 'gt.csv' and ds.split_source == 'column' and not ds.skipped
    assert len(ds.split('train')) == FRAMES and len(ds.split('test')) == 3
    # Without gt.csv the positions come from EXIF.
    copy = tmp_path / 'exif_only'
    shutil.copytree(world / 'images', copy / 'images')
    ds_exif = read_gps_dataset(copy)
    assert ds_exif.source == 'exif' and len(ds_exif.records) == len(ds.records)
    by_name = {r.image.name: r for r in ds.records}
    for r in ds_exif.records:
        ref = by_name[r.image.name]
        assert abs(r.lat_deg - ref.lat_deg) < 1e-6 and abs(r.lon_deg - ref.lon_deg) < 1e-6


def test_reference_database_of_train_frames(world: Path) -> None:
    db = ReferenceDatabase(world / 'refdb')
    assert len(db) == FRAMES
    poses = _poses(world)
    gt = {r['image']: r for r in _rows(world / 'gt.csv')}
    cam = campus.CampusWorldConfig(size=SIZE).camera()
    for e in db:
        T = poses[f'{e.uid}.jpg']
        np.testing.assert_allclose(e.E @ T, np.eye(4), atol=1e-6)
        np.testing.assert_allclose(e.K, cam.K)
        assert (e.width, e.height) == SIZE and e.fov_deg == pytest.approx(70.0)
        assert e.lat_deg == pytest.approx(float(gt[f'{e.uid}.jpg']['lat']), abs=1e-7)
        # azimuth: clockwise from north of the optical axis
        fwd = T[:3, 2]
        assert math.radians(e.azn_deg) == pytest.approx(math.atan2(fwd[0], fwd[1]) % (2 * math.pi), abs=1e-6)
        assert e.image.read_bytes() == (world / 'images' / f'{e.uid}.jpg').read_bytes()


def test_eval_bag_carries_fix_and_pose(world: Path) -> None:
    poses = _poses(world)
    gt = {r['image']: r for r in _rows(world / 'gt.csv')}
    samples = list(read_evaluation_bag(world / 'eval_bag'))
    assert len(samples) == 3
    for k, s in enumerate(samples):
        name = f'test_{k:05d}.jpg'
        assert s.room is None
        assert s.fix_lla[0] == pytest.approx(float(gt[name]['lat']), abs=1e-8)
        np.testing.assert_allclose(s.T_map_camera, poses[name], atol=1e-5)
        file_rgb = cv2.cvtColor(cv2.imread(str(world / 'images' / name)), cv2.COLOR_BGR2RGB)
        assert np.array_equal(s.rgb_HW3, file_rgb)


def test_same_seed_same_world(world: Path, tmp_path: Path) -> None:
    cfg = campus.CampusWorldConfig(write_refdb=False)
    again = campus.generate(tmp_path / 'again', seed=2, frames=FRAMES, size=SIZE, config=cfg, write_bag=False)
    assert (again / 'gt.csv').read_bytes() == (world / 'gt.csv').read_bytes()
    for name in ('train_00000.jpg', 'test_00002.jpg'):
        assert (again / 'images' / name).read_bytes() == (world / 'images' / name).read_bytes()


def test_cli_dispatches_to_campus(tmp_path: Path) -> None:
    out = tmp_path / 'cli'
    assert cli.main(['campus', '--out', str(out), '--frames', '2', '--size', '32x24', '--seed', '1']) == 0
    assert len(_rows(out / 'gt.csv')) == 2 + 2 + 2
    assert cli.main(['campus', '--out', str(out), '--frames', '2']) == 2  # not empty: refused



def test_ground_tiles_are_copies_of_the_texture_but_do_not_repeat() -> None:
    """Grass and paving are laid tile by tile (~6 m each); a ground that repeats exactly every tile makes
    local-feature matches ambiguous by one tile, so every tile is rolled and turned on its own."""
    tile = np.random.default_rng(0).uniform(0, 255, size=(16, 16, 3)).astype(np.float32)
    ground = campus.lay_tiles(tile, 100, np.random.default_rng(1))
    assert ground.shape == (100, 100, 3) and ground.dtype == np.float32
    blocks = [ground[i:i + 16, j:j + 16] for i in range(0, 96, 16) for j in range(0, 96, 16)]
    for block in blocks:  # each tile is the texture's own pixels, only moved
        np.testing.assert_array_equal(np.sort(block, axis=None), np.sort(tile, axis=None))
    neighbours = [(ground[i:i + 16, j:j + 16], ground[i:i + 16, j + 16:j + 32]) for i in range(0, 80, 16)
                  for j in range(0, 64, 16)]
    same = sum(np.array_equal(a, b) for a, b in neighbours)
    assert same <= 2  # 20 pairs; 1 in 16 x 16 x 8 orientations/offsets would repeat by chance
    with pytest.raises(ValueError, match='square'):
        campus.lay_tiles(tile[:, :8], 32, np.random.default_rng(0))
