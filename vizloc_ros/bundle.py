"""Model bundles: a self-describing directory holding a model and everything needed to run it.

Layout (format version 1, documented in docs/bundles.md)::

    BUNDLE/
      bundle.yaml      # localizer_type, format_version, input spec, metadata, metrics, files+sha256
      model.onnx       # preprocessing baked in: input is uint8 NHWC RGB
      ...              # optional extra files (listed and hashed in bundle.yaml)

Loading verifies the format version and the sha256 of every listed file and refuses a mismatch
with a :class:`BundleError` that says which file and what to do.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ['FORMAT_VERSION', 'BundleError', 'InputSpec', 'Bundle', 'load_bundle', 'write_bundle', 'sha256_file', 'contained_path',
           'yaml_plain']

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
BUNDLE_FILE = 'bundle.yaml'
_KNOWN_KEYS = {'format_version', 'localizer_type', 'model', 'input', 'outputs', 'metadata', 'metrics', 'files',
               'created_utc', 'producer'}


class BundleError(ValueError):
    """A bundle that is missing, malformed, of another format version, or fails its hash check."""


@dataclass(frozen=True)
class InputSpec:
    """The model's image input. With preprocessing baked into the graph the node feeds
    ``uint8`` ``NHWC`` ``RGB`` batches of ``height`` x ``width``."""

    name: str = 'image'
    height: int = 224
    width: int = 224
    layout: str = 'NHWC'
    dtype: str = 'uint8'
    color: str = 'RGB'

    def __post_init__(self) -> None:
        if self.layout not in ('NHWC', 'NCHW'):
            raise BundleError(f'input.layout must be NHWC or NCHW, got {self.layout!r}')
        if self.color not in ('RGB', 'BGR'):
            raise BundleError(f'input.color must be RGB or BGR, got {self.color!r}')
        if self.height <= 0 or self.width <= 0:
            raise BundleError(f'input size must be positive, got {self.width}x{self.height}')


@dataclass(frozen=True)
class Bundle:
    """A loaded (and verified) bundle."""

    path: Path
    localizer_type: str
    model_file: str
    input: InputSpec
    outputs: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    producer: str = ''
    created_utc: str = ''
    format_version: int = FORMAT_VERSION

    @property
    def model_path(self) -> Path:
        return contained_path(self.path, self.model_file)

    def file(self, name: str) -> Path:
        """Path of a listed extra file (e.g. a reference database)."""
        if name not in self.files:
            raise BundleError(f'{self.path}: bundle has no file {name!r}; it lists {sorted(self.files)}')
        return contained_path(self.path, name)

    @property
    def model_sha256(self) -> str:
        return self.files[self.model_file]


def contained_path(root: Path, name: str) -> Path:
    """``root / name`` if it stays inside ``root`` once resolved (symlinks followed), else BundleError.

    Absolute names, ``..`` components and symlinks that lead out of the bundle are refused, so a
    doctored bundle.yaml cannot make the node load a model or hash a file from elsewhere.
    """
    if not name or Path(name).is_absolute():
        raise BundleError(f'{root}: file name {name!r} must be a relative path inside the bundle')
    base = root.resolve()
    resolved = (base / name).resolve()
    if not resolved.is_relative_to(base):
        raise BundleError(f'{root}: file {name!r} resolves to {resolved}, outside the bundle directory; refused')
    return resolved


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(path: str | os.PathLike, expected_type: str | None = None, verify: bool = True) -> Bundle:
    """Read ``path/bundle.yaml``, check version, type and hashes, and return the :class:`Bundle`."""
    root = Path(path).expanduser()
    meta_path = root / BUNDLE_FILE
    if not root.is_dir():
        raise BundleError(f'bundle directory {root} does not exist')
    if not meta_path.is_file():
        raise BundleError(f'{root} is not a vizloc bundle: {BUNDLE_FILE} is missing')
    try:
        meta = yaml.safe_load(meta_path.read_text())
    except yaml.YAMLError as exc:
        raise BundleError(f'{meta_path}: not valid YAML: {exc}') from exc
    if not isinstance(meta, dict):
        raise BundleError(f'{meta_path}: expected a mapping at top level')
    unknown = sorted(set(meta) - _KNOWN_KEYS)
    if unknown:
        raise BundleError(f'{meta_path}: unknown keys {unknown}')
    version = meta.get('format_version')
    if version != FORMAT_VERSION:
        raise BundleError(
            f'{meta_path}: bundle format version {version!r} is not supported by this vizloc_ros '
            f'(supports {FORMAT_VERSION}); re-export the bundle with a matching vizloc_training')
    for key in ('localizer_type', 'model', 'input', 'files'):
        if key not in meta:
            raise BundleError(f'{meta_path}: required key {key!r} is missing')
    if expected_type is not None and meta['localizer_type'] != expected_type:
        raise BundleError(
            f'{root}: bundle is for localizer type {meta["localizer_type"]!r}, not {expected_type!r}')
    try:
        input_spec = InputSpec(**meta['input'])
    except TypeError as exc:
        raise BundleError(f'{meta_path}: bad input spec {meta["input"]!r}: {exc}') from exc
    files = {str(k): str(v) for k, v in (meta['files'] or {}).items()}
    if meta['model'] not in files:
        raise BundleError(f'{meta_path}: model file {meta["model"]!r} is not listed under files')
    for name in files:  # before anything is read: no file from outside the bundle, symlinks included
        contained_path(root, name)
    if verify:
        for name, expected in files.items():
            file_path = root / name
            if not file_path.is_file():
                raise BundleError(f'{root}: listed file {name!r} is missing')
            actual = sha256_file(file_path)
            if actual != expected:
                raise BundleError(
                    f'{root}: sha256 mismatch for {name!r} (bundle.yaml says {expected[:12]}..., file is '
                    f'{actual[:12]}...): the file was modified or truncated; re-copy or re-export the bundle')
    return Bundle(
        path=root,
        localizer_type=str(meta['localizer_type']),
        model_file=str(meta['model']),
        input=input_spec,
        outputs=tuple(meta.get('outputs') or ()),
        metadata=meta.get('metadata') or {},
        metrics=meta.get('metrics') or {},
        files=files,
        producer=str(meta.get('producer', '')),
        created_utc=str(meta.get('created_utc', '')),
        format_version=version,
    )


def write_bundle(out_dir: str | os.PathLike, localizer_type: str, model_file: str | os.PathLike,
                 input_spec: InputSpec, outputs: tuple[str, ...] | list[str] = (),
                 metadata: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                 extra_files: Mapping[str, str | os.PathLike] | None = None, producer: str = '') -> Path:
    """Write a bundle atomically (to a temporary sibling directory, then rename) and return its path.

    ``model_file`` is copied in as ``model.onnx`` (or its own name if not ``.onnx``);
    ``extra_files`` maps names inside the bundle to source paths. Existing ``out_dir`` is replaced.
    """
    out = Path(out_dir).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', dir=out.parent))
    try:
        model_src = Path(model_file)
        model_name = 'model.onnx' if model_src.suffix == '.onnx' else model_src.name
        shutil.copyfile(model_src, tmp / model_name)
        for name, src in (extra_files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / name)
        names = [model_name, *(extra_files or {})]
        meta = {
            'format_version': FORMAT_VERSION,
            'localizer_type': localizer_type,
            'model': model_name,
            'input': asdict(input_spec),
            'outputs': list(outputs),
            'metadata': yaml_plain(dict(metadata or {})),
            'metrics': yaml_plain(dict(metrics or {})),
            'files': {name: sha256_file(tmp / name) for name in names},
            'created_utc': _dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
            'producer': producer,
        }
        (tmp / BUNDLE_FILE).write_text(yaml.safe_dump(meta, sort_keys=False))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info('wrote %s bundle %s', localizer_type, out)
    return out


def yaml_plain(value: Any) -> Any:
    """numpy scalars/arrays, tuples and mappings -> plain Python, so that YAML stays safe_load-able."""
    if isinstance(value, Mapping):
        return {str(k): yaml_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [yaml_plain(v) for v in value]
    if hasattr(value, 'tolist'):  # numpy arrays and numpy scalars
        return yaml_plain(value.tolist())
    return value
