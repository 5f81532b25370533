"""Shared training infrastructure: presets, checkpoints, backbones, ONNX export, bundles, CLI, BundleModel."""
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

torch = pytest.importorskip('torch')
from torch import nn  # noqa: E402

from vizloc_ros.bundle import InputSpec, load_bundle  # noqa: E402
from vizloc_ros.localizer import ConfigError  # noqa: E402
from vizloc_ros.types import Frame  # noqa: E402
from vizloc_training.models.backbones import (BACKBONES, InitWeightsError, count_flops, count_params,  # noqa: E402
                                              make_backbone)
from vizloc_training.train.config import (TrainArgs, TrainConfig, TrainConfigError, config_dict,  # noqa: E402
                                          resolve_preset)
from vizloc_training.train.export import (ExportError, export_and_bundle, export_onnx,  # noqa: E402
                                          measure_onnx_latency)
from vizloc_training.train.loop import (CheckpointError, CheckpointManager, progress, set_seed, set_threads,  # noqa: E402
                                        work_dir)
from vizloc_training.train.metrics_table import flatten_metrics, format_table  # noqa: E402

PRESETS = {'demo': {'backbone': 'resnet18', 'epochs': 5, 'batch_size': 8, 'lr': 1e-3, 'image_size': 128,
                    'hflip': True, 'scales': [0.5, 1.0]},
           'tiny': {'epochs': 1, 'image_size': 32}}


def _args(**kw):
    return TrainArgs(type='room_classifier', data=Path('/data'), out=Path('/out'), **kw)


# -- presets ---------------------------------------------------------------------------------------
def test_resolve_preset_explicit_values_win_and_extra_is_coerced():
    cfg = resolve_preset(PRESETS, _args(epochs=9, lr=0.5, extra={'image_size': '160', 'hflip': 'false',
                                                                   'scales': '0.25,0.75'}))
    assert cfg == {'backbone': 'resnet18', 'epochs': 9, 'batch_size': 8, 'lr': 0.5, 'image_size': 160,
                   'hflip': False, 'scales': [0.25, 0.75]}
    assert PRESETS['demo']['epochs'] == 5  # presets are not mutated


def test_resolve_preset_errors():
    with pytest.raises(TrainConfigError, match="unknown preset 'huge'"):
        resolve_preset(PRESETS, _args(preset='huge'))
    with pytest.raises(TrainConfigError, match="unknown setting 'imagesize'"):
        resolve_preset(PRESETS, _args(extra={'imagesize': '3'}))
    with pytest.raises(TrainConfigError, match="has no 'backbone'"):
        resolve_preset(PRESETS, _args(preset='tiny', backbone='resnet18'))
    with pytest.raises(TrainConfigError, match='expected a int'):
        resolve_preset(PRESETS, _args(extra={'image_size': 'big'}))
    with pytest.raises(TrainConfigError, match='epochs must be positive'):
        _args(epochs=0)
    with pytest.raises(TrainConfigError, match='device'):
        _args(device='tpu')
    assert _args(init_weights='w.pt').to_dict()['init_weights'] == 'w.pt'


@dataclass(frozen=True)
class _Config(TrainConfig):
    TYPE: ClassVar[str] = 'room_classifier'
    POSITIVE: ClassVar[tuple[str, ...]] = ('epochs',)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {'mode': ('a', 'b')}

    backbone: str = 'resnet18'
    epochs: int = 5
    lr: float = 1e-3
    hflip: bool = True
    scales: list[float] = field(default_factory=lambda: [0.5, 1.0])
    mode: str = 'a'


TYPED = {'demo': _Config(), 'tiny': replace(_Config(), epochs=1)}


def test_resolve_preset_on_config_dataclasses():
    cfg = resolve_preset(TYPED, _args(epochs=9, lr=1, extra={'hflip': 'no', 'scales': '0.25,0.75', 'mode': 'b'}))
    assert cfg == _Config(epochs=9, lr=1.0, hflip=False, scales=[0.25, 0.75], mode='b') and isinstance(cfg.lr, float)
    assert config_dict(cfg) == cfg.to_dict() == {'backbone': 'resnet18', 'epochs': 9, 'lr': 1.0, 'hflip': False,
                                                 'scales': [0.25, 0.75], 'mode': 'b'}
    assert TYPED['demo'].epochs == 5 and resolve_preset(TYPED, _args(preset='tiny')) == TYPED['tiny']
    with pytest.raises(TrainConfigError, match="unknown setting 'imagesize'"):
        resolve_preset(TYPED, _args(extra={'imagesize': '3'}))
    with pytest.raises(TrainConfigError, match='expected a bool'):
        resolve_preset(TYPED, _args(extra={'hflip': 1}))  # values that are not text are checked, not parsed
    with pytest.raises(TrainConfigError, match="mode must be one of \\('a', 'b'\\), got 'c'"):
        resolve_preset(TYPED, _args(extra={'mode': 'c'}))
    with pytest.raises(TrainConfigError, match='epochs must be positive'):
        resolve_preset(TYPED, _args(extra={'epochs': '0'}))


# -- checkpoints -------------------------------------------------------------------------------------
def test_checkpoints_keep_latest_and_are_self_describing(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    manager = CheckpointManager(tmp_path / 'checkpoints', keep=2,
                                describe={'type': 'room_classifier', 'preset': 'tiny', 'args': {'seed': 1}})
    assert manager.load_latest() is None
    for epoch in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(epoch)
        manager.save(epoch, model, opt, extra={'best': epoch / 10})
    assert [p.name for p in manager.paths()] == ['epoch_0002.pt', 'epoch_0003.pt']
    assert not list((tmp_path / 'checkpoints').glob('.*tmp'))
    payload = manager.load_latest()
    assert payload['epoch'] == 3 and payload['type'] == 'room_classifier' and payload['preset'] == 'tiny'
    assert payload['args'] == {'seed': 1} and payload['extra'] == {'best': 0.3}
    assert float(payload['model']['weight'][0, 0]) == 3.0
    assert payload['optimizer']['param_groups'][0]['lr'] == 0.1
    other = CheckpointManager(tmp_path / 'checkpoints', describe={'type': 'gps_regressor'})
    with pytest.raises(CheckpointError, match="for 'room_classifier'"):
        other.load_latest()
    torch.save({'weights': 1}, tmp_path / 'checkpoints' / 'epoch_0009.pt')
    with pytest.raises(CheckpointError, match='not a vizloc checkpoint'):
        manager.load_latest()
    assert work_dir(Path('/x/bundles/room')) == Path('/x/bundles/room.work')


class _Payload:
    """A pickled object: unpickling a file that holds one runs code of the file's choosing."""

    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_checkpoints_and_init_weights_holding_pickled_objects_are_refused(tmp_path):
    """Robustness finding 8: torch.load(weights_only=False) on a user-supplied file runs its pickles."""
    from vizloc_training.scene_coordinates.model import EncoderCheckpointError, load_encoder

    manager = CheckpointManager(tmp_path / 'checkpoints', describe={'type': 'room_classifier'})
    (tmp_path / 'checkpoints').mkdir()
    evil = {'format': 'vizloc-checkpoint', 'model': {'w': torch.zeros(1)}, 'x': _Payload()}
    torch.save(evil, tmp_path / 'checkpoints' / 'epoch_0001.pt')
    with pytest.raises(CheckpointError, match='cannot read'):
        manager.load_latest()
    torch.save(evil, tmp_path / 'evil.pt')
    with pytest.raises(InitWeightsError, match='cannot read'):
        make_backbone('resnet18', init_weights=tmp_path / 'evil.pt')
    with pytest.raises(EncoderCheckpointError, match='cannot read'):
        load_encoder(tmp_path / 'evil.pt')


def test_progress_is_plain_iteration_with_vizloc_no_progress(monkeypatch, caplog):
    monkeypatch.setenv('VIZLOC_NO_PROGRESS', '1')
    with caplog.at_level(logging.INFO, logger='vizloc_training.train.loop'):
        assert list(progress(range(3), desc='x', log_every_s=0.0)) == [0, 1, 2]
    assert not caplog.records


def test_progress_logs_counts_and_eta_without_a_tty(monkeypatch, caplog):
    """Off a terminal (a log file, CI) long work still reports: an INFO line at most every log_every_s."""
    monkeypatch.delenv('VIZLOC_NO_PROGRESS', raising=False)
    monkeypatch.setattr(sys.stderr, 'isatty', lambda: False)
    with caplog.at_level(logging.INFO, logger='vizloc_training.train.loop'):
        assert list(progress(range(4), desc='features', log_every_s=0.0)) == [0, 1, 2, 3]
        assert list(progress(range(1000), desc='quiet', log_every_s=3600.0)) == list(range(1000))
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(',')[0] for line in lines] == [f'features: {i}/4 ({25 * i} %)' for i in range(1, 5)]
    assert all('ETA' in line for line in lines)


def test_set_threads_explicit_count_or_auto_with_one_thread_under_load(monkeypatch):
    """threads > 0 is taken as given; 0 keeps torch's default unless other processes' running threads
    already fill the CPUs, then one thread (spin-waiting OpenMP threads on busy cores are many times slower)."""
    import torch

    import vizloc_training.train.loop as loop

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(os, 'cpu_count', lambda: 2)
        set_threads(1)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setattr(loop, 'busy_cpus', lambda: 0.4)
        set_threads(0)
        assert torch.get_num_threads() == 2  # idle: torch's default is left alone
        monkeypatch.setattr(loop, 'busy_cpus', lambda: 2.2)
        set_threads(0)
        assert torch.get_num_threads() == 1  # oversubscribed: one thread
        set_threads(2)
        assert torch.get_num_threads() == 2  # an explicit count wins over the load
    finally:
        torch.set_num_threads(before)


def test_busy_cpus_reads_the_running_count_less_itself_or_else_the_load_average(monkeypatch):
    """A /proc/loadavg of '0.40 0.30 0.20 3/120 999' is three running threads, the reader one of them: 2 others. A
    count of 0 (a sandbox's made-up file leaves out the reader) or no /proc falls back to the 1-minute load
    average."""
    import vizloc_training.train.loop as loop

    class FakeProc:
        text = ''

        def __init__(self, path):
            if self.text is None:
                raise FileNotFoundError(path)

        def read_text(self):
            return FakeProc.text

    monkeypatch.setattr(loop, 'Path', FakeProc)
    monkeypatch.setattr(loop.os, 'getloadavg', lambda: (1.25, 1.0, 0.5), raising=False)
    FakeProc.text = '0.40 0.30 0.20 3/120 999'
    assert loop.busy_cpus(samples=3, interval_s=0.0) == 2.0
    FakeProc.text = '0.40 0.30 0.20 0/120 999'
    assert loop.busy_cpus(samples=3, interval_s=0.0) == 1.25
    FakeProc.text = None
    assert loop.busy_cpus(samples=3, interval_s=0.0) == 1.25


@pytest.mark.skipif(not Path('/proc/loadavg').exists(), reason='no /proc/loadavg (not Linux)')
def test_busy_cpus_counts_running_processes_now_not_the_minute_before():
    """Two spinning processes are two running threads at once (other processes can only add to the
    count); once they are killed, the figure drops at once, where the 1-minute load average lags. Where
    /proc/loadavg's running count leaves out its reader, busy_cpus is the 1-minute load average, read between
    two reads of it (the kernel moves it every 5 s, so it cannot show the spinners at once)."""
    from vizloc_training.train.loop import busy_cpus

    if int(Path('/proc/loadavg').read_text().split()[3].split('/')[0]) < 1:
        before = os.getloadavg()[0]
        got = busy_cpus()
        after = os.getloadavg()[0]
        assert min(before, after) <= got <= max(before, after)
        return
    spinners = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(2)]
    try:
        time.sleep(0.5)
        loaded = busy_cpus()
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    assert loaded >= 1.5, loaded  # 2 spinners, each runnable on every read of the 5
    after = busy_cpus()
    assert after <= loaded - 1.0, (after, loaded)  # the two spinners are gone from the figure at once


# -- backbones -----------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_backbones_build_from_scratch(name):
    set_seed(0)
    backbone, dim = make_backbone(name)
    backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = backbone.forward_features(x)
        pooled = backbone(x)
    assert pooled.shape == (2, dim) and maps.shape[:2] == (2, dim)
    if backbone.supports_cam:
        torch.testing.assert_close(pooled, maps.mean(dim=(2, 3)))
    assert count_params(backbone) > 100_000


def test_init_weights_from_a_torchvision_state_dict(tmp_path):
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    path = tmp_path / 'resnet18.pth'
    torch.save(reference.state_dict(), path)
    backbone, _ = make_backbone('resnet18', init_weights=path)
    torch.testing.assert_close(backbone.features.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(backbone.features.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    with pytest.raises(InitWeightsError, match='missing from the file'):
        make_backbone('mobilenet_v3_small', init_weights=path)
    with pytest.raises(InitWeightsError, match='no such file'):
        make_backbone('resnet18', init_weights=tmp_path / 'nope.pth')
    with pytest.raises(ValueError, match='unknown backbone'):
        make_backbone('vgg11')


def test_count_flops_hand_computed():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, (1, 3, 8, 8)) == 2 * 8 * 8 * 8 * 3 * 3 * 3
    assert count_params(conv) == 8 * 3 * 3 * 3


# -- export --------------------------------------------------------------------------------------------
class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        maps = torch.relu(self.conv(x))
        return self.fc(maps.mean(dim=(2, 3))), maps


def test_export_onnx_bakes_in_preprocessing_and_matches_torch(tmp_path):
    import onnx
    import onnxruntime as ort

    set_seed(0)
    model = TwoHeads().eval()
    spec = InputSpec(height=24, width=32)
    report = {}
    path = export_onnx(model, tmp_path / 'm.onnx', input_spec=spec, output_names=['logits', 'maps'],
                       metadata={'localizer_type': 'room_classifier', 'classes': ['a', 'b']}, report=report)
    assert report['parity_max_abs_diff'] < 1e-4 and report['opset'] == 17
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props['vizloc.localizer_type'] == 'room_classifier' and props['vizloc.format_version'] == '1'
    assert json.loads(props['vizloc.metadata'])['classes'] == ['a', 'b']
    # batch of 3 (dynamic batch), uint8 NHWC RGB in; same as normalising by hand and running torch
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, size=(3, 24, 32, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    logits, maps = session.run(None, {'image': batch})
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = torch.from_numpy(((batch / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))
    with torch.no_grad():
        want_logits, want_maps = model(x)
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(maps, want_maps.numpy(), atol=1e-4)
    with pytest.raises(ExportError, match='2 outputs'):
        export_onnx(model, tmp_path / 'x.onnx', input_spec=spec, output_names=['logits'],
                    metadata={'localizer_type': 'room_classifier'})
    with pytest.raises(ValueError, match='localizer_type is required'):
        export_onnx(model, tmp_path / 'x.onnx', input_spec=spec, output_names=['a', 'b'])


def test_export_and_bundle(tmp_path):
    set_seed(0)
    extra = tmp_path / 'rooms.yaml'
    extra.write_text('a: [[0, 0], [1, 0], [1, 1]]\n')
    bundle_dir = export_and_bundle(TwoHeads().eval(), tmp_path / 'bundle', localizer_type='room_classifier',
                                   input_spec=InputSpec(height=16, width=16), output_names=['logits', 'maps'],
                                   metadata={'classes': ['a', 'b']}, metrics={'accuracy': 0.5},
                                   extra_files={'rooms.yaml': extra}, latency_runs=3)
    bundle = load_bundle(bundle_dir, expected_type='room_classifier')
    assert bundle.metrics['accuracy'] == 0.5 and bundle.metrics['onnx_latency_p50_ms'] > 0
    assert bundle.metrics['onnx_parity_max_abs_diff'] < 1e-4
    assert bundle.metadata['classes'] == ['a', 'b'] and bundle.outputs == ('logits', 'maps')
    assert 'vizloc_training' in bundle.producer
    assert bundle.file('rooms.yaml').read_text() == extra.read_text()
    latency = measure_onnx_latency(bundle.model_path, shape=(1, 16, 16, 3), runs=3, warmup=1)
    assert latency['latency_p95_ms'] >= latency['latency_p50_ms'] > 0 and latency['latency_threads'] == 1


def test_evaluation_files_beside_the_bundle_follow_its_model(tmp_path):
    from onnx_models import mean_color_model
    from vizloc_ros.bundle import write_bundle
    from vizloc_training.train.evaluation_file import evaluation_dir, read_evaluations, write_evaluation

    out = tmp_path / 'room'
    write_bundle(out, 'room_classifier', mean_color_model(tmp_path / 'm.onnx', 8, 8), InputSpec(height=8, width=8))
    before = sorted(p.name for p in out.iterdir()), (out / 'bundle.yaml').read_text()
    path = write_evaluation(out, 'trajectory', {'frames': np.int64(12), 'hmm_accuracy': np.float32(0.5)})
    assert path == evaluation_dir(out) / 'trajectory.yaml' == tmp_path / 'room.eval' / 'trajectory.yaml'
    assert (sorted(p.name for p in out.iterdir()), (out / 'bundle.yaml').read_text()) == before  # bundle untouched
    assert read_evaluations(out) == {'trajectory': {'frames': 12, 'hmm_accuracy': 0.5}}
    # a new model written to the same place: the old evaluation no longer counts
    write_bundle(out, 'room_classifier', mean_color_model(tmp_path / 'm16.onnx', 16, 16), InputSpec(height=16, width=16))
    assert read_evaluations(out) == {} and path.is_file()
    with pytest.raises(ValueError, match='evaluation name'):
        write_evaluation(out, '../x', {})


def test_metrics_table():
    rows = flatten_metrics({'accuracy': 0.91234, 'test': {'top3': 1.0, 'cm': [[1]]}, 'n': 12, 'name': 'x'})
    assert rows == {'accuracy': 0.91234, 'test/top3': 1.0, 'n': 12, 'name': 'x'}
    table = format_table(rows, title='T')
    lines = table.splitlines()
    assert lines[0] == 'T' and 'metric' in lines[1] and '0.9123' in table and lines[-2].split('|')[1].strip() == '12'
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns


# -- CLI -----------------------------------------------------------------------------------------------
def test_cli_help_and_argument_errors():
    env = {**os.environ, 'VIZLOC_NO_PROGRESS': '1'}
    out = subprocess.run([sys.executable, '-m', 'vizloc_training.train.cli', '--help'], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0
    for word in ('room_classifier', 'gps_regressor', 'scene_coordinates', '--preset', '--resume', '--init-weights',
                 '--device', 'torchrun'):
        assert word in out.stdout
    bad = subprocess.run([sys.executable, '-m', 'vizloc_training.train.cli', 'room_classifier', '--data', 'x',
                          '--out', 'y', '--set', 'novalue'], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and 'KEY=VALUE' in bad.stderr
    unknown = subprocess.run([sys.executable, '-m', 'vizloc_training.train.cli', 'planet', '--data', 'x', '--out', 'y'],
                             capture_output=True, text=True, env=env, timeout=60)
    assert unknown.returncode == 2 and 'invalid choice' in unknown.stderr


# -- BundleModel ----------------------------------------------------------------------------------------
class MeanColour(nn.Module):
    """Outputs the per-channel mean of the (normalised) input: checks resizing and channel order."""

    def forward(self, x):
        return (x.mean(dim=(2, 3)),)


def test_bundle_model_runs_frames_of_any_size(tmp_path):
    from vizloc_ros.runner import BundleModel, resize_for_model

    bundle_dir = export_and_bundle(MeanColour(), tmp_path / 'b', localizer_type='room_classifier',
                                   input_spec=InputSpec(height=20, width=30), output_names=['mean'],
                                   mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), measure_latency=False)
    with BundleModel(bundle_dir, backend='onnxruntime', expected_type='room_classifier') as model:
        assert model.backend_name.startswith('onnxruntime')
        for h, w in ((48, 64), (7, 300), (300, 7), (20, 30)):
            rgb = np.zeros((h, w, 3), np.uint8)
            rgb[..., 0], rgb[..., 2] = 255, 51
            out = model.run(Frame(rgb_HW3=rgb, stamp_ns=0, frame_id='cam'))
            np.testing.assert_allclose(out['mean'][0], [1.0, 0.0, 0.2], atol=1e-5)
            assert (model.last_resize.src_width, model.last_resize.src_height) == (w, h)
    with pytest.raises(ConfigError, match="not 'gps_regressor'"):
        BundleModel(bundle_dir, backend='onnxruntime', expected_type='gps_regressor')
    (bundle_dir / 'model.onnx').write_bytes((bundle_dir / 'model.onnx').read_bytes() + b'x')
    with pytest.raises(ConfigError, match='sha256 mismatch'):
        BundleModel(bundle_dir, backend='onnxruntime')
    # letterbox keeps the aspect ratio and pads with grey; the mapping back crops the padding away
    image, resize = resize_for_model(np.full((10, 40, 3), 200, np.uint8), 40, 40, 'letterbox')
    assert image.shape == (40, 40, 3) and resize.pad_y == 15 and resize.pad_x == 0
    assert (image[:15] == 114).all() and (image[15:25] == 200).all() and (image[25:] == 114).all()
    heat = np.zeros((40, 40), np.float32)
    heat[15:25] = 1.0
    assert resize.crop_to_source(heat).shape == (10, 40) and resize.crop_to_source(heat).min() > 0.99


def test_faiss_is_loaded_with_the_kernels_a_newer_openblas_detected():
    """``import_faiss`` tells FAISS's own OpenBLAS the core numpy's detected, through OPENBLAS_CORETYPE set around the
    import alone. Hand-made threadpoolctl records first, then a fresh interpreter on this machine."""
    from vizloc_training.train.loop import faiss_openblas_core

    def lib(arch):
        return {'internal_api': 'openblas', 'architecture': arch, 'filepath': '/venv/numpy.libs/a.so'}

    assert faiss_openblas_core([lib('SkylakeX'), {'internal_api': 'openmp', 'architecture': None}]) == 'SkylakeX'
    assert faiss_openblas_core([lib('SapphireRapids')]) == 'SkylakeX'  # a name OpenBLAS 0.3.15 does not know
    assert faiss_openblas_core([lib('Prescott')]) is None  # nothing to tell (an old CPU, or one numpy's lacks)
    assert faiss_openblas_core([lib('Zen'), lib('SkylakeX')]) is None  # two OpenBLASes disagree: leave it alone
    assert faiss_openblas_core([]) is None
    script = """
import json, os, platform, numpy
from threadpoolctl import threadpool_info
from vizloc_training.train.loop import faiss_openblas_core, import_faiss
told = faiss_openblas_core(threadpool_info()) if platform.machine() in ('x86_64', 'AMD64') else None
import_faiss()
in_faiss = [i['architecture'] for i in threadpool_info()
            if i['internal_api'] == 'openblas' and 'faiss' in i['filepath']]
print(json.dumps({'told': told, 'in_faiss': in_faiss, 'env': os.environ.get('OPENBLAS_CORETYPE')}))
"""
    env = {k: v for k, v in os.environ.items() if k != 'OPENBLAS_CORETYPE'}
    out = json.loads(subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True,
                                    check=True, timeout=120).stdout.splitlines()[-1])
    assert out['env'] is None  # not left for later libraries and child processes
    if out['told'] is not None:
        assert out['in_faiss'] in ([], [out['told']])  # [] where FAISS brings no OpenBLAS of its own


def test_faiss_blas_hint_names_the_kernels_a_newer_openblas_detected():
    """faiss-cpu's OpenBLAS 0.3.15 answers 'Prescott' (generic SSE3) on CPUs newer than it; numpy's OpenBLAS in the
    same process knows the CPU. Hand-made threadpoolctl records first, then this machine's own."""
    from threadpoolctl import threadpool_info

    from vizloc_training.train.loop import faiss_blas_hint, import_faiss

    def lib(arch, path, version='0.3.15'):
        return {'internal_api': 'openblas', 'architecture': arch, 'filepath': path, 'version': version}

    numpy_blas = lib('SkylakeX', '/venv/numpy.libs/libscipy_openblas64_.so', '0.3.31')
    faiss_generic = lib('Prescott', '/venv/faiss_cpu.libs/libopenblaso-r0.3.15.so')
    hint = faiss_blas_hint([numpy_blas, faiss_generic, {'internal_api': 'openmp', 'architecture': None}])
    assert hint is not None and 'OPENBLAS_CORETYPE=SkylakeX' in hint and '0.3.15' in hint
    assert faiss_blas_hint([numpy_blas, lib('Zen', '/venv/faiss_cpu.libs/libopenblaso.so')]) is None  # knows it
    assert faiss_blas_hint([faiss_generic]) is None  # nothing says the CPU is newer (an old CPU is Prescott too)
    assert faiss_blas_hint([lib('Prescott', '/venv/numpy.libs/a.so'), faiss_generic]) is None
    assert faiss_blas_hint([numpy_blas]) is None  # a FAISS without its own OpenBLAS
    # this machine: FAISS loaded, its OpenBLAS (where it brings one) reports an architecture, and the hint holds
    import_faiss()
    real = faiss_blas_hint(threadpool_info())
    assert real is None or 'OPENBLAS_CORETYPE=' in real
    in_faiss = [i for i in threadpool_info()
                if i.get('internal_api') == 'openblas' and 'faiss' in i.get('filepath', '')]
    assert all(isinstance(i.get('architecture'), str) and i['architecture'] for i in in_faiss)
