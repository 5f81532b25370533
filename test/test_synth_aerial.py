"""Synthetic aerial world: exact ground truth, renderer coverage, determinism, geo-reference,
trajectories, evaluation bag and the vizloc-synth CLI. Tiny sizes (80x60, a handful of frames)."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from vizloc_ros.eval_bag import read_evaluation_bag
from vizloc_ros.geodesy import GeoReference
from vizloc_training.datasets.scene_coordinates import SceneCoordinateDataset, coords_pixel_grid
from vizloc_training.synth import aerial, cli
from vizloc_training.synth.heightfield import HeightField, TerrainRenderer, pixel_rays_camera

SIZE = (80, 60)
CFG = aerial.AerialWorldConfig(texture_px=512)


@pytest.fixture(scope='module')
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return aerial.generate(tmp_path_factory.mktemp('aerial') / 'w', seed=3, frames=6, size=SIZE, config=CFG)


@pytest.fixture(scope='module')
def terrain() -> aerial.Terrain:
    return aerial.build_terrain(CFG, np.random.default_rng([3, 7]))


def _project(T_world_camera: np.ndarray, K: np.ndarray, X_N3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X_cam = (X_N3 - T_world_camera[:3, 3]) @ T_world_camera[:3, :3]
    uv = X_cam[:, :2] / X_cam[:, 2:3] * [K[0, 0], K[1, 1]] + K[:2, 2]
    return uv, X_cam[:, 2]


def _load_field(root: Path) -> HeightField:
    world = yaml.safe_load((root / 'world.yaml').read_text())
    x0, y0, _, _ = world['terrain']['extent_m']
    heights = np.flipud(np.load(root / 'terrain' / 'elevation.npy')).astype(np.float64)
    return HeightField(heights, world['terrain']['dem_spacing_m'], x0, y0)


def test_layout_and_self_description(world: Path) -> None:
    meta = yaml.safe_load((world / 'world.yaml').read_text())
    assert meta['generator'] == 'vizloc_training.synth.aerial'
    assert meta['seed'] == 3 and meta['version'] == aerial.GENERATOR_VERSION
    assert meta['texture']['source']['kind'] in ('opencv-doc photos', 'procedural')
    assert meta['layout']['init_stride_px'] == 8
    for split, n in (('train', 6), ('val', 2), ('test', 2)):
        assert meta['splits'][split]['frames'] == n
        for sub, ext in (('rgb', 'png'), ('poses', 'txt'), ('calibration', 'txt'), ('depth', 'npy'), ('init', 'npy')):
            assert len(list((world / split / sub).glob(f'*.{ext}'))) == n, (split, sub)
    assert (world / 'eval_bag' / 'metadata.yaml').is_file()


@pytest.mark.parametrize('split', ['train', 'val', 'test'])
def test_written_ground_truth_is_exact(world: Path, split: str) -> None:
    ds = SceneCoordinateDataset(world, split)
    field = _load_field(world)
    for k in range(len(ds)):
        s = ds[k]
        assert s.rgb_HW3.shape == (SIZE[1], SIZE[0], 3)
        assert s.coords_stride_px == 8 and s.coords_3HW.shape == (3, SIZE[1] // 8, SIZE[0] // 8)
        X = s.coords_3HW.reshape(3, -1).T.astype(np.float64)
        uv, z_cam = _project(s.T_world_camera, s.K, X)
        pix = coords_pixel_grid(8, *s.coords_3HW.shape[1:]).reshape(2, -1).T
        assert np.abs(uv - pix).max() < 1e-3, f'{s.name}: scene coordinates do not re-project onto pixel centres'
        # Depth (full resolution) is the z-depth of the same points.
        depth_at = s.depth_HW[pix[:, 1].astype(int), pix[:, 0].astype(int)]
        assert np.allclose(depth_at, z_cam, rtol=1e-6, atol=1e-3)
        assert np.all(s.depth_HW > 0)
        # Points lie on the terrain surface (float32 storage limits this to ~1e-4 m).
        assert np.abs(X[:, 2] - field.height_at(X[:, 0], X[:, 1])).max() < 2e-3


@pytest.mark.parametrize('tilt_deg', [0.0, 45.0])
@pytest.mark.parametrize('agl_m', [50.0, 300.0])
def test_renderer_hits_terrain_exactly(terrain: aerial.Terrain, tilt_deg: float, agl_m: float) -> None:
    field = terrain.field
    texture = np.full((256, 256, 3), 128, np.uint8)
    renderer = TerrainRenderer(field, texture)
    x, y = 30.0, -40.0
    T = np.eye(4)
    T[:3, :3] = aerial.camera_rotation(0.7, math.radians(tilt_deg))
    T[:3, 3] = [x, y, float(field.height_at(np.array(x), np.array(y))) + agl_m]
    K = CFG.K() * [[0.25], [0.25], [1]]  # 80x60 version of the 320x240 camera
    res = renderer.render(T, K, *SIZE, np.array([0.3, 0.2, 1.0]))
    assert res.hit_HW.all(), f'{(~res.hit_HW).sum()} holes'
    X = res.coords_HW3.reshape(-1, 3)
    uv, z_cam = _project(T, K, X)
    u, v = np.meshgrid(np.arange(SIZE[0]), np.arange(SIZE[1]))
    assert np.abs(uv - np.stack([u.ravel(), v.ravel()], 1)).max() < 1e-6
    assert np.allclose(res.depth_HW.ravel(), z_cam, rtol=0, atol=1e-9)
    assert np.abs(X[:, 2] - field.height_at(X[:, 0], X[:, 1])).max() < 1e-6
    # The first hit: the segment from the camera to just before the hit stays above the surface.
    t = np.linspace(0.0, 0.999, 200)[:, None, None]
    seg = T[:3, 3] + t * (X - T[:3, 3])
    above = seg[..., 2] - field.height_at(seg[..., 0], seg[..., 1])
    assert above.min() > -1e-6


def test_ray_caster_finds_thin_tall_block() -> None:
    heights = np.zeros((257, 257))
    heights[128:131, 100:103] = 40.0  # a 4 m wide tower
    field = HeightField(heights, 2.0, -256.0, -256.0)
    origin = np.array([-100.0, 1.0, 20.0])
    target = np.array([-55.0, 1.0, 20.0])  # horizontal ray through the tower at x in [-56, -52]
    direction = (target - origin) / 100.0 + [0, 0, -1e-6]
    t = field.cast(origin, direction[None])
    hit = origin + t[0] * direction
    assert np.isfinite(t[0]) and -58.0 <= hit[0] <= -56.0


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    kwargs = dict(seed=11, frames=2, size=(48, 32), config=CFG, write_bag=False)
    a = aerial.generate(tmp_path / 'a', **kwargs)
    b = aerial.generate(tmp_path / 'b', **kwargs)
    c = aerial.generate(tmp_path / 'c', **{**kwargs, 'seed': 12})
    files = sorted(p.relative_to(a) for p in a.rglob('*') if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob('*') if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / 'train/rgb/frame_00000.png').read_bytes() != (c / 'train/rgb/frame_00000.png').read_bytes()


def test_geo_yaml_round_trip(world: Path) -> None:
    mapping = yaml.safe_load((world / 'geo.yaml').read_text())
    assert mapping['crs'] == 'EPSG:2056'
    geo = GeoReference.from_yaml(world / 'geo.yaml')
    assert geo.to_mapping() == mapping
    lat, lon, alt = geo.scene_to_wgs84(np.zeros((1, 3)))
    assert 46.3 < float(lat[0]) < 46.7 and 6.4 < float(lon[0]) < 6.9  # near Lausanne
    assert abs(float(alt[0]) - 500.0) < 1e-6
    ds = SceneCoordinateDataset(world, 'test')
    C = np.stack([ds.pose(k)[:3, 3] for k in range(len(ds))])
    back = geo.wgs84_to_scene(*geo.scene_to_wgs84(C))
    assert np.abs(back - C).max() < 1e-2  # pyproj LV95 <-> WGS84 round trip: ~1 mm


def test_eval_bag_matches_test_split(world: Path) -> None:
    ds = SceneCoordinateDataset(world, 'test')
    geo = ds.geo
    samples = list(read_evaluation_bag(world / 'eval_bag'))
    assert len(samples) == len(ds)
    for k, sample in enumerate(samples):
        ref = ds[k]
        assert np.array_equal(sample.rgb_HW3, ref.rgb_HW3)
        assert np.allclose(sample.T_map_camera, ref.T_world_camera, atol=1e-9)
        assert np.allclose(sample.camera.K, ref.K)
        lat, lon, alt = geo.scene_to_wgs84(ref.T_world_camera[:3, 3][None])
        assert np.allclose(sample.fix_lla, (lat[0], lon[0], alt[0]), rtol=0, atol=1e-7)
        assert sample.room is None
    stamps = [s.stamp_ns for s in samples]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


@pytest.mark.parametrize('train_sampling', aerial.TRAIN_SAMPLINGS)
def test_altitude_tilt_and_rotation_ranges(terrain: aerial.Terrain, train_sampling: str) -> None:
    cfg = replace(CFG, train_sampling=train_sampling)
    half = cfg.flight_area_fraction * cfg.extent_m / 2
    for split, n in (('train', 60), ('val', 20), ('test', 30)):
        poses = aerial.plan_poses(aerial.flight_plan(split, n, cfg, half, 5, terrain), terrain, cfg)
        for T in poses:
            R = T[:3, :3]
            assert np.allclose(R.T @ R, np.eye(3), atol=1e-9) and np.linalg.det(R) > 0
            agl = T[2, 3] - float(terrain.field.height_at(np.array(T[0, 3]), np.array(T[1, 3])))
            assert 50.0 <= agl <= 300.0, (split, agl)
            tilt = math.degrees(math.acos(-R[2, 2]))
            assert tilt <= 45.0 + 1e-6
            assert abs(T[0, 3]) <= half and abs(T[1, 3]) <= half
        agls = [T[2, 3] - float(terrain.field.height_at(np.array(T[0, 3]), np.array(T[1, 3]))) for T in poses]
        assert max(agls) - min(agls) > 80.0, f'{split}: altitude barely varies'


def test_trajectories_are_smooth_and_train_test_differ(terrain: aerial.Terrain) -> None:
    half = CFG.flight_area_fraction * CFG.extent_m / 2
    lawnmower = replace(CFG, train_sampling='lawnmower')  # smoothness is the flights' property, not the LHS views'
    plans = {s: aerial.flight_plan(s, n, lawnmower, half, 0) for s, n in (('train', 200), ('val', 60), ('test', 100))}
    for plan in plans.values():
        step = np.linalg.norm(np.diff(plan.xy_m, axis=0), axis=1)
        assert step.max() < 4 * np.median(step), f'{plan.split}: jumpy trajectory'
        assert np.abs(np.diff(plan.yaw_rad)).max() < math.radians(30), f'{plan.split}: yaw jumps'
    assert len({p.kind for p in plans.values()}) == 3

    def centres(plan: aerial.FlightPlan) -> np.ndarray:
        return np.column_stack([plan.xy_m, plan.agl_m])

    train, test = centres(plans['train']), centres(plans['test'])
    nearest = np.linalg.norm(test[:, None] - train[None], axis=2).min(axis=1)
    assert np.median(nearest) > 20.0
    assert nearest.min() > 1.0


def test_cli_user_orthophoto_elevation_and_enu_geo(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dem = cv2.resize(rng.standard_normal((6, 6)).astype(np.float32), (200, 200), interpolation=cv2.INTER_CUBIC) * 15 + 40
    np.save(tmp_path / 'dem.npy', dem)
    ortho = cv2.resize(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8), (400, 400), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(tmp_path / 'ortho.png'), ortho)
    (tmp_path / 'geo.yaml').write_text(yaml.safe_dump({'enu_origin': [47.37, 8.54, 420.0]}))
    out = tmp_path / 'w'
    rc = cli.main(['aerial', '--out', str(out), '--seed', '1', '--frames', '3', '--size', '40x32',
                   '--orthophoto', str(tmp_path / 'ortho.png'), '--elevation', str(tmp_path / 'dem.npy'),
                   '--geo-yaml', str(tmp_path / 'geo.yaml'), '--dem-spacing', '5'])
    assert rc == 0
    meta = yaml.safe_load((out / 'world.yaml').read_text())
    assert meta['texture']['source']['kind'] == 'user' and meta['terrain']['source']['kind'] == 'user'
    assert meta['terrain']['dem_spacing_m'] == 5.0
    assert yaml.safe_load((out / 'geo.yaml').read_text()) == {'enu_origin': [47.37, 8.54, 420.0]}
    ds = SceneCoordinateDataset(out, 'train')
    assert len(ds) == 3 and ds[0].rgb_HW3.shape == (32, 40, 3)
    # The user's grid is stored back unchanged (row 0 = north).
    assert np.allclose(np.load(out / 'terrain' / 'elevation.npy'), dem)
    s = ds[0]
    X = s.coords_3HW.reshape(3, -1).T.astype(np.float64)
    field = _load_field(out)
    assert np.abs(X[:, 2] - field.height_at(X[:, 0], X[:, 1])).max() < 2e-3
    # North-up: a point in the northern half of the user's grid is at positive scene y.
    assert field.height_at(np.array(2.5), np.array(397.5)) == pytest.approx(float(dem[20, 100]), abs=1e-4)


def test_cli_rejects_aerial_flags_for_other_worlds_and_bad_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(['indoor', '--out', str(tmp_path / 'x'), '--orthophoto', 'o.png']) == 2
    with pytest.raises(SystemExit):
        cli.main(['aerial', '--out', str(tmp_path / 'y'), '--size', '320by240'])
    assert 'WxH' in capsys.readouterr().err


def test_bad_user_inputs_are_reported(tmp_path: Path) -> None:
    np.save(tmp_path / 'dem.npy', np.zeros(10))
    with pytest.raises(aerial.AerialWorldError, match='dem.npy'):
        aerial.generate(tmp_path / 'o1', elevation=tmp_path / 'dem.npy', config=CFG, frames=2, size=SIZE)
    (tmp_path / 'geo.yaml').write_text(yaml.safe_dump({'crs': 'EPSG:2056', 'offset': [1.0, 2.0]}))
    with pytest.raises(aerial.AerialWorldError, match='geo-reference'):
        aerial.generate(tmp_path / 'o2', geo=tmp_path / 'geo.yaml', config=CFG, frames=2, size=SIZE)
    (tmp_path / 'o3').mkdir()
    (tmp_path / 'o3' / 'keep.txt').write_text('x')
    with pytest.raises(aerial.AerialWorldError, match='not empty'):
        aerial.generate(tmp_path / 'o3', config=CFG, frames=2, size=SIZE)


def test_pixel_rays_have_unit_z_and_pass_through_pixels() -> None:
    K = np.array([[100.0, 0.0, 40.0], [0.0, 90.0, 30.0], [0.0, 0.0, 1.0]])
    rays = pixel_rays_camera(K, 80, 60)
    assert np.all(rays[:, 2] == 1.0)
    uv = (rays @ K.T)[:, :2]
    u, v = np.meshgrid(np.arange(80), np.arange(60))
    assert np.allclose(uv, np.stack([u.ravel(), v.ravel()], 1), atol=1e-12)


def test_with_train_frames_scales_val_and_test() -> None:
    cfg = aerial.AerialWorldConfig().with_train_frames(40)
    assert (cfg.frames_train, cfg.frames_val, cfg.frames_test) == (40, 6, 10)
    with pytest.raises(aerial.AerialWorldError):
        replace(aerial.AerialWorldConfig(), tilt_max_deg=85.0)


def test_procedural_texture_when_photos_are_missing(tmp_path: Path) -> None:
    out = aerial.generate(tmp_path / 'w', seed=4, frames=2, size=(40, 30), config=CFG, write_bag=False,
                          photo_dir=tmp_path / 'no_photos_here')
    source = yaml.safe_load((out / 'world.yaml').read_text())['texture']['source']
    assert source['kind'] == 'procedural' and 'no_photos_here' in source['reason']
    ortho = cv2.imread(str(out / 'terrain' / 'orthophoto.jpg'))
    assert ortho.shape == (512, 512, 3) and ortho.std() > 5.0  # textured, not flat
