"""Fetching a model's files from a Hugging Face hub (or a mirror), safely.

A download never leaves a half or wrong file where the model is looked for:
bytes go to ``<dest>.part``, an interrupted transfer resumes from there with an
HTTP Range request, and only a file whose size, sha256 and content all check out
(`models.content_problems`: an ONNX tower must load with its contract, a tokenizer
must encode a probe to the recorded ids) is fsynced and renamed into place. A
truncated ONNX graph can load far enough to produce numbers, and numbers from half
a model look like numbers.

Hub files are fetched from ``{endpoint}/{repo}/resolve/{revision}/{path}``, the
layout of huggingface_hub's ``HUGGINGFACE_CO_URL_TEMPLATE``, where the endpoint is
``$HF_ENDPOINT`` when set (the variable Hugging Face's own tools read, for mirrors
and proxies), else ``https://huggingface.co`` (huggingface_hub's
``_HF_DEFAULT_ENDPOINT``). A pinned URL that answers 404 or 410 is tried once more
at ``main``, and that file is kept only when its size and sha256 are the
manifest's.

The HTTP client is passed in (tests hand one talking to a server on
127.0.0.1); the default follows redirects, because Hugging Face answers a
``resolve`` URL with a redirect to its CDN.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote

import httpx

from imageclust_daemon import __version__
from imageclust_daemon.durable import fsync_dir
from imageclust_daemon.errors import ConfigError, DownloadError
from imageclust_daemon.model.embed import file_sha256
from imageclust_daemon.model.manifest import OWN_FILE_KEYS
from imageclust_daemon.model.models import Located, content_problems, matches
from imageclust_daemon.records import ROLES, VISION, ModelFile, ModelSpec

log = logging.getLogger(__name__)


Progress = Callable[[int, int | None], None]
"""Called with (bytes so far, total bytes or None when neither server nor manifest says)."""
DEFAULT_ENDPOINT = "https://huggingface.co"
ENDPOINT_ENV = "HF_ENDPOINT"
FALLBACK_REVISION = "main"
# A pinned file that is gone answers one of these; anything else is not a reason to
# look at another revision (a 500 or a refused connection would answer the same there).
_GONE = frozenset({404, 410})
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


def endpoint_from(environ: Mapping[str, str]) -> str:
    """The hub to download from: $HF_ENDPOINT (as Hugging Face's tools read it), else theirs.

    Raises ConfigError naming the variable when it is not an http(s) URL with a host.
    """
    value = environ.get(ENDPOINT_ENV, "").strip()
    if not value:
        return DEFAULT_ENDPOINT
    try:
        parsed = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"${ENDPOINT_ENV}", f"not a URL ({exc}): {value!r}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(
            f"${ENDPOINT_ENV}", f"expected an http:// or https:// URL with a host, got {value!r}"
        )
    return value.rstrip("/")


def hub_url(endpoint: str, repo: str, revision: str, repo_path: str) -> str:
    """huggingface_hub's URL layout: {endpoint}/{repo_id}/resolve/{revision}/{filename}."""
    return f"{endpoint}/{repo}/resolve/{revision}/{quote(repo_path)}"


def file_urls(spec: ModelSpec, f: ModelFile, endpoint: str = DEFAULT_ENDPOINT) -> list[str]:
    """Where to fetch `f`, in order: its pinned URL, then (a hub file whose size and sha256
    are known) the same path at `main`, used only if the pinned one is gone."""
    if f.url is not None:
        return [f.url]
    if f.repo_path is None or spec.repo is None or spec.revision is None:
        return []
    urls = [hub_url(endpoint, spec.repo, spec.revision, f.repo_path)]
    if f.sha256 is not None and f.size_bytes is not None:
        urls.append(hub_url(endpoint, spec.repo, FALLBACK_REVISION, f.repo_path))
    return urls


def part_path(dest: Path) -> Path:
    """Where the bytes of `dest` collect until they verify."""
    return dest.with_name(dest.name + ".part")


def default_client(timeout: float = 30.0) -> httpx.Client:
    """The HTTP client `download` makes when given none.

    `timeout` bounds connecting and each single read, not the whole transfer: a
    1.2 GB model on a slow line may take an hour and is fine, a server that goes
    silent for `timeout` seconds is not.
    """
    return httpx.Client(
        follow_redirects=True,
        timeout=httpx.Timeout(timeout),
        headers={"User-Agent": f"imageclust-daemon/{__version__}"},
    )


@dataclass(frozen=True, slots=True)
class Fetched:
    """What `download_model` did for one file."""

    role: str
    path: Path
    url: str | None  # where it came from; None when nothing was fetched
    fallback: bool = False  # the pinned URL was gone; the same file (size, sha256) came from main
    kept: str = ""  # why nothing was fetched: already in place, or the user's own file


class _Gone(Exception):
    """The URL answered 404 or 410: the file is not there (another revision may have it)."""

    def __init__(self, status: str) -> None:
        self.status = status
        super().__init__(status)


def download(
    spec: ModelSpec,
    dest: Path,
    *,
    role: str = VISION,
    url: str | None = None,
    endpoint: str = DEFAULT_ENDPOINT,
    client: httpx.Client | None = None,
    progress: Progress | None = None,
    timeout: float = 30.0,
    companions: Mapping[str, Path] | None = None,
) -> Fetched:
    """Fetch `spec`'s `role` file to `dest`, verified, atomically.

    Bytes go to ``<dest>.part``. An existing .part is resumed with a Range
    request (206 appends; a 200 or 416 starts over). The URLs of `file_urls` are
    tried in order, the next only when one answers 404 or 410. When the body is
    complete the file must match the manifest's size and sha256 (each when known)
    and pass its content check (`content_problems`); only then is it fsynced and
    renamed onto `dest`. A broken transfer raises DownloadError and keeps the .part
    for the next call; a complete but wrong file raises DownloadError and is
    deleted. `url` replaces the manifest's URLs (a copy you host). `companions`
    are the other files' paths (the tokenizer is checked against the vocabulary).
    """
    f = spec.file(role)
    if f is None:
        raise DownloadError(spec.name, f"the manifest lists no {role} file for this model")
    urls = [url] if url is not None else file_urls(spec, f, endpoint)
    if not urls:
        raise DownloadError(
            spec.name,
            f"the manifest gives no URL for its {role} file",
            next_step=f"pass --url, or set {OWN_FILE_KEYS.get(role, 'model.path')} "
            "to a file you have",
        )
    if dest.is_dir():
        raise DownloadError(
            urls[0],
            f"{dest} is a folder, where the {role} file goes",
            next_step="move the folder away, or point the config at another file",
        )
    part = part_path(dest)
    http = client if client is not None else default_client(timeout)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "ab") as out:
            _lock(out, urls[0])
            try:
                source, i = _first_good(
                    http,
                    urls,
                    out,
                    part,
                    spec,
                    f,
                    progress=progress,
                    timeout=timeout,
                    companions=dict(companions or {}),
                    gone_step=_gone_step(spec, f, endpoint, url),
                )
                # Still holding the lock: no second downloader can append before the rename.
                os.replace(part, dest)
            except BaseException:
                _remove_if_empty(out, part)  # a failure before the first byte leaves no litter
                raise
    except OSError as exc:
        raise DownloadError(urls[0], f"cannot write {part}: {exc}") from exc
    finally:
        if client is None:
            http.close()
    fsync_dir(dest.parent)
    return Fetched(role, dest, source, fallback=i > 0)


def _first_good(
    http: httpx.Client,
    urls: Sequence[str],
    out: IO[bytes],
    part: Path,
    spec: ModelSpec,
    f: ModelFile,
    *,
    progress: Progress | None,
    timeout: float,
    companions: dict[str, Path],
    gone_step: str,
) -> tuple[str, int]:
    """Fetch into `out` from the first of `urls` that has the file (the next only after a
    404 or 410), and check it; the URL it came from and its place in `urls`."""
    what = f"{spec.name} {f.role} ({f.repo_path or f.filename})"
    attempts: list[tuple[str, str]] = []
    for i, source in enumerate(urls):
        try:
            fetched = _fetch(http, source, out, f.size_bytes, progress, timeout)
            problems = _check_fetched(spec, f, out, part, companions)
            if problems and not fetched:
                # A complete .part left by an earlier run that was not this file:
                # nothing was asked of the server yet; ask it now.
                fetched = _fetch(http, source, out, f.size_bytes, progress, timeout)
                problems = _check_fetched(spec, f, out, part, companions)
        except _Gone as gone:
            attempts.append((source, gone.status))
            continue
        except DownloadError as exc:
            attempts.append((source, exc.reason))
            step = exc.next_step or _wrong_file_step(spec, f, i > 0)
            raise _failed(what, attempts, step) from exc
        if problems:
            attempts.append((source, "; ".join(problems) + f"; {part.name} deleted"))
            raise _failed(what, attempts, _wrong_file_step(spec, f, i > 0))
        return source, i
    raise _failed(what, attempts, gone_step)


def _check_fetched(
    spec: ModelSpec, f: ModelFile, out: IO[bytes], part: Path, companions: dict[str, Path]
) -> list[str]:
    out.flush()
    os.fsync(out.fileno())
    problems = _check_part(spec, f, part, companions)
    if problems:
        out.truncate(0)  # a wrong file: never resumed from; removed when the download fails
    return problems


def _failed(what: str, attempts: list[tuple[str, str]], next_step: str) -> DownloadError:
    url, reason = attempts[-1]
    return DownloadError(url, reason, attempts=tuple(attempts), next_step=next_step, what=what)


def _gone_step(spec: ModelSpec, f: ModelFile, endpoint: str, url: str | None) -> str:
    own = OWN_FILE_KEYS.get(f.role)
    yours = f"; or get {f.repo_path or f.filename} yourself and set {own} to it" if own else ""
    if url is not None:
        return f"check the URL given with --url{yours}"
    mirror = (
        f"the mirror {endpoint} (${ENDPOINT_ENV}) does not have it: check the variable"
        if endpoint != DEFAULT_ENDPOINT
        else f"the repository {spec.repo} no longer has it at the pinned revision or at main; "
        f"a mirror can be used with ${ENDPOINT_ENV}"
    )
    return mirror + yours


def _wrong_file_step(spec: ModelSpec, f: ModelFile, from_main: bool) -> str:
    if from_main:
        return (
            f"the file at main is not the one the manifest pins ({spec.revision}), so it was "
            "not kept; a mirror that still has the pinned revision can be used with "
            f"${ENDPOINT_ENV}, or a newer imageclust may pin the new file"
        )
    return "the server sent another file than the manifest pins; check the mirror or --url"


def download_model(
    located: Located,
    *,
    roles: Sequence[str] = ROLES,
    endpoint: str = DEFAULT_ENDPOINT,
    vision_url: str | None = None,
    client: httpx.Client | None = None,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> list[Fetched]:
    """Fetch each of the model's `roles` files that is not already in place and verified.

    A file already at its place with the manifest's size and sha256 is kept; a user's
    own file (model.path, ...) is never replaced. `progress` gets the bytes over all the
    files fetched. Stops at the first file that fails (DownloadError); the files before
    it stay in place, and a rerun fetches only what is missing.
    """
    spec = located.spec
    plan: list[ModelFile] = []
    done: list[Fetched] = []
    for f in spec.files:
        if f.role not in roles:
            continue
        dest = located.paths[f.role]
        if dest.is_dir():
            raise DownloadError(
                str(dest),
                f"{dest} is a folder, where the {f.role} file goes",
                next_step="move the folder away, or point the config at another file",
            )
        if dest.is_file() and matches(f, dest):
            done.append(Fetched(f.role, dest, None, kept="already in place and verified"))
        elif dest.exists() and f.role in located.own:
            done.append(Fetched(f.role, dest, None, kept="your own file; not replaced"))
        else:
            plan.append(f)
    sizes = [f.size_bytes for f in plan]
    total = sum(s for s in sizes if s is not None) if None not in sizes else None
    offset = 0

    def overall(done_bytes: int, _total: int | None) -> None:
        if progress is not None:
            progress(offset + done_bytes, total)

    companions = dict(located.paths)
    for f in plan:
        dest = located.paths[f.role]
        url = vision_url if f.role == VISION else None
        done.append(
            download(
                spec,
                dest,
                role=f.role,
                url=url,
                endpoint=endpoint,
                client=client,
                progress=overall,
                timeout=timeout,
                companions=companions,
            )
        )
        offset += f.size_bytes or dest.stat().st_size
    return done


def _lock(out: IO[bytes], url: str) -> None:
    """Refuse a second concurrent download into the same .part (two appenders corrupt it)."""
    try:
        import fcntl
    except ImportError:  # Windows has no flock; imageclust targets Linux and macOS
        return
    try:
        fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise DownloadError(url, f"another download into {out.name} is in progress") from exc


def _fetch(
    http: httpx.Client,
    url: str,
    out: IO[bytes],
    expected: int | None,
    progress: Progress | None,
    timeout: float,
) -> bool:
    """Append the rest of the file to `out` (opened for append), resuming from its length.

    `expected` is the manifest's size, when known. Raises _Gone for a 404 or 410.
    Returns False when nothing was asked of the server (the .part was already complete).
    """
    have = os.fstat(out.fileno()).st_size
    if expected is not None and have > expected:
        out.truncate(0)  # longer than the real file: it cannot be a prefix of it
        have = 0
    if expected is not None and have == expected:
        # Complete from an earlier run that stopped before the rename; the checks decide.
        _report(progress, have, expected)
        return False
    while True:
        headers = {"Accept-Encoding": "identity"}  # ranges must count stored bytes, not gzip
        if have:
            headers["Range"] = f"bytes={have}-"
        received, total = have, expected
        answered = False
        try:
            with http.stream("GET", url, headers=headers, timeout=timeout) as response:
                answered = True
                status = response.status_code
                if status == 200:
                    start, total = 0, _int_or_none(response.headers.get("Content-Length"))
                elif status == 206 and have:
                    first, total = _content_range(response.headers.get("Content-Range"))
                    if first != have:  # not the range asked for: start over without one
                        out.truncate(0)
                        have = 0
                        continue
                    start = have
                elif status == 416 and have:
                    _, total = _content_range(response.headers.get("Content-Range"))
                    if total != have:  # not a prefix of this file: start over
                        out.truncate(0)
                        have = 0
                        continue
                    _check_total(url, total, expected)
                    return True  # the .part already holds the whole file
                else:
                    status_line = f"HTTP {status} {response.reason_phrase}".rstrip()
                    if status in _GONE:
                        raise _Gone(status_line)
                    later = "the server failed; try again later" if status >= 500 else ""
                    raise DownloadError(url, status_line, next_step=later)
                encoding = response.headers.get("Content-Encoding", "identity").lower()
                if encoding not in ("", "identity"):
                    raise DownloadError(url, f"the server sent a {encoding}-encoded body")
                _check_total(url, total, expected)
                if total is None:
                    total = expected
                if start == 0 and have:
                    out.truncate(0)  # a 200 to a Range request: the server sends it all again
                received = start
                _report(progress, received, total)
                for chunk in response.iter_raw():  # as the bytes arrive: a break loses none
                    out.write(chunk)
                    received += len(chunk)
                    _report(progress, received, total)
        except httpx.InvalidURL as exc:
            raise DownloadError(url, f"not a valid URL ({exc})", next_step="check the URL") from exc
        except httpx.HTTPError as exc:
            raise _transfer_failed(url, exc, out, received, total, answered) from exc
        if total is not None and received < total:
            raise DownloadError(
                url, f"the body ended after {received} of {total} bytes; run again to resume"
            )
        return True


def _transfer_failed(
    url: str, exc: Exception, out: IO[bytes], received: int, total: int | None, answered: bool
) -> DownloadError:
    """What a broken transfer kept, and how to go on: again (it resumes), or offline."""
    of = f" of {total}" if total is not None else ""
    kept = f"{out.name} keeps what arrived; " if received else ""
    host = httpx.URL(url).host or url
    what = (
        f"the transfer stopped at {received}{of} bytes"
        if received or answered
        else f"could not reach {host}"
    )
    # "resume" only where something arrived to resume from; else the same run again starts
    # from zero, and the network is what to look at
    again = "run the download again to resume" if received else "nothing was downloaded"
    resumes = "it resumes" if received else "it starts from the beginning"
    return DownloadError(
        url,
        f"{what} ({exc or type(exc).__name__}); {kept}{again}",
        next_step=f"check the network (or ${ENDPOINT_ENV}, a proxy), then run the "
        f"same command again: {resumes}. Without a network here: fetch the file on "
        "another machine and set model.path (model.text_path, model.tokenizer_path) "
        f"to it, or point ${ENDPOINT_ENV} or --url at a mirror you can reach",
    )


def _remove_if_empty(out: IO[bytes], part: Path) -> None:
    try:
        out.flush()  # bytes still in the buffer count: they are a prefix worth resuming from
        if os.fstat(out.fileno()).st_size == 0:
            part.unlink()
    except OSError:
        pass  # the original error is the one worth reporting


def _check_total(url: str, total: int | None, expected: int | None) -> None:
    """Refuse before transferring anything when the server's file is not the manifest's size."""
    if total is not None and expected is not None and total != expected:
        raise DownloadError(
            url, f"the server offers {total} bytes, the manifest expects {expected}"
        )


def _check_part(
    spec: ModelSpec, f: ModelFile, part: Path, companions: dict[str, Path]
) -> list[str]:
    """What is wrong with the finished .part (empty: nothing).

    `_fetch` only returns once the body is as long as the server or manifest said,
    so a size that still differs means the server's file is not the manifest's.
    """
    size = part.stat().st_size
    problems: list[str] = []
    if f.size_bytes is not None and size != f.size_bytes:
        problems.append(f"it is {size} bytes, the manifest expects {f.size_bytes}")
    elif f.sha256 is not None:
        actual = file_sha256(part)
        if actual != f.sha256:
            problems.append(f"sha256 mismatch: expected {f.sha256}, got {actual}")
    if not problems:
        problems = content_problems(spec, f, part, companions=companions)
    return problems


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, full length) from a Content-Range header; None where absent or '*'."""
    match = _CONTENT_RANGE.fullmatch(value.strip()) if value else None
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None, None if total == "*" else int(total))


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def _report(progress: Progress | None, done: int, total: int | None) -> None:
    if progress is not None:
        progress(done, total)
