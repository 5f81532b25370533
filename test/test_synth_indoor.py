"""Synthetic indoor world: exact ground truth (room labels, poses, depth, scene coordinates),
the box ray caster, textures, determinism, train/test trajectories, evaluation bag.
Tiny sizes (64x48, a handful of frames)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from vizloc_ros.eval_bag import read_evaluation_bag
from vizloc_ros.geodesy import LocalENU
from vizloc_ros.types import CameraIntrinsics
from vizloc_training.datasets.rooms import RoomsDataset
from vizloc_training.datasets.scene_coordinates import SceneCoordinateDataset
from vizloc_training.synth import indoor
from vizloc_training.datasets.rooms import RoomsDatasetError
from vizloc_training.synth.boxworld import Box, BoxWorld, GroundPlane, camera_pose
from vizloc_training.synth.textures import TextureSource, procedural_texture

SIZE = (64, 48)
FRAMES = 14  # train; val/test get 3 each


@pytest.fixture(scope='module')
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return indoor.generate(tmp_path_factory.mktemp('indoor') / 'w', seed=5, frames=FRAMES, size=SIZE)


def _frames(root: Path, split: str) -> list[tuple[str, str, np.ndarray]]:
    """(room label, stem, T_world_camera) of every Rooms-layout image of a split."""
    out = []
    for png in sorted((root / split).glob('*/*.jpg')):
        T = np.loadtxt(root / 'scene' / split / 'poses' / f'{png.stem}.txt')
        out.append((png.parent.name, png.stem, T))
    return out


def test_layout_and_self_description(world: Path) -> None:
    meta = yaml.safe_load((world / 'world.yaml').read_text())
    assert meta['generator'] == 'vizloc_training.synth.indoor' and meta['seed'] == 5
    assert meta['version'] == indoor.GENERATOR_VERSION
    assert meta['textures']['source'] in ('photos', 'procedural')
    assert len(meta['rooms']) >= 4
    rooms = indoor.load_rooms_yaml(world / 'rooms.yaml')
    assert sorted(rooms) == sorted(meta['rooms'])
    for split, n in (('train', FRAMES), ('val', 3), ('test', 3)):
        assert meta['splits'][split]['frames'] == n
        assert len(list((world / split).glob('*/*.jpg'))) == n
        for sub, ext in (('rgb', 'jpg'), ('poses', 'txt'), ('calibration', 'txt'), ('depth', 'png'), ('init', 'npy')):
            assert len(list((world / 'scene' / split / sub).glob(f'*.{ext}'))) == n, (split, sub)
    geo = yaml.safe_load((world / 'scene' / 'geo.yaml').read_text())
    assert geo == {'enu_origin': meta['enu_origin']}
    assert (world / 'eval_bag' / 'metadata.yaml').is_file()


@pytest.mark.parametrize('split', ['train', 'val', 'test'])
def test_room_labels_match_the_floor_plan(world: Path, split: str) -> None:
    rooms = indoor.load_rooms_yaml(world / 'rooms.yaml')
    frames = _frames(world, split)
    assert frames
    for label, stem, T in frames:
        assert indoor.room_at(rooms, T[0, 3], T[1, 3]) == label, stem
        # the Rooms image and the scene image are the same frame
        assert (world / split / label / f'{stem}.jpg').read_bytes() == (world / 'scene' / split / 'rgb' / f'{stem}.jpg').read_bytes()


def test_camera_is_carried_at_head_height_and_never_inside_a_box(world: Path) -> None:
    cfg = indoor.IndoorWorldConfig(size=SIZE)
    plan = indoor.build_floor_plan(cfg, np.random.default_rng([5, 11]), TextureSource.load())
    for split in ('train', 'val', 'test'):
        for _, stem, T in _frames(world, split):
            x, y, z = T[:3, 3]
            assert 1.4 < z < 1.6, stem
            for box in plan.world.boxes:
                inside = all(lo - 0.05 <= c <= hi + 0.05 for lo, c, hi in zip(box.min_xyz, (x, y, z), box.max_xyz))
                assert not inside, (stem, box.tag)
            # optical frame: y axis points (mostly) down, rotation is proper
            assert T[2, 1] < -0.8 and np.isclose(np.linalg.det(T[:3, :3]), 1.0)


@pytest.mark.parametrize('split', ['train', 'test'])
def test_scene_coordinates_reproject_and_agree_with_depth(world: Path, split: str) -> None:
    ds = SceneCoordinateDataset(world / 'scene', split)
    for k in range(len(ds)):
        s = ds[k]
        coords = s.coords_3HW.reshape(3, -1).T.astype(np.float64)
        h, w = s.coords_3HW.shape[1:]
        stride = s.coords_stride_px
        assert stride == 8
        v, u = np.mgrid[0:h, 0:w]
        u_px, v_px = (u * stride + stride // 2).ravel(), (v * stride + stride // 2).ravel()
        valid = np.any(coords != 0, axis=1)
        assert valid.all()  # indoors every ray hits a wall, floor or ceiling
        T = s.T_world_camera
        X_cam = (coords - T[:3, 3]) @ T[:3, :3]
        uv = X_cam[:, :2] / X_cam[:, 2:3] * [s.K[0, 0], s.K[1, 1]] + s.K[:2, 2]
        np.testing.assert_allclose(uv[:, 0], u_px, atol=0.02)
        np.testing.assert_allclose(uv[:, 1], v_px, atol=0.02)
        depth = s.depth_HW[v_px, u_px]
        np.testing.assert_allclose(X_cam[:, 2], depth, atol=1.5e-3)  # depth PNG is in millimetres


def _single_wall_world() -> BoxWorld:
    tex = [np.full((8, 8, 3), 100, np.uint8), np.full((8, 8, 3), 200, np.uint8)]
    return BoxWorld([Box((5.0, -50.0, -50.0), (6.0, 50.0, 50.0), (0, 1, 1, 1, 1, 1), tile_m=1.0, tag='wall')], tex)


def test_ray_caster_depth_of_a_wall_is_exact() -> None:
    cam = CameraIntrinsics.from_fov(90.0, 40, 30)
    T = camera_pose((0.0, 0.0, 1.0), yaw_rad=0.0)  # looking along +x at the wall x = 5
    r = _single_wall_world().render(cam, T)
    np.testing.assert_allclose(r.depth_HW, 5.0, atol=1e-5)
    np.testing.assert_allclose(r.xyz_world_HW3[..., 0], 5.0, atol=1e-9)
    assert (r.face_HW == 0).all() and (r.box_HW == 0).all()  # the -x face of box 0
    # x in the world = z in the camera; the hit points spread left/right (y) and up/down (z)
    assert r.xyz_world_HW3[15, 0, 1] > 0 > r.xyz_world_HW3[15, -1, 1]  # image left = +y (north) when facing east
    assert r.xyz_world_HW3[0, 20, 2] > 1.0 > r.xyz_world_HW3[-1, 20, 2]
    # looking away: nothing is hit, sky everywhere
    r_back = _single_wall_world().render(cam, camera_pose((0.0, 0.0, 1.0), yaw_rad=np.pi))
    assert not r_back.valid_HW.any() and (r_back.depth_HW == 0).all()


def test_ray_caster_hits_lie_on_box_faces_and_the_nearest_one_wins() -> None:
    cfg = indoor.IndoorWorldConfig(size=(48, 36))
    plan = indoor.build_floor_plan(cfg, np.random.default_rng(9), TextureSource.load(allow_photos=False))
    cam = cfg.camera()
    rng = np.random.default_rng(1)
    x0, y0, x1, y1 = plan.rects[0]
    lo = np.array([plan.world.boxes[b].min_xyz for b in range(len(plan.world.boxes))])
    hi = np.array([plan.world.boxes[b].max_xyz for b in range(len(plan.world.boxes))])
    for _ in range(3):
        pos = (rng.uniform(x0 + 1.2, x1 - 1.2), rng.uniform(y0 + 1.2, y1 - 1.2), 1.5)
        T = camera_pose(pos, rng.uniform(-np.pi, np.pi), rng.uniform(-0.3, 0.3), rng.uniform(-0.1, 0.1))
        r = plan.world.render(cam, T)
        assert r.valid_HW.all()
        X = r.xyz_world_HW3.reshape(-1, 3)
        ids = r.box_HW.ravel()
        faces = r.face_HW.ravel().astype(int)
        axis, side = faces // 2, faces % 2
        face_coord = np.where(side == 1, hi[ids, axis], lo[ids, axis])
        np.testing.assert_allclose(X[np.arange(len(X)), axis], face_coord, atol=1e-6)
        assert np.all((X >= lo[ids] - 1e-6) & (X <= hi[ids] + 1e-6))
        # brute force: no box is hit before the reported one along any ray
        d = (X - T[:3, 3]) / r.depth_HW.reshape(-1, 1)
        with np.errstate(divide='ignore', invalid='ignore'):
            t1 = (lo[None] - T[:3, 3]) / d[:, None]
            t2 = (hi[None] - T[:3, 3]) / d[:, None]
        t_near = np.nanmax(np.minimum(t1, t2), axis=2)
        t_far = np.nanmin(np.maximum(t1, t2), axis=2)
        hit = (t_near <= t_far) & (t_near > 1e-3)
        t_best = np.where(hit, t_near, np.inf).min(axis=1)
        np.testing.assert_allclose(t_best, r.depth_HW.ravel(), rtol=1e-6)


def test_ground_plane_depth() -> None:
    cam = CameraIntrinsics.from_fov(60.0, 32, 24)
    world = BoxWorld([], [np.full((4, 4, 3), 90, np.uint8)], ground=GroundPlane(texture=0, tile_m=10.0))
    T = camera_pose((0.0, 0.0, 2.0), yaw_rad=0.3, pitch_rad=-0.4)
    r = world.render(cam, T)
    assert r.valid_HW[-1].all() and not r.valid_HW[0].any()
    np.testing.assert_allclose(r.xyz_world_HW3[r.valid_HW][:, 2], 0.0, atol=1e-9)


def test_floor_plan_doors_connect_every_room() -> None:
    cfg = indoor.IndoorWorldConfig()
    plan = indoor.build_floor_plan(cfg, np.random.default_rng(0), TextureSource.load(allow_photos=False))
    assert len(plan.labels) >= 4
    reached, frontier = {0}, [0]
    while frontier:
        r = frontier.pop()
        for d in plan.doors:
            for a, b in ((d.room_a, d.room_b), (d.room_b, d.room_a)):
                if a == r and b not in reached:
                    reached.add(b)
                    frontier.append(b)
    assert reached == set(range(len(plan.labels)))
    # door openings are free: a ray through the door centre at 1 m height crosses no wall
    cam = CameraIntrinsics.from_fov(10.0, 9, 9)
    for d in plan.doors:
        c = np.array([*d.centre_xy, 1.0])
        start = c - 1.0 * np.array([*d.normal_xy, 0.0])
        yaw = np.arctan2(d.normal_xy[1], d.normal_xy[0])
        r = plan.world.render(cam, camera_pose(start, yaw))
        assert r.depth_HW[4, 4] > 1.5, d


def test_textures_photo_and_procedural_are_deterministic(tmp_path: Path) -> None:
    proc = TextureSource.load(allow_photos=False, size_px=32)
    assert proc.describe()['source'] == 'procedural'
    a = [proc.make(np.random.default_rng(4), k) for k in ('wall', 'grass', 'facade')]
    b = [proc.make(np.random.default_rng(4), k) for k in ('wall', 'grass', 'facade')]
    assert all(np.array_equal(x, y) and x.shape == (32, 32, 3) and x.dtype == np.uint8 for x, y in zip(a, b))
    assert not np.array_equal(proc.make(np.random.default_rng(4), 'wall'), proc.make(np.random.default_rng(5), 'wall'))
    # a photo folder of our own (the opencv-doc folder may be absent on the test machine)
    photo = (np.random.default_rng(0).uniform(0, 255, (100, 120, 3))).astype(np.uint8)
    cv2.imwrite(str(tmp_path / 'building.jpg'), photo)
    src = TextureSource.load(tmp_path, size_px=32)
    assert src.describe()['source'] == 'photos' and src.photo_names == ('building.jpg',)
    t1 = src.make(np.random.default_rng(1), 'wall')
    assert np.array_equal(t1, src.make(np.random.default_rng(1), 'wall'))
    assert not np.array_equal(t1, src.make(np.random.default_rng(2), 'wall'))  # crops/colours differ
    assert TextureSource.load(tmp_path / 'missing').describe()['source'] == 'procedural'
    with pytest.raises(ValueError, match='unknown texture kind'):
        src.make(np.random.default_rng(0), 'lava')
    assert procedural_texture(np.full(16, 0.5), 'wall', 16).shape == (16, 16, 3)


def test_same_seed_same_world_other_seed_other_world(world: Path, tmp_path: Path) -> None:
    again = indoor.generate(tmp_path / 'again', seed=5, frames=FRAMES, size=SIZE, write_bag=False)
    for split in ('train', 'test'):
        files = sorted(p.relative_to(world) for p in (world / 'scene' / split).rglob('*') if p.is_file())
        assert files
        for rel in files:
            assert (again / rel).read_bytes() == (world / rel).read_bytes(), rel
    other = indoor.generate(tmp_path / 'other', seed=6, frames=4, size=SIZE, write_bag=False)
    a = (world / 'scene' / 'train' / 'rgb' / 'train_00000.jpg').read_bytes()
    assert (other / 'scene' / 'train' / 'rgb' / 'train_00000.jpg').read_bytes() != a
    with pytest.raises(indoor.IndoorWorldError, match='not empty'):
        indoor.generate(again, seed=5, frames=2, size=SIZE)


def test_train_val_test_trajectories_differ(world: Path) -> None:
    pos = {s: np.array([T[:3, 3] for _, _, T in _frames(world, s)]) for s in ('train', 'val', 'test')}
    for a, b in (('train', 'test'), ('train', 'val'), ('val', 'test')):
        dist = np.linalg.norm(pos[a][:, None, :2] - pos[b][None, :, :2], axis=2)
        assert dist.min() > 1e-3, (a, b)


def test_walk_visits_rooms_evenly() -> None:
    cfg = indoor.IndoorWorldConfig()
    plan = indoor.build_floor_plan(cfg, np.random.default_rng(0), TextureSource.load(allow_photos=False))
    tour = indoor.walk(plan, 600, np.random.default_rng(1), cfg)
    counts = {label: sum(f.room == label for f in tour) for label in plan.labels}
    assert min(counts.values()) >= 0.5 * 600 / len(plan.labels), counts
    steps = np.linalg.norm(np.diff([f.T_world_camera[:2, 3] for f in tour], axis=0), axis=1)
    assert steps.max() < 1.0  # smooth walk, no jumps


def test_eval_bag_carries_room_pose_and_fix(world: Path) -> None:
    meta = yaml.safe_load((world / 'world.yaml').read_text())
    enu = LocalENU(*meta['enu_origin'])
    expected = {stem: (label, T) for label, stem, T in _frames(world, 'test')}
    samples = list(read_evaluation_bag(world / 'eval_bag'))
    assert len(samples) == len(expected) == 3
    for k, s in enumerate(samples):
        label, T = expected[f'test_{k:05d}']
        assert s.room == label
        np.testing.assert_allclose(s.T_map_camera, T, atol=1e-6)
        e, n, u = enu.to_enu(*s.fix_lla)
        np.testing.assert_allclose([float(e), float(n), float(u)], T[:3, 3], atol=1e-3)
        assert s.camera.width == SIZE[0] and s.rgb_HW3.shape == (SIZE[1], SIZE[0], 3)
        png = cv2.cvtColor(cv2.imread(str(world / 'test' / label / f'test_{k:05d}.jpg')), cv2.COLOR_BGR2RGB)
        assert np.array_equal(s.rgb_HW3, png)


def test_rooms_reader_reads_the_generated_world(world: Path) -> None:
    meta = yaml.safe_load((world / 'world.yaml').read_text())
    ds = RoomsDataset(world, 'train')
    assert ds.labels == tuple(sorted(meta['rooms']))
    assert len(ds) == FRAMES
    rgb, label_index = ds[0]
    assert rgb.shape == (SIZE[1], SIZE[0], 3) and ds.samples[0].label == ds.labels[label_index]


def test_config_is_validated(tmp_path: Path) -> None:
    with pytest.raises(indoor.IndoorWorldError):
        indoor.IndoorWorldConfig(grid_cols=1, grid_rows=1)
    with pytest.raises(indoor.IndoorWorldError):
        replace(indoor.IndoorWorldConfig(), room_size_m=(2.0, 3.0))
    with pytest.raises(indoor.IndoorWorldError):
        indoor.IndoorWorldConfig().with_train_frames(0)
    bad = tmp_path / 'rooms.yaml'
    bad.write_text('rooms: {a: {polygon: [[0, 0], [1, 1]]}}')
    with pytest.raises(indoor.IndoorWorldError, match="room 'a'"):
        indoor.load_rooms_yaml(bad)


def test_cli_dispatches_to_indoor(tmp_path: Path) -> None:
    from vizloc_training.synth import cli

    out = tmp_path / 'cli'
    assert cli.main(['indoor', '--out', str(out), '--frames', '3', '--size', '32x24', '--seed', '1']) == 0
    assert len(list((out / 'train').glob('*/*.jpg'))) == 3 and (out / 'eval_bag').is_dir()


def test_own_room_share_counts_what_the_camera_sees(world: Path, tmp_path: Path) -> None:
    shares = indoor.own_room_share(world, 'test')
    assert len(shares) == len(list((world / 'test').glob('*/*.jpg')))
    assert [s[0] for s in shares] == sorted(s[0] for s in shares)
    assert all(0.0 <= s[2] <= 1.0 for s in shares)
    # A 1 m walk-through of the same room mostly sees that room.
    assert np.median([s[2] for s in shares]) > 0.5
    # Relabel every frame as a room that does not exist: it sees none of it.
    fake = tmp_path / 'fake'
    (fake / 'test' / 'nowhere').mkdir(parents=True)
    (fake / 'scene').symlink_to(world / 'scene')
    (fake / 'rooms.yaml').symlink_to(world / 'rooms.yaml')
    for png in (world / 'test').glob('*/*.jpg'):
        (fake / 'test' / 'nowhere' / png.name).symlink_to(png)
    assert all(s[2] == 0.0 for s in indoor.own_room_share(fake, 'test'))
    with pytest.raises(RoomsDatasetError, match='does not exist'):
        indoor.own_room_share(fake, 'val')
