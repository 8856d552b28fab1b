"""What EXIF says of a photo: when it was taken, where, and how to turn it. Pure: reads
a Pillow `Image.Exif` (from a JPEG, HEIC, TIFF or a RAW's own TIFF structures), never a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any

from PIL import Image

EXIF_IFD = 0x8769
GPS_IFD = 0x8825
ORIENTATION = 0x0112
_DATETIME_ORIGINAL = 0x9003
_OFFSET_TIME_ORIGINAL = 0x9011
_DATETIME = 0x0132


@dataclass(frozen=True, slots=True)
class Facts:
    taken_at: str | None = None  # ISO 8601 local time, with "+HH:MM" when EXIF has one
    lat: float | None = None
    lon: float | None = None

    def or_else(self, other: Facts) -> Facts:
        """These facts, with what they lack taken from `other`."""
        lat, lon = (self.lat, self.lon) if self.lat is not None else (other.lat, other.lon)
        return Facts(self.taken_at or other.taken_at, lat, lon)


NO_FACTS = Facts()


def _ratio(value: Any) -> float:
    if isinstance(value, tuple) and len(value) == 2:  # (num, den) from some writers
        return float(Fraction(int(value[0]), int(value[1]))) if value[1] else 0.0
    return float(value)


def _gps_degrees(dms: Any, ref: Any) -> float | None:
    try:
        d, m, s = (_ratio(v) for v in dms)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    degrees = d + m / 60 + s / 3600
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    if str(ref).strip().upper() in ("S", "W"):
        degrees = -degrees
    return degrees


def gps_position(gps: dict[int, Any]) -> tuple[float | None, float | None]:
    """(lat, lon) from an EXIF GPS IFD, or (None, None) when absent or out of range."""
    if 2 not in gps or 4 not in gps:
        return None, None
    lat = _gps_degrees(gps[2], gps.get(1, "N"))
    lon = _gps_degrees(gps[4], gps.get(3, "E"))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None, None
    if lat == 0 and lon == 0:  # cameras without a fix often write zeros
        return None, None
    return round(lat, 7), round(lon, 7)


def capture_time(original: Any, offset: Any) -> str | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" (+ "+HH:MM" offset) -> ISO 8601, or None if unusable."""
    if isinstance(original, bytes):
        original = original.decode("ascii", "replace")
    if not isinstance(original, str):
        return None
    text = original.strip().rstrip("\x00")
    try:
        when = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    iso = when.isoformat()
    if isinstance(offset, bytes):
        offset = offset.decode("ascii", "replace")
    if isinstance(offset, str):
        offset = offset.strip().rstrip("\x00")
        if len(offset) == 6 and offset[0] in "+-" and offset[3] == ":":
            iso += offset
    return iso


def facts(exif: Image.Exif) -> Facts:
    """Capture time and position from an EXIF block; what is broken is left out, as
    metadata is optional and must never cost the photo."""
    try:
        sub = exif.get_ifd(EXIF_IFD)
        taken = capture_time(
            sub.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME), sub.get(_OFFSET_TIME_ORIGINAL)
        )
    except Exception:
        taken = None
    try:
        lat, lon = gps_position(dict(exif.get_ifd(GPS_IFD)))
    except Exception:
        lat, lon = None, None
    return Facts(taken, lat, lon)


def exif_facts(exif: Image.Exif) -> Facts:
    """`facts` of an EXIF IFD given alone (a CR3's CMT2 box): its tags at the top level."""
    try:
        return Facts(capture_time(exif.get(_DATETIME_ORIGINAL), exif.get(_OFFSET_TIME_ORIGINAL)))
    except Exception:
        return NO_FACTS


def gps_facts(gps: Image.Exif) -> Facts:
    """`facts` of a GPS IFD given alone (a CR3's CMT4 box)."""
    try:
        lat, lon = gps_position(dict(gps))
    except Exception:
        return NO_FACTS
    return Facts(None, lat, lon)
