"""Log lines: how every process of imageclust (the CLI, the daemon, a decode's child)
writes them, and the photo being decoded, which a library's warning names."""

from __future__ import annotations

import logging
import re
import warnings
from contextvars import ContextVar

# The photo being decoded on this thread (its display path), for warnings raised inside
# a decoder: they then name the photo (`decode.read_photo` sets it).
DECODING: ContextVar[str] = ContextVar("imageclust_decoding", default="")


# Control characters (C0, DEL, C1): a file name holding ESC [ ... or ESC ] ... would move
# the cursor, recolour or retitle the terminal it is printed to, and one holding a newline
# could forge a log line. They are shown as \xNN wherever a name reaches a terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with every control character shown as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class _Printable(logging.Formatter):
    """Log lines whose message (file names and all) cannot steer the terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


def configure_logging(level: str) -> None:
    """Log lines at `level` and above to stderr.

    watchdog's WARNING records must reach the watcher's overflow alarm whatever the
    level (an inotify overflow is only logged), so that logger stays at WARNING and the
    output handler applies `level` instead.
    """
    logging.basicConfig(level=level)
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
        handler.setFormatter(_Printable("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    # Libraries' warnings (Pillow on a photo's odd EXIF, ...) as log lines, not raw stderr.
    warnings.showwarning = _log_warning
    warnings.filterwarnings("always", module="PIL")  # one line per photo, naming it


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """A warning as one log line; raised while a photo is decoded, it names the photo and
    is INFO (the photo is recorded with its own outcome: the warning is a detail)."""
    photo = DECODING.get()
    if photo:
        libraries.info("%s: %s: %s", photo, category.__name__, message)
    else:
        libraries.warning("%s: %s (%s:%d)", category.__name__, message, filename, lineno)


libraries = logging.getLogger("imageclust.libraries")
