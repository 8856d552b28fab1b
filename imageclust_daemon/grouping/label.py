"""Group titles: the prompt, the reply's validation, and the offline fallback. Pure: no I/O.

A title is at most 25 characters and a catchy phrase at most 100, cut at a word
boundary and stripped of quotes and markup. A reply that is empty, not JSON, or
missing either field is a failed attempt, never a label. When the LLM cannot
answer, `fallback_label` builds a title from what the photos themselves say:
where (the nearest place to their GPS positions) and when (their EXIF dates).

A title must be true of the album, not of one photo in it. So a place is named
only when most of the album's photos carry positions within AGREE_KM of each
other's centre (`agreed_position`; one wallpaper with GPS in Aarhus does not make
an album of animals "Århus"), and dates only when most photos have a date a
camera could mean: not January 1st at 00:00:00 (the epoch of a clock never set:
1970, 1980, 1998, 2000, ...) and not in the future; the range given is the one
the middle 80% of those dates fall in (`album_when`). Otherwise the title says
less: a folder name, or nothing but the group's number.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from imageclust_daemon.records import GroupFacts, Label

TITLE_MAX = 25
PHRASE_MAX = 100

# Bump when the prompt or the schema changes: cached labels are keyed by it.
PROMPT_VERSION = 1

REPLY_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": TITLE_MAX},
        "catchy_phrase": {"type": "string", "maxLength": PHRASE_MAX},
    },
    "required": ["title", "catchy_phrase"],
}


class ReplyError(ValueError):
    """The model's reply is not a usable label."""


# -- text cleaning ----------------------------------------------------------------------------

_MARKUP = re.compile(r"[*_`#~<>\[\]{}|\\]+")
_QUOTES = "\"'“”‘’«»„‟`"
_SPACE = re.compile(r"\s+")
_TRAILING = " ,;:-–—/"
# Quote pairs that must be balanced in a cut text ('single' quotes double as apostrophes).
# German „…“ closes with the English opening quote, so its texts are left alone.
_PAIRS = (('"', '"'), ("“", "”"), ("«", "»"))


def clean_text(text: str, limit: int) -> str:
    """One line, no markup, no surrounding quotes, at most `limit` chars cut at a word boundary."""
    text = _MARKUP.sub(" ", str(text))
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = _trim(_SPACE.sub(" ", text))
    if len(text) > limit:
        cut = text[: limit + 1]
        space = cut.rfind(" ")
        text = _trim(_balance_quotes(cut[:space] if space > 0 else text[:limit]))
    return text


def _balance_quotes(text: str) -> str:
    """Drop a quote left open by a cut ('Lunch at "the lake' -> 'Lunch at the lake')."""
    for opening, closing in _PAIRS:
        if opening == closing:
            if text.count(opening) % 2:
                at = text.rfind(opening)
                text = text[:at] + text[at + 1 :]
        elif text.count(opening) > text.count(closing) and "„" not in text:
            at = text.rfind(opening)
            text = text[:at] + text[at + 1 :]
    return _SPACE.sub(" ", text)


def _trim(text: str) -> str:
    """Strip spaces, quotes (however deeply nested: '"Title"') and trailing punctuation."""
    while True:
        trimmed = text.strip().strip(_QUOTES).rstrip(_TRAILING).strip()
        if trimmed == text:
            return text
        text = trimmed


# -- prompt and reply -------------------------------------------------------------------------


def describe_when(taken_at: Sequence[str], southern: bool = False) -> str | None:
    """ "June 2024", "Summer 2019", "2019" or "2017-2019" for a set of capture times."""
    return _describe_days(
        sorted(d for d in (_parse_day(t) for t in taken_at) if d is not None), southern
    )


def _describe_days(days: Sequence[datetime], southern: bool | None) -> str | None:
    """`southern` None: the hemisphere is unknown, so no season is named (July is summer
    in Paris and winter in Sydney); the months are, which are true anywhere."""
    if not days:
        return None
    first, last = days[0], days[-1]
    if (first.year, first.month) == (last.year, last.month):
        return f"{_MONTHS[first.month - 1]} {first.year}"  # not strftime: it follows the locale
    if southern is None:
        if first.year == last.year:
            return f"{_MONTHS[first.month - 1]}–{_MONTHS[last.month - 1]} {first.year}"
    else:
        season_first, season_last = _season(first, southern), _season(last, southern)
        if season_first == season_last and (last - first).days < 100:
            name, year = season_first
            return f"{name} {year}"
    if first.year == last.year:
        return str(first.year)
    return f"{first.year}–{last.year}"


_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


def _parse_day(text: str) -> datetime | None:
    try:
        # Naive: one aware time ("...T12:00+02:00" cut to 19 chars) among naive ones
        # would make them incomparable.
        return datetime.fromisoformat(text[:19]).replace(tzinfo=None)
    except (ValueError, TypeError):
        return None


def _season(day: datetime, southern: bool) -> tuple[str, int]:
    """Meteorological season (Dec-Feb, Mar-May, ...), named by the year of its January."""
    names = ["Winter", "Spring", "Summer", "Autumn"]
    index = (day.month % 12) // 3
    if southern:
        index = (index + 2) % 4
    return names[index], day.year + 1 if day.month == 12 else day.year


def centre(positions: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """Median latitude and longitude: robust to one photo tagged on the other side of the world.

    Longitude is circular: the median is taken after cutting the circle at the widest gap
    between the photos, so a trip either side of the 180th meridian centres on it, not on
    the opposite side of the Earth.
    """
    if not positions:
        return None
    lat = statistics.median(p[0] for p in positions)
    lons = sorted(p[1] for p in positions)
    gaps = [b - a for a, b in itertools.pairwise(lons)]
    if not gaps or max(gaps) <= lons[0] + 360.0 - lons[-1]:
        return lat, statistics.median(lons)  # the widest gap spans the 180th meridian
    cut = gaps.index(max(gaps)) + 1  # the circle opens between lons[cut - 1] and lons[cut]
    lon = statistics.median(lons[cut:] + [x + 360.0 for x in lons[:cut]])
    return lat, lon - 360.0 if lon > 180.0 else lon


def build_prompt(
    facts: GroupFacts, place: str | None, n_images: int, *, now: datetime | None = None
) -> str:
    """The instruction sent with the group's representative photos."""
    hints = []
    when = album_when(facts, now)
    if when:
        hints.append(f"taken {when}")
    if place:
        hints.append(f"near {place}")
    context = f" ({', '.join(hints)})" if hints else ""
    return (
        f"These {n_images} photos are the most typical of an album of {facts.size} "
        f"photos{context}. Name the album the way a person would.\n"
        "Reply with JSON only, with two fields:\n"
        f'- "title": a short album title, at most {TITLE_MAX} characters, no quotes or emoji;\n'
        f'- "catchy_phrase": one catchy line about the album, at most {PHRASE_MAX} characters.'
    )


def parse_reply(text: str) -> Label:
    """Strictly validate the model's JSON reply; raise ReplyError if it is not a usable label."""
    if not isinstance(text, str) or not text.strip():
        raise ReplyError("empty reply")
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.S)
    if fenced:
        body = fenced.group(1)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # ValueError: also an int of > 4300 digits
        raise ReplyError(f"reply is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ReplyError(f"reply is JSON {type(data).__name__}, not an object")
    fields = {}
    for key, limit in (("title", TITLE_MAX), ("catchy_phrase", PHRASE_MAX)):
        value = data.get(key)
        if not isinstance(value, str):
            raise ReplyError(f"reply has no {key!r} string")
        cleaned = clean_text(value, limit)
        if not cleaned:
            raise ReplyError(f"reply's {key!r} is empty")
        fields[key] = cleaned
    return Label(fields["title"], fields["catchy_phrase"], "ollama")


# -- what is true of the whole album ------------------------------------------------------------

# Positions within this distance of the album's centre count as one place: a city and
# its surroundings, a day trip; not two cities.
AGREE_KM = 50.0
# Dates outside the middle 80% of an album's dates do not stretch its range: one camera
# with a wrong clock among phones must not turn "June 2024" into "2009-2024".
TRIM_SHARE = 0.10


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp, dl = p2 - p1, math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6371.0 * 2 * math.asin(min(1.0, math.sqrt(h)))


def agreed_position(facts: GroupFacts) -> tuple[float, float] | None:
    """The album's position, when more than half of its photos carry positions within
    AGREE_KM of their common centre; else None (say no place rather than a false one)."""
    valid = [p for p in facts.positions if all(map(math.isfinite, p)) and abs(p[0]) <= 90]
    where = centre(valid)
    if where is None:
        return None
    near = [p for p in valid if _km(p, where) <= AGREE_KM]
    if 2 * len(near) <= max(facts.size, len(facts.positions)):
        return None
    return centre(near)


FIRST_PHOTO_YEAR = 1826  # Niépce's view from the window at Le Gras: nothing is older


def plausible_day(text: str, now: datetime | None = None) -> datetime | None:
    """A capture time a camera could mean, or None: unparseable, before FIRST_PHOTO_YEAR,
    January 1st at midnight (a clock never set starts at its epoch), or after `now`
    (plus a day of time zones)."""
    day = _parse_day(text)
    if day is None or day.year < FIRST_PHOTO_YEAR:
        return None
    if (day.month, day.day, day.hour, day.minute, day.second) == (1, 1, 0, 0, 0):
        return None
    if now is not None and (day - now.replace(tzinfo=None)).days >= 1:
        return None
    return day


def album_when(facts: GroupFacts, now: datetime | None = None) -> str | None:
    """When the album's photos were taken, when more than half of them have a plausible
    date: the range of the middle 80% of those dates ("June 2024", "2017-2019"), or of
    all of them when the middle 80% would be half of the album or less ("most photos"
    means more than half)."""
    days = sorted(d for d in (plausible_day(t, now) for t in facts.taken_at) if d is not None)
    if 2 * len(days) <= max(facts.size, len(facts.taken_at)):
        return None
    # At least one date off each end from 5 dates on: one wrong clock among a handful of
    # photos must not stretch "June 2024" to "2009-2024" either.
    trim = max(int(len(days) * TRIM_SHARE), 1 if len(days) >= 5 else 0)
    core = days[trim : len(days) - trim] or days
    if 2 * len(core) <= max(facts.size, len(facts.taken_at)):
        core = days  # the range said must hold most of the album's photos, not a few of them
    where = agreed_position(facts)
    return _describe_days(core, None if where is None else where[0] < 0)


# -- the offline fallback ---------------------------------------------------------------------


def _southern(facts: GroupFacts) -> bool:
    where = agreed_position(facts)
    return where is not None and where[0] < 0


def _common_folder(folders: Sequence[str]) -> str | None:
    """The folder most members live in, if it is a real name (not a camera dump like DCIM)."""
    if not folders:
        return None
    name, count = Counter(folders).most_common(1)[0]
    generic = re.fullmatch(
        r"(?i)(dcim|\d{3}[a-z_]*|camera|photos?|pictures?|images?|img|\W*)", name
    )
    if generic or count * 2 <= len(folders):  # most of them: more than half
        return None
    return name


def fallback_label(
    facts: GroupFacts, place: str | None, group_id: int, *, now: datetime | None = None
) -> Label:
    """A title from what most photos show (`facts.subject`), place and dates, else the
    common folder name, else the group's number.

    `place` must be the name of `agreed_position(facts)` (None when there is none).
    """
    when = album_when(facts, now)
    folder = _common_folder(facts.folders)
    subject = facts.subject[:1].upper() + facts.subject[1:] if facts.subject else None
    candidates = [
        f"{subject}, {place}" if subject and place else None,
        f"{subject}, {when}" if subject and when else None,
        f"{place}, {when}" if place and when else None,
        subject,
        place,
        when,
        folder,
        f"Photo group {group_id}",
    ]
    # The first that fits whole: a cut place name ("Santa Cruz de") says something false.
    fitting = [c for c in candidates if c and clean_text(c, TITLE_MAX) == clean_text(c, 10**6)]
    title = next(
        (clean_text(c, TITLE_MAX) for c in fitting if clean_text(c, TITLE_MAX)),
        next(clean_text(c, TITLE_MAX) for c in candidates if c and clean_text(c, TITLE_MAX)),
    )
    details = [d for d in (facts.subject, place, when) if d]
    phrase = f"{facts.size} photos" + (f" · {', '.join(details)}" if details else "")
    if not details and folder and folder != title:
        phrase += f" · {folder}"
    return Label(title, clean_text(phrase, PHRASE_MAX), "fallback")


# -- event titles -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What an event's title is made of: the calendar dates of its first and last photos
    (a party from 8 pm to 1 am reads "29–30 June"), its first photo's time, and its
    place."""

    id: int
    first_day: date
    last_day: date
    started: datetime
    place: str | None  # the city most of its positioned photos were taken in


def event_when(first: date, last: date) -> str:
    """ "11 June 2021", "3–7 May 2022", "28 May – 2 June 2022", "30 December 2021 – 2
    January 2022"."""

    def day(d: date) -> str:
        return f"{d.day} {_MONTHS[d.month - 1]}"

    if first == last:
        return f"{day(first)} {first.year}"
    if (first.year, first.month) == (last.year, last.month):
        return f"{first.day}–{last.day} {_MONTHS[first.month - 1]} {first.year}"
    if first.year == last.year:
        return f"{day(first)} – {day(last)} {first.year}"
    return f"{day(first)} {first.year} – {day(last)} {last.year}"


def part_of_day(when: datetime) -> str:
    hour = when.hour
    if 4 <= hour < 12:
        return "morning"
    if 12 <= hour < 17:
        return "afternoon"
    if 17 <= hour < 21:
        return "evening"
    return "night"


def event_titles(events: Sequence[EventFacts]) -> dict[int, str]:
    """Each event's title, where and when ("Paris, 11 June 2021"; "Seville, 3–7 May 2022"),
    unique across `events`: events that would read the same get the part of the day they
    began in ("…, morning") when that tells them apart, else the time they began ("…,
    14:05"), else that time and their number."""
    titles = {
        e.id: f"{e.place}, {event_when(e.first_day, e.last_day)}"
        if e.place
        else event_when(e.first_day, e.last_day)
        for e in events
    }
    by_id = {e.id: e for e in events}
    clashes: dict[str, list[int]] = {}
    for eid, title in titles.items():
        clashes.setdefault(title.casefold(), []).append(eid)
    for ids in clashes.values():
        if len(ids) < 2:
            continue
        for qualify in (
            lambda e: part_of_day(e.started),
            lambda e: e.started.strftime("%H:%M"),
            lambda e: f"{e.started:%H:%M}, event {e.id}",
        ):
            words = [qualify(by_id[eid]) for eid in ids]
            if len(set(words)) == len(words):
                break
        for eid, word in zip(ids, words, strict=True):
            titles[eid] = f"{titles[eid]}, {word}"
    return titles


# -- titles that tell albums apart --------------------------------------------------------------


def distinct_titles(
    titles: Mapping[int, str],
    facts: Mapping[int, GroupFacts],
    places: Mapping[int, str | None],
    *,
    now: datetime | None = None,
) -> dict[int, str]:
    """`titles` (album id -> title), with what tells them apart added to those that would
    read the same (case aside): the album's subject, its place, its span of time, its
    folder, each only where it tells some of them apart and is true of the album (see
    `album_when`, `agreed_position`), the one that tells most of them apart first, and
    last the album's number. `facts` and `places`
    (the name of each album's agreed position) are needed for the clashing ones only."""
    qualifiers: list[Callable[[int], str | None]] = [
        lambda i: facts[i].subject if i in facts else None,
        lambda i: places.get(i),
        lambda i: album_when(facts[i], now) if i in facts else None,
        lambda i: _common_folder(facts[i].folders) if i in facts else None,
    ]
    out = dict(titles)
    while groups := clashing(out):  # (a qualified title may read like another album's)
        for ids in groups:
            _tell_apart(ids, out, qualifiers)
    return out


def _tell_apart(
    ids: list[int], out: dict[int, str], qualifiers: Sequence[Callable[[int], str | None]]
) -> None:
    """Qualify the titles of `ids` (which read the same) in `out` until they differ: each
    time with the qualifier that tells most of them apart, last with their numbers."""
    todo = [ids]
    while todo:
        group = todo.pop()
        best: dict[int, str] = {}
        for qualify in qualifiers:
            words = {i: qualify(i) for i in group}
            shown = {
                i: f"{out[i]}, {w}" if w and w.casefold() not in out[i].casefold() else out[i]
                for i, w in words.items()
            }
            if len({t.casefold() for t in shown.values()}) > max(
                len({t.casefold() for t in best.values()}), 1
            ):
                best = shown
        if not best:  # nothing true tells them apart: their numbers do
            best = {i: f"{out[i]}, album {i}" for i in group}
        out.update(best)
        todo += clashing(best)


def clashing(titles: Mapping[int, str]) -> list[list[int]]:
    """The ids of titles that read the same (case aside), in groups."""
    same: dict[str, list[int]] = {}
    for i, title in sorted(titles.items()):
        same.setdefault(title.casefold(), []).append(i)
    return [ids for ids in same.values() if len(ids) > 1]
