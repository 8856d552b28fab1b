"""The gallery's pages as HTML: pure functions of what `gallery` read. Every text from
the library (titles, paths, places, errors) is escaped; no script, no CDN, no font."""

from __future__ import annotations

from html import escape
from urllib.parse import urlencode

from imageclust_daemon.gallery.gallery import ALBUMS_PER_PAGE, PHOTOS_PER_PAGE, Album, Photo, Status
from imageclust_daemon.published.search import Hit

STYLE = """
:root { color-scheme: light dark; --fg: #1d1d1f; --muted: #6e6e73; --bg: #fbfbfd;
  --card: #ffffff; --line: #e5e5ea; --accent: #0a66c2; }
@media (prefers-color-scheme: dark) { :root { --fg: #f5f5f7; --muted: #a1a1a6;
  --bg: #141416; --card: #1f1f22; --line: #2c2c30; --accent: #4da3ff; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; gap: 1.2rem; align-items: center; padding: .7rem 1.2rem;
  border-bottom: 1px solid var(--line); background: var(--card); position: sticky; top: 0; }
header .brand { font-weight: 650; }
header nav a { margin-right: .9rem; }
header form { margin-left: auto; display: flex; gap: .4rem; }
header input { width: 22rem; max-width: 40vw; padding: .35rem .6rem; border-radius: 6px;
  border: 1px solid var(--line); background: var(--bg); color: var(--fg); }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
main { padding: 1.2rem; max-width: 1500px; margin: 0 auto; }
h1 { font-size: 1.5rem; margin: .2rem 0 .3rem; }
.muted { color: var(--muted); }
.albums { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); }
.album { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  overflow: hidden; color: inherit; display: block; }
.album:hover { text-decoration: none; border-color: var(--accent); }
.covers { display: grid; grid-template-columns: 1fr 1fr; gap: 2px; aspect-ratio: 1;
  background: var(--line); }
.covers img { width: 100%; height: 100%; object-fit: cover; display: block; }
.album .text { padding: .55rem .7rem .7rem; }
.album .title { font-weight: 600; }
.album .phrase { font-style: italic; color: var(--muted); font-size: .92rem; }
.album .facts { color: var(--muted); font-size: .85rem; margin-top: .2rem; }
.photos { display: grid; gap: 6px; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); }
.photos a { display: block; aspect-ratio: 1; background: var(--line); border-radius: 6px;
  overflow: hidden; position: relative; }
.photos img { width: 100%; height: 100%; object-fit: cover; display: block; }
.photos .score { position: absolute; right: 4px; bottom: 4px; font-size: .75rem;
  background: rgba(0,0,0,.6); color: #fff; padding: 0 .3rem; border-radius: 4px; }
.preview img { max-width: 100%; max-height: 78vh; display: block; margin: 0 auto;
  border-radius: 6px; }
.facts-table td { padding: .15rem .8rem .15rem 0; vertical-align: top; }
.pager { margin: 1.2rem 0; display: flex; gap: 1rem; }
.note { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: .7rem 1rem; }
table.list { border-collapse: collapse; }
table.list td, table.list th { text-align: left; padding: .2rem .9rem .2rem 0;
  border-bottom: 1px solid var(--line); }
svg a:hover circle { stroke: var(--accent); stroke-width: 3; }
"""


def page(title: str, body: str, query: str = "") -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · imageclust</title><style>{STYLE}</style></head><body>"
        "<header><span class=brand>imageclust</span><nav>"
        '<a href="/">Albums</a><a href="/library">Library</a><a href="/status">Status</a>'
        '</nav><form action="/search" method=get role=search>'
        f'<input type=search name=q value="{escape(query)}" placeholder="Search: dog on the beach"'
        ' aria-label="Search"><button>Search</button></form></header>'
        f"<main>{body}</main></body></html>"
    )


def _thumb(content_hash: str, alt: str = "") -> str:
    return f'<img src="/thumb/{content_hash}.jpg" loading=lazy decoding=async alt="{escape(alt)}">'


def _when(first: str | None, last: str | None) -> str:
    a, b = (first or "")[:10], (last or "")[:10]
    if not a:
        return ""
    return a if a == b else f"{a} – {b}"


def _bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{max(1, round(n / 1e3))} KB"


def _facts(album: Album) -> list[str]:
    facts = [f"{album.size} photo{'s' if album.size != 1 else ''}"]
    if when := _when(album.first, album.last):
        facts.append(when)
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
    covers = "".join(_thumb(h) for h in album.covers[:4])
    facts = _facts(album)
    title = escape(album.title or f"Album {album.id}")
    text = _phrase(album, facts)
    phrase = f"<div class=phrase>{escape(text)}</div>" if text else ""
    return (
        f'<a class=album href="/album/{album.id}"><div class=covers>{covers}</div>'
        f"<div class=text><div class=title>{title}</div>{phrase}"
        f"<div class=facts>{escape(' · '.join(facts))}</div></div></a>"
    )


def _pager(path: str, page_no: int, has_more: bool, **params: str) -> str:
    links = []
    if page_no > 0:
        links.append(
            f'<a href="{path}?{urlencode({**params, "page": page_no - 1})}">← newer page</a>'
        )
    if has_more:
        links.append(
            f'<a href="{path}?{urlencode({**params, "page": page_no + 1})}">next page →</a>'
        )
    return f"<div class=pager>{''.join(links)}</div>" if links else ""


def albums_page(albums: list[Album], total: int, order: str, page_no: int) -> str:
    other = "new" if order != "new" else "size"
    other_name = "newest first" if other == "new" else "biggest first"
    head = (
        f"<h1>Albums</h1><p class=muted>{total} album{'s' if total != 1 else ''} · "
        f"{'biggest' if order != 'new' else 'newest'} first · "
        f'<a href="/?order={other}">{other_name}</a></p>'
    )
    if not albums:
        return page(
            "Albums",
            head + "<p class=note>No albums yet: once the library is indexed "
            "and grouped they appear here.</p>",
        )
    cards = "".join(_album_card(a) for a in albums)
    more = (page_no + 1) * ALBUMS_PER_PAGE < total
    return page(
        "Albums", f"{head}<div class=albums>{cards}</div>" + _pager("/", page_no, more, order=order)
    )


def album_page(album: Album, photos: list[str], page_no: int) -> str:
    title = album.title or f"Album {album.id}"
    facts = _facts(album)
    text = _phrase(album, facts)
    phrase = f"<p><em>{escape(text)}</em></p>" if text else ""
    grid = "".join(f'<a href="/photo/{h}">{_thumb(h)}</a>' for h in photos)
    more = (page_no + 1) * PHOTOS_PER_PAGE < album.size
    body = (
        f"<h1>{escape(title)}</h1>{phrase}<p class=muted>{escape(' · '.join(facts))} · "
        "most typical first</p>"
        f"<div class=photos>{grid}</div>" + _pager(f"/album/{album.id}", page_no, more)
    )
    return page(title, body)


def _hits_grid(hits: list[Hit]) -> str:
    cells = []
    for h in hits:
        label = f"{h.score:.2f}" + (" · offline" if h.offline else "")
        cells.append(
            f'<a href="/photo/{h.content_hash}" title="{escape(h.paths[0])}">'
            f"{_thumb(h.content_hash, h.paths[0])}<span class=score>{label}</span></a>"
        )
    return f"<div class=photos>{''.join(cells)}</div>"


def photo_page(photo: Photo, similar: list[Hit], similar_note: str) -> str:
    name = photo.paths[0].rsplit("/", 1)[-1]
    rows = []
    if photo.taken_at:
        rows.append(("Taken", escape(photo.taken_at.replace("T", " "))))
    if photo.place:
        rows.append(("Place", escape(photo.place)))
    if photo.width and photo.height:
        weight = f" · {_bytes(photo.size)}" if photo.size else ""
        rows.append(("Size", f"{photo.width} × {photo.height}{weight}"))
    if photo.cluster_id is not None:
        title = escape(photo.title or f"Album {photo.cluster_id}")
        rows.append(("Album", f'<a href="/album/{photo.cluster_id}">{title}</a>'))
    where = "<br>".join(escape(p) for p in photo.paths)
    rows.append(("Path" if len(photo.paths) == 1 else f"Paths ({len(photo.paths)})", where))
    if photo.offline:
        rows.append(("", "offline: its folder is unreachable right now"))
    table = "".join(f"<tr><td class=muted>{k}</td><td>{v}</td></tr>" for k, v in rows)
    preview = (
        f'<div class=preview><img src="/preview/{photo.content_hash}.jpg" alt="{escape(name)}">'
        "</div>"
    )
    more = _hits_grid(similar) if similar else f"<p class=muted>{escape(similar_note)}</p>"
    body = (
        f"<h1>{escape(name)}</h1>{preview}<table class=facts-table>{table}</table>"
        f"<h2>Similar photos</h2>{more}"
    )
    return page(name, body)


def search_page(query: str, hits: list[Hit], albums: list[Album], note: str) -> str:
    if not query.strip():
        return page(
            "Search",
            "<h1>Search</h1><p class=muted>Type what you look for: "
            'words ("birthday cake", "snow in the mountains") or an album\'s '
            "title.</p>",
            query,
        )
    parts = [f"<h1>Search: {escape(query)}</h1>"]
    if albums:
        parts.append(
            f"<h2>Albums</h2><div class=albums>{''.join(_album_card(a) for a in albums)}</div>"
        )
    parts.append("<h2>Photos</h2>")
    if note:
        parts.append(f"<p class=note>{escape(note)}</p>")
    parts.append(_hits_grid(hits) if hits else "<p class=muted>No photos found.</p>")
    return page(f"Search: {query}", "".join(parts), query)


def library_page(layout: list[tuple[int, float, float, int, str | None]], note: str) -> str:
    if not layout:
        return page(
            "Library", f"<h1>Library</h1><p class=note>{escape(note or 'No albums yet.')}</p>"
        )
    width, height, pad = 1200, 760, 60
    biggest = max(size for *_, size, _ in layout) or 1
    circles = []
    for album, x, y, size, title in sorted(layout, key=lambda a: -a[3]):
        r = 6 + 34 * (size / biggest) ** 0.5
        cx, cy = pad + x * (width - 2 * pad), pad + y * (height - 2 * pad)
        name = escape(title or f"Album {album}")
        circles.append(
            f'<a href="/album/{album}"><circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" '
            f'fill="var(--accent)" fill-opacity=".35" stroke="var(--accent)">'
            f"<title>{name} ({size} photos)</title></circle></a>"
        )
        if r > 16:
            circles.append(
                f'<text x="{cx:.1f}" y="{cy + r + 13:.1f}" text-anchor=middle font-size=12 '
                f'fill="currentColor">{name[:28]}</text>'
            )
    svg = (
        f'<svg viewBox="0 0 {width} {height}" width="100%" role=img '
        f'aria-label="albums by meaning">{"".join(circles)}</svg>'
    )
    return page(
        "Library",
        "<h1>Library</h1><p class=muted>Each circle is an album, sized by its "
        "photos; albums close together look alike (the two main directions of their "
        f"photos' CLIP embeddings).</p>{svg}",
    )


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
        f"<tr><td>{escape(p)}</td><td>{escape(e)}</td></tr>" for p, e in status.failed
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
