"""TensorRT backend: engine cache keys, the 'unavailable' path here, and a real build where a GPU exists."""
from __future__ import annotations

import numpy as np
import pytest

from onnx_models import expected_mean_rgb, mean_color_model
from vizloc_ros.backends import BackendUnavailableError, create_backend
from vizloc_ros.backends.tensorrt_backend import (TensorRTBackend, engine_cache_key, engine_file_name,
                                                  tensorrt_available, tensorrt_unavailable_reason)

SHA = 'ab' * 32


def test_engine_cache_key_is_stable_and_depends_on_every_component():
    key = engine_cache_key(SHA, '10.7.0', 'NVIDIA H100 80GB HBM3', 'fp16')
    assert key == engine_cache_key(SHA.upper(), '10.7.0', ' NVIDIA H100 80GB HBM3 ', 'fp16')  # normalised
    assert len(key) == 64 and int(key, 16) >= 0
    variants = [
        engine_cache_key('cd' * 32, '10.7.0', 'NVIDIA H100 80GB HBM3', 'fp16'),
        engine_cache_key(SHA, '10.8.0', 'NVIDIA H100 80GB HBM3', 'fp16'),
        engine_cache_key(SHA, '10.7.0', 'Orin', 'fp16'),
        engine_cache_key(SHA, '10.7.0', 'NVIDIA H100 80GB HBM3', 'fp32'),
    ]
    assert len({key, *variants}) == 5


@pytest.mark.parametrize('args, match', [
    (('', '10.7', 'gpu', 'fp32'), 'onnx_sha256'),
    ((SHA, '', 'gpu', 'fp32'), 'tensorrt_version'),
    ((SHA, '10.7', '  ', 'fp32'), 'gpu_name'),
    ((SHA, '10.7', 'gpu', 'int8'), 'precision'),
])
def test_engine_cache_key_rejects_bad_components(args, match):
    with pytest.raises(ValueError, match=match):
        engine_cache_key(*args)


def test_engine_file_name_is_filesystem_safe():
    key = engine_cache_key(SHA, '10.7.0', 'gpu', 'fp32')
    name = engine_file_name('/x/my model:v2.onnx', key, 'fp32')
    assert name == f'my_model_v2-fp32-{key[:16]}.engine'


@pytest.mark.skipif(tensorrt_available(), reason='TensorRT and a CUDA GPU are present here')
def test_unavailable_tensorrt_raises_a_clear_error(tmp_path):
    model = mean_color_model(tmp_path / 'm.onnx', 8, 8)
    reason = tensorrt_unavailable_reason()
    assert reason
    with pytest.raises(BackendUnavailableError, match='tensorrt backend unavailable') as info:
        TensorRTBackend(model, cache_dir=tmp_path)
    assert reason in str(info.value) and 'onnxruntime' in str(info.value)
    with pytest.raises(BackendUnavailableError):
        create_backend('tensorrt', model, cache_dir=tmp_path)
    assert create_backend('auto', model, cache_dir=tmp_path).name == 'onnxruntime'


@pytest.mark.skipif(not tensorrt_available(), reason=f'needs TensorRT + CUDA GPU: {tensorrt_unavailable_reason()}')
def test_tensorrt_builds_caches_and_matches_onnxruntime(tmp_path):
    model = mean_color_model(tmp_path / 'm.onnx', 16, 16)
    image = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    with create_backend('tensorrt', model, cache_dir=tmp_path) as trt_runner:
        out = trt_runner.infer({'image': image})['mean_rgb']
        engine = trt_runner.engine_path
    assert engine is not None and engine.is_file() and engine.parent == tmp_path / 'engines'
    mtime = engine.stat().st_mtime_ns
    with create_backend('tensorrt', model, cache_dir=tmp_path) as again:  # loads the cached engine
        assert again.engine_path == engine
    assert engine.stat().st_mtime_ns == mtime
    np.testing.assert_allclose(out[0], expected_mean_rgb(image[0]), atol=1e-4)
