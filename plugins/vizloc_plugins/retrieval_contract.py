"""The bundle contract of the ``retrieval`` localizer, shared by the trainer (which builds it) and the plugin
(which parses it). Torch-free.

A retrieval bundle's ONNX model maps a uint8 RGB image (the bundle's input size, ``stretch`` resize) to
``descriptor``: ``[N, descriptor_dim]`` float32, L2-normalised global descriptors (backbone + GeM pooling +
linear projection). The reference database is not inside the (immutable) bundle: it grows without
retraining and carries its own manifest (docs/bundles.md); its descriptor files and FAISS index are named
by :meth:`RetrievalContract.descriptor_model`, a name derived from the model's sha256, so a database
built with another model is refused instead of silently mis-matched.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Mapping

from vizloc_ros.contract import BundleContract, ContractError

__all__ = ['LOCALIZER_TYPE', 'OUTPUT_NAMES', 'RetrievalContract', 'ContractError', 'descriptor_model_name']

LOCALIZER_TYPE = 'retrieval'
OUTPUT_NAMES = ('descriptor',)


def descriptor_model_name(model_sha256: str) -> str:
    """Descriptor/index name of a model: ``retrieval-<first 12 hex of its sha256>``."""
    return f'{LOCALIZER_TYPE}-{model_sha256[:12]}'


@dataclass(frozen=True)
class RetrievalContract(BundleContract):
    """``bundle.yaml`` metadata of a retrieval bundle (all keys with defaults; unknown keys are errors).

    ``descriptor_dim``: length of ``descriptor``; ``backbone``/``gem_p``: how it was made (information);
    ``positive_radius_m``/``positive_max_angle_deg``: what counted as the same place in training;
    ``recall_radius_m``: radius of the recall@k metric; ``resize``: always ``stretch``;
    ``backbone_weights``: where the backbone's initial weights came from (package, version, sha256).
    """

    TYPE: ClassVar[str] = LOCALIZER_TYPE
    OUTPUTS: ClassVar[tuple[str, ...]] = OUTPUT_NAMES
    PROVENANCE_KEYS: ClassVar[frozenset[str]] = frozenset({'train'})

    descriptor_dim: int = 256
    backbone: str = ''
    gem_p: float = 3.0
    positive_radius_m: float = 10.0
    positive_max_angle_deg: float = 60.0
    recall_radius_m: float = 25.0
    resize: str = 'stretch'
    backbone_weights: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.descriptor_dim < 1:
            raise ContractError(f'descriptor_dim must be >= 1, got {self.descriptor_dim}')
        if self.resize != 'stretch':
            raise ContractError(f'retrieval bundles use resize "stretch", got {self.resize!r}')
        if not (self.positive_radius_m > 0 and self.recall_radius_m > 0 and 0 < self.positive_max_angle_deg <= 180):
            raise ContractError('positive_radius_m and recall_radius_m must be > 0, positive_max_angle_deg in (0, 180]')
