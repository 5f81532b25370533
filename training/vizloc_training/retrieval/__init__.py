"""The ``retrieval`` localizer's training side (seed 004): place-recognition trainer and the ``vizloc-db`` CLI.

The runtime parts (reference database, FAISS index, the localizer) are in ``vizloc_plugins.refdb`` and
``vizloc_plugins.retrieval``; see docs/localizers/retrieval.md.
"""
