"""Build the ``example_color`` model (ONNX, with ``onnx.helper``) and write it as a vizloc bundle.

Real localizers export their model from training (``vizloc_training``); this example builds a
graph by hand so that it needs neither torch nor weights: ``image`` uint8 [1,H,W,3] RGB ->
``mean_rgb`` float32 [1,3] = per-channel mean / 255. The bundle's ``metadata.palette`` is the colour
table (name -> RGB in [0, 1]) the localizer compares that mean with: :data:`PALETTE` by default, or the
one :mod:`.train` measures on a dataset (``vizloc-train example_color``).
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from vizloc_ros.bundle import FORMAT_VERSION, InputSpec, write_bundle

from .localizer import LOCALIZER_TYPE, PALETTE

__all__ = ['build_model', 'make_bundle', 'main']

OPSET = 17


def build_model(path: Path, height: int, width: int) -> Path:
    """Write the mean-colour ONNX model (with the ``vizloc.*`` metadata_props) to ``path``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node('Cast', ['image'], ['image_f32'], to=TensorProto.FLOAT),
        helper.make_node('ReduceMean', ['image_f32'], ['mean_255'], axes=[1, 2], keepdims=0),
        helper.make_node('Div', ['mean_255', 'c255'], ['mean_rgb']),
    ]
    graph = helper.make_graph(
        nodes, 'example_color',
        [helper.make_tensor_value_info('image', TensorProto.UINT8, [1, height, width, 3])],
        [helper.make_tensor_value_info('mean_rgb', TensorProto.FLOAT, [1, 3])],
        initializer=[numpy_helper.from_array(np.array(255.0, dtype=np.float32), 'c255')])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)],
                              producer_name='vizloc-example-plugin')
    model.ir_version = 8
    for key, value in (('vizloc.localizer_type', LOCALIZER_TYPE), ('vizloc.format_version', str(FORMAT_VERSION))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_bundle(out_dir: str | Path, *, height: int = 32, width: int = 32,
                palette: Mapping[str, Sequence[float]] | None = None, metadata: Mapping[str, Any] | None = None,
                metrics: Mapping[str, Any] | None = None) -> Path:
    """Write an ``example_color`` bundle to ``out_dir`` (replacing it) and return its path.

    ``palette``: the colour table (default :data:`PALETTE`); ``metadata``/``metrics``: more of each
    (how the bundle was made, what was measured).
    """
    table = {name: [float(v) for v in rgb] for name, rgb in (palette if palette is not None else PALETTE).items()}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / 'model.onnx', height, width)
        return write_bundle(
            out_dir, LOCALIZER_TYPE, model, InputSpec(name='image', height=height, width=width),
            outputs=['mean_rgb'], metadata={'palette': table, **dict(metadata or {})}, metrics=metrics,
            producer='vizloc-example-plugin 0.1.0')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description='Write an example_color model bundle.')
    parser.add_argument('out_dir', type=Path)
    parser.add_argument('--size', default='32x32', help='model input WIDTHxHEIGHT (default 32x32)')
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split('x'))
    logging.basicConfig(level=logging.INFO)
    print(make_bundle(args.out_dir, height=height, width=width))


if __name__ == '__main__':
    main()
