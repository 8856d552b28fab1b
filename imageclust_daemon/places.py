"""Offline reverse geocoding for fallback titles: GPS position -> nearest named place.

Uses the `reverse_geocode` package (GeoNames cities shipped in the wheel, a k-d tree,
no network). A city of 100k+ people within 30 km names the place better than the
nearest hamlet ("Paris", not "Vanves", for the Eiffel Tower); beyond that the
nearest locality is used.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

_BIG_CITY = 100_000
_BIG_CITY_KM = 30.0
_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Place:
    city: str
    country: str

    def __str__(self) -> str:
        return f"{self.city}, {self.country}" if self.country else self.city


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6371.0 * 2 * math.asin(min(1.0, math.sqrt(a)))


def nearest_place(lat: float, lon: float) -> Place | None:
    """The place a person would name for (lat, lon), or None if the gazetteer is unavailable."""
    try:
        with _lock:  # the package builds its tree lazily on first use
            import reverse_geocode

            big: dict[str, Any] = reverse_geocode.get((lat, lon), min_population=_BIG_CITY)
            near: dict[str, Any] = reverse_geocode.get((lat, lon))
    except Exception:  # an optional nicety: a missing or broken gazetteer costs the place only
        return None
    pick = near
    if big and _km(lat, lon, big["latitude"], big["longitude"]) <= _BIG_CITY_KM:
        pick = big
    city = str(pick.get("city") or "").strip()
    if not city:
        return None
    return Place(city, str(pick.get("country") or "").strip())
