"""The bundle contract of the ``s2_classifier`` localizer, shared by the trainer (which builds it), the plugin and
the evaluator (which parse it). Torch-free.

An s2_classifier bundle's ONNX model maps a uint8 RGB image (the bundle's input size, ``stretch`` resize) to
``probs`` (N x C softmax over S2 cells) and, with the hierarchical head (``parent_levels_up`` > 0),
``parent_probs`` (N x P softmax over the cells' ancestors). The cell partition (PlaNet's adaptive partition
of the training split, :mod:`vizloc_plugins.s2_cells`) is the bundle file ``cells_file`` (``cells.csv``);
the partition parameters and the defaults of the fix are the metadata mapping ``s2_classifier``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from vizloc_ros.contract import BundleContract, ContractError, check_keys

from .s2_cells import CELL_POSITIONS, CellPartition, S2CellError

__all__ = ['LOCALIZER_TYPE', 'OUTPUT_PROBS', 'OUTPUT_PARENT_PROBS', 'S2ClassifierContract']

LOCALIZER_TYPE = 's2_classifier'
OUTPUT_PROBS = 'probs'
OUTPUT_PARENT_PROBS = 'parent_probs'


@dataclass(frozen=True)
class S2ClassifierContract(BundleContract):
    """``bundle.yaml`` metadata of an s2_classifier bundle plus its cell partition (see the module docstring).

    The fields in :attr:`NESTED_FIELDS` are stored as the mapping ``metadata.s2_classifier``; ``resize``
    (always ``stretch``), ``tta_flip``, ``backbone`` and ``backbone_weights`` (how the network was
    initialised; the last three information) are top-level keys. ``partition`` is read from
    ``cells_file`` by :meth:`from_bundle` and written by :meth:`write_files`. Unknown keys, at either
    level, are errors.
    """

    TYPE: ClassVar[str] = LOCALIZER_TYPE
    OUTPUTS: ClassVar[tuple[str, ...]] = (OUTPUT_PROBS,)
    PROVENANCE_KEYS: ClassVar[frozenset[str]] = frozenset({'preset', 'config', 'args', 'history', 'outputs'})
    FILE_FIELDS: ClassVar[frozenset[str]] = frozenset({'partition'})
    METADATA_KEY: ClassVar[str] = LOCALIZER_TYPE
    NESTED_FIELDS: ClassVar[tuple[str, ...]] = ('cells_file', 'cell_position', 'parent_levels_up', 't_max', 't_min',
                                                 'max_level', 'top_k', 'neighbourhood_km', 'region_km')
    OUTPUT_PROBS: ClassVar[str] = OUTPUT_PROBS
    OUTPUT_PARENT_PROBS: ClassVar[str] = OUTPUT_PARENT_PROBS

    cells_file: str = 'cells.csv'
    #: ``train_mean`` or ``center``: the point that stands for a cell in the fix.
    cell_position: str = 'train_mean'
    #: > 0: the model also outputs ``parent_probs`` over the cells' ancestors this many levels up.
    parent_levels_up: int = 0
    #: Partition parameters (PlaNet): split above t_max images, drop below t_min, never finer than max_level.
    t_max: int = 0
    t_min: int = 0
    max_level: int = 20
    #: Defaults of the fix (plugin options override them).
    top_k: int = 3
    neighbourhood_km: float = 2.5
    #: > 0: the region rule of the fix (radius, km); 0, as in bundles written before it: the best cell decides.
    region_km: float = 0.0
    resize: str = 'stretch'
    #: The graph averages the probabilities of the image and its mirror image (information).
    tta_flip: bool = False
    backbone: str = ''
    backbone_weights: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The partition itself (from ``cells_file``; not a metadata key).
    partition: CellPartition | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.cell_position not in CELL_POSITIONS:
            raise ContractError(f's2_classifier: cell_position must be one of {CELL_POSITIONS}, got {self.cell_position!r}')
        if (self.parent_levels_up < 0 or self.top_k < 1 or not self.neighbourhood_km > 0.0
                or not self.region_km >= 0.0):
            raise ContractError('s2_classifier: need parent_levels_up >= 0, top_k >= 1, neighbourhood_km > 0 and '
                                'region_km >= 0')
        if self.resize != 'stretch':
            raise ContractError(f's2_classifier bundles use resize "stretch", got {self.resize!r}')

    @property
    def output_names(self) -> list[str]:
        """The model outputs of this bundle: ``probs``, and ``parent_probs`` with the hierarchical head."""
        return [OUTPUT_PROBS, *([OUTPUT_PARENT_PROBS] if self.parent_levels_up else [])]

    def parents(self) -> tuple[tuple[str, ...], np.ndarray]:
        """(parent tokens, parent index per cell) of the hierarchical output (empty without it)."""
        if not self.parent_levels_up or self.partition is None:
            return (), np.zeros(0, dtype=np.int64)
        return self.partition.parents(self.parent_levels_up)

    def to_metadata(self, **provenance: Any) -> dict[str, Any]:
        """Metadata for ``bundle.yaml``, the partition parameters nested under ``s2_classifier``."""
        flat = super().to_metadata(**provenance)
        return {self.METADATA_KEY: {name: flat.pop(name) for name in self.NESTED_FIELDS}, **flat}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> 'S2ClassifierContract':
        raw = metadata.get(cls.METADATA_KEY)
        if not isinstance(raw, Mapping):
            raise ContractError(f'bundle metadata has no {cls.METADATA_KEY!r} mapping (not an s2_classifier bundle?)')
        unknown = sorted(set(raw) - set(cls.NESTED_FIELDS))
        if unknown:
            raise ContractError(f'metadata.{cls.METADATA_KEY}: unknown keys {unknown}; known: {sorted(cls.NESTED_FIELDS)}')
        top = {k: v for k, v in metadata.items() if k != cls.METADATA_KEY}
        check_keys(top, set(top) - set(cls.NESTED_FIELDS), f'{cls.TYPE} top-level metadata')  # nested ones only nested
        return super().from_metadata({**top, **raw})

    def write_files(self, directory: Path) -> dict[str, Path]:
        """Write the bundle's extra files into ``directory``; returns ``{bundle name: path}``."""
        if self.partition is None:
            raise ContractError('contract has no partition to write')
        path = Path(directory) / self.cells_file
        path.write_text(self.partition.to_csv())
        return {self.cells_file: path}

    @classmethod
    def from_bundle(cls, bundle: Any) -> 'S2ClassifierContract':
        """Parse a loaded (verified) :class:`vizloc_ros.bundle.Bundle`: metadata, outputs and the cells file."""
        contract = super().from_bundle(bundle)
        try:
            partition = CellPartition.from_csv(bundle.file(contract.cells_file).read_text(),
                                               source=str(bundle.path / contract.cells_file))
        except (OSError, S2CellError) as exc:
            raise ContractError(f'{bundle.path}: cannot read the cell partition: {exc}') from exc
        return replace(contract, partition=partition)

    def check_bundle(self, bundle: Any) -> None:
        if self.cells_file not in bundle.files:
            raise ContractError(f'{bundle.path}: bundle has no cell partition file {self.cells_file!r}')
        missing = sorted(set(self.output_names) - set(bundle.outputs))
        if missing:
            raise ContractError(f'{bundle.path}: bundle outputs {list(bundle.outputs)} lack {missing}')
