"""GPS dataset reader and EXIF GPS: gt.csv with good and malformed rows (reported with row number
and reason, skipped), split column vs. fixed-seed 70/15/15 split, EXIF fallback, EXIF round trip."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from vizloc_training.datasets.exif import ExifError, encode_jpeg_with_gps, read_gps_exif, write_gps_exif
from vizloc_training.datasets.gps import GpsDatasetError, read_gps_dataset


def _jpeg(path: Path, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((16, 16, 3), value, np.uint8))


@pytest.mark.parametrize('lat, lon, alt', [
    (31.262123456, 34.804987654, 301.25),
    (-33.8567844, -151.2152967, -12.5),  # south, west, below sea level
    (89.9999999, 179.9999999, None),
    (0.0, -0.0000004, 0.0),
])
def test_exif_gps_round_trip(tmp_path: Path, lat: float, lon: float, alt: float | None) -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    path = tmp_path / 'a.jpg'
    path.write_bytes(encode_jpeg_with_gps(rgb, lat, lon, alt))
    fix = read_gps_exif(path)
    assert fix is not None
    assert abs(fix.lat_deg - lat) < 1e-6 and abs(fix.lon_deg - lon) < 1e-6
    if alt is None:
        assert math.isnan(fix.alt_m)
    else:
        assert fix.alt_m == pytest.approx(alt, abs=1e-3)
    assert cv2.imread(str(path)).shape == (20, 30, 3)  # still a valid JPEG
    # rewrite in place
    write_gps_exif(path, -lat / 2, lon / 3, 5.0)
    fix2 = read_gps_exif(path)
    assert abs(fix2.lat_deg + lat / 2) < 1e-6 and abs(fix2.lon_deg - lon / 3) < 1e-6 and fix2.alt_m == 5.0


def test_exif_errors(tmp_path: Path) -> None:
    plain = tmp_path / 'plain.jpg'
    _jpeg(plain)
    assert read_gps_exif(plain) is None
    with pytest.raises(ExifError, match='impossible'):
        encode_jpeg_with_gps(np.zeros((4, 4, 3), np.uint8), 91.0, 0.0)
    junk = tmp_path / 'junk.jpg'
    junk.write_bytes(b'\x00' * 20)
    with pytest.raises(ExifError, match='junk.jpg'):
        read_gps_exif(junk)


def _csv_dataset(root: Path, lines: list[str], images: list[str]) -> Path:
    for name in images:
        _jpeg(root / 'images' / name)
    (root / 'gt.csv').write_text('\n'.join(lines) + '\n')
    return root


def test_gt_csv_rows_are_used_or_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = [
        'image,lat,lon,alt,split',
        'a.jpg,31.2620,34.8040,300.5,train',   # 2 ok
        'b.jpg,31.2621,34.8041,,val',          # 3 ok, alt unknown
        'c.jpg,95.0,34.8,1,train',             # 4 impossible latitude
        'd.jpg,31.2,-200,1,train',             # 5 impossible longitude
        'e.jpg,nan,34.8,1,train',              # 6 NaN
        'f.jpg,,34.8,1,train',                 # 7 empty
        'missing.jpg,31.2,34.8,1,test',        # 8 missing file
        'g.jpg,north,34.8,1,train',            # 9 non-numeric
        'h.jpg,31.2,34.8,1,holdout',           # 10 unknown split
        'a.jpg,31.3,34.9,1,test',              # 11 duplicate
        'i.jpg,-31.5,-34.5,1,TEST',            # 12 ok (split case-insensitive)
    ]
    root = _csv_dataset(tmp_path / 'ds', lines, ['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg', 'e.jpg', 'f.jpg', 'g.jpg', 'h.jpg',
                                                 'i.jpg'])
    with caplog.at_level(logging.WARNING):
        ds = read_gps_dataset(root)
    assert ds.source == 'gt.csv' and ds.split_source == 'column'
    assert [(r.image.name, r.split) for r in ds.records] == [('a.jpg', 'train'), ('b.jpg', 'val'), ('i.jpg', 'test')]
    assert math.isnan(ds.records[1].alt_m) and ds.records[0].alt_m == 300.5
    reasons = {s.row: s.reason for s in ds.skipped}
    assert sorted(reasons) == [4, 5, 6, 7, 8, 9, 10, 11]
    assert 'latitude' in reasons[4] and 'longitude' in reasons[5] and 'non-finite' in reasons[6]
    assert 'missing latitude' in reasons[7] and 'missing' in reasons[8] and 'non-numeric' in reasons[9]
    assert 'split' in reasons[10] and 'duplicate' in reasons[11]
    for row in reasons:
        assert f'row {row}' in caplog.text
    np.testing.assert_allclose(ds.lat_lon_alt('train'), [[31.262, 34.804, 300.5]])


def test_random_split_is_70_15_15_and_fixed_by_seed(tmp_path: Path) -> None:
    names = [f'{k:03d}.jpg' for k in range(100)]
    lines = ['image,lat,lon'] + [f'{n},{31 + k * 1e-4},{34 + k * 1e-4}' for k, n in enumerate(names)]
    root = _csv_dataset(tmp_path / 'ds', lines, names)
    ds = read_gps_dataset(root)
    assert ds.split_source.startswith('random(seed=0')
    assert [len(ds.split(s)) for s in ('train', 'val', 'test')] == [70, 15, 15]
    again = read_gps_dataset(root)
    assert [r.split for r in again.records] == [r.split for r in ds.records]
    other = read_gps_dataset(root, split_seed=1)
    assert [r.split for r in other.records] != [r.split for r in ds.records]
    assert all(math.isnan(r.alt_m) for r in ds.records)


def test_exif_fallback_without_gt_csv(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / 'ds'
    (root / 'images' / 'sub').mkdir(parents=True)
    rgb = np.zeros((8, 8, 3), np.uint8)
    for k in range(10):
        (root / 'images' / 'sub' / f'{k}.jpg').write_bytes(encode_jpeg_with_gps(rgb, 31.0 + k * 1e-3, 34.0, 100.0 + k))
    _jpeg(root / 'images' / 'no_gps.jpg')
    assert cv2.imwrite(str(root / 'images' / 'x.png'), rgb)
    with caplog.at_level(logging.WARNING):
        ds = read_gps_dataset(root)
    assert ds.source == 'exif' and len(ds.records) == 10
    assert {s.image: s.reason for s in ds.skipped} == {
        'no_gps.jpg': 'no EXIF GPS position', 'x.png': 'no gt.csv and not a JPEG (EXIF GPS needs JPEG)'}
    assert 'no_gps.jpg' in caplog.text
    rec = {r.image.name: r for r in ds.records}['3.jpg']
    assert rec.lat_deg == pytest.approx(31.003, abs=1e-6) and rec.alt_m == pytest.approx(103.0)
    assert sum(len(ds.split(s)) for s in ('train', 'val', 'test')) == 10


def test_unusable_datasets_are_errors(tmp_path: Path) -> None:
    with pytest.raises(GpsDatasetError, match='image folder does not exist'):
        read_gps_dataset(tmp_path)
    root = _csv_dataset(tmp_path / 'ds', ['name,latitude,longitude', 'a.jpg,1,2'], ['a.jpg'])
    with pytest.raises(GpsDatasetError, match=r"missing column\(s\) \['image', 'lat', 'lon'\]"):
        read_gps_dataset(root)
    with pytest.raises(ValueError, match='unknown split'):
        read_gps_dataset(_csv_dataset(tmp_path / 'ok', ['image,lat,lon', 'a.jpg,1,2'], ['a.jpg'])).split('dev')
