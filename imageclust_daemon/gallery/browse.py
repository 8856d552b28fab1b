"""Browsing by time and place: the timeline of events, an event's page, and the map of
the photos that carry a position, drawn offline in SVG over Natural Earth's land (see
map/SOURCE.md). Pure functions of what `gallery` read; all text escaped."""

from __future__ import annotations

import functools
import math
from collections import Counter
from html import escape

from imageclust_daemon.gallery.gallery import Event
from imageclust_daemon.gallery.pages import page, pager, past_the_end, photos_page, thumb
from imageclust_daemon.resources import data_path

EVENTS_PER_PAGE = 40
KINDS = {"moment": "a moment", "day": "a day out", "trip": "a trip"}
_MONTHS = (
    *("January", "February", "March", "April", "May", "June"),
    *("July", "August", "September", "October", "November", "December"),
)


def _dates(event: Event) -> str:
    first, last = event.started_at[:10], event.ended_at[:10]
    return first if first == last else f"{first} – {last}"


def _month(event: Event) -> str:
    year, month = event.started_at[:4], event.started_at[5:7]
    return (
        f"{_MONTHS[int(month) - 1]} {year}" if month.isdigit() and 1 <= int(month) <= 12 else year
    )


def _event_card(event: Event, covers: list[str]) -> str:
    pictures = "".join(
        f'<a href="/photo/{h}?in=event:{event.id}">'
        f"{thumb(h, f'photo {i + 1} of {event.title}')}</a>"
        for i, h in enumerate(covers)
    )
    facts = [_dates(event), KINDS.get(event.kind, event.kind), _photos(event.size)]
    if event.place:
        facts.insert(1, event.place)
    return (
        f'<section class=event><h3><a href="/event/{event.id}">{escape(event.title)}</a></h3>'
        f"<p class=muted>{escape(' · '.join(facts))}</p>"
        f"<div class=strip>{pictures}</div></section>"
    )


def timeline_page(events: list[Event], covers: dict[int, list[str]], page_no: int) -> str:
    """A page of events, newest first, under headings of year and month."""
    total = len(events)
    shown = events[page_no * EVENTS_PER_PAGE : (page_no + 1) * EVENTS_PER_PAGE]
    head = (
        f"<h1>Timeline</h1><p class=muted>{total} event{'s' if total != 1 else ''} "
        "(moments, days out and trips), newest first</p>"
    )
    if not events:
        text = "No events yet: photos with a capture time are grouped into events when indexed."
        return page("Timeline", f"{head}<p class=note>{text}</p>")
    if not shown:
        return page("Timeline", head + past_the_end(str(page_no), "/timeline"))
    parts, year, month = [], "", ""
    for event in shown:
        if event.started_at[:4] != year:
            year = event.started_at[:4]
            parts.append(f"<h2>{escape(year)}</h2>")
        if _month(event) != month:
            month = _month(event)
            parts.append(f"<h3 class=month>{escape(month)}</h3>")
        parts.append(_event_card(event, covers.get(event.id, [])))
    more = (page_no + 1) * EVENTS_PER_PAGE < total
    return page("Timeline", head + "".join(parts) + pager("/timeline", page_no, more))


def _photos(n: int) -> str:
    return f"{n} photo{'s' if n != 1 else ''}"


def event_page(event: Event, photos: list[str], page_no: int) -> str:
    facts = [_dates(event), KINDS.get(event.kind, event.kind), _photos(event.size)]
    if event.place:
        facts.insert(1, event.place)
    intro = f"<p class=muted>{escape(' · '.join(facts))} · in the order they were taken</p>"
    up = '<nav class=viewer-nav><a rel=up href="/timeline">↑ Timeline</a></nav>'
    return photos_page(
        event.title,
        intro,
        photos,
        event.size,
        page_no,
        f"/event/{event.id}",
        f"event:{event.id}",
        above=up,
    )


# -- the map ---------------------------------------------------------------------------------

CELL_DEGREES = 2.0  # photos closer than this share one mark (about 200 km at the equator)


@functools.cache
def land() -> str:
    """The world's land as one SVG path (x = longitude, y = -latitude)."""
    return data_path("map/land-110m.path").read_text(encoding="ascii").strip()


def map_page(
    positions: list[tuple[float, float, str, int | None]], events: dict[int, Event]
) -> str:
    """Every photo with a position as a mark on the world (photos within CELL_DEGREES
    share one, sized by their number), each linking to its photo, or to the event most
    of its photos belong to; the same marks listed below the map."""
    if not positions:
        text = "No photo carries a position (GPS) yet."
        return page("Map", f"<h1>Map</h1><p class=note>{text}</p>")
    cells: dict[tuple[int, int], list[tuple[float, float, str, int | None]]] = {}
    for lat, lon, content_hash, event_id in positions:
        key = (math.floor(lat / CELL_DEGREES), math.floor(lon / CELL_DEGREES))
        cells.setdefault(key, []).append((lat, lon, content_hash, event_id))
    marks, items = [], []
    for found in sorted(cells.values(), key=len, reverse=True):
        lat = sum(p[0] for p in found) / len(found)
        lon = sum(p[1] for p in found) / len(found)
        href, name = _mark_target(found, events)
        r = 0.8 + 0.45 * math.sqrt(len(found))
        label = escape(f"{name}: {len(found)} photo{'s' if len(found) != 1 else ''}")
        marks.append(
            f'<a href="{escape(href)}" aria-label="{label}"><title>{label}</title>'
            f'<circle cx="{lon:.2f}" cy="{-lat:.2f}" r="{r:.2f}" class=mark /></a>'
        )
        items.append(f'<li><a href="{escape(href)}">{label}</a></li>')
    svg = (
        '<svg class=world viewBox="-180 -90 360 180" role=group aria-label="World map of the '
        f'photos with a position"><rect x=-180 y=-90 width=360 height=180 class=sea />'
        f'<g class=land><path id=land d="{land()}" /><use href="#land" x=-360 />'
        f'<use href="#land" x=360 /></g>{"".join(marks)}</svg>'
    )
    count = len(positions)
    body = (
        f"<h1>Map</h1><p class=muted>{count} photo{'s' if count != 1 else ''} with a "
        f"position, in {len(cells)} place{'s' if len(cells) != 1 else ''} (photos within "
        f"{CELL_DEGREES:g}° share a mark)</p>{svg}"
        f"<h2>Places</h2><ul class=places>{''.join(items)}</ul>"
        "<p class=muted>Land: Natural Earth (public domain), through world-atlas.</p>"
    )
    return page("Map", body)


def _mark_target(
    found: list[tuple[float, float, str, int | None]], events: dict[int, Event]
) -> tuple[str, str]:
    """Where a mark links and what it is called: its photo, or its main event."""
    if len(found) == 1:
        _, _, content_hash, event_id = found[0]
        event = events.get(event_id) if event_id is not None else None
        return f"/photo/{content_hash}", event.title if event else "a photo"
    counted = Counter(e for *_, e in found if e is not None)
    if counted:
        event_id, _ = counted.most_common(1)[0]
        event = events.get(event_id)
        if event is not None:
            more = "" if len(counted) == 1 else f" and {len(counted) - 1} more events"
            return f"/event/{event_id}", event.title + more
    _, _, content_hash, _ = found[0]
    return f"/photo/{content_hash}", "photos without a date"
