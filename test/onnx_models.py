"""Tiny ONNX models built with ``onnx.helper`` (no torch) for everybody's tests.

Every builder writes a real ``.onnx`` file that ONNX Runtime can run and returns its path. The
image models follow the bundle input contract (docs/bundles.md): the input is named ``image``,
``uint8``, NHWC, RGB; preprocessing is inside the graph.

* :func:`mean_color_model` -- ``image`` [B,H,W,3] uint8 -> ``mean_rgb`` [B,3] float32 in [0, 1]
  (per-channel mean of the image divided by 255).
* :func:`linear_head_model` -- like :func:`mean_color_model` followed by a fixed linear layer:
  ``output`` [B,K] = mean_rgb @ W[3,K] + b[K] (use it as a "classifier" producing logits or a
  "regressor" producing coordinates whose value you can predict from the image colour).
* :func:`add_model` -- two float32 inputs ``a``, ``b`` [N,4] (N dynamic) -> ``sum`` and ``product``;
  for backend tests of names, dtypes, shapes and multiple outputs.

``batch``, ``height`` and ``width`` may be ``None`` for a dynamic (symbolic) axis.
Opset 17 / IR version 8, so any ONNX Runtime >= 1.14 and TensorRT 10 load them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ['OPSET', 'IR_VERSION', 'mean_color_model', 'linear_head_model', 'add_model', 'expected_mean_rgb']

OPSET = 17
IR_VERSION = 8


def _dim(value: int | None, symbol: str) -> int | str:
    return symbol if value is None else int(value)


def _save(graph: onnx.GraphProto, path: str | Path, metadata: dict[str, str] | None) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)], producer_name='vizloc-tests')
    model.ir_version = IR_VERSION
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _mean_rgb_nodes(input_name: str = 'image') -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    nodes = [
        helper.make_node('Cast', [input_name], ['image_f32'], to=TensorProto.FLOAT),
        helper.make_node('ReduceMean', ['image_f32'], ['mean_255'], axes=[1, 2], keepdims=0),
        helper.make_node('Div', ['mean_255', 'c255'], ['mean_rgb']),
    ]
    inits = [numpy_helper.from_array(np.array(255.0, dtype=np.float32), 'c255')]
    return nodes, inits


def mean_color_model(path: str | Path, height: int | None = 32, width: int | None = 32, *,
                     batch: int | None = 1, metadata: dict[str, str] | None = None) -> Path:
    """``image`` uint8 [batch,height,width,3] -> ``mean_rgb`` float32 [batch,3] = mean colour / 255."""
    nodes, inits = _mean_rgb_nodes()
    image = helper.make_tensor_value_info(
        'image', TensorProto.UINT8, [_dim(batch, 'N'), _dim(height, 'H'), _dim(width, 'W'), 3])
    out = helper.make_tensor_value_info('mean_rgb', TensorProto.FLOAT, [_dim(batch, 'N'), 3])
    graph = helper.make_graph(nodes, 'mean_color', [image], [out], initializer=inits)
    return _save(graph, path, metadata)


def linear_head_model(path: str | Path, weight_3K: np.ndarray, bias_K: np.ndarray | Sequence[float] | None = None,
                      height: int | None = 32, width: int | None = 32, *, batch: int | None = 1,
                      output_name: str = 'output', metadata: dict[str, str] | None = None) -> Path:
    """``image`` uint8 [B,H,W,3] -> ``output_name`` float32 [B,K] = mean_rgb @ weight_3K + bias_K."""
    weight = np.asarray(weight_3K, dtype=np.float32)
    if weight.ndim != 2 or weight.shape[0] != 3:
        raise ValueError(f'weight_3K must have shape (3, K), got {weight.shape}')
    k = weight.shape[1]
    bias = np.zeros(k, np.float32) if bias_K is None else np.asarray(bias_K, dtype=np.float32).reshape(k)
    nodes, inits = _mean_rgb_nodes()
    nodes += [
        helper.make_node('MatMul', ['mean_rgb', 'W'], ['xw']),
        helper.make_node('Add', ['xw', 'b'], [output_name]),
    ]
    inits += [numpy_helper.from_array(weight, 'W'), numpy_helper.from_array(bias, 'b')]
    image = helper.make_tensor_value_info(
        'image', TensorProto.UINT8, [_dim(batch, 'N'), _dim(height, 'H'), _dim(width, 'W'), 3])
    out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [_dim(batch, 'N'), k])
    graph = helper.make_graph(nodes, 'linear_head', [image], [out], initializer=inits)
    return _save(graph, path, metadata)


def add_model(path: str | Path, *, metadata: dict[str, str] | None = None) -> Path:
    """Inputs ``a``, ``b`` float32 [N,4] (N dynamic) -> outputs ``sum`` = a+b and ``product`` = a*b."""
    a = helper.make_tensor_value_info('a', TensorProto.FLOAT, ['N', 4])
    b = helper.make_tensor_value_info('b', TensorProto.FLOAT, ['N', 4])
    s = helper.make_tensor_value_info('sum', TensorProto.FLOAT, ['N', 4])
    p = helper.make_tensor_value_info('product', TensorProto.FLOAT, ['N', 4])
    graph = helper.make_graph([helper.make_node('Add', ['a', 'b'], ['sum']), helper.make_node('Mul', ['a', 'b'], ['product'])],
                              'add', [a, b], [s, p])
    return _save(graph, path, metadata)


def expected_mean_rgb(rgb_HW3: np.ndarray) -> np.ndarray:
    """What :func:`mean_color_model` computes for one image, in numpy (float32 [3] in [0, 1])."""
    return (np.asarray(rgb_HW3, dtype=np.float64).mean(axis=(0, 1)) / 255.0).astype(np.float32)
