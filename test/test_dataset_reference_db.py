"""Reference database reader/writer: metadata.json fields, K from fov, E 3x4 -> 4x4, descriptor
and keypoint files per model, malformed entries named in the error."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from vizloc_training.datasets.reference_db import (ReferenceDatabase, ReferenceDatabaseError, read_reference_entry,
                                                   write_reference_entry)

K = np.array([[100.0, 0.0, 32.0], [0.0, 100.0, 24.0], [0.0, 0.0, 1.0]])


def _db(root: Path) -> Path:
    rgb = np.zeros((48, 64, 3), np.uint8)
    E = np.eye(4)
    E[:3, 3] = [1.0, 2.0, 3.0]
    write_reference_entry(root, 'b', rgb, width=64, height=48, lat=31.26, lng=34.80, alt=300.0, azn=90.0, fov=None,
                          K=K, E=E)
    write_reference_entry(root, 'a', rgb, width=64, height=48, lat=31.27, lng=34.81, alt=None, azn=None, fov=90.0)
    np.save(root / 'a' / 'netvlad_descriptor.npy', np.arange(4, dtype=np.float32))
    np.save(root / 'b' / 'netvlad_descriptor.npy', np.ones(4, np.float32))
    np.savez(root / 'b' / 'gem_descriptor.npz', desc=np.zeros(8, np.float32))
    np.save(root / 'b' / 'superpoint_keypoints.npy', np.zeros((5, 2)))
    np.save(root / 'a' / 'keypoints.npy', np.zeros((5, 2)))
    return root


def test_entries_fields_and_descriptors(tmp_path: Path) -> None:
    db = ReferenceDatabase(_db(tmp_path / 'db'))
    assert db.uids == ('a', 'b') and len(db) == 2
    a, b = db['a'], db['b']
    # K derived from the horizontal fov: f = (w/2) / tan(fov/2) = 32
    np.testing.assert_allclose(a.K, [[32.0, 0, 32.0], [0, 32.0, 24.0], [0, 0, 1]])
    assert a.E is None and math.isnan(a.alt_m) and a.azn_deg is None and a.has_position
    np.testing.assert_allclose(b.K, K)
    assert b.E.shape == (4, 4) and b.E[0, 3] == 1.0 and b.alt_m == 300.0 and b.azn_deg == 90.0
    assert b.lat_deg == 31.26 and b.lng_deg == 34.80 and (b.width, b.height) == (64, 48)
    assert set(b.descriptors) == {'netvlad', 'gem'} and set(a.descriptors) == {'netvlad'}
    assert set(b.keypoints) == {'superpoint'} and set(a.keypoints) == {''}
    assert db.models == ('gem', 'netvlad')
    uids, descs = db.load_descriptors('netvlad')
    assert uids == ('a', 'b') and descs.shape == (2, 4) and descs[0, 3] == 3.0
    uids, descs = db.load_descriptors('gem')
    assert uids == ('b',) and descs.shape == (1, 8)
    with pytest.raises(ReferenceDatabaseError, match="no entry has a 'dino'"):
        db.load_descriptors('dino')
    with pytest.raises(KeyError, match='zzz'):
        db['zzz']
    assert a.image.read_bytes()[:2] == b'\xff\xd8'  # JPEG


def _write_meta(folder: Path, meta: object, image: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'metadata.json').write_text(meta if isinstance(meta, str) else json.dumps(meta))
    if image:
        (folder / 'image.jpg').write_bytes(b'\xff\xd8\xff\xd9')
    return folder


GOOD = {'w': 64, 'h': 48, 'lat': 1.0, 'lng': 2.0, 'alt': None, 'azn': None, 'fov': 60.0, 'K': None, 'E': None}


@pytest.mark.parametrize('meta, message', [
    ('{"w": 64, "h": 48,', 'malformed JSON'),
    ('[1, 2]', 'expected a JSON object'),
    ({**GOOD, 'w': '64'}, '"w" and "h" must be positive integers'),
    ({**GOOD, 'lat': 123.0}, 'impossible latitude'),
    ({**GOOD, 'lng': 'east'}, '"lng" must be a finite number'),
    ({**GOOD, 'fov': None}, 'needs "K" or "fov"'),
    ({**GOOD, 'K': [[1, 0], [0, 1]]}, '"K" must be a finite matrix of shape 3x3'),
    ({**GOOD, 'E': [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}, '"E" must be a finite matrix of shape 4x4 or 3x4'),
])
def test_malformed_metadata_names_the_file(tmp_path: Path, meta: object, message: str) -> None:
    folder = _write_meta(tmp_path / 'db' / 'x', meta)
    with pytest.raises(ReferenceDatabaseError) as err:
        ReferenceDatabase(tmp_path / 'db')
    assert message in str(err.value) and str(folder / 'metadata.json') in str(err.value)


def test_e_3x4_is_completed_extra_keys_kept_and_folders_without_metadata_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    E = [[1, 0, 0, 5], [0, 1, 0, 6], [0, 0, 1, 7]]
    _write_meta(tmp_path / 'db' / 'x', {**GOOD, 'E': E, 'pano_id': 'abc'})
    (tmp_path / 'db' / 'stray').mkdir()
    with caplog.at_level(logging.WARNING):
        db = ReferenceDatabase(tmp_path / 'db')
    assert db.uids == ('x',) and 'stray' in caplog.text
    e = db['x']
    np.testing.assert_allclose(e.E[3], [0, 0, 0, 1])
    assert e.E[2, 3] == 7 and e.extra == {'pano_id': 'abc'}
    _write_meta(tmp_path / 'noimg' / 'y', GOOD, image=False)
    with pytest.raises(ReferenceDatabaseError, match='image.jpg: image of reference entry'):
        read_reference_entry(tmp_path / 'noimg' / 'y')
    with pytest.raises(ReferenceDatabaseError, match='does not exist'):
        ReferenceDatabase(tmp_path / 'nowhere')
    with pytest.raises(ReferenceDatabaseError, match='invalid reference entry uid'):
        write_reference_entry(tmp_path / 'db', '../up', b'', width=1, height=1, lat=None, lng=None)
