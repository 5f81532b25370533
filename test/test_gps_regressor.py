"""GPS regressor (seed 001): losses, train-split-only frame, tiny training, export, bundle, plugin, ensemble, CLI.

Tiny datasets are generated here in the exact GPS format (``images/*.png`` + ``gt.csv`` with
``image,lat,lon,alt,split``): 40x32 images whose colour encodes the position, so that even two
epochs of the ``tiny`` preset learn something measurable.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vizloc_ros.geodesy import LocalENU
from vizloc_ros.localizer import ConfigError, LocalizerConfig, LocalizerContext
from vizloc_ros.plugin_manager import load_registry
from vizloc_ros.types import Frame
from vizloc_training.gps_regressor import losses
from vizloc_training.gps_regressor.data import TargetFrame, load_gps_data
from vizloc_training.gps_regressor.robustness import VARIANTS, corrupt_batch
from vizloc_training.gps_regressor.train import PRESETS, train
from vizloc_training.models.frozen import FrozenFeatures
from vizloc_training.train.images import augment_batch, imagenet_normalise, to_unit
from vizloc_training.metrics import geo as geo_metrics
from vizloc_training.train.config import TrainArgs, TrainConfigError
from vizloc_plugins.gps_regressor import GPSRegressorOptions, combine_gaussians

ORIGIN = (31.2620, 34.8041, 280.0)
SIZE = (40, 32)  # width, height
#: Epochs of the module's tiny training run: enough steps (EPOCHS x 4 batches of 8) for the colour -> position
#: map to be learnt with margin on any CPU. Fine-tuning at 40x32 with batches of 8 is chaotic: 8 epochs left it
#: within 0.3 % of the centroid baseline on one machine, 30 at 0.86 x the baseline on another with one torch
#: thread (0.54 with two). At 60, five runs (seeds 0-3, one and two threads) ended at 0.32-0.53 x on the test
#: split (0.24-0.34 x on the training split), against the 0.8 x asserted below.
EPOCHS = 60


def make_gps_dataset(root: Path, *, n: int = 48, seed: int = 0, eval_shift_e_m: float = 0.0,
                     with_alt: bool = True) -> Path:
    """A GPS-format dataset over a 100 m x 100 m square; every 6th/6th+1 sample is val/test."""
    rng = np.random.default_rng(seed)
    enu = LocalENU(*ORIGIN)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        e, nn = rng.uniform(-50.0, 50.0, 2)
        split = {4: 'val', 5: 'test'}.get(i % 6, 'train')
        if split != 'train':
            e += eval_shift_e_m
        u = float(rng.uniform(-2.0, 2.0))
        lat, lon, alt = (float(v) for v in enu.to_geodetic(e, nn, u))
        w, h = SIZE
        xx, yy = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
        r = np.clip((e + 50.0) / 100.0 * 200 + 20 * xx, 0, 255)
        g = np.clip((nn + 50.0) / 100.0 * 200 + 20 * yy, 0, 255)
        b = np.full_like(r, 128.0) + rng.normal(0, 8, r.shape)
        rgb = np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)
        name = f'img_{i:03d}.png'
        cv2.imwrite(str(root / 'images' / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        rows.append({'image': name, 'lat': f'{lat:.9f}', 'lon': f'{lon:.9f}', 'alt': f'{alt:.3f}' if with_alt else '',
                     'split': split})
    with open(root / 'gt.csv', 'w', newline='') as fh:
        fields = ['image', 'lat', 'lon', 'alt', 'split'] if with_alt else ['image', 'lat', 'lon', 'split']
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    return root


def read_image(root: Path, name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(root / 'images' / name)), cv2.COLOR_BGR2RGB)


# -- losses ----------------------------------------------------------------------------------------------
def test_gaussian_nll_2d_matches_torch_references():
    g = torch.Generator().manual_seed(0)
    mu, target = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    log_var = torch.randn(16, 2, generator=g) * 0.5
    # rho = 0: two independent torch.nn.GaussianNLLLoss terms.
    ref = torch.nn.GaussianNLLLoss(full=True, reduction='none')(mu, target, log_var.exp()).sum(dim=1)
    ours = losses.gaussian_nll_2d(mu, log_var, torch.zeros(16), target)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # Correlated: the bivariate normal's log-density.
    rho = torch.rand(16, generator=g) * 1.6 - 0.8
    cov = losses.covariance_from_head(log_var, rho)
    ref = -torch.distributions.MultivariateNormal(mu, covariance_matrix=cov).log_prob(target)
    torch.testing.assert_close(losses.gaussian_nll_2d(mu, log_var, rho, target), ref, rtol=1e-4, atol=1e-4)


def test_haversine_loss_is_metric_distance_and_differentiable():
    g = torch.Generator().manual_seed(1)
    pred = (torch.rand(32, 2, generator=g) - 0.5) * 400.0
    true = (torch.rand(32, 2, generator=g) - 0.5) * 400.0
    pred.requires_grad_(True)
    dist = losses.haversine_loss_m(pred, true, ORIGIN[0], ORIGIN[1])
    # The tangent-plane mapping keeps distances to ~2e-5 relative over +-200 m (meridian convergence).
    torch.testing.assert_close(dist, torch.linalg.norm(pred - true, dim=1), rtol=5e-5, atol=1e-3)
    dist.sum().backward()
    assert torch.isfinite(pred.grad).all()
    # Zero distance: finite (zero) gradient thanks to the clamping.
    same = true.clone().requires_grad_(True)
    losses.haversine_loss_m(same, true, ORIGIN[0], ORIGIN[1]).sum().backward()
    assert torch.isfinite(same.grad).all()


def test_loss_modes_detach_mean_for_distance_losses():
    mean, std = torch.zeros(2), torch.full((2,), 30.0)
    mu = torch.zeros(4, 2, requires_grad=True)
    log_var = torch.zeros(4, 2, requires_grad=True)
    target = torch.full((4, 2), 2.0)
    for kind in losses.LOSSES:
        fn = losses.GPSLoss(kind, mean_en_m=mean, std_en_m=std, origin_lat_deg=ORIGIN[0], origin_lon_deg=ORIGIN[1])
        mu.grad = None
        log_var.grad = None
        fn(mu, log_var, torch.zeros(4), target).total.backward()
        assert mu.grad is not None and log_var.grad is not None and float(log_var.grad.abs().sum()) > 0
        if kind == 'haversine':  # d(dist/scale)/dmu = -(1,1)/sqrt(2) * std/scale / N per sample
            torch.testing.assert_close(mu.grad, torch.full((4, 2), -1.0 / math.sqrt(2) / 4), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match='unknown loss'):
        losses.GPSLoss('l1', mean_en_m=mean, std_en_m=std, origin_lat_deg=0.0, origin_lon_deg=0.0)


def test_nearest_train_distance_bound():
    from vizloc_training.gps_regressor.evaluate import nearest_train_distance

    train_en = np.array([[0.0, 0.0], [10.0, 0.0]])
    query = np.array([[0.0, 3.0], [10.0, -4.0], [30.0, 0.0], [5.0, 0.0]])  # 3, 4, 20, 5 m away
    bound = nearest_train_distance(query, train_en)
    assert bound['median_m'] == pytest.approx(4.5)
    assert bound['within_5m_pct'] == pytest.approx(75.0) and bound['within_10m_pct'] == pytest.approx(75.0)


# -- data ------------------------------------------------------------------------------------------------
def test_target_frame_uses_training_split_only(tmp_path):
    near = make_gps_dataset(tmp_path / 'near', n=36)
    far = make_gps_dataset(tmp_path / 'far', n=36, eval_shift_e_m=500.0)  # same train rows, val/test 500 m east
    a = load_gps_data(near, width=SIZE[0], height=SIZE[1])
    b = load_gps_data(far, width=SIZE[0], height=SIZE[1])
    assert a.frame == b.frame  # val/test positions do not influence the frame or the normalisation
    expected = TargetFrame.fit(a.splits['train'].lla_N3)
    assert a.frame == expected
    assert a.frame.origin_lat_deg == pytest.approx(a.splits['train'].lla_N3[:, 0].mean())
    z_train = a.targets_z('train')
    np.testing.assert_allclose(z_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z_train.std(axis=0), 1.0, atol=1e-5)
    # The shifted evaluation splits sit ~500 m / std east in normalised units.
    shift_z = b.targets_z('test')[:, 0].mean() - a.targets_z('test')[:, 0].mean()
    assert shift_z == pytest.approx(500.0 / a.frame.std_en_m[0], rel=0.01)
    assert len(a.splits['train']) == 24 and len(a.splits['val']) == 6 and len(a.splits['test']) == 6
    assert a.splits['train'].images_NHW3.shape == (24, SIZE[1], SIZE[0], 3)


def test_target_frame_without_altitude():
    lla = np.array([[31.0, 34.0, np.nan], [31.001, 34.001, np.nan], [31.0005, 34.002, np.nan]])
    frame = TargetFrame.fit(lla)
    assert not frame.altitude_known and frame.origin_alt_m == 0.0
    en = frame.to_en_m(lla)
    lat, lon = frame.to_lat_lon(en)
    np.testing.assert_allclose(lat, lla[:, 0], atol=1e-9)
    np.testing.assert_allclose(lon, lla[:, 1], atol=1e-9)
    again = TargetFrame.from_mapping(frame.to_mapping())
    assert again.origin_lat_deg == frame.origin_lat_deg and again.std_en_m == frame.std_en_m
    assert math.isnan(again.alt_std_m) and not again.altitude_known


def test_augmentation_and_corruptions():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 32, 40, generator=g)
    for level in ('none', 'light', 'strong'):
        y = augment_batch(x, level, g)
        assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.equal(augment_batch(x, 'strong', g), x)
    images = (np.random.default_rng(0).random((3, 32, 40, 3)) * 255).astype(np.uint8)
    for variant in VARIANTS:
        out = corrupt_batch(images, variant, seed=3)
        assert out.shape == images.shape and out.dtype == np.uint8
        assert not np.array_equal(out, images)
        np.testing.assert_array_equal(out, corrupt_batch(images, variant, seed=3))
    with pytest.raises(ValueError, match='unknown robustness variant'):
        corrupt_batch(images, 'fog')


# -- training, export, bundle, plugin ----------------------------------------------------------------------
@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> Path:
    return make_gps_dataset(tmp_path_factory.mktemp('gps') / 'data', n=48)


@pytest.fixture(scope='module')
def bundle(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('gps_bundle') / 'bundle'
    args = TrainArgs(type='gps_regressor', data=dataset, out=out, preset='tiny', epochs=EPOCHS, seed=0)
    return train(args)


def _localizer(bundles: list[Path], tmp_path: Path, **options):
    registry = load_registry().registry
    config = LocalizerConfig(name='gps', type='gps_regressor', bundle=str(bundles[0]), backend='onnxruntime')
    options = {'ensemble_bundles': [str(b) for b in bundles[1:]], **options}
    return registry.create(config, options, LocalizerContext(cache_dir=tmp_path))


def test_tiny_training_writes_a_self_describing_bundle(bundle, dataset):
    from vizloc_ros.bundle import load_bundle

    b = load_bundle(bundle, expected_type='gps_regressor')
    assert b.outputs == ('mean_en_m', 'cov_en_m2')
    test = b.metrics['test']
    for key in ('mean_m', 'median_m', 'p75_m', 'p90_m', 'p95_m', 'p99_m', 'max_m', 'within_5m_pct',
                'within_10m_pct', 'within_20m_pct', 'within_50m_pct', 'ellipse95_coverage_pct'):
        assert math.isfinite(test[key]), key
    assert test['median_m'] <= test['p75_m'] <= test['p90_m'] <= test['p95_m'] <= test['max_m']
    assert 0.0 <= b.metrics['test_to_nearest_train']['median_m'] < test['max_m'] + 100.0
    rob = b.metrics['robustness']
    assert set(f'{v}_degradation' for v in VARIANTS) <= set(rob) and rob['augmented_degradation'] > 0
    meta = b.metadata
    assert meta['geo']['enu_origin'][0] == pytest.approx(meta['target_frame']['origin_lat_deg'])
    assert meta['variance_scale'] > 0 and meta['altitude_known'] is True and meta['resize'] == 'stretch'
    assert meta['dataset']['sizes'] == {'train': 32, 'val': 8, 'test': 8}
    history = meta['history']
    assert [h['epoch'] for h in history] == list(range(1, EPOCHS + 1))
    assert all(math.isfinite(h['loss']) for h in history)
    # Learned something: clearly better than always predicting the training centroid (~38 m mean error
    # here). The position is a linear function of the colour, so a network that learnt it at all beats
    # the centroid by far more than the 20 % asked; one that learnt nothing lands at ~1.0x.
    truth = np.array([[float(r['lat']), float(r['lon'])] for r in csv.DictReader(open(dataset / 'gt.csv'))
                      if r['split'] == 'test'])
    centroid = np.array(meta['geo']['enu_origin'][:2])
    baseline = geo_metrics.haversine_m(truth[:, 0], truth[:, 1], centroid[0], centroid[1]).mean()
    assert test['mean_m'] < 0.8 * baseline, (test['mean_m'], baseline)
    # Checkpoints for --resume next to the bundle.
    assert sorted(p.name for p in (bundle.parent / 'bundle.work' / 'checkpoints').glob('*.pt'))[-1] == f'epoch_{EPOCHS:04d}.pt'


def test_plugin_from_registry_produces_geo_estimate(bundle, dataset, tmp_path):
    import onnxruntime as ort
    from vizloc_ros.bundle import load_bundle
    from vizloc_ros.geodesy import GeoReference

    localizer = _localizer([bundle], tmp_path, keyframes=False)  # the network's output, compared by hand below
    try:
        assert localizer.requires_camera_info is False
        assert 'onnxruntime' in localizer.backend_name
        rows = [r for r in csv.DictReader(open(dataset / 'gt.csv')) if r['split'] == 'test']
        image = read_image(dataset, rows[0]['image'])
        result = localizer.localize(Frame(rgb_HW3=image, stamp_ns=123, frame_id='camera'))
    finally:
        localizer.close()
    assert result.status == 'ok' and result.geo is not None
    geo = result.geo
    cov = geo.cov_enu_m2
    assert cov.shape == (3, 3)
    np.testing.assert_allclose(cov, cov.T, atol=1e-9)
    assert np.all(np.linalg.eigvalsh(cov) > 0)
    assert math.isfinite(geo.alt_m) and geo.alt_m == pytest.approx(ORIGIN[2], abs=3.0)
    assert cov[2, 2] >= 1.0  # altitude variance: training altitude spread, at least 1 m^2
    # Same numbers as running the bundle's ONNX model by hand and converting with pyproj.
    b = load_bundle(bundle)
    session = ort.InferenceSession(str(b.model_path), providers=['CPUExecutionProvider'])
    mean, cov2 = session.run(['mean_en_m', 'cov_en_m2'], {'image': image[None]})  # 40x32 = the input size
    ref = GeoReference.from_mapping(b.metadata['geo'])
    lat, lon, _ = ref.scene_to_wgs84(np.array([[mean[0, 0], mean[0, 1], 0.0]]))
    assert geo.lat_deg == pytest.approx(float(np.ravel(lat)[0]), abs=1e-9)
    assert geo.lon_deg == pytest.approx(float(np.ravel(lon)[0]), abs=1e-9)
    np.testing.assert_allclose(cov[:2, :2], cov2[0] * b.metadata['variance_scale'], rtol=1e-3, atol=1e-3)


def test_plugin_options_are_validated(bundle, tmp_path):
    with pytest.raises(ConfigError, match='unknown option'):
        _localizer([bundle], tmp_path, ensemble_size=2)
    with pytest.raises(ConfigError, match='variance_scale'):
        _localizer([bundle], tmp_path, variance_scale=-1.0)
    with pytest.raises(ConfigError, match='no such bundle'):
        _localizer([bundle, tmp_path / 'missing'], tmp_path)


def test_combine_gaussians_mixture_moments():
    means = np.array([[0.0, 0.0], [2.0, 0.0]])
    covs = np.stack([np.eye(2), 3.0 * np.eye(2)])
    mean, cov = combine_gaussians(means, covs)
    np.testing.assert_allclose(mean, [1.0, 0.0])
    # mean covariance 2 I plus the spread of the means (1 along east).
    np.testing.assert_allclose(cov, [[3.0, 0.0], [0.0, 2.0]])
    mean, cov = combine_gaussians(means, covs, weights_K=[3.0, 1.0])
    np.testing.assert_allclose(mean, [0.5, 0.0])
    # mean covariance 0.75 * 1 + 0.25 * 3 = 1.5; spread 0.75 * 0.5^2 + 0.25 * 1.5^2 = 0.75 along east.
    np.testing.assert_allclose(cov, [[1.5 + 0.75, 0.0], [0.0, 1.5]])
    # Agrees with the moments of a large sample from the mixture.
    rng = np.random.default_rng(0)
    k = rng.integers(0, 2, 200_000)
    sample = means[k] + rng.standard_normal((k.size, 2)) * np.sqrt(np.array([1.0, 3.0]))[k][:, None]
    mean, cov = combine_gaussians(means, covs)
    np.testing.assert_allclose(sample.mean(axis=0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(sample.T), cov, atol=0.05)
    with pytest.raises(ValueError):
        combine_gaussians(np.zeros((0, 2)), np.zeros((0, 2, 2)))


def test_ensemble_of_bundles_combines_members(bundle, dataset, tmp_path):
    # A 1 ms time budget: one step, then the run stops (and still exports a working bundle).
    second = train(TrainArgs(type='gps_regressor', data=dataset, out=tmp_path / 'second', preset='tiny', epochs=5,
                             seed=1, extra={'robustness': False, 'time_budget_s': 1e-3}))
    from vizloc_ros.bundle import load_bundle

    assert load_bundle(second).metrics['epochs_run'] == 1
    rows = [r for r in csv.DictReader(open(dataset / 'gt.csv')) if r['split'] == 'test']
    frame = Frame(rgb_HW3=read_image(dataset, rows[1]['image']), stamp_ns=1, frame_id='camera')
    singles = []
    for b in (bundle, second):
        loc = _localizer([b], tmp_path)
        singles.append(loc.localize(frame).geo)
        loc.close()
    ensemble = _localizer([bundle, second], tmp_path)
    try:
        assert len(ensemble.members) == 2
        geo = ensemble.localize(frame).geo
    finally:
        ensemble.close()
    enu = LocalENU(geo.lat_deg, geo.lon_deg, 0.0)
    means = np.array([np.ravel(enu.to_enu(s.lat_deg, s.lon_deg, 0.0))[:2] for s in singles])
    covs = np.stack([s.cov_enu_m2[:2, :2] for s in singles])
    mean, cov = combine_gaussians(means, covs)
    np.testing.assert_allclose(mean, [0.0, 0.0], atol=1e-3)  # the ensemble estimate is the mean of the members
    np.testing.assert_allclose(geo.cov_enu_m2[:2, :2], cov, rtol=1e-3, atol=1e-3)


# -- presets and CLI ---------------------------------------------------------------------------------------
def test_presets_and_config_errors(dataset, tmp_path):
    assert {'demo', 'tiny', 'full'} <= set(PRESETS)
    assert all(p.backbone == 'efficientnet_lite0' and p.pretrained for p in PRESETS.values())
    with pytest.raises(TrainConfigError, match='unknown setting'):
        train(TrainArgs(type='gps_regressor', data=dataset, out=tmp_path / 'x', preset='tiny', extra={'lossy': 1}))
    with pytest.raises(TrainConfigError, match='loss must be one of'):
        train(TrainArgs(type='gps_regressor', data=dataset, out=tmp_path / 'x', preset='tiny',
                        extra={'loss': 'l1'}))


def test_cli_tiny_run_and_resume(dataset, tmp_path, capsys):
    from vizloc_ros.bundle import load_bundle
    from vizloc_training.train.cli import main

    out = tmp_path / 'cli_bundle'
    argv = ['gps_regressor', '--data', str(dataset), '--out', str(out), '--preset', 'tiny', '--epochs', '1',
            '--set', 'loss=haversine', '--set', 'robustness=false']
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert 'test/median_m' in printed and 'test/within_10m_pct' in printed
    first = load_bundle(out)
    assert first.metadata['loss'] == 'haversine' and len(first.metadata['history']) == 1
    # --resume with more epochs continues after the saved epoch instead of starting again.
    assert main([*argv[:8], '2', *argv[9:], '--resume']) == 0
    resumed = load_bundle(out)
    assert [h['epoch'] for h in resumed.metadata['history']] == [1, 2]


# -- bins head -------------------------------------------------------------------------------------------
def test_grid_anchors_are_occupied_cells_of_the_training_positions():
    from vizloc_training.gps_regressor.model import grid_anchors

    en = np.array([[0.0, 0.0], [4.0, 3.0], [25.0, 1.0], [26.0, 9.0], [0.5, 21.0]])
    anchors, size = grid_anchors(en, 10.0, min_anchors=2)
    # Cells (0,0), (2,0), (0,2) of a grid starting at (0, 0): centres at +5 m.
    assert size == 10.0
    assert sorted(map(tuple, anchors.tolist())) == [(5.0, 5.0), (5.0, 25.0), (25.0, 5.0)]
    with pytest.raises(ValueError, match='positive'):
        grid_anchors(en, 0.0)
    # A large area: the cells grow until there are at most max_anchors; a small one: they shrink.
    rng = np.random.default_rng(0)
    wide = rng.uniform(0.0, 5000.0, (2000, 2))
    anchors, size = grid_anchors(wide, 10.0, max_anchors=256)
    assert len(anchors) <= 256 and size > 10.0
    small = rng.uniform(0.0, 12.0, (200, 2))
    anchors, size = grid_anchors(small, 10.0, min_anchors=16)
    assert len(anchors) >= 16 and size < 10.0


def test_bins_head_is_the_moment_matched_mixture():
    from vizloc_training.gps_regressor.model import GPSRegressorNet

    anchors = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    net = GPSRegressorNet('resnet18', image_hw=(32, 40), anchors_z_K2=anchors,
                          bin_var_z_2=torch.tensor([0.01, 0.02])).eval()
    x = torch.randn(3, 3, 32, 40)
    with torch.no_grad():
        mu, log_var, rho, logits = net(x, return_logits=True)
        raw = net.head(net.features(x))
    p = torch.softmax(logits, 1)
    assert torch.allclose(mu, p @ anchors, atol=1e-6)
    for i in range(3):
        d = anchors - mu[i]
        cov = (p[i, :, None, None] * d[:, :, None] * d[:, None, :]).sum(0)
        var = torch.diagonal(cov) + torch.exp(raw[i, -1]) + torch.tensor([0.01, 0.02])
        assert torch.allclose(torch.exp(log_var[i]), var, rtol=1e-4)
        assert rho[i] == pytest.approx(float(cov[0, 1] / torch.sqrt(var[0] * var[1])), abs=1e-5)
    # Soft labels peak at the anchor nearest the target and sum to one.
    soft = net.soft_labels(torch.tensor([[0.9, 0.1]]), torch.tensor([10.0, 10.0]), 10.0)
    assert soft.sum().item() == pytest.approx(1.0) and int(soft.argmax()) == 1
    with pytest.raises(ValueError, match='bins head'):
        GPSRegressorNet('resnet18', image_hw=(32, 40))(x, return_logits=True)


def test_bins_head_publishes_the_main_mode_with_the_covariance_about_it():
    """publish_mode: the mean of the anchors within the radius (metres, through each axis' std) of the most
    probable one; the covariance is the second moment of the whole distribution about that point."""
    from vizloc_training.gps_regressor.model import GPSRegressorNet

    # two places 100 m apart (std 10 m per axis: 10 z units), the first a pair of cells 10 m apart
    anchors = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    net = GPSRegressorNet('resnet18', image_hw=(32, 40), anchors_z_K2=anchors).eval()
    last = net.head[-1]
    with torch.no_grad():  # constant logits: p = (0.5, 0.2, 0.3) whatever the image
        last.weight.zero_()
        last.bias.copy_(torch.tensor([math.log(0.5), math.log(0.2), math.log(0.3), -20.0]))
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        mixture_mu, mixture_log_var, _ = net(x)
        net.publish_mode(15.0, [10.0, 10.0])
        mode_mu, mode_log_var, _ = net(x)
        net.publish_mode(0.0, [10.0, 10.0])
        back_mu, _, _ = net(x)
    p = torch.tensor([0.5, 0.2, 0.3])
    assert torch.allclose(mixture_mu[0], p @ anchors, atol=1e-5)  # (3.2, 0): between the places, near neither
    assert torch.allclose(mode_mu[0], torch.tensor([0.2 / 0.7, 0.0]), atol=1e-5)  # the first place's two cells
    second_moment_x = float((p * (anchors[:, 0] - mode_mu[0, 0]) ** 2).sum())
    assert float(torch.exp(mode_log_var[0, 0])) == pytest.approx(second_moment_x, rel=1e-4)
    assert float(mode_log_var[0, 0]) > float(mixture_log_var[0, 0])  # about the mode, not the mean: wider
    assert torch.allclose(back_mu, mixture_mu)
    with pytest.raises(ValueError, match='bins head'):
        GPSRegressorNet('resnet18', image_hw=(32, 40)).publish_mode(30.0, [10.0, 10.0])


def test_bins_head_trains_exports_and_runs_in_the_plugin(dataset, tmp_path):
    from vizloc_ros.bundle import load_bundle

    # The bins head's mechanics (anchors, soft labels, export, plugin) on a backbone that fits these
    # colour-coded frames within 32 steps: resnet18 from scratch (the pretrained default's features need
    # more steps to turn mean colour into place; the default is tested by the tiny bundle above).
    out = train(TrainArgs(type='gps_regressor', data=dataset, out=tmp_path / 'bins', preset='tiny', epochs=8,
                          seed=0, backbone='resnet18',
                          extra={'head': 'bins', 'bin_size_m': 20.0, 'pretrained': 'false'}))
    b = load_bundle(out, expected_type='gps_regressor')
    assert b.metadata['head'] == 'bins' and b.metadata['config']['bin_size_m'] == 20.0
    assert b.metadata['anchors']['count'] >= 16 and b.metadata['anchors']['bin_size_m'] <= 20.0
    # the default publishes the main mode within 3 cells; the metadata says so
    assert b.metadata['anchors']['published'] == 'main_mode'
    assert b.metadata['anchors']['mode_radius_m'] == pytest.approx(3 * b.metadata['anchors']['bin_size_m'])
    truth = np.array([[float(r['lat']), float(r['lon'])] for r in csv.DictReader(open(dataset / 'gt.csv'))
                      if r['split'] == 'test'])
    centroid = np.array(b.metadata['geo']['enu_origin'][:2])
    assert b.metrics['test']['mean_m'] < geo_metrics.haversine_m(truth[:, 0], truth[:, 1], *centroid).mean()
    localizer = _localizer([out], tmp_path)
    row = next(r for r in csv.DictReader(open(dataset / 'gt.csv')) if r['split'] == 'test')
    result = localizer.localize(Frame(rgb_HW3=read_image(dataset, row['image']), stamp_ns=1, frame_id='camera'))
    assert result.geo is not None and np.all(np.linalg.eigvalsh(result.geo.cov_enu_m2) > 0)
    localizer.close()
    with pytest.raises(TrainConfigError, match='head'):
        train(TrainArgs(type='gps_regressor', data=dataset, out=tmp_path / 'x', preset='tiny',
                        extra={'head': 'mixture'}))


def test_frozen_feature_mode_trains_only_pooling_and_head(dataset, tmp_path, monkeypatch):
    """``freeze_backbone``: the pretrained backbone's maps are cached once (float16, the un-augmented view
    equal to the backbone's own maps), no step moves the backbone (weights and BN statistics bit for
    bit), the spatial pooling and the bins head learn, and the bundle runs in the plugin."""
    import vizloc_training.gps_regressor.train as gps_train
    from vizloc_ros.bundle import load_bundle

    made = []

    class Recording(gps_train.GPSRegressorNet):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.initial = {k: v.detach().clone() for k, v in self.state_dict().items()}
            made.append(self)

    monkeypatch.setattr(gps_train, 'GPSRegressorNet', Recording)
    out = train(TrainArgs(type='gps_regressor', data=dataset, out=tmp_path / 'frozen', preset='tiny', epochs=30,
                          seed=0, extra={'freeze_backbone': 'true', 'feature_views': '2', 'pool': 'spatial',
                                         'head': 'bins', 'bin_size_m': '20', 'lr': '0.01', 'robustness': 'false'}))
    (net,) = made
    after = net.state_dict()
    backbone_keys = [k for k in after if k.startswith('backbone.')]
    assert backbone_keys and all(torch.equal(net.initial[k], after[k]) for k in backbone_keys)
    assert not torch.equal(net.initial['head.0.weight'], after['head.0.weight'])
    assert not torch.equal(net.initial['reduce.0.weight'], after['reduce.0.weight'])
    b = load_bundle(out, expected_type='gps_regressor')
    assert b.metadata['config']['freeze_backbone'] is True and len(b.metadata['history']) == 30
    assert b.metrics['features_s'] > 0
    truth = np.array([[float(r['lat']), float(r['lon'])] for r in csv.DictReader(open(dataset / 'gt.csv'))
                      if r['split'] == 'test'])
    centroid = np.array(b.metadata['geo']['enu_origin'][:2])
    assert b.metrics['test']['mean_m'] < geo_metrics.haversine_m(truth[:, 0], truth[:, 1], *centroid).mean()
    localizer = _localizer([out], tmp_path)
    row = next(r for r in csv.DictReader(open(dataset / 'gt.csv')) if r['split'] == 'test')
    result = localizer.localize(Frame(rgb_HW3=read_image(dataset, row['image']), stamp_ns=1, frame_id='camera'))
    assert result.geo is not None and np.all(np.linalg.eigvalsh(result.geo.cov_enu_m2) > 0)
    localizer.close()
    # The cache: float16 copies of the backbone's own maps for the un-augmented view (through ONNX Runtime).
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 40, 3), dtype=np.uint8)
    with FrozenFeatures(net.backbone, torch.device('cpu')) as frozen:
        maps = gps_train.cached_feature_maps(frozen, images, torch.device('cpu'), augment='none',
                                             generator=torch.Generator().manual_seed(0))
    net.backbone.eval()
    with torch.no_grad():
        reference = net.backbone.forward_features(imagenet_normalise(to_unit(images, torch.device('cpu'))))
    assert maps.dtype == torch.float16 and maps.shape == reference.shape
    torch.testing.assert_close(maps.float(), reference, rtol=2e-3, atol=2e-3 * float(reference.abs().max()))
    # Evaluation runs the network with the backbone through the same session: what torch's whole network gives.
    head = gps_train.MetricHead(net, torch.zeros(2), torch.full((2,), 50.0))
    with FrozenFeatures(net.backbone, torch.device('cpu')) as frozen:
        fast = gps_train.predict(head, images, torch.device('cpu'), frozen=frozen)
    slow = gps_train.predict(head, images, torch.device('cpu'))
    for got, want in zip(fast, slow):  # float32 kernels of two runtimes: ~1e-5 of the maps, through the head
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max()))
    with pytest.raises(TrainConfigError, match='freeze_backbone'):
        train(TrainArgs(type='gps_regressor', data=dataset, out=tmp_path / 'x', preset='tiny',
                        extra={'freeze_backbone': 'true', 'pretrained': 'false'}))


# -- keyframe map of the training images (real renders of a small campus) -------------------------------------
@pytest.fixture(scope='module')
def walks_dataset(campus_world, tmp_path_factory) -> Path:
    """The small campus's training walks as a GPS dataset without a split column: the reader's random
    70/15/15 split (seed 001's protocol), so val and test frames sit on the walks, ~1 m from training frames."""
    root = tmp_path_factory.mktemp('gps_walks') / 'data'
    root.mkdir()
    (root / 'images').symlink_to(campus_world / 'images')
    with open(root / 'gt.csv', 'w', newline='') as fh:
        writer = csv.DictWriter(fh, fieldnames=['image', 'lat', 'lon', 'alt'], extrasaction='ignore')
        writer.writeheader()
        writer.writerows(r for r in csv.DictReader(open(campus_world / 'gt.csv')) if r['split'] == 'train')
    return root


@pytest.fixture(scope='module')
def walks_bundle(walks_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('gps_walks_bundle') / 'bundle'
    return train(TrainArgs(type='gps_regressor', data=walks_dataset, out=out, preset='tiny', epochs=2, seed=0,
                           extra={'robustness': 'false'}))


def test_bundle_carries_a_calibrated_keyframe_map_of_its_training_images(walks_dataset, walks_bundle):
    from vizloc_plugins.gps_regressor_contract import GPSRegressorContract
    from vizloc_ros.bundle import load_bundle
    from vizloc_training.datasets.gps import read_gps_dataset
    from vizloc_training.gps_regressor.train import CALIBRATION_RUNS

    b = load_bundle(walks_bundle, expected_type='gps_regressor')
    keyframes = GPSRegressorContract.from_bundle(b).keyframes
    assert keyframes is not None and keyframes.frames == len(read_gps_dataset(walks_dataset).split('train'))
    assert keyframes.points > 50 * keyframes.frames and keyframes.covariance_scale > 0.0
    assert b.file('keyframes.npz').is_file() and b.file('keyframes.faiss').is_file()
    # What the node publishes (test) beside the network alone (test_network). The test frames lie on the
    # training walks (test_to_nearest_train: ~1 m), so most overlap a training image a few metres away;
    # the 2-epoch network on 40x32 inputs stays near the centroid of walks tens of metres long.
    assert b.metrics['test_to_nearest_train']['median_m'] < 3.0
    network, published = b.metrics['test_network'], b.metrics['test']
    assert b.metrics['test_keyframe_share'] >= 0.5, b.metrics['test_keyframe_share']
    assert published['median_m'] <= 5.0, published['median_m']
    assert published['median_m'] < 0.5 * network['median_m'], (published['median_m'], network['median_m'])
    assert 0.0 < b.metrics['val_keyframes']['verified_pct'] <= 100.0
    # the factor is fitted on the val split replayed at every camera rate of CALIBRATION_RUNS, pooled: more
    # places than one replay of the split has frames (most val frames lie ~1 m from a training frame)
    n_val = len(read_gps_dataset(walks_dataset).split('val'))
    runs = sum(len(range(0, n_val, stride)) for _, stride in CALIBRATION_RUNS)
    assert n_val < b.metrics['val_keyframes']['calibration_places'] <= runs, (n_val, b.metrics['val_keyframes'])


def haversine_m_of(result, record) -> float:
    return float(geo_metrics.haversine_m(result.geo.lat_deg, result.geo.lon_deg, record.lat_deg, record.lon_deg))


def test_plugin_publishes_the_keyframe_position_else_the_network(walks_dataset, walks_bundle, tmp_path):
    from vizloc_plugins.gps_regressor_contract import GPSKeyframes
    from vizloc_training.datasets.gps import read_gps_dataset

    record = read_gps_dataset(walks_dataset).split('train')[0]
    image = read_image(walks_dataset, record.image.name)
    noise = np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint8)
    localizer = _localizer([walks_bundle], tmp_path, variance_scale=1e6)  # a network prior that gates nothing
    try:
        unseen = localizer.localize(Frame(rgb_HW3=noise, stamp_ns=1, frame_id='camera'))
        seen = localizer.localize(Frame(rgb_HW3=image, stamp_ns=2, frame_id='camera'))
        # the same view as a 4x larger frame (an HD camera, a phone photo) is reduced to max_side_px first
        large = cv2.resize(image, None, fx=4.0, fy=4.0, interpolation=cv2.INTER_CUBIC)
        assert max(large.shape[:2]) > GPSKeyframes().max_side_px
        seen_large = localizer.localize(Frame(rgb_HW3=large, stamp_ns=3, frame_id='camera'))
    finally:
        localizer.close()
    assert seen_large.diagnostics['source'] == 'keyframes', seen_large.diagnostics
    assert haversine_m_of(seen_large, record) <= GPSKeyframes().place_radius_m
    # a training image verifies against itself (its keypoints all inliers), so the published place is its
    # own, averaged with verified images at most place_radius_m away
    assert seen.diagnostics['source'] == 'keyframes', seen.diagnostics
    assert int(seen.diagnostics['keyframe_inliers']) >= GPSKeyframes().min_inliers
    assert seen.diagnostics['keyframe_lens_log_scale'] == '0.000'  # too few places to say the lens differs
    assert record.image.name in seen.diagnostics['keyframes'].split(',')
    error_m = geo_metrics.haversine_m(seen.geo.lat_deg, seen.geo.lon_deg, record.lat_deg, record.lon_deg)
    assert error_m <= GPSKeyframes().place_radius_m
    assert np.all(np.linalg.eigvalsh(seen.geo.cov_enu_m2) > 0)
    # noise overlaps nothing, and nothing was placed before it: the network answers
    assert unseen.diagnostics['source'] == 'network' and unseen.diagnostics['keyframe_inliers'] == '0'
    assert unseen.geo is not None
    off = _localizer([walks_bundle], tmp_path, keyframes=False)
    try:
        network = off.localize(Frame(rgb_HW3=image, stamp_ns=1, frame_id='camera'))
    finally:
        off.close()
    assert network.diagnostics['source'] == 'network' and 'keyframe_inliers' not in network.diagnostics


def test_the_previous_place_settles_the_next_frame_and_lets_go_of_a_wrong_track(walks_dataset, walks_bundle,
                                                                                 tmp_path):
    from vizloc_plugins.gps_regressor_contract import GPSKeyframes
    from vizloc_training.datasets.gps import read_gps_dataset

    records = read_gps_dataset(walks_dataset).split('train')
    here = records[0]
    # the training image farthest from the first: beyond the track's reach one frame later
    far = max(records, key=lambda r: geo_metrics.haversine_m(r.lat_deg, r.lon_deg, here.lat_deg, here.lon_deg))
    gap_m = geo_metrics.haversine_m(far.lat_deg, far.lon_deg, here.lat_deg, here.lon_deg)
    # a 1 m track growing at 2 m/s (defaults 10 m, 15 m/s) so that the small test world holds places beyond its
    # reach: the 99.9 % gate (3.7 sigma, sigma grown over the 0.5 s before the far frame) around places up to
    # place_radius_m off their images
    sigma_m, speed_mps = 1.0, 2.0
    reach_m = 3.8 * (sigma_m + speed_mps * 0.5) + 2 * GPSKeyframes().place_radius_m
    assert gap_m > reach_m, f'the test world is too small: {gap_m:.0f} m'
    first, other = (read_image(walks_dataset, r.image.name) for r in (here, far))

    def frame(rgb, stamp_s):
        return Frame(rgb_HW3=rgb, stamp_ns=int(stamp_s * 1e9), frame_id='camera')

    localizer = _localizer([walks_bundle], tmp_path, variance_scale=1e6, track_sigma_m=sigma_m,  # no network gate
                           track_speed_mps=speed_mps)
    try:
        start = localizer.localize(frame(first, 10.0))
        again = localizer.localize(frame(first, 10.01))   # the track: the previous frame's place
        # verified only far outside the track, 0.5 s later: the network settles (within 0.1 s the run's own
        # place would still hold the frame: keyframes.HYPOTHESIS_MISS_CARRY_S)
        jump = localizer.localize(frame(other, 10.51))
        back = localizer.localize(frame(first, 5.0))      # the stamp went back (a bag loop): no track
        localizer.reset()
        after_reset = localizer.localize(frame(first, 20.0))
    finally:
        localizer.close()
    assert [r.diagnostics['source'] for r in (start, again, jump, back, after_reset)] == ['keyframes'] * 5, jump.diagnostics
    assert [r.diagnostics['keyframe_prior'] for r in (start, again, jump, back, after_reset)] == \
        ['network', 'track', 'network', 'network', 'network']
    assert haversine_m_of(again, here) <= GPSKeyframes().place_radius_m
    assert haversine_m_of(jump, far) <= GPSKeyframes().place_radius_m
    # tracking off: every frame on its own
    untracked = _localizer([walks_bundle], tmp_path, variance_scale=1e6, track_speed_mps=0.0)
    try:
        results = [untracked.localize(frame(first, t)) for t in (10.0, 10.1)]
    finally:
        untracked.close()
    assert [r.diagnostics['keyframe_prior'] for r in results] == ['network', 'network']
    for bad in ({'track_speed_mps': -1.0}, {'track_sigma_m': 0.0}, {'track_speed_mps': math.inf}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            _localizer([walks_bundle], tmp_path, **bad)


def _blob_texture(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A grey texture of smooth blobs (blurred noise) that no campus image shows: SIFT finds its blobs again
    in a warped copy."""
    noise = np.random.default_rng(seed).random((shape[0] // 4, shape[1] // 4))
    blobs = cv2.resize(cv2.GaussianBlur(noise, (0, 0), 1.0), (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    grey = cv2.normalize(blobs, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def test_a_frame_the_map_cannot_place_is_placed_by_the_last_placed_frame_it_overlaps(walks_dataset, walks_bundle,
                                                                                   tmp_path):
    from vizloc_plugins.gps_regressor_contract import GPSKeyframes
    from vizloc_training.datasets.gps import read_gps_dataset

    record = read_gps_dataset(walks_dataset).split('train')[0]
    image = read_image(walks_dataset, record.image.name)
    h, w = image.shape[:2]
    texture = _blob_texture((h, w), seed=3)
    # a frame showing the training view and, beside it, something the map has never seen (a poster, a
    # parked vehicle); then that thing alone, seen from a little to the side (a homography), which no
    # training image verifies; and a texture seen by no frame at all
    both = np.concatenate([image, texture], axis=1)
    H = np.array([[0.95, 0.05, 6.0], [-0.04, 1.0, 3.0], [0.0, 1e-4, 1.0]])
    aside = cv2.warpPerspective(texture, H, (w, h), borderMode=cv2.BORDER_REFLECT)
    unrelated = _blob_texture((h, w), seed=4)

    def frame(rgb, stamp_s):
        return Frame(rgb_HW3=rgb, stamp_ns=int(stamp_s * 1e9), frame_id='camera')

    localizer = _localizer([walks_bundle], tmp_path, variance_scale=1e6)  # a network prior that gates nothing
    try:
        placed = localizer.localize(frame(both, 10.0))
        chained = localizer.localize(frame(aside, 10.5))
        nothing = localizer.localize(frame(unrelated, 10.6))
        back = localizer.localize(frame(aside, 5.0))  # the stamp went back (a bag loop): the recent frames go
        localizer.localize(frame(both, 20.0))
        localizer.reset()
        after_reset = localizer.localize(frame(aside, 20.1))
    finally:
        localizer.close()
    assert placed.diagnostics['source'] == 'keyframes', placed.diagnostics
    assert chained.diagnostics['source'] == 'previous_frame', chained.diagnostics
    assert chained.diagnostics['keyframe_inliers'] == '0'  # the map verified nothing
    assert int(chained.diagnostics['previous_frame_inliers']) >= GPSKeyframes().min_inliers
    assert float(chained.diagnostics['previous_frame_age_s']) == pytest.approx(0.5)
    # published where the placed frame was, its covariance grown by the track's speed over the 0.5 s since
    assert haversine_m_of(chained, record) == pytest.approx(haversine_m_of(placed, record), abs=1e-3)
    grown_m2 = (GPSRegressorOptions().track_speed_mps * 0.5) ** 2
    np.testing.assert_allclose(chained.geo.cov_enu_m2[:2, :2], placed.geo.cov_enu_m2[:2, :2] + grown_m2 * np.eye(2),
                               rtol=1e-6, atol=1e-6)
    # a frame neither the map nor a recent frame places: held where the placed frame was, its covariance grown
    # over the 0.6 s since
    assert nothing.diagnostics['source'] == 'held' and float(nothing.diagnostics['held_age_s']) == pytest.approx(0.6)
    assert haversine_m_of(nothing, record) == pytest.approx(haversine_m_of(placed, record), abs=1e-3)
    np.testing.assert_allclose(nothing.geo.cov_enu_m2[:2, :2],
                               placed.geo.cov_enu_m2[:2, :2] + (GPSRegressorOptions().track_speed_mps * 0.6) ** 2
                               * np.eye(2), rtol=1e-6, atol=1e-6)
    assert [r.diagnostics['source'] for r in (back, after_reset)] == ['network'] * 2
    # a frame whose verified places all lie beyond the track's reach (a 1 m track, as in the track test) but
    # which overlaps the last placed frame: that frame says where it is, not the network
    records = read_gps_dataset(walks_dataset).split('train')
    far = max(records, key=lambda r: geo_metrics.haversine_m(r.lat_deg, r.lon_deg, record.lat_deg, record.lon_deg))
    # the far view small (seen from farther away: fewer inliers than the texture the last frame showed too)
    far_small = np.full_like(image, 128)
    far_small[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = cv2.resize(
        read_image(walks_dataset, far.image.name), (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    far_and_texture = np.concatenate([far_small, aside], axis=1)
    tracked = _localizer([walks_bundle], tmp_path, variance_scale=1e6, track_sigma_m=1.0)
    try:
        tracked.localize(frame(both, 10.0))
        jump = tracked.localize(frame(far_and_texture, 10.01))
    finally:
        tracked.close()
    assert jump.diagnostics['source'] == 'previous_frame', jump.diagnostics
    assert jump.diagnostics['keyframe_outside_prior'] == 'true'
    assert 0 < int(jump.diagnostics['keyframe_inliers']) < int(jump.diagnostics['previous_frame_inliers'])
    assert haversine_m_of(jump, record) == pytest.approx(haversine_m_of(placed, record), abs=1e-3)
    # the recent frames off: the frame is held at the last place; tracking off too: the network answers
    off = _localizer([walks_bundle], tmp_path, variance_scale=1e6, chain_frames=0)
    try:
        results = [off.localize(frame(rgb, t)) for rgb, t in ((both, 10.0), (aside, 10.5))]
    finally:
        off.close()
    assert [r.diagnostics['source'] for r in results] == ['keyframes', 'held']
    no_track = _localizer([walks_bundle], tmp_path, variance_scale=1e6, chain_frames=0, track_speed_mps=0.0)
    try:
        results = [no_track.localize(frame(rgb, t)) for rgb, t in ((both, 10.0), (aside, 10.5))]
    finally:
        no_track.close()
    assert [r.diagnostics['source'] for r in results] == ['keyframes', 'network']
    with pytest.raises(ConfigError, match='chain_frames'):
        _localizer([walks_bundle], tmp_path, chain_frames=-1)


def test_bag_evaluation_runs_the_plugin_with_localizer_options(walks_dataset, walks_bundle, tmp_path, capsys):
    """``python -m vizloc_training.gps_regressor.evaluate --option KEY=VALUE``: the options reach the plugin (the
    network alone with ``keyframes=false``), a wrong one is a usage error."""
    from vizloc_ros.eval_bag import EvalSample, write_evaluation_bag
    from vizloc_ros.types import CameraIntrinsics
    from vizloc_training.datasets.gps import read_gps_dataset
    from vizloc_training.gps_regressor.evaluate import evaluate_localizer_on_bag, main

    records = read_gps_dataset(walks_dataset).split('test')[:4]
    images = [read_image(walks_dataset, r.image.name) for r in records]
    camera = CameraIntrinsics.from_fov(90.0, images[0].shape[1], images[0].shape[0])
    bag = write_evaluation_bag(tmp_path / 'eval_bag', (
        EvalSample(stamp_ns=10**9 + k * 10**8, rgb_HW3=rgb, camera=camera, fix_lla=(r.lat_deg, r.lon_deg, r.alt_m))
        for k, (rgb, r) in enumerate(zip(images, records))))
    network = evaluate_localizer_on_bag([walks_bundle], bag, robustness=False, cache_dir=tmp_path,
                                        options={'keyframes': False})
    with_map = evaluate_localizer_on_bag([walks_bundle], bag, robustness=False, cache_dir=tmp_path)
    assert network['frames'] == with_map['frames'] == len(records)
    # the same frames through the plugin alone, as its own answers
    localizer = _localizer([walks_bundle], tmp_path, keyframes=False)
    try:
        alone = [localizer.localize(Frame(rgb_HW3=rgb, stamp_ns=1, frame_id='camera')).geo for rgb in images]
    finally:
        localizer.close()
    errors_m = [geo_metrics.haversine_m(g.lat_deg, g.lon_deg, r.lat_deg, r.lon_deg) for g, r in zip(alone, records)]
    assert network['test']['median_m'] == pytest.approx(float(np.median(errors_m)), abs=1e-6)
    assert with_map['test']['median_m'] != pytest.approx(network['test']['median_m'], abs=1e-6)
    assert main(['--bundle', str(walks_bundle), '--bag', str(bag), '--no-robustness',
                 '--option', 'track_hypotheses=1']) == 0
    assert 'test/median_m' in capsys.readouterr().out
    for bad in ('track_hypotheses=0', 'no_such_option=1', 'keyframes'):
        with pytest.raises(SystemExit) as exit_info:
            main(['--bundle', str(walks_bundle), '--bag', str(bag), '--option', bad])
        assert exit_info.value.code == 2


def test_a_network_prior_rejects_keyframe_places_outside_its_ellipse(walks_dataset, walks_bundle):
    from vizloc_plugins.gps_regressor_contract import GPSRegressorContract
    from vizloc_plugins.keyframes import PlaceMap
    from vizloc_ros.bundle import load_bundle
    from vizloc_training.datasets.gps import read_gps_dataset

    b = load_bundle(walks_bundle)
    places = PlaceMap(b.file('keyframes.npz'), b.file('keyframes.faiss'), GPSRegressorContract.from_bundle(b).keyframes)
    record = read_gps_dataset(walks_dataset).split('train')[3]
    gray = cv2.cvtColor(read_image(walks_dataset, record.image.name), cv2.COLOR_RGB2GRAY)
    free = places.locate(gray)
    assert free.position_m is not None and not free.rejected and free.used >= 1
    # a prior centred on the answer changes nothing; one 1 km away with a 10 m sigma rejects every place
    agree = places.locate(gray, free.position_m, np.eye(2) * 100.0)
    np.testing.assert_allclose(agree.position_m, free.position_m)
    far = places.locate(gray, free.position_m + 1000.0, np.eye(2) * 100.0)
    assert far.position_m is None and far.rejected and far.verified


def test_keyframe_settings_are_validated(walks_dataset, campus_world, tmp_path):
    from vizloc_plugins.gps_regressor_contract import GPSKeyframes
    from vizloc_ros.bundle import load_bundle
    from vizloc_ros.contract import ContractError

    with pytest.raises(ContractError, match='ratio'):
        GPSKeyframes(ratio=1.2)
    with pytest.raises(ContractError, match='prior_gate'):
        GPSKeyframes(prior_gate=1.0)
    with pytest.raises(ContractError, match='max_side_px'):
        GPSKeyframes(max_side_px=16)
    # the map's size is bounded: fewer keypoints per image for many images, never below 100
    config = PRESETS['demo']
    assert config.keyframe_features_for(3000) == config.keyframe_features == 650
    assert config.keyframe_features_for(10_000) == 200
    assert config.keyframe_features_for(10 ** 6) == 100
    with pytest.raises(TrainConfigError, match='min_inliers'):
        train(TrainArgs(type='gps_regressor', data=walks_dataset, out=tmp_path / 'x', preset='tiny',
                        extra={'keyframe_min_inliers': '4'}))
    # keyframes=false: no map in the bundle, the network's figures are the published ones
    out = train(TrainArgs(type='gps_regressor', data=walks_dataset, out=tmp_path / 'plain', preset='tiny', epochs=1,
                          extra={'keyframes': 'false', 'robustness': 'false'}))
    b = load_bundle(out)
    assert 'keyframes' not in b.metadata and 'test_network' not in b.metrics
    assert not (out / 'keyframes.npz').exists()
