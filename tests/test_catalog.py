"""The published catalog: schema, one row per file, read-only, atomic republish, query, organize."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from imageclust_daemon.durable import sqlite_uri
from imageclust_daemon.errors import QueryRefused
from imageclust_daemon.published import catalog, organize, search
from tests.conftest import REPO, memory_limit, run_cli, write_config
from tests.library import scene_library
from tests.photos import photo_like, save_jpeg
from tests.test_index_e2e import build_library

# The public contract (docs/reference.md, "The catalog"): tables and views with their columns.
CONTRACT = {
    "photos": [
        "path",
        "path_bytes",
        "content_hash",
        "size",
        "width",
        "height",
        "taken_at",
        "lat",
        "lon",
        "place",
        "format",
        "shown_as",
        "cluster_id",
        "event_id",
        "status",
        "error",
        "offline",
        "taken_at_source",
    ],
    "clusters": ["id", "title", "catchy_phrase", "size", "label_source", "updated_at"],
    "cluster_members": ["cluster_id", "content_hash", "rank"],
    "events": [
        "id",
        "title",
        "started_at",
        "ended_at",
        "place",
        "lat",
        "lon",
        "size",
        "kind",
    ],
    "cluster_photos": ["cluster_id", "title", "path", "rank", "representative"],
    "catalog_info": ["key", "value"],
}
CLI = [sys.executable, "-m", "imageclust_daemon"]
ODD_NAMES = ['comma, and "quotes".jpg', "new\nline.jpg", "tab\there.jpg", "ünïcødé.jpg"]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Any]:
    """A library indexed, grouped and titled (fallback: no Ollama), and its catalog."""
    base = tmp_path_factory.mktemp("catalog")
    root = base / "Photos"
    build_library(root)
    scene_library(root / "events", 3, 6)
    for name in ODD_NAMES:
        shutil.copyfile(root / "events" / "event 0" / "IMG_000.jpg", root / name)
    with open(os.fsencode(root) + b"/raw-\xff\xfe.jpg", "wb") as f:
        f.write((root / "events" / "event 1" / "IMG_001.jpeg").read_bytes())
    # A valid UTF-8 name spelled exactly like the one above once escaped: both keep a row.
    shutil.copyfile(root / "events" / "event 2" / "IMG_001.jpeg", root / "raw-\\xff\\xfe.jpg")
    config = write_config(
        base / "c.toml",
        library={"roots": [str(root)], "exclude": ["skipme"]},
        storage={"data_dir": str(base / "data")},
        model={"path": str(tiny_model)},
        cluster={"min_size": 3, "max_size": 12},
        ollama={"host": "http://127.0.0.1:9", "connect_timeout": 0.2},
        organize={"dir": str(base / "Organized")},
    )
    for command in (["index"], ["recluster"], ["relabel"]):
        result = run_cli("--config", str(config), *command)
        assert result.returncode == 0, result.stderr
    return {
        "root": root,
        "config": config,
        "catalog": base / "data" / "catalog.sqlite",
        "state": base / "data" / "state.sqlite",
        "organized": base / "Organized",
    }


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(sqlite_uri(path, mode="ro"), uri=True)


def test_every_documented_table_and_column_exists_and_is_documented(
    published: dict[str, Any],
) -> None:
    readme = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    conn = _ro(published["catalog"])
    try:
        for table, columns in CONTRACT.items():
            found = [r[1] for r in conn.execute(f"SELECT * FROM pragma_table_info('{table}')")]
            assert found == columns, table
            assert f"`{table}`" in readme, f"{table} undocumented"
            for column in columns:
                assert re.search(rf"`{column}`", readme), f"{table}.{column} undocumented"
        info = dict(conn.execute("SELECT key, value FROM catalog_info"))
        assert set(info) >= {"schema_version", "generated_at", "model", "daemon_version"}
        assert info["schema_version"] == str(catalog.SCHEMA_VERSION)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == catalog.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"photos_by_cluster", "photos_by_hash", "photos_by_date"} <= indexes
    finally:
        conn.close()
    assert stat.S_IMODE(published["catalog"].stat().st_mode) == 0o444


def test_every_image_file_under_the_root_has_exactly_one_row(published: dict[str, Any]) -> None:
    root = os.fsencode(published["root"])
    expected = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(b".") and d != b"skipme"]
        for name in files:
            if not name.startswith(b".") and os.path.splitext(name)[1].lower() in {
                b".jpg",
                b".jpeg",
                b".png",
                b".gif",
                b".webp",
                b".bmp",
                b".tiff",
                b".tif",
            }:
                expected.add(os.path.join(folder, name))
    conn = _ro(published["catalog"])
    try:
        rows = conn.execute("SELECT path, path_bytes, status, error FROM photos").fetchall()
        groups = conn.execute("SELECT count(*), count(title) FROM clusters").fetchone()
        sources = {r[0] for r in conn.execute("SELECT label_source FROM clusters")}
    finally:
        conn.close()
    assert sorted(r[1] for r in rows) == sorted(expected), "one row per file, no more, no less"
    texts = {raw: text for text, raw, _, _ in rows}
    undecodable = next(raw for raw in texts if raw.endswith(b"raw-\xff\xfe.jpg"))
    spelled = next(raw for raw in texts if raw.endswith(b"raw-\\xff\\xfe.jpg"))
    # The text form escapes the bad bytes; the real name that reads the same way keeps it.
    assert texts[spelled] == catalog.text_path(spelled) == catalog.text_path(undecodable)
    assert texts[undecodable] == catalog.text_path(undecodable) + " (2)"
    for text, raw, status, error in rows:
        assert raw == undecodable or text == catalog.text_path(raw)
        assert (status == "failed") == (error is not None)
    failed = {os.path.basename(raw) for _, raw, status, _ in rows if status == "failed"}
    assert failed == {b"empty.jpg", b"truncated.jpg", b"notes.jpg", b"bomb.png", b"corrupt.jpg"}
    assert groups[0] >= 3 and groups[0] == groups[1], "every group has a title"
    assert sources == {"fallback"}


def test_escaped_texts_are_distinct_from_every_path() -> None:
    exact = {"a\\xff", "a\\xff (2)"}
    texts = catalog.escaped_texts([b"a\xff", b"a\\xff\xfe", b"b\xfe"], exact.__contains__)
    assert texts == {
        b"a\xff": "a\\xff (3)",  # "a\xff" and "a\xff (2)" are real names
        b"a\\xff\xfe": "a\\xff\\xfe",
        b"b\xfe": "b\\xfe",
    }
    # Two undecodable names that escape alike: the second is numbered.
    assert catalog.escaped_texts([b"\\xff\xfe", b"\xff\xfe"], lambda _: False) == {
        b"\\xff\xfe": "\\xff\\xfe",
        b"\xff\xfe": "\\xff\\xfe (2)",
    }


def test_no_blobs_but_paths_and_smaller_than_the_state(published: dict[str, Any]) -> None:
    conn = _ro(published["catalog"])
    try:
        blob_columns = [
            (t, c)
            for t in ("photos", "clusters", "cluster_members", "catalog_info")
            for c in CONTRACT[t]
            if conn.execute(f"SELECT count(*) FROM {t} WHERE typeof({c}) = 'blob'").fetchone()[0]
        ]
    finally:
        conn.close()
    assert blob_columns == [("photos", "path_bytes")]
    assert published["catalog"].stat().st_size < published["state"].stat().st_size


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM photos",
        "INSERT INTO clusters (id, size, updated_at) VALUES (999, 1, 'x')",
        "UPDATE photos SET status = 'failed'",
        "DROP TABLE photos",
        "CREATE TABLE x (y)",
        "ATTACH 'evil.sqlite' AS evil",
        "VACUUM INTO 'copy.sqlite'",
        "PRAGMA user_version = 7",
        "PRAGMA query_only = OFF",
        "PRAGMA writable_schema = ON",
        "UPDATE sqlite_master SET sql = 'x' WHERE name = 'photos'",
        "SELECT * FROM pragma_compile_options",
        "SELECT 1; DELETE FROM photos",
        "BEGIN",
    ],
)
def test_query_refuses_anything_but_reading(published: dict[str, Any], sql: str) -> None:
    before = published["catalog"].read_bytes()
    result = run_cli("--config", str(published["config"]), "query", sql)
    assert result.returncode == 2, (sql, result.stdout, result.stderr)
    assert "imageclust: error:" in result.stderr and "Traceback" not in result.stderr
    assert published["catalog"].read_bytes() == before
    assert not (Path.cwd() / "evil.sqlite").exists() and not (Path.cwd() / "copy.sqlite").exists()


def test_query_may_describe_the_schema(published: dict[str, Any]) -> None:
    """docs/reference.md: "Column lists: SELECT * FROM pragma_table_info('photos')"."""
    columns = catalog.query(published["catalog"], "SELECT name FROM pragma_table_info('photos')")
    assert [r[0] for r in columns.rows] == CONTRACT["photos"]
    version = catalog.query(published["catalog"], "PRAGMA user_version")
    assert version.rows == [(catalog.SCHEMA_VERSION,)]
    indexes = catalog.query(published["catalog"], "SELECT name FROM pragma_index_list('photos')")
    assert "photos_by_cluster" in {r[0] for r in indexes.rows}


def test_query_piped_into_head_ends_quietly(published: dict[str, Any]) -> None:
    """`imageclust query ... | head -1`: the closed pipe is no error."""
    sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 300000) "
    proc = subprocess.Popen(
        [*CLI, "--config", str(published["config"]), "query", sql + "SELECT i FROM n"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"i\n"
    proc.stdout.close()
    code = proc.wait(timeout=60)
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert code == 0 and stderr == "", stderr


def test_query_runaway_is_stopped(published: dict[str, Any]) -> None:
    sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    with pytest.raises(QueryRefused, match="longer than"):
        catalog.query(published["catalog"], sql, timeout=0.3)


def test_query_streams_a_result_larger_than_its_memory(published: dict[str, Any]) -> None:
    """150,000 rows of 10 kB (1.5 GB) pass through a process capped at 1 GB."""
    sql = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 150000) "
        "SELECT i, hex(zeroblob(5000)) AS pad FROM n"
    )
    done = subprocess.run(
        [*CLI, "--config", str(published["config"]), "query", sql, "--max-bytes", "3000000000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
        preexec_fn=memory_limit(1024),
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("sql", "options", "expected"),
    [
        ("SELECT zeroblob(1000000000) FROM photos", (), "a value is longer than 32 MB"),
        (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
            "SELECT zeroblob(1000) FROM n",
            ("--max-bytes", "100000"),
            "stopped after 100,000 bytes of values (--max-bytes raises the limit)",
        ),
    ],
)
def test_query_past_a_limit_stops_with_exit_2_and_no_traceback(
    published: dict[str, Any], sql: str, options: tuple[str, ...], expected: str
) -> None:
    done = run_cli(
        "--config",
        str(published["config"]),
        "query",
        sql,
        *options,
        preexec_fn=memory_limit(1024),
    )
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("form", ["text", "--json", "--csv"])
def test_max_rows_prints_the_rows_asked_for_and_exits_0(
    published: dict[str, Any], form: str
) -> None:
    """Before: `--max-rows N` exited 2 (an error) when it stopped where the user asked."""
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n"
    extra = () if form == "text" else (form,)
    done = run_cli(
        "--config",
        str(published["config"]),
        "query",
        endless,
        "--max-rows",
        "1000",
        *extra,
        preexec_fn=memory_limit(1024),
    )
    assert done.returncode == 0, done.stderr
    assert "the first 1,000 rows, as --max-rows asked; there are more" in done.stderr
    if form == "--json":
        assert [r["i"] for r in json.loads(done.stdout)] == list(range(1, 1001))
    else:
        assert done.stdout.splitlines()[1:] == [str(i) for i in range(1, 1001)]
    few = run_cli(
        "--config", str(published["config"]), "query", "SELECT 1 AS one", "--max-rows", "5"
    )
    assert few.returncode == 0 and few.stderr == "" and few.stdout.splitlines() == ["one", "1"]


def test_a_damaged_catalog_says_the_next_publish_rebuilds_it(tmp_path: Path) -> None:
    damaged = tmp_path / "catalog.sqlite"
    damaged.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    config = write_config(tmp_path / "c.toml", catalog={"path": str(damaged)})

    done = run_cli("--config", str(config), "query", "SELECT count(*) FROM photos")

    assert done.returncode == 1, done.stderr
    assert "is damaged" in done.stderr and "the next publish rebuilds it" in done.stderr
    assert "Traceback" not in done.stderr


def test_opening_the_catalog_to_write_fails(published: dict[str, Any]) -> None:
    ro = _ro(published["catalog"])
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            ro.execute("DELETE FROM photos")
    finally:
        ro.close()
    # A plain read-write open by another program: the file is 0444. (Root ignores file
    # modes, so the writer drops CAP_DAC_OVERRIDE the way an ordinary user never had it.)
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root without setpriv cannot be denied a write")
        prefix = [
            setpriv,
            "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-dac_override,-dac_read_search",
        ]
    code = textwrap.dedent(f"""
        import sqlite3
        conn = sqlite3.connect({str(published["catalog"])!r})
        try:
            conn.execute("DELETE FROM photos")
            conn.commit()
        except sqlite3.OperationalError as exc:
            print("refused:", exc)
    """)
    out = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True)
    assert "refused:" in out.stdout and "readonly" in out.stdout, out


def test_query_json_and_csv_are_well_formed_whatever_the_names(
    published: dict[str, Any],
) -> None:
    config = str(published["config"])
    sql = "SELECT path, path_bytes, status FROM photos ORDER BY path"
    as_json = run_cli("--config", config, "query", sql, "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    as_csv = run_cli("--config", config, "query", sql, "--csv")
    assert as_csv.returncode == 0
    table = list(csv.reader(io.StringIO(as_csv.stdout, newline="")))
    assert table[0] == ["path", "path_bytes", "status"]
    assert [r[0] for r in table[1:]] == [r["path"] for r in rows]
    names = {os.path.basename(r["path"]) for r in rows}
    assert set(ODD_NAMES) <= names
    import base64

    raw = {base64.b64decode(r["path_bytes"]) for r in rows}
    assert any(p.endswith(b"raw-\xff\xfe.jpg") for p in raw)


def test_a_reader_sees_only_complete_snapshots_while_publishing_50_times(
    published: dict[str, Any], tmp_path: Path
) -> None:
    dest = tmp_path / "catalog.sqlite"
    catalog.publish(published["state"], dest, model_id=None, daemon_version="test")
    expected = _ro(dest).execute("SELECT count(*) FROM photos").fetchone()[0]
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import os, sqlite3, sys
            held = sqlite3.connect("file:{dest}?mode=ro", uri=True)  # held open throughout
            held_count = held.execute("SELECT count(*) FROM photos").fetchone()[0]
            reads = errors = 0
            generations = set()
            while not os.path.exists({str(stop)!r}):
                try:
                    conn = sqlite3.connect("file:{dest}?mode=ro", uri=True)
                    n = conn.execute("SELECT count(*) FROM photos").fetchone()[0]
                    g = conn.execute(
                        "SELECT value FROM catalog_info WHERE key = 'generated_at'"
                    ).fetchone()[0]
                    conn.close()
                    if n != {expected}:
                        errors += 1
                    generations.add(g)
                    reads += 1
                except Exception as exc:
                    print("error", exc, file=sys.stderr)
                    errors += 1
            again = held.execute("SELECT count(*) FROM photos").fetchone()[0]
            print(reads, errors, again == held_count)
        """),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for i in range(50):  # a version of its own each time: built and swapped in anew
            report = catalog.publish(
                published["state"], dest, model_id=None, daemon_version=f"test {i}"
            )
            assert report.photos == expected and not report.unchanged
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=60)
    reads, errors, held_ok = out.split()
    assert int(reads) > 0 and int(errors) == 0, err
    assert held_ok == "True", "a reader holding the old snapshot keeps reading it"
    named = search.open_for(dest).path.name  # the search snapshot the catalog names
    kept = {"catalog.sqlite", "stop", named}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in kept]
    assert leftovers == [], "no temp files left behind"


def test_organized_view_is_symlinks_swapped_in_whole(
    published: dict[str, Any], tmp_path: Path
) -> None:
    view = published["organized"]
    assert view.is_symlink()
    folders = sorted(p.name for p in view.iterdir())
    conn = _ro(published["catalog"])
    titles = {r[0] for r in conn.execute("SELECT title FROM clusters")}
    # one link per distinct photo: duplicates (one content at several paths) once
    members = conn.execute(
        "SELECT count(DISTINCT content_hash) FROM photos WHERE cluster_id IS NOT NULL"
    ).fetchone()
    sizes = conn.execute("SELECT sum(size) FROM clusters").fetchone()
    conn.close()
    assert {organize.safe_name(t, "") for t in titles} <= set(folders)
    albums = [folder for folder in view.iterdir() if folder.name != organize.EVENTS]
    links = [p for folder in albums for p in folder.iterdir()]
    assert len(links) == members[0] == sizes[0]
    for link in links:
        assert link.is_symlink() and os.path.isabs(os.readlink(link)) and link.resolve().is_file()
    old_tree = os.readlink(view)
    organize.build(organize.groups_from_catalog(published["catalog"]), view)
    assert os.readlink(view) != old_tree and not (view.parent / old_tree).exists()
    real = tmp_path / "mine"
    real.mkdir()
    with pytest.raises(organize.OrganizeError, match="real folder"):
        organize.build([], real)


@pytest.mark.parametrize(
    ("title", "expected"),
    [("Beach / Sun", "Beach Sun"), ("..hidden", "hidden"), ("", "Group 3"), ("a\x00b", "a b")],
)
def test_safe_folder_names(title: str, expected: str) -> None:
    assert organize.safe_name(title, "Group 3") == expected


def test_places_and_full_text_search_answer_through_imageclust_query(
    published: dict[str, Any],
) -> None:
    """Each photo with GPS names its nearest place; titles, phrases, paths and places are
    searchable with FTS5 through the read-only `query` (FTS5 reads PRAGMA data_version)."""
    from imageclust_daemon.grouping.places import nearest_place

    conn = _ro(published["catalog"])
    try:
        located = conn.execute(
            "SELECT lat, lon, place FROM photos WHERE lat IS NOT NULL AND status = 'indexed'"
        ).fetchall()
        title = conn.execute("SELECT id, title FROM clusters ORDER BY id LIMIT 1").fetchone()
    finally:
        conn.close()
    assert located, "the library has photos with GPS"
    for lat, lon, place in located:
        assert place == str(nearest_place(lat, lon))

    def query(table: str, match: str, select: str) -> list[dict[str, Any]]:
        sql = (
            f"SELECT {select} FROM {table} WHERE rowid IN "
            f"(SELECT rowid FROM {table}_fts WHERE {table}_fts MATCH '{match}')"
        )
        done = run_cli("--config", str(published["config"]), "query", "--json", sql)
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows

    word = title[1].split(",")[0].split()[0]
    assert {"id": title[0]} in query("clusters", f'"{word}"', "id")
    city = located[0][2].split(",")[0]
    expected = sum(1 for *_, place in located if place.split(",")[0] == city)
    assert query("photos", f'place:"{city}"', "count(*) AS n")[0]["n"] >= expected >= 1
    paths = [r["path"] for r in query("photos", "path:skipme OR path:event", "path")]
    assert paths and all("event" in p for p in paths)


def test_the_datasette_recipe_follows_publishes(tmp_path: Path, tiny_model: Path) -> None:
    """docs/reference.md's `datasette --reload --immutable "$CAT"`, run as written, shows
    a new publish. Datasette is no dependency: the test runs where it is installed (on
    PATH, or named by $DATASETTE)."""
    import shutil
    import time

    import httpx

    beside = Path(sys.executable).parent / "datasette"  # the test extra's, venv not activated
    datasette = (
        os.environ.get("DATASETTE")
        or shutil.which("datasette")
        or (str(beside) if beside.exists() else None)
    )
    if not datasette:
        pytest.skip("Datasette is not installed here (pip install datasette)")
    root = tmp_path / "lib"
    root.mkdir()
    for i in range(3):
        save_jpeg(photo_like(i), root / f"a{i}.jpg")
    config = write_config(
        tmp_path / "c.toml",
        library={"roots": [str(root)]},
        storage={"data_dir": str(tmp_path / "data")},
        model={"path": str(tiny_model)},
        ollama={"host": "http://127.0.0.1:9"},
    )
    assert run_cli("--config", str(config), "index", "--no-progress").returncode == 0
    catalog_path = tmp_path / "data" / "catalog.sqlite"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [datasette, "--reload", "--immutable", str(catalog_path), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/catalog.json"
    params = {"sql": "SELECT count(*) AS n FROM photos", "_shape": "array"}

    def count() -> int | None:
        try:
            return int(httpx.get(url, params=params, timeout=5).json()[0]["n"])
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            return None

    try:
        deadline = time.monotonic() + 60
        while count() != 3:
            assert time.monotonic() < deadline, "Datasette did not serve the catalog"
            time.sleep(0.3)
        save_jpeg(photo_like(7), root / "new.jpg")
        assert run_cli("--config", str(config), "index", "--no-progress").returncode == 0
        deadline = time.monotonic() + 60
        while count() != 4:
            assert time.monotonic() < deadline, "Datasette did not follow the publish"
            time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_publish_with_nothing_changed_leaves_the_catalog_as_it_is(
    published: dict[str, Any], tmp_path: Path
) -> None:
    """Nothing changed -> nothing published: the same file (inode), untouched; a write
    to what the catalog shows, through any code, publishes anew."""
    state = tmp_path / "state.sqlite"
    shutil.copyfile(published["state"], state)
    dest = tmp_path / "catalog.sqlite"
    first = catalog.publish(state, dest, model_id=None, daemon_version="test")
    before = dest.stat()
    again = catalog.publish(state, dest, model_id=None, daemon_version="test")
    assert again.unchanged and (again.photos, again.clusters) == (first.photos, first.clusters)
    after = dest.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # another model, another version of imageclust: built anew
    assert not catalog.publish(state, dest, model_id="m", daemon_version="test").unchanged
    assert catalog.publish(state, dest, model_id="m", daemon_version="test").unchanged
    with sqlite3.connect(state) as conn:  # a write that shows nothing: still unchanged
        conn.execute("UPDATE files SET updated_at = updated_at + 1")
        conn.execute("UPDATE clusters SET title = title")
    assert catalog.publish(state, dest, model_id="m", daemon_version="test").unchanged
    with sqlite3.connect(state) as conn:  # a title changed by hand
        conn.execute(
            "UPDATE clusters SET title = 'Renamed' WHERE id = (SELECT min(id) FROM clusters "
            "WHERE state = 'active')"
        )
    renamed = catalog.publish(state, dest, model_id="m", daemon_version="test")
    assert not renamed.unchanged
    assert _ro(dest).execute("SELECT count(*) FROM clusters WHERE title = 'Renamed'").fetchone()
    with sqlite3.connect(state) as conn:  # an album's subject (its distinct title uses it)
        conn.execute(
            "UPDATE clusters SET subject = 'kites' WHERE id = (SELECT min(id) FROM clusters "
            "WHERE state = 'active')"
        )
    assert not catalog.publish(state, dest, model_id="m", daemon_version="test").unchanged
    search.open_for(dest).path.unlink()  # its search snapshot lost: built anew
    assert not catalog.publish(state, dest, model_id="m", daemon_version="test").unchanged
    # another state database at the very same version: not taken for this one
    other = tmp_path / "other.sqlite"
    shutil.copyfile(state, other)
    with sqlite3.connect(other) as conn:
        conn.execute("UPDATE published_inputs SET database_id = 'another'")
    assert not catalog.publish(other, dest, model_id="m", daemon_version="test").unchanged


def test_a_second_index_of_an_unchanged_library_publishes_nothing(
    published: dict[str, Any],
) -> None:
    dest = published["catalog"]
    before = dest.stat()
    done = run_cli("--config", str(published["config"]), "--log-level", "INFO", "index")
    assert done.returncode == 0, done.stderr
    assert "is up to date: nothing to publish" in done.stderr
    after = dest.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
