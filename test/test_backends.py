"""ONNX Runtime backend, create_backend/available_backends, infer() validation and the no-torch rule."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from onnx_models import add_model, expected_mean_rgb, mean_color_model
from vizloc_ros.backends import (BackendConfigError, BackendError, BackendInputError, BackendUnavailableError,
                                 available_backends, create_backend, default_cache_dir)
from vizloc_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
from vizloc_ros.backends.tensorrt_backend import tensorrt_available
from vizloc_ros.localizer import ConfigError


@pytest.fixture(scope='module')
def add_onnx(tmp_path_factory):
    return add_model(tmp_path_factory.mktemp('models') / 'add.onnx')


@pytest.fixture()
def runner(add_onnx):
    with OnnxRuntimeBackend(add_onnx, intra_op_num_threads=1) as backend:
        yield backend


def test_specs_come_from_the_session_with_symbolic_dims_as_none(runner):
    assert set(runner.input_specs) == {'a', 'b'}
    assert set(runner.output_specs) == {'sum', 'product'}
    assert runner.input_specs['a'].shape == (None, 4)
    assert runner.input_specs['a'].dtype == np.float32
    assert runner.output_specs['product'].shape == (None, 4)
    assert runner.description == 'onnxruntime:CPUExecutionProvider' or runner.description.startswith('onnxruntime:')
    assert 'CPUExecutionProvider' in runner.active_providers


def test_infer_computes_all_or_selected_outputs(runner):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 4)).astype(np.float32)
    b = rng.normal(size=(5, 4)).astype(np.float32)
    out = runner.infer({'a': a, 'b': b})
    np.testing.assert_allclose(out['sum'], a + b, rtol=1e-6)
    np.testing.assert_allclose(out['product'], a * b, rtol=1e-6)
    only = runner.infer({'a': a[:2], 'b': b[:2]}, outputs=['product'])
    assert list(only) == ['product'] and only['product'].shape == (2, 4)


@pytest.mark.parametrize('feeds, match', [
    ({'a': np.zeros((1, 4), np.float32)}, r"missing \['b'\]"),
    ({'a': np.zeros((1, 4), np.float32), 'b': np.zeros((1, 4), np.float32), 'c': np.zeros(1)}, r"unexpected \['c'\]"),
    ({'a': np.zeros((1, 4), np.float64), 'b': np.zeros((1, 4), np.float32)}, r"'a' must have dtype float32, got float64"),
    ({'a': np.zeros((1, 5), np.float32), 'b': np.zeros((1, 4), np.float32)}, r"'a' must have shape \(\?, 4\), got \(1, 5\)"),
    ({'a': np.zeros((4,), np.float32), 'b': np.zeros((1, 4), np.float32)}, r"'a' must have shape \(\?, 4\), got \(4,\)"),
    ({'a': [[0.0] * 4], 'b': np.zeros((1, 4), np.float32)}, r"'a' must be a numpy array, got list"),
])
def test_infer_validates_inputs_before_running(runner, feeds, match):
    with pytest.raises(BackendInputError, match=match):
        runner.infer(feeds)


def test_infer_rejects_unknown_output_names(runner):
    zeros = np.zeros((1, 4), np.float32)
    with pytest.raises(BackendInputError, match=r"unknown outputs \['diff'\]"):
        runner.infer({'a': zeros, 'b': zeros}, outputs=['diff'])


def test_load_close_and_context_manager(add_onnx):
    backend = OnnxRuntimeBackend(add_onnx, intra_op_num_threads=1)
    assert not backend.is_loaded
    zeros = np.zeros((1, 4), np.float32)
    with pytest.raises(BackendError, match='before load'):
        backend.infer({'a': zeros, 'b': zeros})
    assert backend.load() is backend and backend.is_loaded
    backend.close()
    backend.close()  # idempotent
    assert not backend.is_loaded
    with pytest.raises(BackendError, match='before load'):
        backend.infer({'a': zeros, 'b': zeros})
    with backend as same:
        assert same is backend and backend.is_loaded
        np.testing.assert_array_equal(same.infer({'a': zeros + 1, 'b': zeros + 2})['sum'], zeros + 3)
    assert not backend.is_loaded


def test_mean_color_model_with_dynamic_size(tmp_path):
    model = mean_color_model(tmp_path / 'mean.onnx', height=None, width=None, batch=None)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(2, 24, 40, 3), dtype=np.uint8)
    with create_backend('onnxruntime', model, cache_dir=tmp_path) as backend:
        assert backend.input_specs['image'].shape == (None, None, None, 3)
        assert backend.input_specs['image'].dtype == np.uint8
        out = backend.infer({'image': images})['mean_rgb']
    assert out.shape == (2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[1], expected_mean_rgb(images[1]), atol=1e-6)


def test_bad_model_files_raise_backend_error(tmp_path):
    with pytest.raises(BackendError, match='does not exist'):
        OnnxRuntimeBackend(tmp_path / 'missing.onnx')
    garbage = tmp_path / 'garbage.onnx'
    garbage.write_bytes(b'this is not a protobuf')
    backend = OnnxRuntimeBackend(garbage)
    with pytest.raises(BackendError, match='could not load'):
        backend.load()
    assert not backend.is_loaded


def test_unavailable_provider_and_bad_settings_are_refused(add_onnx):
    with pytest.raises(BackendUnavailableError, match='NoSuchExecutionProvider'):
        OnnxRuntimeBackend(add_onnx, providers=['NoSuchExecutionProvider'])
    with pytest.raises(BackendError, match='precision'):
        OnnxRuntimeBackend(add_onnx, precision='int8')
    with pytest.raises(BackendError, match='intra_op_num_threads'):
        OnnxRuntimeBackend(add_onnx, intra_op_num_threads=-1)


def test_create_backend_kinds_and_errors(add_onnx, tmp_path):
    with pytest.raises(BackendConfigError, match="unknown backend 'cuda'"):
        create_backend('cuda', add_onnx)
    with pytest.raises(ConfigError, match="unknown precision 'int8'"):  # also a ConfigError for the node
        create_backend('onnxruntime', add_onnx, precision='int8')
    backend = create_backend('onnxruntime', add_onnx, cache_dir=tmp_path)
    assert isinstance(backend, OnnxRuntimeBackend) and not backend.is_loaded
    auto = create_backend('auto', add_onnx, cache_dir=tmp_path)
    expected = 'tensorrt' if tensorrt_available() else 'onnxruntime'
    assert auto.name == expected and not auto.is_loaded


def test_ort_threads_from_argument_or_environment(add_onnx, monkeypatch):
    monkeypatch.setenv('VIZLOC_ORT_THREADS', '2')
    assert create_backend('onnxruntime', add_onnx).intra_op_num_threads == 2
    assert create_backend('onnxruntime', add_onnx, intra_op_num_threads=1).intra_op_num_threads == 1
    monkeypatch.setenv('VIZLOC_ORT_THREADS', 'many')
    with pytest.raises(BackendConfigError, match='VIZLOC_ORT_THREADS'):
        create_backend('onnxruntime', add_onnx)
    monkeypatch.delenv('VIZLOC_ORT_THREADS')
    assert create_backend('onnxruntime', add_onnx).intra_op_num_threads == 0


def test_available_backends_lists_what_runs_here():
    kinds = available_backends()
    assert 'onnxruntime' in kinds
    assert ('tensorrt' in kinds) == tensorrt_available()
    if 'tensorrt' in kinds:
        assert kinds.index('tensorrt') < kinds.index('onnxruntime')


def test_default_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('VIZLOC_CACHE_DIR', str(tmp_path / 'c'))
    assert default_cache_dir() == tmp_path / 'c'
    monkeypatch.delenv('VIZLOC_CACHE_DIR')
    assert default_cache_dir().parts[-2:] == ('.cache', 'vizloc_ros')


def test_runtime_runs_onnx_without_importing_torch_or_tensorrt(tmp_path):
    model = mean_color_model(tmp_path / 'mean.onnx', 8, 8)
    code = textwrap.dedent(f'''
        import sys
        import numpy as np
        import vizloc_ros, vizloc_ros.backends, vizloc_ros.bundle, vizloc_ros.geodesy, vizloc_ros.plugin_manager
        from vizloc_ros.backends import available_backends, create_backend
        kinds = available_backends()
        with create_backend('onnxruntime', {str(model)!r}, cache_dir={str(tmp_path)!r}) as runner:
            out = runner.infer({{'image': np.full((1, 8, 8, 3), 51, np.uint8)}})['mean_rgb']
        assert np.allclose(out, 0.2), out
        heavy = sorted(m for m in ('torch', 'tensorrt', 'torchvision') if m in sys.modules)
        allowed = ['tensorrt'] if 'tensorrt' in kinds else []  # auto-detection may import an installed TensorRT
        print('HEAVY', [m for m in heavy if m not in allowed])
    ''')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'HEAVY []' in proc.stdout, proc.stdout


def test_no_runtime_or_plugin_module_imports_torch():
    """Every module of vizloc_ros and of the built-in plugins imports without pulling in torch."""
    code = textwrap.dedent('''
        import importlib, importlib.util, json, pkgutil, sys
        names = ['vizloc_ros'] + (['vizloc_plugins'] if importlib.util.find_spec('vizloc_plugins') else [])
        failed = {}
        for name in names:
            pkg = importlib.import_module(name)
            for info in pkgutil.walk_packages(pkg.__path__, name + '.'):
                try:
                    importlib.import_module(info.name)
                except Exception as exc:  # report every broken module, not just the first
                    failed[info.name] = repr(exc)
        print(json.dumps({'failed': failed, 'heavy': [m for m in ('torch', 'torchvision') if m in sys.modules],
                          'count': sum(1 for m in sys.modules if m.startswith(tuple(names)))}))
    ''')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['failed'] == {}
    assert result['heavy'] == []
    assert result['count'] > 10
