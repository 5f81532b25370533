"""FrozenFeatures: the frozen-feature modes' backbone pass through ONNX Runtime equals torch's, per input size."""
from __future__ import annotations

import pytest
import torch

from vizloc_training.models.backbones import make_backbone
from vizloc_training.models.frozen import PARITY_TOL, FrozenFeatures, FrozenFeaturesError


def test_onnx_runtime_maps_equal_torch_maps_for_each_input_size() -> None:
    backbone, _ = make_backbone('efficientnet_lite0', pretrained=True)
    backbone.train()  # FrozenFeatures evaluates in eval mode and leaves the mode as it was
    generator = torch.Generator().manual_seed(0)
    with FrozenFeatures(backbone, torch.device('cpu'), threads=1) as frozen:
        assert frozen.use_ort
        for height, width in ((64, 80), (96, 96)):
            x = torch.randn(3, 3, height, width, generator=generator)
            maps = frozen(x)
            backbone.eval()
            with torch.no_grad():
                reference = backbone.forward_features(x)
            backbone.train()
            assert maps.dtype == torch.float32 and maps.shape == reference.shape
            # the exporter's tolerance (relative to max(1, max |torch|)); kernels differ, graphs do not
            scale = max(1.0, float(reference.abs().max()))
            torch.testing.assert_close(maps, reference, rtol=0, atol=PARITY_TOL * scale)
        assert sorted(frozen._sessions) == [(64, 80), (96, 96)]
        assert backbone.training
        with pytest.raises(ValueError, match='N, 3, H, W'):
            frozen(torch.zeros(3, 64, 80))
    with pytest.raises(FrozenFeaturesError, match='closed'):
        frozen(torch.zeros(1, 3, 32, 32))
