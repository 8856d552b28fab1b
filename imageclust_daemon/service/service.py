"""The systemd user unit and the launchd agent that run `imageclust run` in the background.

Both are shipped templates (`config/imageclust.service`, `config/imageclust.plist`);
this module fills them with the absolute paths of this install (the Python
running now, `-m imageclust_daemon`, the config file in use) and writes or
removes them. It never runs `systemctl` or `launchctl`: it returns the one
command that enables (or stops) the service, and `cli` prints it, so nothing
starts behind the user's back and tests need no service manager.

Placeholders are ``@NAME@``. A placeholder alone on its line takes a list of
lines (each one a plist ``<string>``), an inline one a string; either may be
empty, and an empty inline one takes the space before it along.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

from imageclust_daemon.errors import ConfigError, ImageclustError
from imageclust_daemon.resources import data_path

SYSTEMD = "systemd"
LAUNCHD = "launchd"
KINDS = (SYSTEMD, LAUNCHD)

UNIT_NAME = "imageclust.service"
LABEL = "io.imageclust.daemon"
LOG_NAME = "imageclust.log"

_TEMPLATES = {SYSTEMD: "config/imageclust.service", LAUNCHD: "config/imageclust.plist"}
_PLACEHOLDER = re.compile(r"^([ \t]*)@([A-Z]+)@[ \t]*\n|( ?)@([A-Z]+)@", re.MULTILINE)
# Characters systemd's command-line parser passes through unquoted. Anything else
# (space, quotes, backslash, ';', non-ASCII) gets the argument double-quoted.
_SYSTEMD_BARE = re.compile(r"[A-Za-z0-9_@%$+=:,./-]+")
# systemd refuses these in an executable path, quoted or escaped ("special characters").
_EXEC_REFUSED = re.compile(r"""["'\\\x00-\x1f\x7f\udc80-\udcff]""")
# XML 1.0 cannot hold these at all, not even escaped.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class Installed:
    """What `install` did: the file it wrote and the command that enables the service."""

    kind: str
    path: Path
    replaced: bool  # a file was already there (a reinstall): `command` restarts it
    command: str


@dataclass(frozen=True, slots=True)
class Uninstalled:
    """What `uninstall` did: the file it removed (if there was one) and how to stop the service."""

    kind: str
    path: Path
    removed: bool
    command: str


def detect_kind(platform: str | None = None) -> str:
    """The service manager of this platform: systemd on Linux, launchd on macOS."""
    name = sys.platform if platform is None else platform
    if name.startswith("linux"):
        return SYSTEMD
    if name == "darwin":
        return LAUNCHD
    raise ConfigError("--kind", f"no service manager known for platform {name!r}")


def daemon_command() -> list[str]:
    """How this install starts imageclust: this Python (as invoked, so a venv stays a venv)."""
    if not sys.executable:
        raise ImageclustError("cannot tell which Python runs imageclust (sys.executable is empty)")
    return [os.path.abspath(sys.executable), "-m", "imageclust_daemon"]


def _config_args(config_path: Path | None) -> list[str]:
    # Passed explicitly even when it came from $IMAGECLUST_CONFIG: the service
    # manager does not see the shell's environment.
    return [] if config_path is None else ["--config", str(config_path.absolute())]


def _check_exec(exec_args: Sequence[str]) -> None:
    if not exec_args or not os.path.isabs(exec_args[0]):
        raise ValueError(f"the service needs an absolute executable path, got {exec_args!r}")


def service_path(kind: str, home: Path) -> Path:
    """Where the unit or agent file goes for the user whose home folder is `home`."""
    if kind == SYSTEMD:
        return home / ".config" / "systemd" / "user" / UNIT_NAME
    if kind == LAUNCHD:
        return home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    raise ValueError(f"unknown service kind {kind!r}")


def log_path(home: Path) -> Path:
    """Where launchd appends the daemon's stderr (systemd sends it to the journal)."""
    return home / "Library" / "Logs" / LOG_NAME


def _fill(template: str, values: Mapping[str, str | list[str]]) -> str:
    """Replace every placeholder in one pass (so a value containing '@X@' stays as it is)."""

    def replace(match: re.Match[str]) -> str:
        indent, line_name, space, inline_name = match.groups()
        name = line_name or inline_name
        if name not in values:
            raise AssertionError(f"template placeholder @{name}@ has no value")  # a shipped bug
        value = values[name]
        items = value if isinstance(value, list) else [value]
        if line_name:  # alone on its line: one line per item, none when empty
            return "".join(f"{indent}{item}\n" for item in items)
        text = " ".join(items)
        return f"{space}{text}" if text else ""

    return _PLACEHOLDER.sub(replace, template)


def _template(kind: str) -> str:
    return data_path(_TEMPLATES[kind]).read_text(encoding="utf-8")


def systemd_quote(arg: str, *, executable: bool = False) -> str:
    """One word of an ExecStart= line, read back by systemd exactly as given.

    systemd expands `%` specifiers everywhere, so `%` is doubled; it expands
    `$VARIABLES` in the arguments (not the executable), so there `$` is doubled
    too. Whitespace, quotes and backslashes need double quotes with C escapes;
    bytes that are not UTF-8 (os.fsdecode's surrogate escapes) become \\xNN.
    systemd refuses an executable path with quotes, backslashes or control
    characters however they are written, so those raise ImageclustError.
    """
    if executable and _EXEC_REFUSED.search(arg):
        raise ImageclustError(
            f"systemd cannot run {arg!r}: its path has a quote, backslash or control "
            "character; install imageclust under a plainer path"
        )
    arg = arg.replace("%", "%%")
    if not executable:
        arg = arg.replace("$", "$$")
    if _SYSTEMD_BARE.fullmatch(arg):
        return arg
    out = []
    for ch in arg:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def render_systemd(exec_args: Sequence[str], config_path: Path | None) -> str:
    """The user unit that runs `<exec_args> [--config PATH] run`."""
    _check_exec(exec_args)
    words = [systemd_quote(exec_args[0], executable=True)]
    words += [systemd_quote(a) for a in exec_args[1:]]
    return _fill(
        _template(SYSTEMD),
        {
            "EXEC": " ".join(words),
            "CONFIG": " ".join(systemd_quote(a) for a in _config_args(config_path)),
        },
    )


def _xml_text(text: str) -> str:
    if _XML_INVALID.search(text):
        raise ImageclustError(f"{text!r} cannot be written into a launchd plist (XML)")
    return xml_escape(text)


def _plist_string(text: str) -> str:
    return f"<string>{_xml_text(text)}</string>"


def render_launchd(exec_args: Sequence[str], config_path: Path | None, home: Path) -> str:
    """The agent plist that runs `<exec_args> [--config PATH] run`, logging under `home`."""
    _check_exec(exec_args)
    return _fill(
        _template(LAUNCHD),
        {
            "EXEC": [_plist_string(a) for a in exec_args],
            "CONFIG": [_plist_string(a) for a in _config_args(config_path)],
            "HOME": _xml_text(str(home.absolute())),
            "LOG": _xml_text(str(log_path(home.absolute()))),
        },
    )


def render(
    kind: str, *, home: Path, config_path: Path | None, exec_args: Sequence[str] | None = None
) -> str:
    """The filled-in file for `kind` (`imageclust service print`)."""
    args = list(exec_args) if exec_args is not None else daemon_command()
    if kind == SYSTEMD:
        return render_systemd(args, config_path)
    if kind == LAUNCHD:
        return render_launchd(args, config_path, home)
    raise ValueError(f"unknown service kind {kind!r}")


def enable_command(kind: str, path: Path, *, replaced: bool = False) -> str:
    """The one shell command that loads the file at `path` and starts the daemon."""
    if kind == SYSTEMD:
        if replaced:  # `enable --now` would leave a running daemon on the old unit
            return (
                "systemctl --user daemon-reload && systemctl --user enable "
                f"{UNIT_NAME} && systemctl --user restart {UNIT_NAME}"
            )
        return f"systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}"
    quoted = shlex.quote(str(path))
    if replaced:  # bootstrap refuses a label that is already loaded
        return f"launchctl bootout gui/$(id -u)/{LABEL}; launchctl bootstrap gui/$(id -u) {quoted}"
    return f"launchctl bootstrap gui/$(id -u) {quoted}"


def stop_command(kind: str) -> str:
    """The one shell command that stops the daemon and forgets the removed file."""
    if kind == SYSTEMD:
        # The unit stays loaded until daemon-reload, so `stop` still works after the
        # file is gone; `;` because stop fails when the unit was never loaded.
        return f"systemctl --user stop {UNIT_NAME}; systemctl --user daemon-reload"
    return f"launchctl bootout gui/$(id -u)/{LABEL}"


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename: a half-written unit is never loaded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # 0644: launchd ignores an agent plist that is group- or world-writable.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(
    kind: str,
    *,
    home: Path,
    config_path: Path | None,
    exec_args: Sequence[str] | None = None,
) -> Installed:
    """Write the unit or agent for this install under `home`; say how to enable it.

    `config_path` is the config file in use (None: none, the daemon runs on the
    defaults); it is written in as an absolute path.
    """
    text = render(kind, home=home, config_path=config_path, exec_args=exec_args)
    path = service_path(kind, home)
    replaced = path.exists()
    if kind == LAUNCHD:
        # launchd opens the log itself and fails to start the job if the folder is missing.
        log_path(home).parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, text)
    return Installed(kind, path, replaced, enable_command(kind, path, replaced=replaced))


def uninstall(kind: str, *, home: Path) -> Uninstalled:
    """Remove the unit or agent file (and systemd's enable link); say how to stop the daemon."""
    path = service_path(kind, home)
    removed = path.exists() or path.is_symlink()
    path.unlink(missing_ok=True)
    if kind == SYSTEMD:
        # What `systemctl --user disable` removes for WantedBy=default.target; done
        # here because disable refuses once the unit file is gone.
        wants = path.parent / "default.target.wants" / UNIT_NAME
        if wants.is_symlink():
            wants.unlink()
            removed = True
    return Uninstalled(kind, path, removed, stop_command(kind))
