"""The gallery's pages as HTML: pure functions of what `gallery` read. Every text from
the library (titles, paths, places, errors) is escaped; no script, no CDN, no font."""

from __future__ import annotations

from html import escape
from urllib.parse import urlencode

from imageclust_daemon.gallery.gallery import ALBUMS_PER_PAGE, PHOTOS_PER_PAGE, Album, Status
from imageclust_daemon.published.search import Hit

STYLE = """
:root { color-scheme: light dark; --fg: #1d1d1f; --muted: #6e6e73; --bg: #fbfbfd;
  --card: #ffffff; --line: #e5e5ea; --accent: #0a66c2; }
@media (prefers-color-scheme: dark) { :root { --fg: #f5f5f7; --muted: #a1a1a6;
  --bg: #141416; --card: #1f1f22; --line: #2c2c30; --accent: #4da3ff; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; flex-wrap: wrap; gap: .5rem 1.2rem; align-items: center;
  padding: .6rem 1rem; border-bottom: 1px solid var(--line); background: var(--card);
  position: sticky; top: 0; z-index: 2; }
header .brand { font-weight: 650; }
header nav { display: flex; flex-wrap: wrap; gap: .2rem .9rem; }
header form { margin-left: auto; display: flex; gap: .4rem; flex: 1 1 14rem; max-width: 26rem; }
header input { flex: 1; min-width: 0; padding: .35rem .6rem; border-radius: 6px;
  border: 1px solid var(--line); background: var(--bg); color: var(--fg); }
:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
td { overflow-wrap: anywhere; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
p a, li a, td a { text-decoration: underline; text-underline-offset: 2px; }
main { padding: 1rem; max-width: 1500px; margin: 0 auto; overflow-wrap: anywhere; }
h1 { font-size: 1.5rem; margin: .2rem 0 .3rem; }
.muted { color: var(--muted); }
.albums { display: grid; gap: 1rem;
  grid-template-columns: repeat(auto-fill, minmax(min(250px, 42vw), 1fr)); }
.album { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  overflow: hidden; color: inherit; display: block; }
.album:hover { text-decoration: none; border-color: var(--accent); }
.covers { display: grid; grid-template: 1fr 1fr / 1fr 1fr; gap: 2px; aspect-ratio: 1;
  background: var(--line); }
.covers img { width: 100%; height: 100%; min-height: 0; object-fit: cover; display: block; }
.album .text { padding: .55rem .7rem .7rem; }
.album .title { font-weight: 600; }
.album .phrase { font-style: italic; color: var(--muted); font-size: .92rem; }
.album .facts { color: var(--muted); font-size: .85rem; margin-top: .2rem; }
.photos { display: grid; gap: 6px;
  grid-template-columns: repeat(auto-fill, minmax(min(160px, 30vw), 1fr)); }
.photos a { display: block; aspect-ratio: 1; background: var(--line); border-radius: 6px;
  overflow: hidden; position: relative; }
.photos img { width: 100%; height: 100%; object-fit: cover; display: block; }
.photos .score { position: absolute; right: 4px; bottom: 4px; font-size: .75rem;
  background: rgba(0,0,0,.6); color: #fff; padding: 0 .3rem; border-radius: 4px; }
.preview img { max-width: 100%; max-height: 78vh; display: block; margin: 0 auto;
  border-radius: 6px; }
.facts-table td { padding: .15rem .8rem .15rem 0; vertical-align: top; }
.facts-table td:first-child { white-space: nowrap; overflow-wrap: normal; }
.pager { margin: 1.2rem 0; display: flex; gap: 1rem; }
.note { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: .7rem 1rem; }
table.list { border-collapse: collapse; max-width: 100%; }
@media (max-width: 600px) { main { padding: .7rem; } h1 { font-size: 1.25rem; }
  header form { max-width: none; flex-basis: 100%; } }
table.list td, table.list th { text-align: left; padding: .2rem .9rem .2rem 0;
  border-bottom: 1px solid var(--line); }
svg a:hover circle { stroke: var(--accent); stroke-width: 3; }
.event { margin: 0 0 1.1rem; }
.event h3 { margin: 0; font-size: 1.05rem; }
.event p { margin: .1rem 0 .35rem; }
h3.month { margin: 1rem 0 .4rem; color: var(--muted); font-weight: 600; }
.strip { display: grid; gap: 4px; grid-template-columns: repeat(4, minmax(0, 110px)); }
.strip a { display: block; aspect-ratio: 1; background: var(--line); border-radius: 5px;
  overflow: hidden; }
.strip img { width: 100%; height: 100%; object-fit: cover; display: block; }
svg.world { width: 100%; height: auto; display: block; border-radius: 8px; }
svg.world .sea { fill: var(--card); }
svg.world .land { fill: var(--line); stroke: var(--muted); stroke-width: .15; }
svg.world .mark { fill: var(--accent); fill-opacity: .55; stroke: var(--fg);
  stroke-width: .15; }
svg.world a:hover .mark, svg.world a:focus .mark { fill-opacity: .9; }
ul.places { columns: 16rem; padding-left: 1.1rem; }
.viewer-nav { display: flex; flex-wrap: wrap; gap: .4rem 1.2rem; align-items: center;
  margin: 0 0 .4rem; }
.actions { display: flex; flex-wrap: wrap; gap: .5rem 1.2rem; align-items: center; }
.actions button { font: inherit; padding: .25rem .7rem; border-radius: 6px;
  border: 1px solid var(--line); background: var(--card); color: var(--fg); cursor: pointer; }
.preview img { cursor: zoom-in; }
.preview.zoomed { overflow: auto; max-height: 85vh; }
.preview.zoomed img { max-width: none; max-height: none; cursor: zoom-out; }
"""


SEARCH_STEP = 60  # photos a search shows, and how many more each "more" adds


def page(title: str, body: str, query: str = "") -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · imageclust</title><style>{STYLE}</style></head><body>"
        "<header><span class=brand>imageclust</span><nav>"
        '<a href="/">Albums</a><a href="/timeline">Timeline</a><a href="/map">Map</a>'
        '<a href="/status">Status</a>'
        '</nav><form action="/search" method=get role=search>'
        f'<input type=search name=q value="{escape(query)}" placeholder="Search albums and photos"'
        ' aria-label="Search"><button>Search</button></form></header>'
        f"<main>{body}</main></body></html>"
    )


def thumb(content_hash: str, alt: str = "") -> str:
    return f'<img src="/thumb/{content_hash}.jpg" loading=lazy decoding=async alt="{escape(alt)}">'


def bytes_text(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{max(1, round(n / 1e3))} KB"


def _facts(album: Album) -> list[str]:
    facts = [f"{album.size} photo{'s' if album.size != 1 else ''}"]
    if album.when:
        facts.append(album.when)
    if album.place:
        facts.append(album.place)
    return facts


def _phrase(album: Album, facts: list[str]) -> str:
    """The album's phrase, unless it only repeats its title and facts (a fallback
    phrase such as "6 photos · Paris, June 2024" beside the same title and count)."""
    if not album.phrase:
        return ""
    said = {album.title or "", *facts}
    return "" if all(part in said for part in album.phrase.split(" · ")) else album.phrase


def _album_card(album: Album) -> str:
    covers = "".join(thumb(h) for h in album.covers[:4])
    facts = _facts(album)
    title = escape(album.title or f"Album {album.id}")
    text = _phrase(album, facts)
    phrase = f"<div class=phrase>{escape(text)}</div>" if text else ""
    return (
        f'<a class=album href="/album/{album.id}"><div class=covers>{covers}</div>'
        f"<div class=text><div class=title>{title}</div>{phrase}"
        f"<div class=facts>{escape(' · '.join(facts))}</div></div></a>"
    )


def pager(path: str, page_no: int, has_more: bool, **params: str) -> str:
    links = []
    if page_no > 0:
        links.append(
            f'<a rel=prev href="{path}?{urlencode({**params, "page": page_no - 1})}">'
            "← previous page</a>"
        )
    if has_more:
        links.append(
            f'<a rel=next href="{path}?{urlencode({**params, "page": page_no + 1})}">'
            "next page →</a>"
        )
    return f"<nav class=pager aria-label=Pages>{''.join(links)}</nav>" if links else ""


def past_the_end(what: str, path: str) -> str:
    return (
        f"<p class=note>There is no page {escape(what)} here: "
        f'<a href="{path}">back to the first page</a>.</p>'
    )


def albums_page(albums: list[Album], total: int, order: str, page_no: int) -> str:
    other = "new" if order != "new" else "size"
    other_name = "newest first" if other == "new" else "biggest first"
    head = (
        f"<h1>Albums</h1><p class=muted>{total} album{'s' if total != 1 else ''} · "
        f"{'biggest' if order != 'new' else 'newest'} first · "
        f'<a href="/?order={other}">{other_name}</a></p>'
    )
    if not albums and total:  # a page past the last
        return page("Albums", head + past_the_end(str(page_no), f"/?order={order}"))
    if not albums:
        return page(
            "Albums",
            head + "<p class=note>No albums yet: once the library is indexed "
            "and grouped they appear here.</p>",
        )
    cards = "".join(_album_card(a) for a in albums)
    more = (page_no + 1) * ALBUMS_PER_PAGE < total
    return page(
        "Albums", f"{head}<div class=albums>{cards}</div>" + pager("/", page_no, more, order=order)
    )


def album_page(album: Album, photos: list[str], page_no: int) -> str:
    title = album.title or f"Album {album.id}"
    facts = _facts(album)
    text = _phrase(album, facts)
    phrase = f"<p><em>{escape(text)}</em></p>" if text else ""
    intro = f"{phrase}<p class=muted>{escape(' · '.join(facts))} · most typical first</p>"
    return photos_page(
        title, intro, photos, album.size, page_no, f"/album/{album.id}", f"album:{album.id}"
    )


def photos_page(
    title: str,
    intro: str,
    photos: list[str],
    total: int,
    page_no: int,
    path: str,
    context: str,
    above: str = "",
) -> str:
    """A page of a list of photos (an album's, an event's): its heading, `intro` (HTML),
    the page's thumbnails opening each photo in `context`, and the pager; or, past the
    last page, that there is none."""
    if not photos and page_no > 0:
        return page(title, f"{above}<h1>{escape(title)}</h1>" + past_the_end(str(page_no), path))
    grid = "".join(
        f'<a href="/photo/{h}?in={context}">{thumb(h, f"photo {i + 1}")}</a>'
        for i, h in enumerate(photos, start=page_no * PHOTOS_PER_PAGE)
    )
    more = (page_no + 1) * PHOTOS_PER_PAGE < total
    body = f"{above}<h1>{escape(title)}</h1>{intro}<div class=photos>{grid}</div>" + pager(
        path, page_no, more
    )
    return page(title, body)


def hits_grid(hits: list[Hit], context: str | None = None) -> str:
    cells = []
    for h in hits:
        label = f"{h.score:.2f}" + (" · offline" if h.offline else "")
        href = f"/photo/{h.content_hash}" + (f"?{urlencode({'in': context})}" if context else "")
        cells.append(
            f'<a href="{escape(href)}" title="{escape(h.paths[0])}">'
            f"{thumb(h.content_hash, h.paths[0])}<span class=score>{label}</span></a>"
        )
    return f"<div class=photos>{''.join(cells)}</div>"


def search_page(
    query: str,
    hits: list[Hit],
    albums: list[Album],
    note: str,
    *,
    words: bool = True,
    limit: int = 0,
) -> str:
    """`note`: why photos were not searched by words (then no photo result is claimed);
    `words`: whether search by words works here; `limit`: how many hits were asked for
    (a full page offers more)."""
    if not query.strip():
        how = (
            'words ("birthday cake", "snow in the mountains") or an album\'s title'
            if words
            else "an album's title (search by words needs the model's text tower and "
            "tokenizer: imageclust models download)"
        )
        return page(
            "Search", f"<h1>Search</h1><p class=muted>Type what you look for: {how}.</p>", query
        )
    parts = [f"<h1>Search: {escape(query)}</h1>"]
    if albums:
        parts.append(
            f"<h2>Albums</h2><div class=albums>{''.join(_album_card(a) for a in albums)}</div>"
        )
    elif note:
        parts.append("<p class=muted>No album title has these words.</p>")
    if note:  # photos were not searched: say why, and claim nothing about them
        parts.append(f"<h2>Photos</h2><p class=note>{escape(note)}</p>")
        return page(f"Search: {query}", "".join(parts), query)
    parts.append("<h2>Photos</h2>")
    if not hits:
        parts.append("<p class=muted>No photos found.</p>")
    else:
        parts.append(
            f"<p class=muted>The {len(hits)} photos most like these words, best first</p>"
            + hits_grid(hits, f"search:{query}")
        )
        if limit and len(hits) >= limit:
            more = urlencode({"q": query, "n": limit + SEARCH_STEP})
            parts.append(f'<nav class=pager><a href="/search?{more}">more photos →</a></nav>')
    return page(f"Search: {query}", "".join(parts), query)


def status_page(status: Status, daemon: dict[str, str]) -> str:
    c = status.counts  # counted as `imageclust status` counts (store.count_statuses)
    failed = c.get("failed", 0)
    rows = [
        ("Photos indexed", c.get("indexed", 0)),
        ("Waiting to be indexed", c.get("pending", 0)),
        (
            "Failed",
            f"{failed} ({status.failed_total} file{'s' if status.failed_total != 1 else ''})"
            if status.failed_total != failed
            else failed,
        ),
        ("Offline (folder unreachable)", c.get("offline", 0)),
        ("Albums", status.albums),
    ]
    table = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    when = [
        ("Catalog published", status.info.get("generated_at", "")),
        ("Model", status.info.get("model", "")),
    ]
    when += list(daemon.items())
    facts = "".join(
        f"<tr><td class=muted>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in when
    )
    failed_rows = "".join(
        f'<tr><td><a href="/failed?{urlencode({"path": p})}">{escape(p)}</a></td>'
        f"<td>{escape(e)}</td></tr>"
        for p, e in status.failed
    )
    more_failed = (
        f"<p class=muted>and {status.failed_total - len(status.failed)} more</p>"
        if status.failed_total > len(status.failed)
        else ""
    )
    offline = "".join(
        f"<tr><td>{escape(folder)}</td><td>{n}</td></tr>" for folder, n in status.offline_folders
    )
    body = (
        f"<h1>Status</h1><table class=list>{table}</table><h2>Activity</h2>"
        f"<table class=facts-table>{facts}</table>"
        + (
            f"<h2>Failed photos</h2><table class=list><tr><th>Path</th><th>Why</th></tr>"
            f"{failed_rows}</table>{more_failed}"
            if failed_rows
            else ""
        )
        + (
            f"<h2>Offline folders</h2><table class=list><tr><th>Folder</th><th>Photos</th></tr>"
            f"{offline}</table>"
            if offline
            else ""
        )
    )
    return page("Status", body)


def message_page(title: str, text: str) -> str:
    return page(title, f"<h1>{escape(title)}</h1><p class=note>{escape(text)}</p>")
