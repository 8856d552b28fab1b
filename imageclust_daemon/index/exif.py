"""What a photo's metadata says: when it was taken (and which record said it), where, and
how to turn it. Pure: reads what Pillow read (`Image.Exif`, the XMP packet, IPTC), never a
file.

The capture time is the first of: EXIF DateTimeOriginal; XMP exif:DateTimeOriginal, then
photoshop:DateCreated, then xmp:CreateDate (Pillow's `getxmp`, parsed with defusedxml);
IPTC Date Created with Time Created (Pillow's `IptcImagePlugin`); and last EXIF's
DateTime, which is when the file was last changed. Which one it was is kept
(`Facts.source`: "exif", "xmp", "iptc", "exif-modified"; a RAW's own: "raw").
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
    source: str | None = None  # which record gave `taken_at` (see the module's text)

    def or_else(self, other: Facts) -> Facts:
        """These facts, with what they lack taken from `other`."""
        lat, lon = (self.lat, self.lon) if self.lat is not None else (other.lat, other.lon)
        if self.taken_at is not None:
            return Facts(self.taken_at, lat, lon, self.source)
        return Facts(other.taken_at, lat, lon, other.source if other.taken_at else None)


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
    taken, source = None, None
    try:
        sub = exif.get_ifd(EXIF_IFD)
        taken = capture_time(sub.get(_DATETIME_ORIGINAL), sub.get(_OFFSET_TIME_ORIGINAL))
        source = "exif" if taken else None
        if taken is None:  # when the file was last changed: a capture time's last resort
            taken = capture_time(exif.get(_DATETIME), None)
            source = "exif-modified" if taken else None
    except Exception:
        taken, source = None, None
    try:
        lat, lon = gps_position(dict(exif.get_ifd(GPS_IFD)))
    except Exception:
        lat, lon = None, None
    return Facts(taken, lat, lon, source)


def with_xmp_and_iptc(found: Facts, xmp: Any, iptc: Any) -> Facts:
    """`found` (EXIF's), its capture time taken from XMP, then IPTC, where EXIF has no
    DateTimeOriginal: an XMP or IPTC original beats EXIF's DateTime (a modification)."""
    if found.source == "exif":
        return found
    for taken, source in ((xmp_capture_time(xmp), "xmp"), (iptc_capture_time(iptc), "iptc")):
        if taken is not None:
            return Facts(taken, found.lat, found.lon, source)
    return found


# XMP's capture times, most specific first (namespaces as Pillow's getxmp drops them:
# exif:DateTimeOriginal, photoshop:DateCreated, xmp:CreateDate).
_XMP_TIMES = ("DateTimeOriginal", "DateCreated", "CreateDate")


def xmp_capture_time(xmp: Any) -> str | None:
    """The capture time an XMP packet (as `Image.getxmp()` gives it) records, ISO 8601; a
    value without a time of day is not taken (a time would be made up)."""
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _XMP_TIMES and isinstance(value, str):
                    found.setdefault(key, value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(xmp)
    for key in _XMP_TIMES:
        taken = _iso_time(found.get(key, ""))
        if taken is not None:
            return taken
    return None


def _iso_time(text: str) -> str | None:
    """An XMP date-time ("2011-05-04T10:11:12", "+02:00" or "Z" optional, seconds and
    fractions optional) -> ISO 8601 with the offset where given; None without a time."""
    text = text.strip()
    for layout in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"):
        size = len(datetime(2000, 1, 1).strftime(layout))
        try:
            when = datetime.strptime(text[:size], layout)
        except ValueError:
            continue
        rest = text[size:]
        if rest.startswith("."):  # fractions of a second
            rest = rest.lstrip(".0123456789")
        iso = when.isoformat()
        if rest == "Z":
            return iso + "+00:00"
        if len(rest) == 6 and rest[0] in "+-" and rest[3] == ":":
            return iso + rest
        return iso if rest == "" else None
    return None


_IPTC_DATE, _IPTC_TIME = (2, 55), (2, 60)


def iptc_capture_time(iptc: Any) -> str | None:
    """IPTC's Date Created (CCYYMMDD) with its Time Created (HHMMSS, "+HHMM" offset
    optional), as `IptcImagePlugin.getiptcinfo` gives them; None without both."""
    if not isinstance(iptc, dict):
        return None
    date, time = iptc.get(_IPTC_DATE), iptc.get(_IPTC_TIME)
    if isinstance(date, list):
        date = date[0] if date else None
    if isinstance(time, list):
        time = time[0] if time else None
    if not isinstance(date, bytes) or not isinstance(time, bytes):
        return None
    try:
        when = datetime.strptime(date.decode("ascii") + time.decode("ascii")[:6], "%Y%m%d%H%M%S")
    except (ValueError, UnicodeDecodeError):
        return None
    iso = when.isoformat()
    offset = time.decode("ascii", "replace")[6:]
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        iso += f"{offset[:3]}:{offset[3:]}"
    return iso


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
