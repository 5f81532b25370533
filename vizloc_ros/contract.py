"""Bundle contracts: what a localizer type's bundle holds, as one typed, frozen, torch-free dataclass.

A contract names its localizer type (``TYPE``), the model outputs every bundle of the type has
(``OUTPUTS``) and the ``bundle.yaml`` metadata fields with their defaults (the dataclass fields).
The trainer builds it and writes :meth:`BundleContract.to_metadata`; the plugin and the evaluators
parse it with :meth:`BundleContract.from_bundle`, so that a key is named, typed and defaulted in one
place. Metadata keys that are neither fields, nor the type's ``PROVENANCE_KEYS`` (how the model was
made, written for people and tools, never read by the runtime: training config, history...), nor
:data:`EXPORT_KEYS` (written by the ONNX export itself) are errors.

::

    @dataclass(frozen=True)
    class ExampleContract(BundleContract):
        TYPE: ClassVar[str] = 'example'
        OUTPUTS: ClassVar[tuple[str, ...]] = ('probs',)
        PROVENANCE_KEYS: ClassVar[frozenset[str]] = frozenset({'config', 'history'})

        classes: tuple[str, ...] = ()

    metadata = ExampleContract(classes=('a', 'b')).to_metadata(config=cfg, history=history)  # trainer
    contract = ExampleContract.from_bundle(model.bundle)                                     # plugin

Nested values: a field value with ``to_mapping()`` (e.g. :class:`vizloc_ros.geodesy.GeoReference`)
or a dataclass is written as a mapping; subclasses rebuild such fields in :meth:`BundleContract._from_fields`.
See docs/bundles.md.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, TypeVar

from .bundle import yaml_plain
from .localizer import ConfigError

if TYPE_CHECKING:
    from .geodesy import GeoReference

__all__ = ['EXPORT_KEYS', 'BundleContract', 'ContractError', 'check_keys', 'geo_reference', 'nested']

logger = logging.getLogger(__name__)

#: Metadata keys the ONNX export writes into every bundle (``vizloc_training.train.export``).
EXPORT_KEYS = frozenset({'localizer_type', 'mean', 'std'})

_C = TypeVar('_C', bound='BundleContract')
_T = TypeVar('_T')


class ContractError(ConfigError):
    """Bundle metadata or outputs that do not follow the localizer type's contract (also a ``ConfigError``)."""


def _plain(value: Any) -> Any:
    if hasattr(value, 'to_mapping'):
        return value.to_mapping()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def check_keys(mapping: Mapping[str, Any], known: set[str] | frozenset[str], what: str) -> None:
    """ContractError naming the unknown keys of ``mapping`` (and the known ones)."""
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        raise ContractError(f'unknown {what} keys {unknown}; known: {sorted(known)}')


def nested(cls: type[_T], value: Any, what: str) -> _T:
    """A nested metadata mapping as the frozen dataclass ``cls`` (unknown keys are errors)."""
    if not isinstance(value, Mapping):
        raise ContractError(f'{what} must be a mapping, got {value!r}')
    check_keys(value, {f.name for f in dataclasses.fields(cls)}, what)  # type: ignore[arg-type]
    return cls(**value)


def geo_reference(value: Any) -> GeoReference | None:
    """The :class:`GeoReference` of a metadata ``geo`` mapping (None for an empty or absent one)."""
    from .geodesy import GeodesyError, GeoReference  # local: pyproj only for the types that need it

    if not value:
        return None
    try:
        return GeoReference.from_mapping(value)
    except GeodesyError as exc:
        raise ContractError(f'bad metadata.geo {value!r}: {exc}') from exc


class BundleContract:
    """Base of the per-type contracts (subclasses are frozen dataclasses; see the module docstring)."""

    TYPE: ClassVar[str] = ''
    OUTPUTS: ClassVar[tuple[str, ...]] = ()
    PROVENANCE_KEYS: ClassVar[frozenset[str]] = frozenset()
    #: Fields that are not metadata keys (read from the bundle's files in :meth:`from_bundle`, e.g. a cell partition).
    FILE_FIELDS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def metadata_fields(cls) -> frozenset[str]:
        """Names of the fields that are ``bundle.yaml`` metadata keys (all but :attr:`FILE_FIELDS`)."""
        return frozenset(f.name for f in dataclasses.fields(cls)) - cls.FILE_FIELDS  # type: ignore[arg-type]

    def to_metadata(self, **provenance: Any) -> dict[str, Any]:
        """Plain metadata for ``bundle.yaml``: every field that is not None, plus ``provenance`` (only
        ``PROVENANCE_KEYS``)."""
        check_keys(provenance, self.PROVENANCE_KEYS, f'{self.TYPE} provenance')
        fields = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                  if f.name not in self.FILE_FIELDS and getattr(self, f.name) is not None}
        return yaml_plain({**fields, **provenance})

    @classmethod
    def from_metadata(cls: type[_C], metadata: Mapping[str, Any]) -> _C:
        """Parse bundle metadata: fields take their defaults when absent; unknown keys are errors."""
        known = cls.metadata_fields()
        check_keys(metadata, known | cls.PROVENANCE_KEYS | EXPORT_KEYS, f'{cls.TYPE} metadata')
        try:
            return cls._from_fields({k: v for k, v in metadata.items() if k in known})
        except ContractError:
            raise
        except (TypeError, ValueError) as exc:
            raise ContractError(f'bad {cls.TYPE} metadata: {exc}') from exc

    @classmethod
    def _from_fields(cls: type[_C], values: dict[str, Any]) -> _C:
        """Build the contract from the metadata values of its fields (override to rebuild nested values)."""
        return cls(**values)

    @classmethod
    def from_bundle(cls: type[_C], bundle: Any) -> _C:
        """Parse a loaded :class:`vizloc_ros.bundle.Bundle`: type, outputs and metadata checked."""
        if bundle.localizer_type != cls.TYPE:
            raise ContractError(f'{bundle.path}: bundle is for {bundle.localizer_type!r}, not {cls.TYPE!r}')
        missing = sorted(set(cls.OUTPUTS) - set(bundle.outputs))
        if missing:
            raise ContractError(f'{bundle.path}: bundle lacks outputs {missing}; has {list(bundle.outputs)}')
        try:
            contract = cls.from_metadata(bundle.metadata)
        except ContractError as exc:
            raise ContractError(f'{bundle.path}: {exc}') from exc
        contract.check_bundle(bundle)
        return contract

    def check_bundle(self, bundle: Any) -> None:
        """Checks that need the bundle itself (files it names...); raise ContractError. Default: none."""
