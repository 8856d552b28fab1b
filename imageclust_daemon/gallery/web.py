"""The local web gallery: albums, an album, a photo, search, the library, status.

Starlette serves pages made by `pages` from what `gallery` reads, and pictures from
`thumbs`; uvicorn runs it (`imageclust serve`, or a thread of the daemon). It only
reads: the catalog and the search snapshot, opened read-only, and originals that
the catalog lists, reached by content hash (no path is ever taken from a URL). It
answers GET and HEAD only, and checks the Host header, so a web page elsewhere
cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from imageclust_daemon import activity
from imageclust_daemon.config import Config, is_loopback, parse_listen
from imageclust_daemon.errors import ImageclustError
from imageclust_daemon.gallery import browse, pages, viewer
from imageclust_daemon.gallery.gallery import PHOTOS_PER_PAGE, CatalogMissing, Reader
from imageclust_daemon.gallery.thumbs import ThumbCache, Unavailable
from imageclust_daemon.index import inflight, originals
from imageclust_daemon.model import models
from imageclust_daemon.published import search
from imageclust_daemon.records import TEXT, TOKENIZER

log = logging.getLogger(__name__)

_HASH = re.compile(r"[0-9a-f]{64}")
_PICTURE = re.compile(r"([0-9a-f]{64})\.jpg")
IMMUTABLE = "public, max-age=31536000, immutable"
# The media type of an original by the format its bytes were read as.
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "HEIF": "image/heif",
    "AVIF": "image/avif",
}
# Shown where a picture cannot be made (original gone, unreadable, not an image).
PLACEHOLDER = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256" viewBox="0 0 256 256">'
    '<rect width="256" height="256" fill="#8884"/><text x="128" y="134" font-size="20" '
    'text-anchor="middle" fill="#888" font-family="sans-serif">not available</text></svg>'
)


class Gallery:
    """What the pages share: the config, the picture cache, the text model once loaded."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        try:
            journal: inflight.InFlight | None = inflight.per_process(cfg.data_dir, "gallery")
        except OSError as exc:  # a data dir it may not write: pictures are made unjournaled
            log.warning("the gallery cannot keep its journal in %s: %s", cfg.data_dir, exc)
            journal = None
        self.thumbs = ThumbCache(cfg.data_dir / "thumbs", cfg.web.workers, journal=journal)
        self._words: models.TextModel | None = None
        self._lock = threading.Lock()
        self._open = search.open_words(cfg)

    def reader(self) -> Reader:
        return Reader(self.cfg.catalog_path)

    def words(self, located: models.Located, dim: int) -> models.TextModel:
        """The text model, opened on the first search and kept (`search.by_words`)."""
        with self._lock:
            if self._words is None or self._words.dim != dim:
                self._words = self._open(located, dim)
            return self._words


class GalleryPages:
    """The gallery's endpoints: each reads what its page shows and renders it."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.gallery = Gallery(cfg)

    def html(self, render: Callable[[Request], str]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            try:
                # (a publish between the page's read of the catalog and of its search
                # snapshot: the page is made again from the new catalog)
                return HTMLResponse(search.retrying(lambda: render(request)))
            except CatalogMissing as exc:
                return HTMLResponse(pages.message_page("Nothing published yet", str(exc)), 503)
            except NotFound as exc:
                return HTMLResponse(pages.message_page("Not found", str(exc)), 404)

        return endpoint

    def albums(self, request: Request) -> str:
        order = "new" if request.query_params.get("order") == "new" else "size"
        page_no = _page(request)
        with self.gallery.reader() as reader:
            found = reader.albums(order, page_no)
            return pages.albums_page(found, reader.album_count(), order, page_no)

    def album(self, request: Request) -> str:
        cluster_id = request.path_params["id"]
        if cluster_id >= 1 << 63:  # past SQLite's integers: no album has that id
            raise NotFound(f"There is no album {cluster_id}.")
        with self.gallery.reader() as reader:
            found = reader.album(cluster_id)
            if found is None:
                raise NotFound(f"There is no album {cluster_id} (any more).")
            page_no = _page(request)
            return pages.album_page(found, reader.album_photos(cluster_id, page_no), page_no)

    def photo(self, request: Request) -> str:
        content_hash = request.path_params["hash"]
        similar: list[search.Hit] = []
        note = ""
        with self.gallery.reader() as reader:  # one read of one catalog for the whole page
            found = reader.photo(content_hash) if _HASH.fullmatch(content_hash) else None
            if found is None:
                raise NotFound("No photo of the library has this content (any more).")
            context = self._context(reader, request.query_params.get("in", ""))
            path = self.cfg.catalog_path
            try:
                snapshot = search.open_for(path, conn=reader.conn)
                row = snapshot.row_of(content_hash)
                if row is not None:
                    similar = search.like_row(path, snapshot, row, 24, conn=reader.conn)
                else:
                    note = "Not in the search snapshot yet."
            except search.Republished:
                raise
            except ImageclustError as exc:
                note = str(exc)
        return viewer.photo_page(found, similar, note, context, found.format)

    def _context(self, reader: Reader, key: str) -> viewer.Context | None:
        """The photos a photo was opened from (`in`: album:ID, event:ID or search:WORDS),
        in the order that page shows them; None for anything else."""
        kind, _, rest = key.partition(":")
        if kind in ("album", "event") and rest.isdigit() and len(rest) < 19:
            if kind == "album":
                album = reader.album(int(rest))
                if album is None:
                    return None
                title = album.title or f"Album {album.id}"
                return viewer.Context(
                    key, reader.album_sequence(album.id), f"/album/{album.id}", title
                )
            event = reader.event(int(rest))
            if event is None:
                return None
            return viewer.Context(
                key, reader.event_sequence(event.id), f"/event/{event.id}", event.title
            )
        if kind == "search" and rest.strip():
            try:
                hits = search.by_words(
                    self.cfg, rest, 60, words=self.gallery.words, conn=reader.conn
                )
            except ImageclustError:
                return None
            href = "/search?" + urlencode({"q": rest})
            return viewer.Context(key, [h.content_hash for h in hits], href, f"Search: {rest}")
        return None

    def failed(self, request: Request) -> str:
        path = request.query_params.get("path", "")
        with self.gallery.reader() as reader:
            found = reader.failed_photo(path) if path else None
        if found is None:
            raise NotFound("No photo of the library failed at this path.")
        return viewer.failed_page(*found)

    def original(self, request: Request) -> Response:
        """The original file of an indexed content, as it is on disk (read only, through
        `originals`); `?download=1` as an attachment."""
        content_hash = request.path_params["hash"]
        if not _HASH.fullmatch(content_hash):
            return HTMLResponse(pages.message_page("Not found", "No such photo."), 404)
        try:
            with self.gallery.reader() as reader:
                files = reader.original_files(content_hash)
        except CatalogMissing as exc:
            return HTMLResponse(pages.message_page("Nothing published yet", str(exc)), 503)
        for raw, text, kind in files:
            try:
                f, st = originals.open_regular(raw)
            except OSError:
                continue
            name = text.rsplit("/", 1)[-1]
            how = "attachment" if request.query_params.get("download") else "inline"
            headers = {
                "Content-Disposition": f"{how}; filename*=UTF-8''{quote(name)}",
                "Content-Length": str(st.st_size),
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            }

            def chunks(f: BinaryIO = f) -> Iterator[bytes]:
                with f:
                    while chunk := f.read(originals.CHUNK):
                        yield chunk

            media = MEDIA_TYPES.get(kind or "", "application/octet-stream")
            return StreamingResponse(chunks(), media_type=media, headers=headers)
        text = "The original of this photo cannot be read now (its folder offline?)."
        return HTMLResponse(pages.message_page("Not available", text), 404)

    def timeline(self, request: Request) -> str:
        with self.gallery.reader() as reader:
            events = reader.events()
            page_no = _page(request)
            shown = events[
                page_no * browse.EVENTS_PER_PAGE : (page_no + 1) * browse.EVENTS_PER_PAGE
            ]
            covers = reader.event_covers([e.id for e in shown])
        return browse.timeline_page(events, covers, page_no)

    def event(self, request: Request) -> str:
        event_id = request.path_params["id"]
        with self.gallery.reader() as reader:
            found = reader.event(event_id) if event_id < 1 << 63 else None
            if found is None:
                raise NotFound(f"There is no event {event_id} (any more).")
            page_no = _page(request)
            every = reader.event_sequence(found.id)
        shown = every[page_no * PHOTOS_PER_PAGE : (page_no + 1) * PHOTOS_PER_PAGE]
        return browse.event_page(found, shown, page_no)

    def world(self, request: Request) -> str:
        with self.gallery.reader() as reader:
            positions = reader.positions()
            events = {e.id: e for e in reader.events()}
        return browse.map_page(positions, events)

    def find(self, request: Request) -> str:
        query = request.query_params.get("q", "")
        words = self._words_here()
        if not query.strip():
            return pages.search_page(query, [], [], "", words=words)
        text = request.query_params.get("n", "")
        limit = int(text) if text.isdigit() and len(text) < 5 else pages.SEARCH_STEP
        limit = max(pages.SEARCH_STEP, min(limit, 2000))
        hits: list[search.Hit] = []
        note = ""
        with self.gallery.reader() as reader:  # one read of one catalog for the whole page
            titled = reader.albums(ids=reader.title_matches(query))
            try:
                hits = search.by_words(
                    self.cfg, query, limit, words=self.gallery.words, conn=reader.conn
                )
            except search.Republished:
                raise
            except ImageclustError as exc:
                note = f"Photos were not searched by words: {exc}"
        return pages.search_page(query, hits, titled, note, words=words, limit=limit)

    def _words_here(self) -> bool:
        """Whether the text tower and tokenizer search by words needs are both on disk."""
        located = models.locate(self.cfg)
        return all(
            located.paths.get(role) is not None and located.paths[role].is_file()
            for role in (TEXT, TOKENIZER)
        )

    def status(self, request: Request) -> str:
        with self.gallery.reader() as reader:
            found = reader.status()
        return pages.status_page(found, _activity(self.cfg.data_dir))

    def picture(self, kind: str) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            match = _PICTURE.fullmatch(request.path_params["name"])
            if match is None:
                return PlainTextResponse("not found", 404)
            content_hash = match.group(1)
            cached = self.gallery.thumbs.path(content_hash, kind)
            if not cached.is_file():  # only a content the catalog lists is ever opened
                try:
                    with self.gallery.reader() as reader:
                        originals = reader.originals(content_hash)
                except CatalogMissing:
                    return PlainTextResponse("no catalog yet", 503)
                if not originals:
                    return PlainTextResponse("not found", 404)
                try:
                    cached = self.gallery.thumbs.get(content_hash, kind, originals)
                except Unavailable as exc:
                    log.info("picture of %s: %s", content_hash[:12], exc)
                    return Response(
                        PLACEHOLDER,
                        media_type="image/svg+xml",
                        headers={"Cache-Control": "no-store"},
                    )
            try:  # small files: read at once (a streamed FileResponse costs thread hops)
                body = cached.read_bytes()
            except OSError:  # pruned meanwhile: the next request makes it again
                return PlainTextResponse("try again", 503, headers={"Retry-After": "1"})
            return Response(body, media_type="image/jpeg", headers={"Cache-Control": IMMUTABLE})

        return endpoint


def create_app(cfg: Config, listen: str | None = None) -> ASGIApp:
    """The gallery as an ASGI app, checking that requests name this server (`listen`)."""
    app = GalleryPages(cfg)
    routes = [
        Route("/", app.html(app.albums)),
        Route("/album/{id:int}", app.html(app.album)),
        Route("/photo/{hash}", app.html(app.photo)),
        Route("/search", app.html(app.find)),
        Route("/library", lambda request: RedirectResponse("/map", 301)),
        Route("/timeline", app.html(app.timeline)),
        Route("/event/{id:int}", app.html(app.event)),
        Route("/map", app.html(app.world)),
        Route("/failed", app.html(app.failed)),
        Route("/original/{hash}", app.original),
        Route("/status", app.html(app.status)),
        Route("/thumb/{name}", app.picture("thumb")),
        Route("/preview/{name}", app.picture("preview")),
    ]
    handlers = {404: _not_found, 405: _not_allowed, 500: _failed}
    return HostCheck(
        Starlette(routes=routes, exception_handlers=handlers),
        allowed_hosts(cfg, listen or cfg.web.listen),
    )


# Every answer a person can see is a styled page with its title and language, errors too.
async def _not_found(request: Request, exc: Exception) -> Response:
    return HTMLResponse(pages.message_page("Not found", "There is no page at this address."), 404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    text = "This address only shows pages (GET); it changes nothing."
    return HTMLResponse(pages.message_page("Not allowed", text), 405, headers={"Allow": "GET"})


async def _failed(request: Request, exc: Exception) -> Response:
    log.error("the gallery failed on %s: %s", request.url.path, exc, exc_info=exc)
    text = "This page failed to load; the log says why. The library itself is untouched."
    return HTMLResponse(pages.message_page("Something went wrong", text), 500)


class NotFound(Exception):
    pass


def _page(request: Request) -> int:
    text = request.query_params.get("page", "0")
    return int(text) if text.isdigit() and len(text) < 7 else 0


def _activity(data_dir: Path) -> dict[str, str]:
    found = activity.read(data_dir)
    if not found:
        return {"Daemon": "not seen here (imageclust run, or the service, keeps this page current)"}
    names = {
        "doing": "Daemon",
        "last_rescan": "Last full rescan",
        "last_regroup": "Last regroup",
        "last_publish": "Last publish by the daemon",
        "updated_at": "As of",
    }
    return {label: found[key] for key, label in names.items() if key in found}


def allowed_hosts(cfg: Config, listen: str) -> set[str]:
    """Host names a request may carry: loopback names, and what it listens on; with
    web.allow_remote also this machine's own names."""
    hosts = {"localhost", "127.0.0.1", "::1"}
    if listen:
        hosts.add(parse_listen(listen)[0].lower())
    if cfg.web.allow_remote:
        hosts |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return hosts


class HostCheck:
    """ASGI middleware: 400 for a Host header naming another server (DNS rebinding: a page
    at evil.example whose name now points to 127.0.0.1 must not read the gallery)."""

    def __init__(self, app: ASGIApp, hosts: set[str]) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            host = _host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.hosts:
                await PlainTextResponse("unknown Host header", 400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# A Host header: a name or IPv4 address, or an IPv6 address in brackets, and an optional
# port of digits (RFC 9110 7.2); anything else names no host ("127.0.0.1:x@evil.example"
# was once read as 127.0.0.1).
_HOST = re.compile(r"(?:\[([0-9a-f:.]+)\]|([a-z0-9._-]+))(?::[0-9]{1,5})?")


def _host_name(value: str) -> str:
    """The host a Host header names, lower case; "" when it is not a well-formed one."""
    found = _HOST.fullmatch(value.strip().lower())
    if found is None:
        return ""
    return found.group(1) or found.group(2)


# -- running it --------------------------------------------------------------------------------


# What one slow or greedy client may hold: a connection has this long to send a whole
# request head (and, between requests, to start the next), and past this many open
# connections new ones are closed at once. uvicorn has neither (its keep-alive timeout
# starts only after a response), so 1,200 half-sent requests held 1,200 descriptors
# until the process hit its limit of open files and the indexer beside it could not open
# a photo.
HEAD_SECONDS = 10.0
MAX_CONNECTIONS = 256
REFUSED_LOG_SECONDS = 60.0  # one log line per burst of refused connections, not per socket


def _guarded_protocol() -> type:
    """uvicorn's h11 protocol with a deadline for each request head and a cap on the
    connections open at once."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    refused = {"count": 0, "logged_at": 0.0}

    class Guarded(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= MAX_CONNECTIONS:
                transport.abort()
                refused["count"] += 1
                now = time.monotonic()
                if now - refused["logged_at"] >= REFUSED_LOG_SECONDS:
                    log.warning(
                        "the gallery has %d connections open; refused %d more (a client "
                        "opening many at once?)",
                        len(self.connections),
                        refused["count"],
                    )
                    refused["count"], refused["logged_at"] = 0, now
                return
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.transport is None:  # refused above: never made
                return
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(HEAD_SECONDS, self._head_overdue)

        def _head_overdue(self) -> None:
            in_flight = self.cycle is not None and not self.cycle.response_complete
            if not in_flight and not self.transport.is_closing():
                self.transport.close()  # no request head within HEAD_SECONDS

    return Guarded


def server(cfg: Config, listen: str) -> Any:
    """A uvicorn server for the gallery on `listen` (HOST:PORT), not started."""
    import uvicorn

    host, port = parse_listen(listen)
    if not is_loopback(host) and not cfg.web.allow_remote:
        raise ImageclustError(
            f"{listen} is not a loopback address; the gallery has no login: set "
            "web.allow_remote = true to serve other machines"
        )
    if not is_loopback(host):
        log.warning("the gallery listens on %s: anyone who reaches it sees every photo", listen)
    config = uvicorn.Config(
        create_app(cfg, listen),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        http=_guarded_protocol(),
    )
    return uvicorn.Server(config)


class Background:
    """The gallery on a thread of the daemon; `stop()` ends it."""

    def __init__(self, cfg: Config, listen: str) -> None:
        self._server = server(cfg, listen)
        self._thread = threading.Thread(target=self._run, name="imageclust-web", daemon=True)
        self.listen = listen

    def _run(self) -> None:
        try:
            self._server.run()
        except (OSError, SystemExit) as exc:  # the port is taken: the daemon goes on without it
            log.error("the gallery could not listen on %s: %s", self.listen, exc)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
