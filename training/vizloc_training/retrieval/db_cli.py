"""``vizloc-db``: grow, (re)index, inspect and verify a reference database of the ``retrieval`` localizer.

    vizloc-db add DB --poses poses.csv --images DIR --geo geo.yaml --fov 70 [--bundle BUNDLE]
    vizloc-db add DB --gps DATASET [--split train] --fov 70 [--bundle BUNDLE]
    vizloc-db build DB --bundle BUNDLE [--kind auto|flat|ivfpq] [--whiten auto|always|never] [--recompute]
    vizloc-db info DB
    vizloc-db verify DB

``add`` copies (hard-links) images into entries (``vizloc_plugins.refdb`` layout), hashes them into the
manifest (version + 1) and, with ``--bundle``, computes their descriptors and rebuilds the index: the
database grows without retraining. ``build`` computes missing descriptors with a retrieval bundle and
(re)builds the FAISS index (without ``--bundle``: re-hashes every entry into the manifest).
Layout and manifest: docs/datasets.md, docs/bundles.md; the localizer: docs/localizers/retrieval.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from vizloc_plugins.refdb import (FLAT_MAX_ENTRIES, INDEX_KINDS, WHITEN_MIN_ENTRIES_PER_DIM, WHITEN_MODES,
                                  ReferenceDatabase, ReferenceDatabaseError, build_index, read_manifest,
                                  update_manifest, verify_database, write_reference_entry)

__all__ = ['NewEntry', 'entries_from_poses', 'entries_from_gps', 'add_entries', 'build_database', 'database_info',
           'build_parser', 'main']

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewEntry:
    """One image to add: WGS84 position, optional pose (``E`` world-to-camera in the map frame) and depth."""

    uid: str
    image: Path
    width: int
    height: int
    lat: float | None
    lng: float | None
    alt: float | None
    azn: float | None
    fov: float | None
    K: np.ndarray | None = None
    E: np.ndarray | None = None
    depth: Path | None = None


def _image_size(path: Path) -> tuple[int, int]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ReferenceDatabaseError(f'{path}: cannot decode image')
    return image.shape[1], image.shape[0]


def _uid(relative: str) -> str:
    return Path(relative).with_suffix('').as_posix().replace('/', '_')


def entries_from_poses(poses_csv: Path, images: Path, geo_yaml: Path, *, fov_deg: float | None = None,
                       K: np.ndarray | None = None, depth_dir: Path | None = None) -> Iterator[NewEntry]:
    """Entries from ``poses.csv`` (``image,x,y,z,qx,qy,qz,qw`` = T_map_camera, optical frame; the campus
    world's format) with the map frame's geo reference (geo.yaml); optional ``depth_dir/<stem>.png|npy``."""
    from vizloc_ros.geodesy import GeoReference

    from .data import read_poses_csv

    geo = GeoReference.from_yaml(geo_yaml)
    for name, T in read_poses_csv(poses_csv).items():
        t = T[:3, 3]
        lat, lon, alt = (float(np.ravel(v)[0]) for v in geo.scene_to_wgs84(t[None]))
        axis_enu = geo.R_enu_scene(t) @ T[:3, 2]
        azn = math.degrees(math.atan2(axis_enu[0], axis_enu[1])) % 360.0
        path = images / name
        w, h = _image_size(path)
        depth = None
        if depth_dir is not None:
            depth = next((depth_dir / f'{Path(name).stem}{s}' for s in ('.png', '.npy')
                          if (depth_dir / f'{Path(name).stem}{s}').is_file()), None)
        yield NewEntry(_uid(name), path, w, h, lat, lon, alt, azn, fov_deg, K, np.linalg.inv(T), depth)


def entries_from_gps(dataset: Path, *, split: str | None = 'train', fov_deg: float | None = None,
                     K: np.ndarray | None = None) -> Iterator[NewEntry]:
    """Entries from a GPS-format dataset (``images/`` + gt.csv or EXIF GPS; docs/datasets.md): position only."""
    from ..datasets.gps import read_gps_dataset

    ds = read_gps_dataset(dataset)
    records = ds.records if split in (None, 'all') else ds.split(split)
    for record in records:
        w, h = _image_size(record.image)
        alt = None if math.isnan(record.alt_m) else record.alt_m
        relative = record.image.relative_to(Path(dataset) / 'images').as_posix()
        yield NewEntry(_uid(relative), record.image, w, h, record.lat_deg, record.lon_deg, alt, None, fov_deg, K)


def _read_depth(path: Path) -> np.ndarray:
    if path.suffix == '.npy':
        return np.load(path).astype(np.float64)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16:
        raise ReferenceDatabaseError(f'{path}: depth PNG must be 16-bit millimetres')
    return raw.astype(np.float64) / 1000.0


def add_entries(database: Path, entries: Iterator[NewEntry] | Sequence[NewEntry], *, geo: dict | None = None,
                bundle: Path | None = None, kind: str = 'auto', whiten: str = 'never',
                progress: bool = True) -> list[str]:
    """Write the entries (replacing same-uid ones), hash them into the manifest (version + 1); with ``bundle``
    also compute their descriptors and rebuild that model's index. Returns the uids added."""
    import os

    from tqdm import tqdm

    database.mkdir(parents=True, exist_ok=True)
    uids = []
    show = progress and os.environ.get('VIZLOC_NO_PROGRESS', '') != '1'
    for e in tqdm(entries, desc='vizloc-db add', unit='entry', disable=not show):
        write_reference_entry(database, e.uid, e.image, width=e.width, height=e.height, lat=e.lat, lng=e.lng,
                              alt=e.alt, azn=e.azn, fov=e.fov, K=e.K, E=e.E,
                              depth_m=None if e.depth is None else _read_depth(e.depth))
        uids.append(e.uid)
    if not uids:
        raise ReferenceDatabaseError(f'{database}: nothing to add')
    has_manifest = (database / 'manifest.json').is_file()
    update_manifest(database, uids if has_manifest else None, geo=geo)
    if bundle is not None:
        build_database(database, bundle, kind=kind, whiten=whiten, uids=uids)
    return uids


def build_database(database: Path, bundle: Path | None, *, kind: str = 'auto', whiten: str = 'never',
                   recompute: bool = False, uids: Sequence[str] | None = None) -> dict:
    """Descriptors (missing ones, or all with ``recompute``) + FAISS index for ``bundle``; without a bundle
    re-hash every entry. Returns the index record (or {})."""
    if bundle is None:
        update_manifest(database)
        return {}
    from vizloc_plugins.retrieval import compute_descriptors

    model, _ = compute_descriptors(database, bundle, uids, recompute=recompute)
    return dict(build_index(database, model, kind, whiten))


def database_info(database: Path) -> dict:
    """Summary: version, entries, positions/poses/depth counts, descriptor models, indexes, geo."""
    db = ReferenceDatabase(database, verify=False)
    manifest = read_manifest(database) if (database / 'manifest.json').is_file() else None
    return {'root': str(database), 'version': db.version, 'entries': len(db),
            'with_position': sum(e.has_position for e in db), 'with_pose': sum(e.E is not None for e in db),
            'with_depth': sum(e.depth is not None for e in db),
            'descriptor_models': {m: sum(m in e.descriptors for e in db) for m in db.models},
            'indexes': {} if manifest is None else dict(manifest.indexes),
            'geo': None if manifest is None else manifest.geo, 'updated_utc': '' if manifest is None else manifest.updated_utc}


def _K(values: Sequence[float] | None) -> np.ndarray | None:
    if values is None:
        return None
    fx, fy, cx, cy = values
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='vizloc-db', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f'Index kind auto: exact IndexFlatIP up to {FLAT_MAX_ENTRIES} entries, '
                                            f'IVF-PQ above. --whiten auto: PCA whitening learnt from the database '
                                            f'when it holds at least {WHITEN_MIN_ENTRIES_PER_DIM} x D entries.')
    parser.add_argument('-v', '--verbose', action='store_true')
    sub = parser.add_subparsers(dest='command', required=True)
    add = sub.add_parser('add', help='add entries (images + poses, or a GPS-format dataset)')
    add.add_argument('database', type=Path)
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument('--poses', type=Path, help='poses.csv: image,x,y,z,qx,qy,qz,qw (T_map_camera, optical frame)')
    source.add_argument('--gps', type=Path, help='GPS-format dataset folder (images/ + gt.csv or EXIF)')
    add.add_argument('--images', type=Path, help='image folder of --poses (default: poses.csv folder/images)')
    add.add_argument('--geo', type=Path, help='geo.yaml of the --poses map frame (stored in the manifest)')
    add.add_argument('--depth', type=Path, help='optional depth folder for --poses: <stem>.png (uint16 mm) or .npy (m)')
    add.add_argument('--split', default='train', help="GPS dataset split to add, or 'all' (default: train)")
    camera = add.add_mutually_exclusive_group(required=True)
    camera.add_argument('--fov', type=float, help='horizontal field of view, degrees')
    camera.add_argument('--K', type=float, nargs=4, metavar=('FX', 'FY', 'CX', 'CY'), help='intrinsics in pixels')
    add.add_argument('--bundle', type=Path, help='retrieval bundle: also compute descriptors and rebuild the index')
    add.add_argument('--kind', choices=INDEX_KINDS, default='auto')
    add.add_argument('--whiten', choices=WHITEN_MODES, default='never',
                     help='PCA-whiten the index, learnt from the database (default: never; measured in the docs)')
    build = sub.add_parser('build', help='(re)build descriptor files and the FAISS index with a retrieval bundle')
    build.add_argument('database', type=Path)
    build.add_argument('--bundle', type=Path, help='retrieval bundle (without: only re-hash entries into the manifest)')
    build.add_argument('--kind', choices=INDEX_KINDS, default='auto')
    build.add_argument('--whiten', choices=WHITEN_MODES, default='never',
                     help='PCA-whiten the index, learnt from the database (default: never; measured in the docs)')
    build.add_argument('--recompute', action='store_true', help='recompute descriptors that exist')
    for name, text in (('info', 'print a JSON summary'), ('verify', 'check every file against the manifest')):
        sub.add_parser(name, help=text).add_argument('database', type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO,
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    try:
        if ns.command == 'add':
            if ns.poses is not None:
                if ns.geo is None:
                    raise ReferenceDatabaseError('--poses needs --geo (geo.yaml of the map frame)')
                import yaml

                entries = entries_from_poses(ns.poses, ns.images or ns.poses.parent / 'images', ns.geo, fov_deg=ns.fov,
                                             K=_K(ns.K), depth_dir=ns.depth)
                geo = yaml.safe_load(ns.geo.read_text())
            else:
                entries = entries_from_gps(ns.gps, split=ns.split, fov_deg=ns.fov, K=_K(ns.K))
                geo = None
            uids = add_entries(ns.database, entries, geo=geo, bundle=ns.bundle, kind=ns.kind, whiten=ns.whiten)
            print(f'added {len(uids)} entries; version {read_manifest(ns.database).version}')
        elif ns.command == 'build':
            record = build_database(ns.database, ns.bundle, kind=ns.kind, whiten=ns.whiten, recompute=ns.recompute)
            print(json.dumps({'version': read_manifest(ns.database).version, 'index': record}, indent=1))
        elif ns.command == 'info':
            print(json.dumps(database_info(ns.database), indent=1))
        else:
            manifest = verify_database(ns.database)
            print(f'{ns.database}: OK (version {manifest.version}, {len(manifest.entries)} entries, '
                  f'{len(manifest.indexes)} indexes)')
    except (ReferenceDatabaseError, OSError, ValueError) as exc:
        logger.error('%s', exc)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
