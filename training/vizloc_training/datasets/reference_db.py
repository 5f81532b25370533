"""The reference-database reader/writer lives in the runtime (:mod:`vizloc_plugins.refdb`, torch-free, used by
the ``retrieval`` localizer); this module re-exports it for the training stack (one copy)."""
from vizloc_plugins.refdb import (METADATA_KEYS, ReferenceDatabase, ReferenceDatabaseError,  # noqa: F401
                                  ReferenceEntry, read_reference_entry, write_reference_entry)

__all__ = ['ReferenceDatabaseError', 'ReferenceEntry', 'ReferenceDatabase', 'read_reference_entry',
           'write_reference_entry', 'METADATA_KEYS']
