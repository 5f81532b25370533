"""Reader of the DSAC*/CrossLoc scene-coordinate layout: generated data and hand-made malformed inputs."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import transforms3d
import yaml

from vizloc_ros.geodesy import GeoReference
from vizloc_training.datasets.scene_coordinates import (
    SceneCoordinateDataset,
    SceneCoordinateDatasetError,
    coords_pixel_grid,
)
from vizloc_training.synth import aerial

H, W = 16, 24


def _pose(k: int) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = transforms3d.euler.euler2mat(0.1 * k, -0.2, 0.3 + k)
    T[:3, 3] = [10.0 * k, -5.0, 100.0 + k]
    return T


def make_dataset(root: Path, n: int = 3, split: str = 'train', *, init_stride: int = 8, geo: bool = True) -> Path:
    d = root / split
    for sub in ('rgb', 'poses', 'calibration', 'depth', 'init'):
        (d / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        stem = f'img_{k:03d}'
        cv2.imwrite(str(d / 'rgb' / f'{stem}.png'), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        np.savetxt(d / 'poses' / f'{stem}.txt', _pose(k))
        (d / 'calibration' / f'{stem}.txt').write_text('30.5\n')
        np.save(d / 'depth' / f'{stem}.npy', rng.uniform(1, 50, (H, W)).astype(np.float32))
        hs, ws = (H, W) if init_stride == 1 else (H // init_stride, W // init_stride)
        np.save(d / 'init' / f'{stem}.npy', rng.normal(size=(3, hs, ws)).astype(np.float32))
    if geo:
        (root / 'geo.yaml').write_text(yaml.safe_dump({'crs': 'EPSG:2056', 'offset': [2600000.0, 1200000.0, 400.0]}))
    return root


def test_reads_hand_made_dataset(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    ds = SceneCoordinateDataset(root, 'train')
    assert len(ds) == 3 and ds.names == ['img_000', 'img_001', 'img_002']
    s = ds[1]
    assert s.name == 'img_001'
    assert s.rgb_HW3.shape == (H, W, 3) and s.rgb_HW3.dtype == np.uint8
    assert np.allclose(s.T_world_camera, _pose(1))
    assert np.allclose(s.K, [[30.5, 0, W / 2], [0, 30.5, H / 2], [0, 0, 1]])
    assert s.depth_HW.shape == (H, W) and s.depth_HW.dtype == np.float32
    assert s.coords_3HW.shape == (3, H // 8, W // 8) and s.coords_stride_px == 8
    assert isinstance(ds.geo, GeoReference)
    assert ds[-1].name == 'img_002'
    with pytest.raises(IndexError):
        ds[3]


def test_full_resolution_init_png_depth_and_3x3_calibration(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, n=2, init_stride=1)
    d = root / 'train'
    K = np.array([[31.0, 0.0, 11.5], [0.0, 32.0, 7.5], [0.0, 0.0, 1.0]])
    np.savetxt(d / 'calibration' / 'img_000.txt', K)
    for p in (d / 'depth').glob('*.npy'):
        p.unlink()
    depth_mm = np.full((H, W), 2500, np.uint16)
    depth_mm[0, 0] = 0
    for stem in ('img_000', 'img_001'):
        cv2.imwrite(str(d / 'depth' / f'{stem}.png'), depth_mm)
    s = SceneCoordinateDataset(root, 'train')[0]
    assert np.allclose(s.K, K)
    assert s.coords_stride_px == 1 and s.coords_3HW.shape == (3, H, W)
    assert s.depth_HW[0, 0] == 0.0 and s.depth_HW[1, 1] == pytest.approx(2.5)


def test_coords_pixel_grid_follows_dsac_convention() -> None:
    grid = coords_pixel_grid(8, 2, 3)
    assert grid[:, 0, 0].tolist() == [4.0, 4.0] and grid[:, 1, 2].tolist() == [20.0, 12.0]
    assert coords_pixel_grid(1, 2, 2)[:, 1, 1].tolist() == [1.0, 1.0]


def test_reads_generated_aerial_world(tmp_path: Path) -> None:
    root = aerial.generate(tmp_path / 'w', seed=2, frames=3, size=(48, 32),
                           config=aerial.AerialWorldConfig(texture_px=256), write_bag=False)
    for split in ('train', 'val', 'test'):
        ds = SceneCoordinateDataset(root, split)
        assert len(ds) == yaml.safe_load((root / 'world.yaml').read_text())['splits'][split]['frames']
        s = ds[0]
        assert s.coords_3HW.shape == (3, 4, 6) and s.coords_stride_px == 8
        assert np.allclose(s.T_world_camera, np.loadtxt(root / split / 'poses' / f'{s.name}.txt'))
        assert s.K[0, 0] == pytest.approx((48 / 2) / math.tan(math.radians(30)))
        # The centre pixel's depth is the distance along the optical axis to the scene point there.
        X = s.coords_3HW[:, 2, 3].astype(np.float64)  # cell (2, 3) -> pixel (u, v) = (28, 20)
        z_cam = (X - s.T_world_camera[:3, 3]) @ s.T_world_camera[:3, 2]
        assert s.depth_HW[20, 28] == pytest.approx(z_cam, rel=1e-5)
    assert ds.geo.to_mapping()['crs'] == 'EPSG:2056'


# ------------------------------------------------------------------------------- malformed inputs


def test_missing_pose_file_names_it(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    (root / 'train' / 'poses' / 'img_001.txt').unlink()
    with pytest.raises(SceneCoordinateDatasetError, match=r'poses/img_001\.txt: missing for image img_001\.png'):
        SceneCoordinateDataset(root, 'train')


def test_non_4x4_pose_names_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    np.savetxt(root / 'train' / 'poses' / 'img_002.txt', np.eye(3))
    with pytest.raises(SceneCoordinateDatasetError, match=r'img_002\.txt: pose must be a 4x4 matrix'):
        SceneCoordinateDataset(root, 'train')


def test_non_rigid_pose_names_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    T = _pose(0)
    T[:3, :3] *= 2.0
    np.savetxt(root / 'train' / 'poses' / 'img_000.txt', T)
    with pytest.raises(SceneCoordinateDatasetError, match=r'img_000\.txt: pose rotation is not a proper rotation'):
        SceneCoordinateDataset(root, 'train')


@pytest.mark.parametrize('text, message', [
    ('abc\n', 'cannot parse calibration'),
    ('-3.0\n', 'focal length must be > 0'),
    ('30 31\n', 'one focal length or a 3x3 K'),
    ('nan\n', 'non-finite'),
])
def test_bad_calibration_names_file(tmp_path: Path, text: str, message: str) -> None:
    root = make_dataset(tmp_path)
    (root / 'train' / 'calibration' / 'img_001.txt').write_text(text)
    with pytest.raises(SceneCoordinateDatasetError, match=rf'calibration/img_001\.txt: .*{message}'):
        SceneCoordinateDataset(root, 'train')


def test_missing_geo_yaml(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, geo=False)
    with pytest.raises(SceneCoordinateDatasetError, match=r'geo\.yaml: geo-reference not found'):
        SceneCoordinateDataset(root, 'train')
    assert SceneCoordinateDataset(root, 'train', require_geo=False).geo is None


def test_invalid_geo_yaml_names_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    (root / 'geo.yaml').write_text(yaml.safe_dump({'crs': 'EPSG:2056', 'origin': [1, 2, 3]}))
    with pytest.raises(SceneCoordinateDatasetError, match=r'geo\.yaml: invalid geo-reference'):
        SceneCoordinateDataset(root, 'train')


def test_mismatched_counts_extra_pose(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    np.savetxt(root / 'train' / 'poses' / 'img_999.txt', np.eye(4))
    with pytest.raises(SceneCoordinateDatasetError, match=r'img_999\.txt: no image for this file .*4 files vs 3 images'):
        SceneCoordinateDataset(root, 'train')


def test_partial_depth_folder_names_missing_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    (root / 'train' / 'depth' / 'img_002.npy').unlink()
    with pytest.raises(SceneCoordinateDatasetError, match=r'depth/img_002\.npy: missing'):
        SceneCoordinateDataset(root, 'train')


def test_wrong_init_shape_names_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    np.save(root / 'train' / 'init' / 'img_000.npy', np.zeros((3, 5, 5), np.float32))
    ds = SceneCoordinateDataset(root, 'train')
    with pytest.raises(SceneCoordinateDatasetError, match=r'init/img_000\.npy: scene coordinates 5x5 match neither'):
        ds[0]
    np.save(root / 'train' / 'init' / 'img_001.npy', np.zeros((2, H, W), np.float32))
    with pytest.raises(SceneCoordinateDatasetError, match=r'init/img_001\.npy: scene coordinates must be 3 x h x w'):
        ds[1]


def test_depth_shape_mismatch_names_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    np.save(root / 'train' / 'depth' / 'img_000.npy', np.zeros((H, W + 1), np.float32))
    with pytest.raises(SceneCoordinateDatasetError, match=r'depth/img_000\.npy: depth shape'):
        SceneCoordinateDataset(root, 'train')[0]
    # Reading without depth does not touch the file.
    assert SceneCoordinateDataset(root, 'train', load_depth=False)[0].depth_HW is None


def test_unreadable_image_names_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    (root / 'train' / 'rgb' / 'img_000.png').write_bytes(b'not a png')
    with pytest.raises(SceneCoordinateDatasetError, match=r'rgb/img_000\.png: cannot read image'):
        SceneCoordinateDataset(root, 'train')[0]


def test_missing_split_or_images(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    with pytest.raises(SceneCoordinateDatasetError, match=r'test: split folder not found'):
        SceneCoordinateDataset(root, 'test')
    (root / 'val' / 'rgb').mkdir(parents=True)
    with pytest.raises(SceneCoordinateDatasetError, match=r'val/rgb: no images'):
        SceneCoordinateDataset(root, 'val')
    (root / 'val' / 'rgb').rmdir()
    with pytest.raises(SceneCoordinateDatasetError, match=r'val/rgb: image folder not found'):
        SceneCoordinateDataset(root, 'val')
