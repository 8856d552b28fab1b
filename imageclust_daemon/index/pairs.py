"""RAW+JPEG pairs: a camera set to save both writes one shot twice, in one folder, under
one name (IMG_0042.CR3 and IMG_0042.JPG). The pair is one photo: the JPEG (or HEIC: the
camera's own rendering) shows it in albums, search and the gallery, and the RAW's path
is listed with it in the catalog.

`shown_as` is pure; `find` reads the live files beside each RAW from the state database.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

# What camera_raw names the RAW formats it reads (its `sniff`).
RAW_FORMATS = frozenset(
    {"DNG", "CR2", "CR3", "CRW", "NEF", "ARW", "ORF", "RAF", "RW2", "PEF", "SRW", "MRW",
     "X3F", "3FR", "IIQ", "MOS", "MEF", "ERF", "DCR", "RAW"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A live file in a folder that holds a RAW."""

    path: bytes
    content_hash: str
    format: str | None
    usable: bool  # decoded, with an embedding: a photo that can show the shot


def _shot(path: bytes) -> tuple[bytes, bytes]:
    """(folder, name before the extension), the name case-folded: IMG_0042.CR3 and
    img_0042.jpg are one shot (cameras write upper case, copies and tools lower)."""
    folder, name = os.path.split(path)
    stem = os.path.splitext(name)[0]
    return folder, stem.lower()


def shown_as(files: Iterable[Neighbour]) -> dict[str, str]:
    """RAW content hash -> the content hash of the picture that shows its shot: a usable
    non-RAW file of the same folder and name (the first by path when several are). A
    RAW content at several paths takes the pair of its first path that has one."""
    files = sorted(files, key=lambda f: f.path)
    partners: dict[tuple[bytes, bytes], str] = {}
    for f in files:
        if f.usable and f.format is not None and f.format not in RAW_FORMATS:
            partners.setdefault(_shot(f.path), f.content_hash)
    pairs: dict[str, str] = {}
    for f in files:
        if f.format in RAW_FORMATS and f.content_hash not in pairs:
            partner = partners.get(_shot(f.path))
            if partner is not None and partner != f.content_hash:
                pairs[f.content_hash] = partner
    return pairs


def find(conn: sqlite3.Connection, model_id: str | None, *, schema: str = "main") -> dict[str, str]:
    """`shown_as` over the live files of every folder that holds a live RAW. `schema`:
    where the state database is on `conn` ("state" when the catalog build attaches it)."""
    s = schema
    marks = ",".join("?" * len(RAW_FORMATS))
    raws = conn.execute(
        f"SELECT path FROM {s}.published_files WHERE format IN ({marks})", sorted(RAW_FORMATS)
    ).fetchall()
    folders = sorted({os.path.dirname(path) for (path,) in raws})
    found: list[Neighbour] = []
    query = (
        f"SELECT p.path, p.content_hash, p.format, p.error IS NULL AND EXISTS ("
        f"  SELECT 1 FROM {s}.published_embeddings e "
        f"  WHERE e.content_hash = p.content_hash AND e.model_id = ?) "
        f"FROM {s}.published_files p "
        f"WHERE p.path > ? AND p.path < ? AND p.content_hash IS NOT NULL"
    )
    for folder in folders:
        # The folder's paths sort between "folder/" and "folder0" ("0" follows "/").
        rows = conn.execute(query, (model_id, folder + b"/", folder + b"0"))
        for path, content_hash, kind, usable in rows:
            if os.path.dirname(path) == folder:  # not in a subfolder
                found.append(Neighbour(path, content_hash, kind, bool(usable)))
    return shown_as(found)
