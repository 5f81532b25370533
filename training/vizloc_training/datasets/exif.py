"""EXIF GPS tags of JPEG images (read and write, with piexif).

Latitude/longitude are stored as degrees/minutes/seconds rationals with seconds to 1e-6 arc
second (3e-11 degrees), so a write/read round trip is exact to well below 1e-6 degrees; altitude
to the millimetre with GPSAltitudeRef 1 for negative values. EXIF altitude is nominally above sea
level; vizloc writes whatever altitude it is given (the campus world: WGS84 ellipsoidal height,
the same value as gt.csv) and reads it back unchanged.

Usage::

    jpeg_bytes = encode_jpeg_with_gps(rgb_HW3, lat_deg, lon_deg, alt_m)
    write_gps_exif(path, lat_deg, lon_deg, alt_m)      # into an existing JPEG file
    fix = read_gps_exif(path)                          # GpsFix(lat_deg, lon_deg, alt_m) or None
"""
from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import piexif

__all__ = ['ExifError', 'GpsFix', 'gps_ifd', 'read_gps_exif', 'write_gps_exif', 'encode_jpeg_with_gps']

_LOG = logging.getLogger(__name__)
_SEC_DEN = 1_000_000  # seconds denominator (1e-6 arc second)
_ALT_DEN = 1000


class ExifError(ValueError):
    """EXIF data that cannot be read or written (the message names the file)."""


@dataclass(frozen=True)
class GpsFix:
    """A GPS position from EXIF: degrees, and altitude in metres (NaN when the tag is absent)."""

    lat_deg: float
    lon_deg: float
    alt_m: float = math.nan


def _dms(value_deg: float) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    total = int(round(abs(value_deg) * 3600 * _SEC_DEN))  # integer micro-arc-seconds: exact split
    deg, rem = divmod(total, 3600 * _SEC_DEN)
    minutes, micro_sec = divmod(rem, 60 * _SEC_DEN)
    return (deg, 1), (minutes, 1), (micro_sec, _SEC_DEN)


def gps_ifd(lat_deg: float, lon_deg: float, alt_m: float | None = None) -> dict[int, object]:
    """The piexif GPS IFD for a position (``alt_m`` None or NaN: no altitude tags)."""
    if not (math.isfinite(lat_deg) and math.isfinite(lon_deg)) or abs(lat_deg) > 90 or abs(lon_deg) > 180:
        raise ExifError(f'impossible GPS position lat={lat_deg} lon={lon_deg}')
    ifd: dict[int, object] = {
        piexif.GPSIFD.GPSVersionID: (2, 3, 0, 0),
        piexif.GPSIFD.GPSLatitudeRef: b'N' if lat_deg >= 0 else b'S',
        piexif.GPSIFD.GPSLatitude: _dms(lat_deg),
        piexif.GPSIFD.GPSLongitudeRef: b'E' if lon_deg >= 0 else b'W',
        piexif.GPSIFD.GPSLongitude: _dms(lon_deg),
    }
    if alt_m is not None and math.isfinite(alt_m):
        ifd[piexif.GPSIFD.GPSAltitudeRef] = 0 if alt_m >= 0 else 1
        ifd[piexif.GPSIFD.GPSAltitude] = (int(round(abs(alt_m) * _ALT_DEN)), _ALT_DEN)
    return ifd


def encode_jpeg_with_gps(rgb_HW3: np.ndarray, lat_deg: float, lon_deg: float, alt_m: float | None = None, *,
                         quality: int = 90) -> bytes:
    """JPEG bytes of an RGB uint8 image carrying EXIF GPS tags."""
    ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb_HW3, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ExifError('JPEG encoding failed')
    exif = piexif.dump({'0th': {}, 'Exif': {}, 'GPS': gps_ifd(lat_deg, lon_deg, alt_m), '1st': {}, 'thumbnail': None})
    stream = io.BytesIO()
    piexif.insert(exif, buf.tobytes(), stream)  # with a bytes image, piexif writes the result to `stream`
    return stream.getvalue()


def write_gps_exif(path: str | Path, lat_deg: float, lon_deg: float, alt_m: float | None = None) -> None:
    """Set the GPS tags of an existing JPEG file (other EXIF data is kept)."""
    path = Path(path)
    try:
        exif = piexif.load(str(path))
    except (piexif.InvalidImageDataError, ValueError, OSError) as exc:
        raise ExifError(f'{path}: cannot read EXIF: {exc}') from exc
    exif['GPS'] = gps_ifd(lat_deg, lon_deg, alt_m)
    exif.pop('thumbnail', None)
    try:
        piexif.insert(piexif.dump(exif), str(path))
    except (piexif.InvalidImageDataError, ValueError, OSError) as exc:
        raise ExifError(f'{path}: cannot write EXIF: {exc}') from exc


def _rational(value: object) -> float:
    if not (isinstance(value, tuple) and len(value) == 2):
        raise ExifError(f'expected an EXIF rational, got {value!r}')
    num, den = value
    if den == 0:
        raise ExifError('EXIF rational with a zero denominator')
    return num / den


def _degrees(dms: object) -> float:
    if not (isinstance(dms, tuple) and len(dms) == 3):
        raise ExifError(f'expected degrees/minutes/seconds, got {dms!r}')
    d, m, s = (_rational(v) for v in dms)
    return d + m / 60.0 + s / 3600.0


def read_gps_exif(path: str | Path) -> GpsFix | None:
    """GPS position from a JPEG's EXIF; ``None`` when the image has no GPS latitude/longitude.

    Raises :class:`ExifError` (naming the file) when the file cannot be parsed or the GPS tags
    are malformed.
    """
    path = Path(path)
    try:
        exif = piexif.load(str(path))
    except (piexif.InvalidImageDataError, ValueError, OSError, KeyError) as exc:
        raise ExifError(f'{path}: cannot read EXIF: {exc}') from exc
    gps = exif.get('GPS') or {}
    if piexif.GPSIFD.GPSLatitude not in gps or piexif.GPSIFD.GPSLongitude not in gps:
        return None
    try:
        lat = _degrees(gps[piexif.GPSIFD.GPSLatitude])
        lon = _degrees(gps[piexif.GPSIFD.GPSLongitude])
        if gps.get(piexif.GPSIFD.GPSLatitudeRef, b'N') in (b'S', 'S'):
            lat = -lat
        if gps.get(piexif.GPSIFD.GPSLongitudeRef, b'E') in (b'W', 'W'):
            lon = -lon
        alt = math.nan
        if piexif.GPSIFD.GPSAltitude in gps:
            alt = _rational(gps[piexif.GPSIFD.GPSAltitude])
            if gps.get(piexif.GPSIFD.GPSAltitudeRef, 0) in (1, b'\x01'):
                alt = -alt
    except ExifError as exc:
        raise ExifError(f'{path}: malformed GPS EXIF: {exc}') from exc
    return GpsFix(lat, lon, alt)
