"""Write what is generated from the settings' one declaration (`imageclust_daemon.config`):
the default config file and the table of settings in docs/reference.md.

    python -m tests.tools.gen_config          # write them
    python -m tests.tools.gen_config --check  # exit 1 if either differs (tests/test_config.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

from imageclust_daemon import config

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
    return f"{before}{START}\n{config.settings_table()}{END}{after}"


def main(argv: list[str]) -> int:
    wanted = {TOML: config.default_toml(), REFERENCE: reference_with_table(REFERENCE.read_text())}
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
