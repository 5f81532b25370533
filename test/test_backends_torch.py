"""Torch (development) backend: parity with ONNX Runtime on the same exported model, TorchScript files."""
from __future__ import annotations

import numpy as np
import pytest

from vizloc_ros.backends import BackendError, BackendUnavailableError, TensorSpec, create_backend
from vizloc_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

pytestmark = pytest.mark.filterwarnings('ignore:.*torch.jit.*:FutureWarning', 'ignore::DeprecationWarning')

torch = pytest.importorskip('torch')
from vizloc_ros.backends.torch_backend import TorchBackend  # noqa: E402

ATOL = 1e-4  # fp32 CPU: ORT and torch kernels differ only by summation order


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.head(y.mean(dim=(2, 3))), y


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = TinyNet().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp('torch') / 'model.onnx'
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), input_names=['x'], output_names=['logits', 'features'],
                      dynamic_axes={'x': {0: 'N'}}, opset_version=17, dynamo=False)
    return net, path


def test_torch_and_onnxruntime_agree(exported):
    net, path = exported
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    with OnnxRuntimeBackend(path, intra_op_num_threads=1) as ort_runner, \
            TorchBackend(net, specs_from_onnx=path) as torch_runner:
        assert torch_runner.input_specs == ort_runner.input_specs
        ort_out = ort_runner.infer({'x': x})
        torch_out = torch_runner.infer({'x': x})
    assert set(ort_out) == set(torch_out) == {'logits', 'features'}
    for name in ort_out:
        assert ort_out[name].shape == torch_out[name].shape
        np.testing.assert_allclose(torch_out[name], ort_out[name], atol=ATOL, rtol=0)


def test_torchscript_file_next_to_the_onnx_runs_through_create_backend(exported):
    net, path = exported
    torch.jit.save(torch.jit.trace(net, torch.randn(1, 3, 16, 16)), str(path.with_suffix('.pt')))
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    with create_backend('torch', path) as runner:
        assert runner.description == 'torch:cpu'
        out = runner.infer({'x': x}, outputs=['logits'])
        with pytest.raises(BackendError, match="dtype float32"):
            runner.infer({'x': x.astype(np.float64)})
    expected = net(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_allclose(out['logits'], expected, atol=ATOL, rtol=0)


def test_explicit_specs_and_missing_files(tmp_path):
    net = torch.nn.Linear(4, 2).eval()
    spec = {'a': TensorSpec('a', np.dtype(np.float32), (None, 4))}
    with TorchBackend(net, input_specs=spec, output_names=['y']) as runner:
        out = runner.infer({'a': np.ones((3, 4), np.float32)})['y']
    assert out.shape == (3, 2)
    with pytest.raises(BackendError, match='input_specs'):
        TorchBackend(net)
    lonely = tmp_path / 'lonely.onnx'
    lonely.write_bytes(b'')
    with pytest.raises(BackendUnavailableError, match='TorchScript'):
        TorchBackend(lonely)
    with pytest.raises(BackendError, match='fp32'):
        TorchBackend(net, input_specs=spec, output_names=['y'], precision='fp16')
