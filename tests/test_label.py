"""The pure label helpers: text cleaning, prompt, reply parsing, dates and the offline fallback."""

from __future__ import annotations

import json
import string
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imageclust_daemon.grouping.label import (
    PHRASE_MAX,
    TITLE_MAX,
    GroupFacts,
    Label,
    ReplyError,
    agreed_position,
    album_when,
    build_prompt,
    centre,
    clean_text,
    describe_when,
    fallback_label,
    parse_reply,
    plausible_day,
)

QUOTES = "\"'“”‘’«»„‟`"

# Text a model might send back: prose, markup, quotes, emoji, control characters.
junk_text = st.text(
    alphabet=st.one_of(
        st.characters(),
        st.sampled_from(QUOTES + "*_#`[]{}<>|\\ \t\n\r-–—,;:/"),
    ),
    max_size=300,
)
# Words among quotes, spaces and punctuation: where trimming and cutting go wrong.
token_text = st.lists(
    st.sampled_from(['"', "'", "«", "»", " ", "  ", ",", "-", "—", ":", "sun", "Rome", "x"]),
    max_size=40,
).map("".join)
limits = st.integers(min_value=1, max_value=120)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | junk_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(junk_text, inner, max_size=4),
    max_leaves=12,
)

iso_times = st.one_of(
    st.datetimes().map(lambda d: d.isoformat()),
    st.dates().map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.strftime("%Y:%m:%d %H:%M:%S")),  # raw EXIF form
    junk_text,
)

group_facts = st.builds(
    GroupFacts,
    size=st.integers(min_value=0, max_value=10**9),
    taken_at=st.lists(iso_times, max_size=6).map(tuple),
    positions=st.lists(st.tuples(st.floats(), st.floats()), max_size=5).map(tuple),
    folders=st.lists(
        st.sampled_from(["DCIM", "100APPLE", "Hawaii trip", "Camera", ""]) | junk_text,
        max_size=6,
    ).map(tuple),
)


def assert_obeys_limits(label: Label) -> None:
    assert 0 < len(label.title) <= TITLE_MAX
    assert 0 < len(label.catchy_phrase) <= PHRASE_MAX
    for text in (label.title, label.catchy_phrase):
        assert text == text.strip()
        assert text[0] not in QUOTES and text[-1] not in QUOTES
        assert "\n" not in text


# -- clean_text -------------------------------------------------------------------------------


@given(junk_text | token_text, limits)
def test_clean_text_is_one_trimmed_line_within_the_limit(text: str, limit: int) -> None:
    cleaned = clean_text(text, limit)
    assert len(cleaned) <= limit
    assert cleaned == cleaned.strip()
    if cleaned:
        assert cleaned[0] not in QUOTES and cleaned[-1] not in QUOTES
    assert all(ch.isprintable() for ch in cleaned)
    assert "  " not in cleaned
    assert not set(cleaned) & set("*_`#~<>[]{}|\\")


@given(junk_text | token_text, st.integers(min_value=1, max_value=30))
def test_clean_text_is_idempotent(text: str, limit: int) -> None:
    once = clean_text(text, limit)
    assert clean_text(once, limit) == once


@given(
    st.lists(
        st.text(string.ascii_letters + "éü", min_size=1, max_size=12), min_size=1, max_size=12
    ),
    limits,
)
def test_clean_text_cuts_at_a_word_boundary(words: list[str], limit: int) -> None:
    text = " ".join(words)
    cleaned = clean_text(text, limit)
    if len(text) <= limit:
        assert cleaned == text
    elif " " in text[1 : limit + 1]:
        # The longest run of whole words that fits.
        fitting = [" ".join(words[:k]) for k in range(1, len(words) + 1)]
        assert cleaned == max(w for w in fitting if len(w) <= limit)
    else:
        assert cleaned == text[:limit]  # one word longer than the limit: a hard cut


@pytest.mark.parametrize(
    ("raw", "limit", "expected"),
    [
        ('"Summer in Rome"', 25, "Summer in Rome"),
        ("'\"Summer in Rome\"'", 25, "Summer in Rome"),
        ('" \' " \' " « Nested » " \' " \' "', 25, "Nested"),
        ("**Summer** in _Rome_", 25, "Summer in Rome"),
        ("Summer\nin\tRome", 25, "Summer in Rome"),
        ("Summer holidays in Rome, Italy", 25, "Summer holidays in Rome"),
        ('Beach days, "sunset" — and more', 18, "Beach days"),  # no dangling comma
        ("Rome — the eternal city", 7, "Rome"),  # nor a dangling dash
        ("Supercalifragilisticexpialidocious", 10, "Supercalif"),
        ('""', 25, ""),
        ("   ", 25, ""),
        ('Lunch at "the lake house with friends"', 25, "Lunch at the lake house"),  # cut open
        ("Dinner at “the old harbour” tonight", 22, "Dinner at the old"),
        ('A "quoted" word and more words here', 25, 'A "quoted" word and more'),
        ("Lisa's birthday party at the beach", 25, "Lisa's birthday party at"),
        ("Sommer „am See“ mit Freunden", 25, "Sommer „am See“ mit"),
    ],
)
def test_clean_text_examples(raw: str, limit: int, expected: str) -> None:
    assert clean_text(raw, limit) == expected


# -- parse_reply ------------------------------------------------------------------------------


@given(junk_text)
def test_parse_reply_on_junk_text_raises_only_reply_error(text: str) -> None:
    try:
        label = parse_reply(text)
    except ReplyError:
        return
    assert_obeys_limits(label)


@settings(deadline=None)
@given(json_values)
def test_parse_reply_on_any_json_raises_only_reply_error(value: object) -> None:
    try:
        label = parse_reply(json.dumps(value))
    except ReplyError:
        return
    assert_obeys_limits(label)


@given(junk_text, junk_text, st.dictionaries(junk_text, json_values, max_size=3))
def test_parse_reply_keeps_any_usable_fields_within_limits(
    title: str, phrase: str, extra: dict[str, object]
) -> None:
    reply = json.dumps({**extra, "title": title, "catchy_phrase": phrase})
    try:
        label = parse_reply(reply)
    except ReplyError:
        assert not clean_text(title, TITLE_MAX) or not clean_text(phrase, PHRASE_MAX)
        return
    assert label == Label(clean_text(title, TITLE_MAX), clean_text(phrase, PHRASE_MAX), "ollama")
    assert_obeys_limits(label)


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "   ",
        "Sure! Here is a title: Summer by the sea",
        '{"title": "Summer by the sea"}',  # no catchy_phrase
        '{"title": "Summer", "catchy_phrase": 42}',
        '{"title": "   ", "catchy_phrase": "Sun and salt"}',
        '["Summer", "Sun and salt"]',
        '{"title": "Summer", "catchy_phrase": "Sun and sa',  # cut at the length limit
        "1" * 5000,  # an int past Python's 4300-digit limit is a ValueError, not JSON's
        "[" * 100_000,  # nested past the recursion limit
    ],
)
def test_parse_reply_rejects_unusable_replies(reply: str) -> None:
    with pytest.raises(ReplyError):
        parse_reply(reply)


def test_parse_reply_accepts_a_fenced_block_and_cleans_fields() -> None:
    reply = '```json\n{"title": "**\\"Rome in June\\"**", "catchy_phrase": "Gelato, always"}\n```'
    assert parse_reply(reply) == Label("Rome in June", "Gelato, always", "ollama")


# -- build_prompt -----------------------------------------------------------------------------


@given(group_facts, st.none() | junk_text, st.integers(min_value=1, max_value=3))
def test_build_prompt_mentions_size_and_limits(
    facts: GroupFacts, place: str | None, n_images: int
) -> None:
    prompt = build_prompt(facts, place, n_images)
    assert f"These {n_images} photos" in prompt
    assert f"album of {facts.size} photos" in prompt
    assert f"at most {TITLE_MAX} characters" in prompt
    assert f"at most {PHRASE_MAX} characters" in prompt
    assert '"title"' in prompt and '"catchy_phrase"' in prompt


def test_build_prompt_gives_when_and_where() -> None:
    facts = GroupFacts(size=4, taken_at=("2024-06-02T10:00:00", "2024-06-20T18:30:00") * 2)
    prompt = build_prompt(facts, "Paris", 3)
    assert "(taken June 2024, near Paris)" in prompt
    assert "(" not in build_prompt(GroupFacts(size=5), None, 3).split(".")[0]


# -- describe_when ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("taken_at", "southern", "expected"),
    [
        (["2024-06-03T10:00:00", "2024-06-28"], False, "June 2024"),
        (["2019-06-10", "2019-08-20T12:00:00"], False, "Summer 2019"),
        (["2019-06-10", "2019-08-20"], True, "Winter 2019"),
        (["2019-03-05", "2019-05-25"], False, "Spring 2019"),
        (["2019-09-05", "2019-11-25"], True, "Spring 2019"),
        (["2023-12-20", "2024-01-05", "2024-02-10"], False, "Winter 2024"),  # year of its January
        (["2023-12-20", "2024-02-10"], True, "Summer 2024"),
        (["2019-03-01", "2019-11-30"], False, "2019"),
        (["2019-07-01", "2020-07-01"], False, "2019–2020"),  # same season, different years
        (["2017-05-01", "2018-01-01", "2019-05-01"], False, "2017–2019"),
        (["2024-06-01T12:00+02:00", "2024-06-20"], False, "June 2024"),  # aware among naive
        (["2024-06-01T23:30:00Z", "2024-06-30T08:00:00.123456"], False, "June 2024"),
        (["junk", "", "2024-13-45", "2024-06-05", "not a date 2019"], False, "June 2024"),
        (["junk", "2024-02-30"], False, None),
        ([], False, None),
    ],
)
def test_describe_when(taken_at: list[str], southern: bool, expected: str | None) -> None:
    assert describe_when(taken_at, southern=southern) == expected
    assert describe_when(list(reversed(taken_at)), southern=southern) == expected


@given(st.lists(iso_times, max_size=8), st.booleans())
def test_describe_when_never_raises(taken_at: list[str], southern: bool) -> None:
    when = describe_when(taken_at, southern=southern)
    assert when is None or 0 < len(when) <= TITLE_MAX


def test_centre_is_the_median_and_ignores_one_outlier() -> None:
    assert centre([]) is None
    assert centre([(48.85, 2.35), (48.86, 2.34), (-33.9, 151.2)]) == (48.85, 2.35)


@pytest.mark.parametrize(
    ("lons", "expected"),
    [
        ([179.5, -179.5, 179.8], 179.8),  # Fiji, either side of the 180th meridian
        ([179.5, -179.5, -179.8], -179.8),
        ([170.0, -170.0], 180.0),  # halfway, across the date line (not 0)
        ([-10.0, 10.0], 0.0),
        ([-179.0, -178.0, -177.0, 10.0], -178.5),  # one outlier pulls half a step
        ([5.0], 5.0),
    ],
)
def test_centre_longitude_wraps_at_the_date_line(lons: list[float], expected: float) -> None:
    where = centre([(-17.0, lon) for lon in lons])
    assert where is not None
    assert where[0] == -17.0
    assert where[1] == pytest.approx(expected) or abs(where[1]) == abs(expected) == 180.0


@given(st.lists(st.floats(-180, 180), min_size=1, max_size=20), st.floats(-720, 720))
def test_centre_longitude_turns_with_the_earth(lons: list[float], turn: float) -> None:
    """Rotating every photo east by `turn` degrees rotates the centre by the same amount."""

    def wrap(lon: float) -> float:
        return (lon + 180.0) % 360.0 - 180.0

    def distance(a: float, b: float) -> float:
        return abs(wrap(a - b))

    base = centre([(0.0, lon) for lon in lons])
    turned = centre([(0.0, wrap(lon + turn)) for lon in lons])
    assert base is not None and turned is not None
    assert -180.0 <= turned[1] <= 180.0
    # Equal up to float rounding, unless two gaps tie for widest (then either cut is right).
    ring = sorted(lons)
    gaps = sorted((b - a) % 360.0 for a, b in zip(ring, ring[1:] + ring[:1], strict=True))
    if len(gaps) < 2 or gaps[-1] - gaps[-2] > 1e-6:
        assert distance(turned[1], base[1] + turn) < 1e-6


# -- fallback_label ---------------------------------------------------------------------------


@given(group_facts, st.none() | junk_text, st.integers())
def test_fallback_label_always_fits(facts: GroupFacts, place: str | None, group_id: int) -> None:
    label = fallback_label(facts, place, group_id)
    assert label.source == "fallback"
    assert_obeys_limits(label)


@pytest.mark.parametrize(
    ("facts", "place", "title"),
    [
        (GroupFacts(2, taken_at=("2024-06-02", "2024-06-20")), "Paris", "Paris, June 2024"),
        (GroupFacts(12), "Paris", "Paris"),
        (
            GroupFacts(2, taken_at=("2019-07-01", "2019-08-15"), positions=((48.8, 2.3),) * 2),
            None,
            "Summer 2019",
        ),
        (GroupFacts(2, taken_at=("2019-07-01", "2019-08-15")), None, "July–August 2019"),
        (
            GroupFacts(3, taken_at=("2019-07-01",) * 2, positions=((-33.9, 151.2),) * 2),
            "Sydney",
            "Sydney, July 2019",
        ),
        (
            GroupFacts(3, taken_at=("2019-07-01", "2019-08-20"), positions=((-33.9, 151.2),) * 2),
            None,
            "Winter 2019",  # southern hemisphere
        ),
        (GroupFacts(3, folders=("Hawaii trip", "Hawaii trip", "DCIM")), None, "Hawaii trip"),
        (GroupFacts(3, folders=("DCIM", "DCIM", "100APPLE")), None, "Photo group 7"),
        (GroupFacts(3, folders=("a", "b", "c")), None, "Photo group 7"),  # no majority
    ],
)
def test_fallback_label_examples(facts: GroupFacts, place: str | None, title: str) -> None:
    label = fallback_label(facts, place, 7)
    assert label.title == title
    assert label.catchy_phrase.startswith(f"{facts.size} photos")
    assert label.source == "fallback"


# -- titles that are true of the whole album --------------------------------------------------

NOW = datetime(2026, 11, 30, 12, 0)


def test_one_photo_with_gps_does_not_name_an_album() -> None:
    """28 flowers, one phone shot in Madrid: not "Moncloa-Aravaca"."""
    facts = GroupFacts(28, positions=((40.43, -3.72),), folders=("flowers",) * 28)
    assert agreed_position(facts) is None
    assert fallback_label(facts, None, 3, now=NOW).title == "flowers"


def test_an_unset_clock_a_bad_date_and_one_position_say_nothing_false() -> None:
    """142 photos: one with GPS in Arezzo, a camera that never had its clock set, a date
    in the future; once titled "Arezzo, 1998–2026"."""
    facts = GroupFacts(
        142,
        taken_at=("1998-01-01T00:00:00", "2031-05-05T10:00:00", "2021-03-04T10:00:00"),
        positions=((43.46, 11.88),),
        folders=tuple(f"wallpapers-{i % 9}" for i in range(142)),
    )
    assert agreed_position(facts) is None and album_when(facts, NOW) is None
    label = fallback_label(facts, None, 12, now=NOW)
    assert label.title == "Photo group 12" and label.catchy_phrase == "142 photos"


def test_most_photos_agreeing_name_the_place_and_the_dates_they_share() -> None:
    """Paris in June 2024, with one photo geotagged in Lyon and one camera a decade off."""
    june = tuple(f"2024-06-{d:02d}T12:00:00" for d in range(1, 19))
    facts = GroupFacts(
        20,
        taken_at=(*june, "2014-06-03T09:00:00", "1980-01-01T00:00:00"),
        positions=((48.85, 2.35),) * 12 + ((45.76, 4.83),),
    )
    where = agreed_position(facts)
    assert where is not None and abs(where[0] - 48.85) < 0.01
    assert album_when(facts, NOW) == "June 2024"
    assert fallback_label(facts, "Paris", 1, now=NOW).title == "Paris, June 2024"


def test_a_place_needs_more_than_half_of_the_album() -> None:
    paris = ((48.85, 2.35),)
    assert agreed_position(GroupFacts(10, positions=paris * 5)) is None
    assert agreed_position(GroupFacts(10, positions=paris * 6)) is not None


@pytest.mark.parametrize(
    ("text", "plausible"),
    [
        ("2000-01-01T00:00:00", False),  # a clock never set
        ("1970-01-01T00:00:00", False),
        ("2000-01-01T00:00:01", True),  # a real New Year's photo
        ("2026-12-02T10:00:00", False),  # past tomorrow: a wrong clock
        ("2026-11-30T23:00:00+09:00", True),
        ("not a date", False),
    ],
)
def test_plausible_capture_times(text: str, plausible: bool) -> None:
    assert (plausible_day(text, NOW) is not None) == plausible


def test_one_wrong_clock_among_a_handful_does_not_stretch_the_range() -> None:
    june = tuple(f"2024-06-{d:02d}T12:00:00" for d in (2, 5, 9, 14))
    facts = GroupFacts(5, taken_at=(*june, "2009-03-03T10:00:00"))
    assert album_when(facts, NOW) == "June 2024"


def test_a_folder_needs_more_than_half_of_the_album() -> None:
    half = GroupFacts(4, folders=("Rome", "Rome", "a", "b"))
    assert fallback_label(half, None, 2, now=NOW).title == "Photo group 2"
