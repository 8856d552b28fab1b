"""Write what is generated from the settings' one declaration (`imageclust_daemon.config`):
the default config file and the table of settings in docs/reference.md.

    python -m tests.tools.gen_config          # write them
    python -m tests.tools.gen_config --check  # exit 1 if either differs (tests/test_config.py)
"""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import Any

from imageclust_daemon import config

TOML_HEADER = """\
# imageclust configuration: every key, with its default.
#
# Where this file is read from: `imageclust --config PATH`, else the file named
# by $IMAGECLUST_CONFIG, else imageclust.toml in your user config directory
# (~/.config/imageclust/ on Linux, ~/Library/Application Support/imageclust/
# on macOS). Without any file the defaults below apply.
# Paths may use ~ and $ENVIRONMENT_VARIABLES. An unknown key or a bad value is
# an error at start that names the key.
"""


def toml_value(value: Any) -> str:
    """A default as the config file writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def default_toml() -> str:
    """config/imageclust.toml: every key with its default, its help above it."""
    out = [TOML_HEADER.rstrip("\n")]
    for section, settings in config.SECTIONS.items():
        out.append(f"\n[{section}]")
        for i, f in enumerate(fields(settings)):
            if i:
                out.append("")
            wrapped = textwrap.wrap(f.metadata["help"], width=78, break_on_hyphens=False)
            out += [f"# {line}" for line in wrapped]
            out.append(f"{f.name} = {toml_value(f.metadata['default'])}")
    return "\n".join(out) + "\n"


def settings_table() -> str:
    """The table of every key in docs/reference.md."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for s in config.SETTINGS:
        text = s.help.replace("|", "\\|")
        rows.append(f"| `{s.key}` | `{toml_value(s.default)}` | {text} |")
    return "\n".join(rows) + "\n"


REPO = Path(__file__).resolve().parents[2]
TOML = REPO / "config" / "imageclust.toml"
REFERENCE = REPO / "docs" / "reference.md"
START = (
    "<!-- settings: generated from imageclust_daemon/config.py by "
    "python -m tests.tools.gen_config -->"
)
END = "<!-- end of settings -->"


def reference_with_table(text: str) -> str:
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{settings_table()}{END}{after}"


def main(argv: list[str]) -> int:
    wanted = {TOML: default_toml(), REFERENCE: reference_with_table(REFERENCE.read_text())}
    stale = [path for path, text in wanted.items() if path.read_text(encoding="utf-8") != text]
    if "--check" in argv:
        for path in stale:
            print(
                f"{path.relative_to(REPO)} differs from config.py: python -m tests.tools.gen_config"
            )
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path], encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
