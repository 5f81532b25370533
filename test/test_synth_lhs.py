"""Latin-hypercube training views of the aerial world (issue 11, CrossLoc's LHS-sim).

The sampler is stratified, the views cover the test flight's altitudes, tilts and headings, each
sees nothing but terrain, the test flight does not depend on the option, and world.yaml records
the sampling. Tiny sizes: a few frames of 48x32, 256 px texture; pose-level checks need no render.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from vizloc_training.synth import aerial, cli
from vizloc_training.synth.heightfield import HeightField

CFG = aerial.AerialWorldConfig(texture_px=256)
HALF_M = CFG.flight_area_fraction * CFG.extent_m / 2
SEED = 5
WORLD_KW = dict(seed=SEED, frames=6, size=(48, 32), config=CFG, write_bag=False)


@pytest.fixture(scope='module')
def terrain() -> aerial.Terrain:
    return aerial.build_terrain(CFG, np.random.default_rng([SEED, 7]))


@pytest.fixture(scope='module')
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('lhs')
    return {
        'lhs': aerial.generate(root / 'lhs', **WORLD_KW),
        'lhs_again': aerial.generate(root / 'lhs_again', **WORLD_KW),
        'lawnmower': aerial.generate(root / 'lawnmower', train_sampling='lawnmower', **WORLD_KW),
    }


def _files(root: Path, under: str = '') -> dict[str, bytes]:
    base = root / under if under else root
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(base.rglob('*')) if p.is_file()}


def _features(poses: list[np.ndarray], terrain: aerial.Terrain) -> np.ndarray:
    """Per pose: x, y, height above the ground (buildings included), heading of the image top (deg), tilt (deg)."""
    rows = []
    for T in poses:
        agl = T[2, 3] - float(terrain.field.height_at(np.array(T[0, 3]), np.array(T[1, 3])))
        top = -T[:3, 1]  # image top (camera -y) in the world
        rows.append([T[0, 3], T[1, 3], agl, math.degrees(math.atan2(top[1], top[0])) % 360.0,
                     math.degrees(math.acos(float(np.clip(-T[2, 2], -1.0, 1.0))))])
    return np.array(rows)


def _max_circular_gap_deg(headings_deg: np.ndarray) -> float:
    h = np.sort(np.asarray(headings_deg) % 360.0)
    return float(np.max(np.diff(np.concatenate([h, [h[0] + 360.0]]))))


@pytest.mark.parametrize('n', [1, 7, 64])
def test_latin_hypercube_is_stratified(n: int) -> None:
    d = len(aerial.LHS_DIMENSIONS)
    u = aerial.latin_hypercube(n, d, np.random.default_rng([SEED, 2000]))
    assert u.shape == (n, d) and np.all((u >= 0.0) & (u < 1.0))
    for k in range(d):  # each of the n equal bins of every dimension holds exactly one point
        assert sorted(np.floor(u[:, k] * n).astype(int).tolist()) == list(range(n)), aerial.LHS_DIMENSIONS[k]
    again = aerial.latin_hypercube(n, d, np.random.default_rng([SEED, 2000]))
    assert np.array_equal(u, again)
    with pytest.raises(aerial.AerialWorldError):
        aerial.latin_hypercube(0, d, np.random.default_rng(0))


def test_ranges_cover_the_flights_envelope() -> None:
    r = aerial.lhs_ranges(CFG, HALF_M)
    assert list(r) == list(aerial.LHS_DIMENSIONS)
    assert r['x_m'] == (-HALF_M, HALF_M) and r['y_m'] == (-HALF_M, HALF_M)
    assert r['agl_m'] == (CFG.agl_range_m[0] + 1.0, CFG.agl_range_m[1] - 1.0)
    assert r['heading_rad'] == (0.0, 2 * math.pi)
    assert r['tilt_rad'] == (0.0, pytest.approx(math.radians(CFG.tilt_max_deg)))


def test_train_views_see_only_terrain_and_keep_their_sampled_pose(terrain: aerial.Terrain) -> None:
    plan = aerial.flight_plan('train', 80, CFG, HALF_M, SEED, terrain)
    assert plan.kind == 'latin hypercube' and len(plan.xy_m) == 80
    assert plan.params['candidates'] == 80 + plan.params['rejected']
    poses = aerial.plan_poses(plan, terrain, CFG)
    rays = aerial._boundary_rays(CFG.K(), *CFG.size)
    feats = _features(poses, terrain)
    for k, T in enumerate(poses):
        assert aerial._fits(terrain.field, T[:3, 3], T[:3, :3], rays), k
        # plan_poses did not have to cap the tilt: the pose is exactly the sampled one
        assert np.allclose(T[:3, :3], aerial.camera_rotation(plan.yaw_rad[k], plan.tilt_rad[k], plan.roll_rad[k]), atol=1e-12)
    lo, hi = aerial.lhs_ranges(CFG, HALF_M)['agl_m']
    assert np.all(feats[:, 2] >= lo - 1e-6) and np.all(feats[:, 2] <= hi + 1e-6)
    assert np.all(np.abs(feats[:, :2]) <= HALF_M)


def test_headings_cover_the_full_circle(terrain: aerial.Terrain) -> None:
    n = 60
    plan = aerial.flight_plan('train', n, CFG, HALF_M, SEED, terrain)
    headings = _features(aerial.plan_poses(plan, terrain, CFG), terrain)[:, 3]
    assert _max_circular_gap_deg(headings) < 3 * 360.0 / n
    lawnmower = aerial.flight_plan('train', n, replace(CFG, train_sampling='lawnmower'), HALF_M, SEED)
    assert _max_circular_gap_deg(np.degrees(lawnmower.yaw_rad)) > _max_circular_gap_deg(headings)


def test_train_views_span_the_test_flight(terrain: aerial.Terrain) -> None:
    n = 100
    train = _features(aerial.plan_poses(aerial.flight_plan('train', n, CFG, HALF_M, SEED, terrain), terrain, CFG), terrain)
    test = _features(aerial.plan_poses(aerial.flight_plan('test', n, CFG, HALF_M, SEED), terrain, CFG), terrain)
    agl_bin = (CFG.agl_range_m[1] - CFG.agl_range_m[0]) / n
    assert train[:, 2].min() <= test[:, 2].min() + agl_bin and train[:, 2].max() >= test[:, 2].max() - agl_bin
    tilt_bin = CFG.tilt_max_deg / n
    assert train[:, 4].min() <= test[:, 4].min() + 2 * tilt_bin and train[:, 4].max() >= test[:, 4].max() - 2 * tilt_bin
    # every test heading has a training heading within two strata
    dh = np.abs((test[:, None, 3] - train[None, :, 3] + 180.0) % 360.0 - 180.0)
    assert dh.min(axis=1).max() < 2 * 360.0 / n
    assert np.all(np.abs(test[:, :2]).max(axis=0) <= np.abs(train[:, :2]).max(axis=0) + 2 * 2 * HALF_M / n)
    # nearer, in position and heading, than the lawnmower flight's views
    lawn_cfg = replace(CFG, train_sampling='lawnmower')
    lawn = _features(aerial.plan_poses(aerial.flight_plan('train', n, lawn_cfg, HALF_M, SEED), terrain, lawn_cfg), terrain)

    def nearest(views: np.ndarray) -> float:
        d_m = np.linalg.norm(test[:, None, :3] - views[None, :, :3], axis=2)
        d_deg = np.abs((test[:, None, 3] - views[None, :, 3] + 180.0) % 360.0 - 180.0)
        return float(np.median((d_m + d_deg).min(axis=1)))  # metres + degrees of heading

    assert nearest(train) < nearest(lawn)


def test_test_flight_does_not_depend_on_the_training_sampling(worlds: dict[str, Path]) -> None:
    for split in ('test', 'val'):
        assert _files(worlds['lhs'], split) == _files(worlds['lawnmower'], split), split
    assert _files(worlds['lhs'], 'train/poses') != _files(worlds['lawnmower'], 'train/poses')
    metas = {k: yaml.safe_load((worlds[k] / 'world.yaml').read_text()) for k in ('lhs', 'lawnmower')}
    assert metas['lhs']['splits']['test'] == metas['lawnmower']['splits']['test']


def test_same_seed_gives_identical_files(worlds: dict[str, Path]) -> None:
    a, b = _files(worlds['lhs']), _files(worlds['lhs_again'])
    assert a.keys() == b.keys() and len(list(k for k in a if k.startswith('train/rgb/'))) == 6
    for rel in a:
        assert a[rel] == b[rel], rel


def test_world_yaml_records_the_sampling(worlds: dict[str, Path]) -> None:
    meta = yaml.safe_load((worlds['lhs'] / 'world.yaml').read_text())
    assert meta['version'] == aerial.GENERATOR_VERSION
    assert meta['config']['train_sampling'] == 'lhs'
    train = meta['splits']['train']
    traj = train['trajectory']
    assert train['frames'] == 6 and traj['shape'] == 'latin hypercube'
    assert 'LatinHypercube' in traj['method'] and traj['rng_seed'] == [SEED, 2000]
    assert traj['ranges']['heading_deg'] == [0.0, 360.0]
    assert traj['ranges']['tilt_deg'] == [0.0, CFG.tilt_max_deg]
    assert traj['ranges']['agl_m'] == [51.0, 299.0]
    assert traj['ranges']['x_m'] == [-HALF_M, HALF_M] and traj['ranges']['y_m'] == [-HALF_M, HALF_M]
    assert traj['candidates'] == 6 + traj['rejected']
    assert 51.0 - 1e-3 <= train['agl_m'][0] <= train['agl_m'][1] <= 299.0 + 1e-3
    lawn = yaml.safe_load((worlds['lawnmower'] / 'world.yaml').read_text())
    assert lawn['config']['train_sampling'] == 'lawnmower' and lawn['splits']['train']['trajectory']['shape'] == 'lawnmower'


def test_user_terrain_gets_lhs_views_of_its_own_area() -> None:
    rng = np.random.default_rng(0)
    heights = 40.0 + 5.0 * rng.standard_normal((201, 201)).cumsum(axis=0) / 20.0
    field = HeightField(heights, 5.0, -500.0, -500.0)
    terrain = aerial.Terrain(field=field, hills=field, buildings=(), source={'kind': 'user'})
    cfg = replace(aerial.AerialWorldConfig(), size=(40, 32))
    half = cfg.flight_area_fraction * 1000.0 / 2
    plan = aerial.flight_plan('train', 30, cfg, half, 1, terrain)
    assert plan.params['ranges']['x_m'] == [-250.0, 250.0]
    assert np.all(np.abs(plan.xy_m) <= 250.0)
    poses = aerial.plan_poses(plan, terrain, cfg)
    assert np.allclose(_features(poses, terrain)[:, 4], np.degrees(plan.tilt_rad), atol=1e-6)  # nothing capped


def test_too_few_fitting_views_is_an_error() -> None:
    field = HeightField(np.zeros((16, 16)), 2.0, -15.0, -15.0)  # 30 m square: no view from 51 m fits
    terrain = aerial.Terrain(field=field, hills=field, buildings=(), source={'kind': 'user'})
    with pytest.raises(aerial.AerialWorldError, match='Latin-hypercube'):
        aerial.lhs_plan(3, CFG, 7.0, 0, terrain)
    with pytest.raises(aerial.AerialWorldError, match='terrain'):
        aerial.flight_plan('train', 3, CFG, 7.0, 0)  # LHS needs the terrain


def test_config_and_cli_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert aerial.AerialWorldConfig().train_sampling == 'lhs'
    with pytest.raises(aerial.AerialWorldError, match='train_sampling'):
        aerial.AerialWorldConfig(train_sampling='grid')
    seen: dict[str, object] = {}

    def fake_generate(out: Path, **kwargs: object) -> Path:
        seen.update(kwargs)
        return out

    monkeypatch.setattr(aerial, 'generate', fake_generate)
    assert cli.main(['aerial', '--out', str(tmp_path / 'a'), '--train-sampling', 'lawnmower']) == 0
    assert seen['train_sampling'] == 'lawnmower'
    seen.clear()
    assert cli.main(['aerial', '--out', str(tmp_path / 'b')]) == 0
    assert 'train_sampling' not in seen  # the config's default: lhs
    assert cli.main(['indoor', '--out', str(tmp_path / 'c'), '--train-sampling', 'lhs']) == 2
    with pytest.raises(SystemExit):
        cli.main(['aerial', '--out', str(tmp_path / 'd'), '--train-sampling', 'grid'])
