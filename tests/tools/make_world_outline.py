"""Write map/land-110m.path: the world's land as one SVG path, for the gallery's offline map.

    python -m tests.tools.make_world_outline path/to/land-110m.json

The input is `land-110m.json` of the npm package world-atlas 2.0.2 (ISC, Mike Bostock:
Natural Earth 4.1.0's 1:110m land, public domain). Both checksums were computed here
with sha256sum on 2026-12-07 from what the npm registry served for `npm pack
world-atlas@2.0.2`: the tarball 032e7765f2ce00edaeafec23ff22bc3b77e42987c257da944cc585b452c05b97,
its package/land-110m.json ead5f68119c49a9250902e7da303bcb209341bbb8fefe7369a439b48b704658a
(the file is checked again before it is converted).

The TopoJSON arcs are decoded (delta-encoded, quantized) into rings of longitude and
latitude, written in an equirectangular projection (x = longitude, y = -latitude,
viewBox -180 -90 360 180) to 0.1 degree; rings that cross the 180th meridian are kept
continuous past it (`_unwrapped`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

SHA256 = "ead5f68119c49a9250902e7da303bcb209341bbb8fefe7369a439b48b704658a"
OUT = Path(__file__).resolve().parents[2] / "map" / "land-110m.path"


def _arcs(topology: dict) -> list[list[tuple[float, float]]]:
    (sx, sy), (tx, ty) = topology["transform"]["scale"], topology["transform"]["translate"]
    decoded = []
    for arc in topology["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x, y = x + dx, y + dy
            points.append((x * sx + tx, y * sy + ty))
        decoded.append(points)
    return decoded


def _ring(indices: list[int], arcs: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    ring: list[tuple[float, float]] = []
    for i in indices:
        arc = arcs[i] if i >= 0 else arcs[~i][::-1]
        ring.extend(arc[1:] if ring else arc)  # arcs share their end points
    return ring


def _unwrapped(ring: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A ring that crosses the 180th meridian (Chukotka, Fiji, Antarctica) kept continuous:
    past it, longitudes go on beyond 180 (or below -180) instead of jumping across the
    map; the gallery draws the land three times, 360 degrees apart, so that what lies
    beyond one edge shows at the other."""
    out: list[tuple[float, float]] = []
    shift = 0.0
    for lon, lat in ring:
        if out:
            previous = out[-1][0] - shift
            if lon - previous > 180:
                shift -= 360
            elif previous - lon > 180:
                shift += 360
        out.append((lon + shift, lat))
    return out


def outline(topology: dict) -> str:
    arcs = _arcs(topology)
    parts = []
    for geometry in topology["objects"]["land"]["geometries"]:
        polygons = geometry["arcs"] if geometry["type"] == "MultiPolygon" else [geometry["arcs"]]
        for polygon in polygons:
            for indices in polygon:
                points = [f"{lon:.1f} {-lat:.1f}" for lon, lat in _unwrapped(_ring(indices, arcs))]
                parts.append("M" + "L".join(points) + "Z")
    return "".join(parts) + "\n"


def main(argv: list[str]) -> int:
    data = Path(argv[0]).read_bytes()
    if hashlib.sha256(data).hexdigest() != SHA256:
        print(f"{argv[0]} is not world-atlas 2.0.2's land-110m.json (sha256 differs)")
        return 1
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(outline(json.loads(data)), encoding="ascii")
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
