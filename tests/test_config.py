"""Config: defaults, validation messages that name the key, file selection, documentation."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields, replace
from pathlib import Path

import pytest

from imageclust_daemon import config
from imageclust_daemon.errors import ConfigError
from tests.conftest import REPO, write_config


def test_defaults_load_without_a_file() -> None:
    cfg = config.load(None)
    assert cfg.model.name == "clip-vit-b32"
    assert cfg.cluster.min_size <= cfg.cluster.max_size
    assert cfg.roots == [Path("~/Pictures").expanduser()]
    assert cfg.state_db_path.name == "state.sqlite"


def test_the_shipped_config_is_valid_and_equals_the_defaults() -> None:
    shipped = config.load(REPO / "config" / "imageclust.toml")
    defaults = config.load(None)
    assert replace(shipped, source=None) == defaults


# What each kind of setting validates to, as its section object declares it.
_KIND_TYPES = {
    "paths": "tuple[Path, ...]",
    "globs": "tuple[str, ...]",
    "providers": "tuple[str, ...]",
    "path": "Path | None",
    "float": "float",
    "int": "int",
    "bool": "bool",
    "str": "str",
    "url?": "str",
    "listen": "str",
    "scheduler": "str",
    "heif_thumbnails": "str",
}


def test_the_typed_sections_hold_exactly_the_keys_of_the_table() -> None:
    """The table of settings stays the one source: each section object has one field per
    key, typed for what the key's kind validates to, and the defaults fill it."""
    assert set(config.SECTIONS) == {s.key.split(".")[0] for s in config.SETTINGS}
    for section, cls in config.SECTIONS.items():
        keys = [s for s in config.SETTINGS if s.key.startswith(section + ".")]
        assert [f.name for f in fields(cls)] == [s.key.split(".")[1] for s in keys], section
        hints = {f.name: f.type for f in fields(cls)}
        for setting in keys:
            name = setting.key.split(".")[1]
            assert hints[name] == _KIND_TYPES[setting.kind], setting.key
    defaults = config.load(None)
    for setting in config.SETTINGS:
        section, name = setting.key.split(".")
        value = getattr(getattr(defaults, section), name)
        assert value == config.validate(setting, setting.default), setting.key


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ({"library": {"rootz": ["/x"]}}, "library.rootz", "did you mean 'library.roots'"),
        ({"nosuch": {"a": 1}}, "nosuch", "unknown section"),
        ({"librar": {}}, "librar", "did you mean [library]"),
        ({"schedule": {"recluster_seconds": float("nan")}}, "schedule.recluster_seconds", "nan"),
        ({"library": {"settle_seconds": float("nan")}}, "library.settle_seconds", "nan"),
        (
            {"library": {"roots": ["/p"]}, "organize": {"dir": "/p/Albums"}},
            "organize.dir",
            "inside library root /p",
        ),
        ({"library": {"roots": "/x"}}, "library.roots", "list of non-empty strings"),
        ({"model": {"batch_size": 0}}, "model.batch_size", ">= 1"),
        ({"model": {"batch_size": "8"}}, "model.batch_size", "expected an integer"),
        ({"model": {"batch_size": True}}, "model.batch_size", "expected an integer"),
        ({"model": {"providers": ["gpu"]}}, "model.providers", "unknown provider 'gpu'"),
        ({"model": {"providers": []}}, "model.providers", "non-empty list"),
        ({"model": {"providers": "cuda"}}, "model.providers", "non-empty list"),
        ({"ollama": {"host": "localhost:11434"}}, "ollama.host", "http:// or https://"),
        ({"cluster": {"min_size": 50, "max_size": 10}}, "cluster.min_size", "max_size"),
        ({"storage": {"data_dir": "$IMAGECLUST_TEST_UNSET/x"}}, "storage.data_dir", "not set"),
        ({"web": {"listen": "8765"}}, "web.listen", "HOST:PORT"),
        ({"web": {"listen": "127.0.0.1:99999"}}, "web.listen", "port from 1 to 65535"),
        ({"web": {"listen": "0.0.0.0:8765"}}, "web.listen", "web.allow_remote = true"),
        ({"index": {"dask_scheduler": "cluster:8786"}}, "index.dask_scheduler", "tcp://HOST"),
        ({"index": {"dask_scheduler": "http://h:8786"}}, "index.dask_scheduler", "tcp://HOST"),
        ({"index": {"heif_thumbnails": "fast"}}, "index.heif_thumbnails", "'speed'"),
        ({"index": {"heif_thumbnails": True}}, "index.heif_thumbnails", "got True"),
    ],
)
def test_bad_values_name_the_key_and_the_problem(
    tmp_path: Path, body: dict[str, dict[str, object]], key: str, expected: str
) -> None:
    path = write_config(tmp_path / "c.toml", **body)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.key == key
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_top_level_scalar_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('roots = ["/x"]\n')
    with pytest.raises(ConfigError, match="roots: expected a \\[section\\] table"):
        config.load(path)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[library\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "missing.toml")


def test_paths_expand_home_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOTOS_TEST_DIR", str(tmp_path))
    path = write_config(
        tmp_path / "c.toml",
        library={"roots": ["$PHOTOS_TEST_DIR/a", "~/b"]},
        storage={"data_dir": "${PHOTOS_TEST_DIR}/data"},
    )
    cfg = config.load(path)
    assert cfg.roots == [tmp_path / "a", Path.home() / "b"]
    assert cfg.data_dir == tmp_path / "data"


def test_config_file_selection_order(tmp_path: Path) -> None:
    explicit = tmp_path / "explicit.toml"
    from_env = tmp_path / "env.toml"
    env = {config.ENV_CONFIG: str(from_env)}
    assert config.config_path(str(explicit), env) == explicit
    assert config.config_path(None, env) == from_env


def test_every_setting_is_documented_in_the_reference_and_default_config() -> None:
    readme = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    shipped = (REPO / "config" / "imageclust.toml").read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    current = None
    for line in shipped.splitlines():
        header = re.match(r"^\[(\w+)\]", line)
        if header:
            current = header.group(1)
            sections.setdefault(current, "")
        elif current:
            sections[current] += line + "\n"
    for setting in config.SETTINGS:
        section, name = setting.key.split(".")
        body = sections.get(section, "")
        assert re.search(rf"^{name} = ", body, re.M), f"{setting.key} missing from config file"
        # the line above the key is a comment explaining it
        before = body.split(f"\n{name} = ")[0] if f"\n{name} = " in body else ""
        assert before.rstrip().splitlines()[-1].startswith("#"), f"{setting.key} has no comment"
        assert f"`{setting.key}`" in readme, f"{setting.key} missing from docs/reference.md"


def test_organize_dir_inside_a_root_reached_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data" / "Pictures").mkdir(parents=True)
    (tmp_path / "Pics").symlink_to(tmp_path / "data" / "Pictures")
    path = write_config(
        tmp_path / "c.toml",
        library={"roots": [str(tmp_path / "Pics")]},
        organize={"dir": str(tmp_path / "data" / "Pictures" / "Albums")},
    )
    with pytest.raises(ConfigError, match="inside library root"):
        config.load(path)


def test_the_config_file_and_the_reference_are_generated_from_the_one_declaration() -> None:
    """config/imageclust.toml and docs/reference.md's table are what config.py declares
    (`python -m tests.tools.gen_config` writes them), and the file loads to the defaults."""
    from tests.tools import gen_config

    assert gen_config.main(["--check"]) == 0
    shipped = tomllib.loads((REPO / "config" / "imageclust.toml").read_text(encoding="utf-8"))
    assert config.from_mapping(shipped) == config.from_mapping({})
    assert [s.key for s in config.SETTINGS] == [
        f"{section}.{name}" for section, keys in shipped.items() for name in keys
    ]
