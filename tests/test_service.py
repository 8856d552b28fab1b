"""The systemd unit and launchd agent: rendered with this install's paths, checked, installed."""

from __future__ import annotations

import configparser
import os
import plistlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from imageclust_daemon.errors import ConfigError, ImageclustError
from imageclust_daemon.service import service
from tests.conftest import REPO, run_cli, write_config

PYTHON = os.path.abspath(sys.executable)
# Characters each format has to escape: spaces, quotes, a backslash, systemd's
# specifier and variable signs, XML's markup characters, non-ASCII.
ODD = "odd dir %n $HOME & <x> \"q\" 'a' \\ é"


def _unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(text)
    return parser


def _systemd_words(line: str) -> list[str]:
    """ExecStart= split as systemd.service(5) documents: quotes, C escapes, %% and $$."""
    words: list[str] = []
    for match in re.finditer(r'"((?:[^"\\]|\\.)*)"|(\S+)', line):
        quoted, bare = match.groups()
        word = (
            bare
            if quoted is None
            else re.sub(
                r"\\(x[0-9a-f]{2}|.)",
                lambda m: chr(int(m.group(1)[1:], 16)) if m.group(1)[0] == "x" else m.group(1),
                quoted,
            )
        )
        word = word.replace("%%", "%")
        words.append(word if not words else word.replace("$$", "$"))
    return words


def test_systemd_unit_has_the_service_settings(tmp_path: Path) -> None:
    config_path = tmp_path / "imageclust.toml"
    unit = _unit(service.render_systemd(service.daemon_command(), config_path))
    s = unit["Service"]
    assert s["Type"] == "notify"
    assert s["NotifyAccess"] == "main"
    assert s["Restart"] == "on-failure"
    assert s["RestartSec"] == "30"
    assert s["WatchdogSec"] == "120"
    assert s["TimeoutStopSec"] == "20"
    assert s["KillSignal"] == "SIGTERM"
    assert s["ExecReload"] == "kill -HUP $MAINPID"  # the daemon reloads its config on SIGHUP
    assert int(s["Nice"]) >= 10
    assert s["CPUSchedulingPolicy"] in ("idle", "batch")
    assert s["IOSchedulingClass"] == "idle"
    assert unit["Install"]["WantedBy"] == "default.target"
    assert unit["Unit"]["Description"]
    assert _systemd_words(s["ExecStart"]) == [
        PYTHON,
        "-m",
        "imageclust_daemon",
        "--config",
        str(config_path),
        "run",
    ]


def test_systemd_unit_without_a_config_file_passes_no_config() -> None:
    unit = _unit(service.render_systemd(service.daemon_command(), None))
    assert _systemd_words(unit["Service"]["ExecStart"]) == [
        PYTHON,
        "-m",
        "imageclust_daemon",
        "run",
    ]


def test_systemd_exec_start_quotes_odd_paths(tmp_path: Path) -> None:
    exe = tmp_path / "my python %i $X" / "python"
    config_path = tmp_path / ODD / "c.toml"
    text = service.render_systemd([str(exe), "-m", "imageclust_daemon"], config_path)
    line = _unit(text)["Service"]["ExecStart"]
    assert _systemd_words(line) == [
        str(exe),
        "-m",
        "imageclust_daemon",
        "--config",
        str(config_path),
        "run",
    ]


def test_systemd_refuses_an_executable_path_it_cannot_run() -> None:
    # systemd rejects quotes and backslashes in the executable however written.
    with pytest.raises(ImageclustError, match="plainer path"):
        service.render_systemd(['/opt/a"b/python', "-m", "imageclust_daemon"], None)
    with pytest.raises(ValueError, match="absolute"):
        service.render_systemd(["python", "-m", "imageclust_daemon"], None)


def _systemd_analyze(unit_file: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify`, as the user manager when it can start one here."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    cmd = ["systemd-analyze", "verify"]
    done = subprocess.run(
        [*cmd, "--user", str(unit_file)], capture_output=True, text=True, env=env, timeout=60
    )
    if "Failed to initialize manager" in done.stderr:  # no user manager possible: system mode
        done = subprocess.run(
            [*cmd, str(unit_file)], capture_output=True, text=True, env=env, timeout=60
        )
    return done


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.parametrize("odd", [False, True], ids=["plain", "odd-paths"])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, odd: bool) -> None:
    exe = PYTHON
    config_path = tmp_path / "imageclust.toml"
    if odd:  # a real executable (verify checks it exists) under a path that needs quoting
        folder = tmp_path / "my venv %i $X & é"
        folder.mkdir()
        (folder / "python").symlink_to(PYTHON)
        exe = str(folder / "python")
        config_path = tmp_path / ODD / "imageclust.toml"
    unit_file = tmp_path / "units" / service.UNIT_NAME
    unit_file.parent.mkdir()
    unit_file.write_text(
        service.render_systemd([exe, "-m", "imageclust_daemon"], config_path), encoding="utf-8"
    )
    done = _systemd_analyze(unit_file, tmp_path)
    # Warnings about the unit (unknown keys, bad values) name it; other lines are the host's.
    about_unit = [ln for ln in done.stderr.splitlines() if service.UNIT_NAME in ln]
    assert done.returncode == 0, done.stderr
    assert not about_unit, done.stderr


def test_launchd_plist_parses_and_runs_this_install(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config_path = tmp_path / "imageclust.toml"
    text = service.render_launchd(service.daemon_command(), config_path, home)
    plist = plistlib.loads(text.encode("utf-8"))
    assert plist["Label"] == service.LABEL
    assert plist["ProgramArguments"] == [
        PYTHON,
        "-m",
        "imageclust_daemon",
        "--config",
        str(config_path),
        "run",
    ]
    assert os.path.isabs(plist["ProgramArguments"][0])
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ProcessType"] == "Background"
    assert plist["LowPriorityIO"] is True
    assert plist["Nice"] >= 10
    assert plist["ThrottleInterval"] == 30
    log = str(home / "Library" / "Logs" / "imageclust.log")
    assert plist["StandardErrorPath"] == log
    assert plist["StandardOutPath"] == log
    assert plist["WorkingDirectory"] == str(home)


def test_launchd_plist_escapes_odd_paths_and_omits_a_missing_config(tmp_path: Path) -> None:
    home = tmp_path / ODD
    exe = str(tmp_path / "a & b <c>" / "python")
    config_path = tmp_path / ODD / "c.toml"
    plist = plistlib.loads(
        service.render_launchd([exe, "-m", "imageclust_daemon"], config_path, home).encode()
    )
    assert plist["ProgramArguments"] == [
        exe,
        "-m",
        "imageclust_daemon",
        "--config",
        str(config_path),
        "run",
    ]
    assert plist["WorkingDirectory"] == str(home)
    bare = plistlib.loads(service.render_launchd([exe], None, home).encode())
    assert bare["ProgramArguments"] == [exe, "run"]
    with pytest.raises(ImageclustError, match="plist"):
        service.render_launchd([exe], tmp_path / "bell\x07.toml", home)


def test_detect_kind_by_platform() -> None:
    assert service.detect_kind("linux") == service.SYSTEMD
    assert service.detect_kind("darwin") == service.LAUNCHD
    with pytest.raises(ConfigError, match="win32"):
        service.detect_kind("win32")


def test_templates_ship_in_the_wheel() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    mapped = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    for name in ("config/imageclust.service", "config/imageclust.plist"):
        assert (REPO / name).is_file()
        assert mapped[name] == f"imageclust_daemon/_data/{name}"


def test_cli_installs_and_uninstalls_the_systemd_unit(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    write_config(tmp_path / "imageclust.toml", storage={"data_dir": str(tmp_path / "data")})
    env = {"HOME": str(home)}
    # A relative --config still ends up absolute in the unit.
    args = ("--config", "imageclust.toml", "service")

    done = run_cli(*args, "install", "--kind", "systemd", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    unit_file = home / ".config" / "systemd" / "user" / "imageclust.service"
    assert str(unit_file) in done.stdout
    assert (
        "systemctl --user daemon-reload && systemctl --user enable --now imageclust.service"
        in done.stdout
    )
    words = _systemd_words(_unit(unit_file.read_text(encoding="utf-8"))["Service"]["ExecStart"])
    assert words == [
        PYTHON,
        "-m",
        "imageclust_daemon",
        "--config",
        str(tmp_path / "imageclust.toml"),
        "run",
    ]

    again = run_cli(*args, "install", "--kind", "systemd", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "systemctl --user restart imageclust.service" in again.stdout  # reload the new file

    # What `systemctl --user enable` would have made; uninstall removes it with the unit.
    wants = unit_file.parent / "default.target.wants" / "imageclust.service"
    wants.parent.mkdir()
    wants.symlink_to(unit_file)
    gone = run_cli(*args, "uninstall", "--kind", "systemd", env=env, cwd=tmp_path)
    assert gone.returncode == 0, gone.stderr
    assert not unit_file.exists()
    assert not wants.is_symlink()
    assert "systemctl --user stop imageclust.service" in gone.stdout


def test_cli_installs_and_uninstalls_the_launchd_agent(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    config_path = write_config(tmp_path / "c.toml", storage={"data_dir": str(tmp_path / "d")})
    env = {"HOME": str(home)}
    args = ("--config", str(config_path), "service")

    done = run_cli(*args, "install", "--kind", "launchd", env=env)
    assert done.returncode == 0, done.stderr
    agent = home / "Library" / "LaunchAgents" / "io.imageclust.daemon.plist"
    assert f"launchctl bootstrap gui/$(id -u) {agent}" in done.stdout
    plist = plistlib.loads(agent.read_bytes())
    assert plist["ProgramArguments"][0] == PYTHON
    assert plist["ProgramArguments"][-3:] == ["--config", str(config_path), "run"]
    assert (home / "Library" / "Logs").is_dir()  # launchd does not create the log's folder
    assert agent.stat().st_mode & 0o022 == 0  # launchd ignores a group/world-writable agent

    gone = run_cli(*args, "uninstall", "--kind", "launchd", env=env)
    assert gone.returncode == 0, gone.stderr
    assert not agent.exists()
    assert "launchctl bootout gui/$(id -u)/io.imageclust.daemon" in gone.stdout


def test_cli_print_shows_the_unit_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    config_path = write_config(tmp_path / "c.toml", storage={"data_dir": str(tmp_path / "d")})
    done = run_cli(
        "--config",
        str(config_path),
        "service",
        "print",
        "--kind",
        "systemd",
        env={"HOME": str(home)},
    )
    assert done.returncode == 0, done.stderr
    assert "Type=notify" in done.stdout
    assert str(config_path) in done.stdout
    assert list(home.iterdir()) == []
