"""The photo viewer: one photo large, its facts, the way to the previous and next photo
of what it was opened from (an album, an event, a search), zoom, the original, and the
photos like it. Pure functions of what `gallery` read; all text escaped."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from urllib.parse import quote

from imageclust_daemon.gallery.gallery import Photo
from imageclust_daemon.gallery.pages import bytes_text, hits_grid, page
from imageclust_daemon.published.search import Hit

# Formats a browser shows by itself: the original opens full size; others download.
SHOWN_BY_BROWSERS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "AVIF"})

# ←/→ follow the page's rel=prev/next links, Esc its rel=up link, a swipe does the same on
# a touch screen, a click (or Enter on the focused picture) zooms the picture to its own
# size. Without script every one of these is a plain link or the picture at page size.
SCRIPT = """
(function () {
  function go(rel) {
    var a = document.querySelector('a[rel~="' + rel + '"]');
    if (a) { location.href = a.href; }
  }
  document.addEventListener('keydown', function (e) {
    if (e.altKey || e.ctrlKey || e.metaKey || e.target.closest('input, textarea')) { return; }
    var rel = {ArrowLeft: 'prev', ArrowRight: 'next', Escape: 'up'}[e.key];
    if (rel) { e.preventDefault(); go(rel); }
  });
  var x0 = null;
  document.addEventListener('touchstart', function (e) {
    x0 = e.touches.length === 1 ? e.touches[0].clientX : null;
  }, {passive: true});
  document.addEventListener('touchend', function (e) {
    if (x0 === null) { return; }
    var dx = e.changedTouches[0].clientX - x0;
    x0 = null;
    if (Math.abs(dx) > 60) { go(dx > 0 ? 'prev' : 'next'); }
  }, {passive: true});
  var zoom = document.getElementById('zoom');
  var box = document.querySelector('.preview');
  if (zoom && box) {
    zoom.hidden = false;
    zoom.addEventListener('click', function () {
      var on = box.classList.toggle('zoomed');
      zoom.setAttribute('aria-pressed', on ? 'true' : 'false');
      zoom.textContent = on ? 'Fit to the window' : 'Zoom to its own size';
    });
  }
})();
"""


@dataclass(frozen=True)
class Context:
    """What a photo was opened from: its photos in order, and the way back to it."""

    key: str  # the `in` parameter that names it: "album:12", "event:3", "search:words"
    hashes: list[str]
    up_href: str
    up_title: str


def photo_href(content_hash: str, context: str | None = None) -> str:
    return f"/photo/{content_hash}" + (f"?in={quote(context, safe=':')}" if context else "")


def _nav(photo: Photo, context: Context | None) -> str:
    if context is None:
        if photo.cluster_id is None:
            return ""
        title = escape(photo.title or f"Album {photo.cluster_id}")
        return (
            f'<nav class=viewer-nav aria-label="This photo\'s album">'
            f'<a rel=up href="/album/{photo.cluster_id}">↑ {title}</a></nav>'
        )
    hashes = context.hashes
    at = hashes.index(photo.content_hash) if photo.content_hash in hashes else -1
    parts = [f'<a rel=up href="{escape(context.up_href)}">↑ {escape(context.up_title)}</a>']
    if at > 0:
        href = photo_href(hashes[at - 1], context.key)
        parts.append(f'<a rel=prev href="{escape(href)}">← previous</a>')
    if at >= 0:
        parts.append(f"<span class=muted>{at + 1} of {len(hashes)}</span>")
    if 0 <= at < len(hashes) - 1:
        href = photo_href(hashes[at + 1], context.key)
        parts.append(f'<a rel=next href="{escape(href)}">next →</a>')
    return f'<nav class=viewer-nav aria-label="Photos">{"".join(parts)}</nav>'


def photo_page(
    photo: Photo,
    similar: list[Hit],
    similar_note: str,
    context: Context | None = None,
    kind: str | None = None,
) -> str:
    """`kind`: the original's format (JPEG, HEIF, a RAW, ...), for the full-size link."""
    name = photo.paths[0].rsplit("/", 1)[-1]
    rows = []
    if photo.taken_at:
        rows.append(("Taken", escape(photo.taken_at.replace("T", " "))))
    if photo.place:
        rows.append(("Place", escape(photo.place)))
    if photo.width and photo.height:
        weight = f" · {bytes_text(photo.size)}" if photo.size else ""
        rows.append(("Size", f"{photo.width} × {photo.height}{weight}"))
    if photo.cluster_id is not None:
        title = escape(photo.title or f"Album {photo.cluster_id}")
        rows.append(("Album", f'<a href="/album/{photo.cluster_id}">{title}</a>'))
    if photo.event_id is not None:
        event = escape(photo.event_title or f"Event {photo.event_id}")
        rows.append(("Event", f'<a href="/event/{photo.event_id}">{event}</a>'))
    where = "<br>".join(escape(p) for p in photo.paths)
    rows.append(("Path" if len(photo.paths) == 1 else f"Paths ({len(photo.paths)})", where))
    if photo.offline:
        rows.append(("", "offline: its folder is unreachable right now"))
    table = "".join(f"<tr><td class=muted>{k}</td><td>{v}</td></tr>" for k, v in rows)
    original = f"/original/{photo.content_hash}"
    links = []
    if not photo.offline:
        if kind in SHOWN_BY_BROWSERS:
            links.append(f'<a href="{original}">Full size</a>')
        links.append(f'<a href="{original}?download=1" download>Download the original</a>')
    actions = (
        "<button type=button id=zoom aria-pressed=false hidden>Zoom to its own size</button>"
        + "".join(links)
    )
    preview = (
        f'<div class=preview><img src="/preview/{photo.content_hash}.jpg" alt="{escape(name)}">'
        f"</div><p class=actions>{actions}</p>"
    )
    more = hits_grid(similar) if similar else f"<p class=muted>{escape(similar_note)}</p>"
    body = (
        f"{_nav(photo, context)}<h1>{escape(name)}</h1>{preview}"
        f"<table class=facts-table>{table}</table><h2>Similar photos</h2>{more}"
        f"<script>{SCRIPT}</script>"
    )
    return page(name, body)


def failed_page(path: str, reason: str | None) -> str:
    """A photo of the library that could not be indexed: where it is and why."""
    name = path.rsplit("/", 1)[-1]
    body = (
        f"<h1>{escape(name)}</h1><p class=note>This file is in the library but could not be "
        f"indexed: {escape(reason or 'no reason was recorded')}.</p>"
        f"<table class=facts-table><tr><td class=muted>Path</td><td>{escape(path)}</td></tr>"
        "</table><p class=muted>It is read again when it changes (a new copy, a repaired "
        'file). <a href="/status">All failed photos</a></p>'
    )
    return page(name, body)
