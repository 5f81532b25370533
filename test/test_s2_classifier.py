"""The s2_classifier end to end on a tiny multi-site world: vizloc-synth multisite -> tiny training ->
bundle (contract + cells.csv) -> plugin (ONNX Runtime) -> the running node, beside another localizer."""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('torch')

from sensor_msgs.msg import NavSatFix, NavSatStatus  # noqa: E402

from test_node_support import NodeProcess, RosClient, domain_id_for  # noqa: E402
from vizloc_ros.eval_bag import read_evaluation_bag  # noqa: E402
from vizloc_ros.bundle import load_bundle  # noqa: E402
from vizloc_ros.conversions import UNKNOWN_ALTITUDE_VARIANCE_M2, stamp_to_ns  # noqa: E402
from vizloc_ros.localizer import LocalizerConfig, LocalizerContext  # noqa: E402
from vizloc_ros.plugin_manager import load_registry  # noqa: E402
from vizloc_ros.types import Frame  # noqa: E402
from vizloc_plugins.s2_classifier import S2ClassifierContract  # noqa: E402
from vizloc_training.metrics.geo import haversine_m  # noqa: E402
from vizloc_training.s2_classifier.evaluate import km_table  # noqa: E402
from vizloc_training.s2_classifier.train import train  # noqa: E402
from vizloc_training.synth import multisite  # noqa: E402
from vizloc_training.train.config import TrainArgs  # noqa: E402

DOMAIN_ID = domain_id_for(__name__)
SITES = ('paris', 'nairobi', 'sydney')


@pytest.fixture(scope='module')
def world(tmp_path_factory) -> Path:
    cfg = multisite.MultisiteConfig(size=(48, 36), sites=SITES, districts=2, area_m=60.0, buildings=4, trees=4,
                                    poles=2, frames_train=48, frames_val=12, frames_test=12)
    return multisite.generate(tmp_path_factory.mktemp('multisite') / 'world', seed=0, config=cfg)


@pytest.fixture(scope='module')
def bundle(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('s2') / 'bundle'
    return train(TrainArgs(type='s2_classifier', data=world, out=out, preset='tiny', seed=0))


def _localizer(bundle: Path, tmp_path: Path, **options):
    registry = load_registry().registry
    config = LocalizerConfig(name='s2', type='s2_classifier', bundle=str(bundle), backend='onnxruntime')
    return registry.create(config, options, LocalizerContext(cache_dir=tmp_path))


def test_multisite_world_is_a_gps_dataset_with_sites_far_apart(world):
    from vizloc_training.datasets.gps import read_gps_dataset

    dataset = read_gps_dataset(world)
    assert [len(dataset.split(s)) for s in ('train', 'val', 'test')] == [48, 12, 12]
    with open(world / 'sites.csv') as fh:
        site_of = {r['image']: r['site'] for r in csv.DictReader(fh)}
    assert set(site_of.values()) == set(SITES)
    by_site: dict[str, list] = {}
    for rec in dataset.split('train'):
        by_site.setdefault(site_of[rec.image.name], []).append((rec.lat_deg, rec.lon_deg))
    centres = {s: np.mean(v, axis=0) for s, v in by_site.items()}
    for s, points in by_site.items():  # a site's districts lie within ~12 km of its centre
        p = np.array(points)
        assert np.max(haversine_m(p[:, 0], p[:, 1], *centres[s])) < 20e3
    names = list(centres)
    for i, a in enumerate(names):  # different continents: thousands of km apart
        for b in names[i + 1:]:
            assert haversine_m(*centres[a], *centres[b]) > 2500e3
    samples = list(read_evaluation_bag(world / multisite.EVAL_BAG))
    assert len(samples) == 12 and all(s.fix_lla is not None and s.T_map_camera is None for s in samples)


def test_sun_elevation_follows_latitude():
    # Equinox noon: elevation = 90 - |latitude|; the sun is due south (azimuth 180) north of the equator.
    el, az = multisite.sun_direction(48.0, 0.0, 0.0)
    assert el == pytest.approx(42.0) and az == pytest.approx(180.0)
    el, az = multisite.sun_direction(-33.0, 0.0, 0.0)
    assert el == pytest.approx(57.0) and az == pytest.approx(0.0)


def test_tiny_training_writes_a_bundle_with_its_contract_and_partition(bundle, world):
    b = load_bundle(bundle, expected_type='s2_classifier')
    contract = S2ClassifierContract.from_bundle(b)
    assert contract.partition is not None and len(contract.partition) == b.metrics['cells'] >= 2
    assert b.outputs == ('probs', 'parent_probs')  # the tiny preset trains the hierarchical head
    assert sum(contract.partition.train_images) == b.metrics['train_images_used'] <= 48
    for key in ('fix', 'top1_cell', 'oracle'):
        table = b.metrics['test'][key]
        assert set(table) >= {f'within_{t}km_pct' for t in (1, 25, 200, 750, 2500)}
        assert table['count'] == 12
    assert contract.region_km == 25.0 and contract.tta_flip  # the trainer's defaults, written into the bundle
    # The graph averages the image and its mirror image (tta_flip): mirrored input, same output.
    import onnxruntime as ort

    session = ort.InferenceSession(str(b.model_path), providers=['CPUExecutionProvider'])
    image = np.random.default_rng(0).integers(0, 256, (2, b.input.height, b.input.width, 3), dtype=np.uint8)
    probs, parents = session.run(['probs', 'parent_probs'], {b.input.name: image})
    mirrored = session.run(['probs', 'parent_probs'], {b.input.name: np.ascontiguousarray(image[:, :, ::-1])})
    assert probs.shape == (2, len(contract.partition)) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # Without the averaging this scratch network's outputs for an image and its mirror differ by 0.07-0.1
    # (measured, tiny preset); 1e-4 leaves room for other CPUs' float32 kernels and still catches that.
    assert np.allclose(mirrored[0], probs, atol=1e-4) and np.allclose(mirrored[1], parents, atol=1e-4)
    # The oracle is an upper bound for the cell-based answer at every scale.
    for t in (25, 200, 750, 2500):
        assert b.metrics['test']['oracle'][f'within_{t}km_pct'] >= b.metrics['test']['top1_cell'][f'within_{t}km_pct']


def test_plugin_reproduces_the_bundle_metrics_on_the_test_split(bundle, world, tmp_path):
    """The trainer's test table is computed with the plugin's own fix function (torch probabilities);
    the plugin on ONNX Runtime must give the same positions (float32 kernels differ: 1 m slack)."""
    import cv2

    from vizloc_training.datasets.gps import read_gps_dataset

    localizer = _localizer(bundle, tmp_path)
    try:
        errors, stamps = [], 0
        for rec in read_gps_dataset(world).split('test'):
            rgb = cv2.cvtColor(cv2.imread(str(rec.image)), cv2.COLOR_BGR2RGB)
            result = localizer.localize(Frame(stamp_ns=stamps, frame_id='camera', rgb_HW3=rgb))
            stamps += 1
            assert result.status == 'ok' and result.geo is not None
            cov = result.geo.cov_enu_m2
            assert np.all(np.linalg.eigvalsh(cov) > 0) and math.isnan(result.geo.alt_m)
            assert result.diagnostics['parent_cell'] and float(result.diagnostics['mass_used']) > 0
            errors.append(float(haversine_m(result.geo.lat_deg, result.geo.lon_deg, rec.lat_deg, rec.lon_deg)))
    finally:
        localizer.close()
    expected = load_bundle(bundle).metrics['test']['fix']
    assert km_table(errors)['mean_km'] == pytest.approx(expected['mean_km'], abs=1e-3)


def test_plugin_options_are_checked(bundle, tmp_path):
    from vizloc_ros.localizer import ConfigError

    with pytest.raises(ConfigError, match='cell_position'):
        _localizer(bundle, tmp_path, cell_position='degrees')
    with pytest.raises(ConfigError, match='region_km'):
        _localizer(bundle, tmp_path, region_km=-1.0)
    loc = _localizer(bundle, tmp_path, top_k=1, min_confidence=1.0)  # one cell never holds all the mass here
    try:
        rgb = np.random.default_rng(0).integers(0, 255, (36, 48, 3), dtype=np.uint8)
        result = loc.localize(Frame(stamp_ns=1, frame_id='camera', rgb_HW3=rgb))
        assert result.status == 'no_fix' and result.diagnostics['cells_used'] == '1'
    finally:
        loc.close()


def test_s2_classifier_publishes_fix_in_the_running_node_beside_another_localizer(bundle, example_bundle,
                                                                                 example_plugin_site, tmp_path):
    client = RosClient(DOMAIN_ID)
    try:
        params = {
            'localizers': ['world', 'example'],
            'world.type': 's2_classifier', 'world.bundle': str(bundle), 'world.backend': 'onnxruntime',
            'example.type': 'example_color', 'example.bundle': str(example_bundle),
        }
        client.record(NavSatFix, '/vizloc/world/fix')
        client.camera_publishers()
        with NodeProcess(DOMAIN_ID, params, log_path=tmp_path / 'node.log',
                         python_paths=(example_plugin_site,)) as node:
            assert client.wait_for_state('active') == 'active', node.log()
            assert client.wait_for_image_subscriber(), node.log()
            rng = np.random.default_rng(1)
            stamps = client.publish_stream(8, rate_hz=10.0,
                                           make=lambda i: rng.integers(0, 255, (36, 48, 3), dtype=np.uint8))
            assert client.wait_for(lambda: len(client.messages('/vizloc/world/fix')) >= 6, 20.0), node.log()
            time.sleep(0.2)
            assert node.alive(), node.log()
        fixes = client.messages('/vizloc/world/fix')
        for fix in fixes:
            assert stamp_to_ns(fix.header.stamp) in set(stamps)
            assert fix.status.status == NavSatStatus.STATUS_FIX
            cov = np.array(fix.position_covariance).reshape(3, 3)
            assert np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
            # altitude unknown: finite 0.0 with a (1 km)^2 variance (navsat_transform drops NaN altitudes)
            assert -90 <= fix.latitude <= 90 and fix.altitude == 0.0
            assert fix.position_covariance[8] == UNKNOWN_ALTITUDE_VARIANCE_M2
    finally:
        client.close()
