"""The bundle contract of the ``room_classifier`` localizer, shared by the trainer (which builds it), the plugin
and the trajectory evaluator (which parse it). Torch-free.

A room_classifier bundle's ONNX model maps a uint8 RGB image (the bundle's input size) to ``probs``
(N x C softmax over :attr:`RoomClassifierContract.classes`, in that order) and, for GAP + linear heads,
``cam`` (N x C x h x w class-activation maps). The bundle may carry a room map (``room_map``, a
file of the bundle: room label -> polygon in the map frame) and the HMM smoothing parameters chosen on
the validation trajectory (``smoothing``, :class:`vizloc_plugins.smoothing.SmoothingCalibration`, parsed
here as a nested contract field: the one reader of ``metadata.smoothing``; importable from here too).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np

from vizloc_ros.contract import BundleContract, ContractError, nested
from vizloc_ros.runner import RESIZE_MODES

from .smoothing import SmoothingCalibration

__all__ = ['LOCALIZER_TYPE', 'OUTPUT_PROBS', 'OUTPUT_CAM', 'RoomClassifierContract', 'SmoothingCalibration']

LOCALIZER_TYPE = 'room_classifier'
OUTPUT_PROBS = 'probs'
OUTPUT_CAM = 'cam'


@dataclass(frozen=True)
class RoomClassifierContract(BundleContract):
    """``bundle.yaml`` metadata of a room_classifier bundle (see the module docstring).

    ``classes``: room labels in output order (at least 2); ``resize``: how frames are resized to the input;
    ``tta_flip``: the graph averages the image and its mirror (information); ``backbone``,
    ``backbone_weights``: how the network was initialised (information); ``room_map``: name of the room-map
    file in the bundle ('' = none); ``smoothing``: calibrated HMM parameters (None = the plugin's defaults).
    """

    TYPE: ClassVar[str] = LOCALIZER_TYPE
    OUTPUTS: ClassVar[tuple[str, ...]] = (OUTPUT_PROBS,)
    PROVENANCE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {'image_size', 'outputs', 'class_prior', 'train_counts', 'preset', 'config', 'args', 'history'})

    classes: tuple[str, ...] = ()
    resize: str = 'stretch'
    tta_flip: bool = False
    backbone: str = ''
    backbone_weights: Mapping[str, str] = dataclasses.field(default_factory=dict)
    room_map: str = ''
    smoothing: SmoothingCalibration | None = None

    def __post_init__(self) -> None:
        if isinstance(self.classes, str) or len(self.classes) < 2:
            raise ContractError(f'classes must list the rooms (at least 2), got {self.classes!r}')
        object.__setattr__(self, 'classes', tuple(str(c) for c in self.classes))
        if len(set(self.classes)) != len(self.classes):
            raise ContractError(f'classes must be unique, got {list(self.classes)}')
        if self.resize not in RESIZE_MODES:
            raise ContractError(f'resize must be one of {RESIZE_MODES}, got {self.resize!r}')
        switch = self.smoothing.switch_matrix if self.smoothing is not None else ()
        if switch and np.shape(switch) != (len(self.classes), len(self.classes)):
            raise ContractError(f'smoothing.switch_matrix has shape {np.shape(switch)}, expected '
                                f'{len(self.classes)}x{len(self.classes)}')

    @classmethod
    def _from_fields(cls, values: dict[str, Any]) -> 'RoomClassifierContract':
        smoothing = values.pop('smoothing', None)
        return cls(**values, smoothing=nested(SmoothingCalibration, smoothing, 'smoothing') if smoothing else None)

    def check_bundle(self, bundle: Any) -> None:
        if self.room_map and self.room_map not in bundle.files:
            raise ContractError(f'{bundle.path}: room_map {self.room_map!r} is not a file of the bundle')
