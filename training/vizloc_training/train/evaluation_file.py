"""Evaluation results of a bundle, kept in their own files beside it: ``OUT.eval/<name>.yaml``.

A bundle is immutable (``bundle.yaml`` hashes every file); an evaluation run after the export (the
room classifier's test trajectory through the deployed graph, say) therefore does not reopen and
rewrite it. It writes ``OUT.eval/<name>.yaml`` instead::

    bundle: /data/bundles/room          # where the evaluated bundle was
    model_sha256: 3f1c...e9a2           # which model was evaluated
    created_utc: '2026-12-02T19:34:17Z'
    metrics: {frames: 12, hmm_accuracy: 0.92, ...}

:func:`read_evaluations` returns the metrics of the files whose ``model_sha256`` is the bundle's
model (a file left from an earlier model of the same name is skipped). ``vizloc-train`` prints them
with the bundle's own metrics. See docs/bundles.md.
"""
from __future__ import annotations

import datetime as _dt
import logging
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from vizloc_ros.bundle import load_bundle, yaml_plain

__all__ = ['EVALUATION_SUFFIX', 'evaluation_dir', 'write_evaluation', 'read_evaluations']

logger = logging.getLogger(__name__)

EVALUATION_SUFFIX = '.eval'
_NAME = re.compile(r'^[A-Za-z0-9_-]+$')


def evaluation_dir(bundle_dir: Path | str) -> Path:
    """``OUT.eval/`` beside bundle ``OUT`` (``write_bundle`` replaces ``OUT`` itself)."""
    bundle_dir = Path(bundle_dir)
    return bundle_dir.with_name(bundle_dir.name + EVALUATION_SUFFIX)


def write_evaluation(bundle_dir: Path | str, name: str, metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics`` of the bundle (verified first) to ``OUT.eval/<name>.yaml``; returns the file."""
    if not _NAME.match(name):
        raise ValueError(f'evaluation name must be letters, digits, _ or -, got {name!r}')
    bundle = load_bundle(bundle_dir)
    path = evaluation_dir(bundle.path) / f'{name}.yaml'
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {'bundle': str(bundle.path), 'model_sha256': bundle.model_sha256,
              'created_utc': _dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
              'metrics': yaml_plain(dict(metrics))}
    tmp = path.with_suffix('.yaml.tmp')
    tmp.write_text(yaml.safe_dump(record, sort_keys=False))
    tmp.replace(path)
    logger.info('%s: evaluation %r written to %s', bundle.path, name, path)
    return path


def read_evaluations(bundle_dir: Path | str) -> dict[str, Any]:
    """``{name: metrics}`` of the evaluation files of the bundle's current model (others are skipped)."""
    bundle = load_bundle(bundle_dir)
    results: dict[str, Any] = {}
    directory = evaluation_dir(bundle.path)
    for path in sorted(directory.glob('*.yaml')) if directory.is_dir() else []:
        try:
            record = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            logger.warning('%s: unreadable evaluation file (%s); skipped', path, exc)
            continue
        if not isinstance(record, dict) or record.get('model_sha256') != bundle.model_sha256:
            logger.warning('%s: evaluates another model than %s; skipped', path, bundle.path)
            continue
        results[path.stem] = record.get('metrics') or {}
    return results
