"""Every error imageclust raises on purpose.

    ImageclustError             base: the CLI turns any of these into a message and exit code
    ├── ConfigError             a config key is unknown or its value is bad (key, problem)
    ├── DatabaseError           the state database cannot be used
    │   └── SchemaTooNewError   written by a newer imageclust (found, supported)
    ├── QueryRefused            `imageclust query` refused a statement (exit code 2)
    ├── ModelError              a model cannot be used
    │   ├── ModelNotFoundError  the ONNX file is missing (path, name)
    │   ├── ModelContractError  an ONNX tower lacks the expected input/output (path, reason)
    │   └── DownloadError       a download failed or did not verify (url, reason)
    ├── PhotoError              one photo cannot be used (path, reason)
    │   └── DecodeError         its bytes are not a usable image
    └── OllamaError             the labeling LLM did not give a usable answer (host, reason)
        ├── OllamaUnavailable   no answer at all: refused, timed out, connection closed
        └── OllamaModelMissing  the server answers but does not have the model

Core code raises these; only `cli` prints them and chooses an exit code.
A `PhotoError` never stops a run: the pipeline records it against the file or
content and goes on.
"""

from __future__ import annotations

import errno
import sqlite3


class ImageclustError(Exception):
    """Base of every error imageclust raises on purpose."""

    exit_code = 1


class ConfigError(ImageclustError):
    """A config key is unknown or its value is bad."""

    exit_code = 2

    def __init__(self, key: str, problem: str, *, source: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"config{where}: {key}: {problem}")


class UsageError(ImageclustError):
    """A bad command-line argument (not a config key)."""

    exit_code = 2


class DatabaseError(ImageclustError):
    """The state database cannot be used."""


class SchemaTooNewError(DatabaseError):
    """The database schema is newer than this version of imageclust understands."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        self.path = path
        self.found = found
        self.supported = supported
        super().__init__(
            f"{path}: database schema version {found} is newer than this imageclust "
            f"supports ({supported}); upgrade imageclust. The database was not touched."
        )


class QueryRefused(ImageclustError):
    """A catalog query that writes, attaches, runs several statements or runs too long."""

    exit_code = 2


class ModelError(ImageclustError):
    """A model cannot be used."""


class ModelNotFoundError(ModelError):
    """The ONNX model file is missing."""

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name
        super().__init__(
            f"model file not found: {path}\n"
            f"  download it with: imageclust models download {name}\n"
            f"  or point model.path in the config at an ONNX file you have"
        )


class ModelContractError(ModelError):
    """The ONNX file does not have the input/output a CLIP vision export has."""

    def __init__(self, path: str, reason: str, *, what: str = "CLIP vision model") -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: not a usable {what}: {reason}")


class DownloadError(ModelError):
    """A model download failed or the file did not verify.

    `attempts` lists every (URL, what it answered) tried, in order; `url` and
    `reason` are the last of them. `next_step` says what the user can do.
    """

    def __init__(
        self,
        url: str,
        reason: str,
        *,
        attempts: tuple[tuple[str, str], ...] = (),
        next_step: str = "",
        what: str = "",
    ) -> None:
        self.url = url
        self.reason = reason
        self.attempts = attempts or ((url, reason),)
        self.next_step = next_step
        if len(self.attempts) == 1:
            text = f"download of {url} failed: {reason}"
        else:
            tried = "".join(f"\n  {u}: {r}" for u, r in self.attempts)
            text = f"download of {what or 'the file'} failed; tried:{tried}"
        if next_step:
            text += f"\n  next: {next_step}"
        super().__init__(text)


class PhotoError(ImageclustError):
    """One photo cannot be used; recorded with its reason, never fatal to a run."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class DecodeError(PhotoError):
    """The bytes are not a usable image."""


class OllamaError(ImageclustError):
    """The labeling LLM did not give a usable answer; the group gets a fallback title."""

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason
        super().__init__(f"ollama at {host}: {reason}")


class OllamaUnavailable(OllamaError):
    """No answer at all (refused, timed out, connection closed): stop asking this cycle."""


class OllamaModelMissing(OllamaError):
    """The server does not have the model: `ollama pull MODEL` fixes it."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the user's quota) is full: SQLite's SQLITE_FULL, or
    ENOSPC / EDQUOT from the OS. Nothing is lost when a write fails so; it is worth one
    clear line and a retry, not a traceback."""
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def of_this_process(exc: BaseException) -> bool:
    """Whether `exc` is a shortage of this process, not a fact about a file: too many open
    files (EMFILE, ENFILE) or no memory for the kernel (ENOMEM). A scan or a read that
    meets one stops, and nothing is concluded from it: no photo is offline, gone or
    failed because this process ran out of descriptors."""
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM)
